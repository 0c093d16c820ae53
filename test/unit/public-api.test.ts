// The public API's types, pinned. `npm test` type-checks this file (tsc --noEmit) before vitest
// runs it, so a type that drifts fails the suite; the runtime part checks the exported values.
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../../lib/index.js';
import {
  EbpfLeakError,
  LeakTracer,
  PermissionError,
  allocatorFunctions,
  errorCodes,
  leakTracerEvents,
  trace,
  tracedProcessEvents,
  type AllocEvent,
  type BytesBlocks,
  type ErrorCode,
  type FreeEvent,
  type HeapError,
  type HeapErrorCounts,
  type HeapSummary,
  type LeakGroup,
  type LeakHeuristic,
  type LeakKind,
  type LeakReport,
  type LostInfo,
  type ScanInfo,
  type Snapshot,
  type TraceOptions,
  type TracedProcess,
  type ProcessExit,
  type ScopedLeakReport,
} from '../../lib/index.js';

describe('public API', () => {
  it('trace() takes pid or command options and resolves to a LeakTracer', () => {
    expectTypeOf(trace).parameter(0).toEqualTypeOf<TraceOptions>();
    expectTypeOf(trace).returns.resolves.toEqualTypeOf<LeakTracer>();
    expectTypeOf<{ pid: number }>().toMatchTypeOf<TraceOptions>();
    expectTypeOf<{ command: string; args: string[]; stdio: 'pipe' }>().toMatchTypeOf<TraceOptions>();
    expectTypeOf<{ command: string; stdio: 'tty' }>().not.toMatchTypeOf<TraceOptions>();
    expectTypeOf<{ pid: number; maxAllocations: number; events: boolean; stacks: boolean; stackDepth: number }>().toMatchTypeOf<TraceOptions>();
  });

  it('LeakTracer is a typed EventEmitter', () => {
    expectTypeOf<LeakTracer>().toMatchTypeOf<EventEmitter>();
    expectTypeOf<LeakTracer['done']>().toEqualTypeOf<Promise<ScopedLeakReport>>();
    expectTypeOf<LeakTracer['stop']>().returns.toEqualTypeOf<Promise<ScopedLeakReport>>();
    expectTypeOf<ScopedLeakReport>().toMatchTypeOf<LeakReport>();
    expectTypeOf<LeakTracer['snapshot']>().returns.toEqualTypeOf<Promise<Snapshot>>();
    // Listeners get the event's payload type.
    const check = (t: LeakTracer) => {
      t.on('alloc', (e) => expectTypeOf(e).toEqualTypeOf<AllocEvent>());
      t.on('free', (e) => expectTypeOf(e).toEqualTypeOf<FreeEvent>());
      t.on('leak', (g) => expectTypeOf(g).toEqualTypeOf<LeakGroup>());
      t.on('exit', (r) => expectTypeOf(r).toEqualTypeOf<LeakReport>());
      t.on('lost', (l) => expectTypeOf(l).toEqualTypeOf<LostInfo>());
      t.on('error', (e) => expectTypeOf(e).toEqualTypeOf<Error>());
      // @ts-expect-error: not an event of LeakTracer
      t.on('leaked', () => {});
    };
    expect(typeof check).toBe('function');
  });

  it("a command's process: the parts of ChildProcess callers use, typed", () => {
    expectTypeOf<LeakTracer['process']>().toEqualTypeOf<TracedProcess | undefined>();
    expectTypeOf<TracedProcess>().toMatchTypeOf<EventEmitter>();
    expectTypeOf<TracedProcess['pid']>().toEqualTypeOf<number>();
    expectTypeOf<TracedProcess['exitCode']>().toEqualTypeOf<number | null>();
    expectTypeOf<TracedProcess['signalCode']>().toEqualTypeOf<NodeJS.Signals | null>();
    expectTypeOf<TracedProcess['exited']>().toEqualTypeOf<Promise<ProcessExit>>();
    expectTypeOf<TracedProcess['kill']>().parameter(0).toEqualTypeOf<NodeJS.Signals | number | undefined>();
    const check = (p: TracedProcess) => {
      p.on('exit', (code, signal) => {
        expectTypeOf(code).toEqualTypeOf<number | null>();
        expectTypeOf(signal).toEqualTypeOf<NodeJS.Signals | null>();
      });
      // @ts-expect-error: not an event of TracedProcess
      p.on('spawn', () => {});
    };
    expect(typeof check).toBe('function');
    expect(tracedProcessEvents).toEqual(['exit', 'close']);
  });

  it('reports have valgrind-shaped summaries and plain-JSON leaks', () => {
    expectTypeOf<LeakReport['version']>().toEqualTypeOf<1>();
    expectTypeOf<HeapSummary>().toEqualTypeOf<{
      allocs: number;
      frees: number;
      bytesAllocated: number;
      inUseBlocks: number;
      inUseBytes: number;
      lostEvents: number;
      droppedAllocations: number;
      unknownFrees: number;
      errors?: HeapErrorCounts;
      definitelyLost?: BytesBlocks;
      indirectlyLost?: BytesBlocks;
      possiblyLost?: BytesBlocks;
      stillReachable?: BytesBlocks;
      reachableViaHeuristic?: Partial<Record<LeakHeuristic, BytesBlocks>>;
    }>();
    expectTypeOf<HeapErrorCounts>().toEqualTypeOf<{
      'invalid-free': number;
      'double-free': number;
      'mismatched-free': number;
      notRecorded: number;
    }>();
    expectTypeOf<HeapError['kind']>().toEqualTypeOf<'invalid-free' | 'double-free' | 'mismatched-free'>();
    expectTypeOf<LeakReport['errors']>().toEqualTypeOf<HeapError[] | undefined>();
    expectTypeOf<LeakGroup['kind']>().toEqualTypeOf<LeakKind | undefined>();
    expectTypeOf<LeakKind>().toEqualTypeOf<'definite' | 'indirect' | 'possible' | 'reachable'>();
    expectTypeOf<LeakReport['scan']>().toEqualTypeOf<ScanInfo | undefined>();
    expectTypeOf<LeakGroup['stack'][number]['address']>().toEqualTypeOf<string>();
  });

  it('errors have literal codes', () => {
    expectTypeOf<PermissionError['code']>().toEqualTypeOf<'ELEAK_PERM'>();
    expectTypeOf<EbpfLeakError['code']>().toEqualTypeOf<ErrorCode>();
    const e = new PermissionError('x');
    expect(e).toBeInstanceOf(EbpfLeakError);
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('ELEAK_PERM');
    expect(e.name).toBe('PermissionError');
    // Every code has exactly one class.
    const classes = (Object.values(api) as unknown[]).filter(
      (v): v is new (m: string) => EbpfLeakError => typeof v === 'function' && v.prototype instanceof EbpfLeakError,
    );
    expect(classes.map((C) => new C('m').code).sort()).toEqual([...errorCodes].sort());
  });

  it('lists of names are exported as values', () => {
    expect(leakTracerEvents).toEqual(['alloc', 'free', 'leak', 'exit', 'lost', 'error']);
    expect(allocatorFunctions).toContain('posix_memalign');
    expectTypeOf(leakTracerEvents).toEqualTypeOf<readonly ['alloc', 'free', 'leak', 'exit', 'lost', 'error']>();
  });

  it('exports exactly these values, by name', () => {
    expect(Object.keys(api).sort()).toEqual(
      [
        'AddonError',
        'BpfError',
        'CommandNotFoundError',
        'EbpfLeakError',
        'GcUnavailableError',
        'HeapErrorsError',
        'InvalidOptionError',
        'LeakError',
        'LeakInconclusiveError',
        'LeakTracer',
        'LibraryNotFoundError',
        'MultiUprobeUnsupportedError',
        'NoBtfError',
        'NoSuchProcessError',
        'PermissionError',
        'ProbeConflictError',
        'PtraceError',
        'ScanError',
        'StateError',
        'SuppressionSyntaxError',
        'SymbolNotFoundError',
        'TargetExitedError',
        'TracerClosedError',
        'UnsafeFileError',
        'UnsupportedAllocatorError',
        'UprobesUnsupportedError',
        'allocatorFunctions',
        'assertNoLeaks',
        'assertReport',
        'checkLeaks',
        'checkReport',
        'collectGarbage',
        'currentThreadId',
        'defaultSuppressions',
        'errorCodes',
        'formatCheckedReport',
        'formatNativeLeakReport',
        'generateSuppressions',
        'leakCheck',
        'leakKinds',
        'leakTracerEvents',
        'loadSuppressions',
        'measure',
        'parseSuppressions',
        'resolveSuppressions',
        'trace',
        'tracedProcessEvents',
        'tracingSupport',
      ].sort(),
    );
    const index = readFileSync(new URL('../../lib/index.ts', import.meta.url), 'utf8');
    expect(index).not.toMatch(/export \*/);
  });
});

/** The names an entry module exports, types included, from its `export { ... }` lists and
 *  `export function|class|const` declarations. */
function exportedNames(file: string): string[] {
  const text = readFileSync(new URL(file, import.meta.url), 'utf8');
  const names = new Set<string>();
  for (const m of text.matchAll(/export\s+(?:type\s+)?\{([^}]*)\}/g)) {
    for (const part of m[1]!.split(',')) {
      const name = part.replace(/^\s*type\s+/, '').split(/\s+as\s+/).pop()!.trim();
      if (name !== '') names.add(name);
    }
  }
  for (const m of text.matchAll(/export\s+(?:async\s+)?(?:function|class|const|interface|type)\s+(\w+)/g)) names.add(m[1]!);
  return [...names];
}

describe('docs/api.md', () => {
  const docs = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
  const documented = (name: string) => new RegExp('`' + name + '(?![\\w])').test(docs);

  it.each([['../../lib/index.ts'], ['../../lib/harness/vitest.ts'], ['../../lib/harness/node-test.ts']])(
    'documents every name %s exports',
    (file) => {
      const names = exportedNames(file);
      expect(names.length).toBeGreaterThan(5);
      expect(names.filter((n) => !documented(n))).toEqual([]);
    },
  );

  it('documents every error code, and the verdicts of the leak assertions', () => {
    const codes = [...errorCodes, 'ELEAK_LEAKED', 'ELEAK_INCONCLUSIVE'];
    expect(codes.filter((c) => !docs.includes('`' + c + '`'))).toEqual([]);
  });
});

