// LeakTracer: one traced process, as an EventEmitter. Owns the native tracer and, for `command`
// targets, the child process.
import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { TracerClosedError } from './errors.js';
import {
  decodeCounters,
  decodeEvents,
  decodeModules,
  snapshotColumns,
  type Counters,
} from './native-layout.js';
import type { NativeMessageType, NativeTracer } from './native.js';
import { resolveModules } from './modules.js';
import { readPerfMap } from './proc-maps.js';
import { groupByStack, hex, outstandingAllocations, summarize, toLeakGroup, type RawLeakGroup } from './report.js';
import { symbolizeStacks } from './symbolize.js';
import { processAlive } from './target.js';
import type {
  AllocatorFunction,
  LeakReport,
  LeakTracerEvents,
  Snapshot,
  StackFrame,
  TargetInfo,
} from './types.js';

export const leakTracerEvents = ['alloc', 'free', 'leak', 'exit', 'lost', 'error'] as const satisfies readonly (keyof LeakTracerEvents)[];

/** What the tracer resolved and attached, for diagnostics (`--verbose`). */
export interface TracerInfo {
  allocator: string;
  /** Function -> symbol probed. */
  probes: Partial<Record<AllocatorFunction, string>>;
  /** Optional functions absent from the allocator. */
  missing: AllocatorFunction[];
  /** Functions covered by another's probe because they share its address. */
  aliases: Partial<Record<AllocatorFunction, AllocatorFunction>>;
  /** File offset of each probed function in `allocator`. */
  functionOffsets: Partial<Record<AllocatorFunction, number>>;
  maxAllocations: number;
  events: boolean;
  /** Allocation stacks are captured. */
  stacks: boolean;
  /** One multi-uprobe link per file (kernel >= 6.6), or one classic uprobe per function. */
  attachMode: 'uprobe_multi' | 'uprobe';
  attachMs: number;
}

/** @internal: how trace() hands a freshly attached tracer over. */
export interface TracerParts {
  native: NativeTracer;
  pid: number;
  target: Omit<TargetInfo, 'exitCode' | 'signal'>;
  info: TracerInfo;
  child?: ChildProcess;
  /** Resolves with the child's exit status; set for `command` targets. */
  childExit?: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export class LeakTracer extends EventEmitter<LeakTracerEvents> {
  /** Process being traced. */
  readonly pid: number;
  /** Resolves with the final report when the target exits or stop() is called. */
  readonly done: Promise<LeakReport>;
  /** What was attached where. */
  readonly info: TracerInfo;
  /** The started program, for `command` targets (its stdio when stdio: 'pipe'). */
  readonly process: ChildProcess | undefined;

  #native: NativeTracer;
  #target: Omit<TargetInfo, 'exitCode' | 'signal'>;
  #startedAt = performance.now();
  #finishing: Promise<LeakReport> | undefined;
  #resolveDone!: (report: LeakReport) => void;
  #rejectDone!: (error: unknown) => void;
  #closed = false;
  #lostReported = { events: 0, allocations: 0 };

  /** @internal Use trace(). */
  constructor(parts: TracerParts) {
    super();
    this.pid = parts.pid;
    this.info = parts.info;
    this.process = parts.child;
    this.#native = parts.native;
    this.#target = parts.target;
    this.done = new Promise<LeakReport>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    // A rejection of `done` nobody awaits must not crash the process: 'error' carries it too.
    this.done.catch(() => {});
    if (parts.childExit) {
      parts.childExit.then(
        ({ code, signal }) => void this.#finish(code, signal),
        (error: unknown) => this.#fail(error),
      );
    }
  }

  /** @internal Messages from the native poll thread. */
  handleNativeMessage(type: NativeMessageType, data: ArrayBuffer): void {
    try {
      if (type === 'events') this.#deliverEvents(data);
      else if (type === 'counters') this.#checkLost(decodeCounters(data));
      // A child of ours is finished by its 'exit' (which has the status); others by the pidfd.
      else if (type === 'exit' && !this.process) void this.#finish(null, null);
    } catch (error) {
      this.emit('error', error instanceof Error ? error : new Error(String(error)));
    }
  }

  #deliverEvents(data: ArrayBuffer): void {
    const wantAlloc = this.listenerCount('alloc') > 0;
    const wantFree = this.listenerCount('free') > 0;
    if (!wantAlloc && !wantFree) return;
    for (const e of decodeEvents(data)) {
      if (e.kind === 'alloc') {
        if (wantAlloc && e.fn !== 'free') {
          this.emit('alloc', { function: e.fn, address: e.address, size: e.size, tid: e.tid, timestampNs: e.timestampNs });
        }
      } else if (wantFree) {
        const fn = e.fn === 'realloc' || e.fn === 'reallocarray' ? e.fn : 'free';
        this.emit('free', { function: fn, address: e.address, size: e.size, tid: e.tid, timestampNs: e.timestampNs });
      }
    }
  }

  #checkLost(counters: Counters): void {
    const events = counters.lostEvents - this.#lostReported.events;
    const allocations = counters.droppedAllocations - this.#lostReported.allocations;
    if (events <= 0 && allocations <= 0) return;
    this.#lostReported = { events: counters.lostEvents, allocations: counters.droppedAllocations };
    this.emit('lost', { events: Math.max(events, 0), allocations: Math.max(allocations, 0) });
  }

  /** Outstanding allocations now, with the running totals. */
  async snapshot(): Promise<Snapshot> {
    if (this.#closed) throw new TracerClosedError('snapshot(): the tracer has stopped; use the report from stop() or done');
    const raw = await this.#native.snapshot();
    const columns = snapshotColumns(raw.entries);
    return { allocations: outstandingAllocations(columns, raw.nowNs), summary: summarize(decodeCounters(raw.counters), columns) };
  }

  /** Stop tracing (the target keeps running) and report what is outstanding now. Idempotent:
   *  every call returns the same promise as `done`. */
  stop(): Promise<LeakReport> {
    void this.#finish(null, null);
    return this.done;
  }

  #fail(error: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
    this.#rejectDone(error);
    this.emit('error', error instanceof Error ? error : new Error(String(error)));
  }

  /** Symbolized stacks of the groups, innermost first, topped by the allocator function as
   *  valgrind shows it ("at malloc ... by main"). A failure to symbolize keeps raw addresses. */
  async #stacks(groups: readonly RawLeakGroup[]): Promise<StackFrame[][]> {
    if (!this.info.stacks || groups.length === 0) return groups.map(() => []);
    const ids = groups.map((g) => g.stackId);
    const raw = await this.#native.readStacks(ids);
    const modules = resolveModules(decodeModules(await this.#native.readModules()), {
      extraRoots: processAlive(this.pid) ? [`/proc/${this.pid}/root`] : [],
    });
    const addresses = raw.map((frames) => [...frames]);
    let frames: StackFrame[][];
    try {
      frames = await symbolizeStacks(addresses, modules, { perfMap: await readPerfMap(this.pid).catch(() => null) });
    } catch {
      frames = addresses.map((stack) => stack.map((a) => ({ address: hex(a) })));
    }
    const allocator = modules.find((m) => m.hostPath === this.info.allocator);
    return groups.map((g, i) => {
      const offset = this.info.functionOffsets[g.fn];
      const stack = frames[i] ?? [];
      if (offset === undefined || stack.length === 0) return stack;
      const top: StackFrame = {
        address: allocator ? hex(allocator.start - allocator.offset + BigInt(offset)) : hex(offset),
        module: this.info.allocator,
        offset: hex(offset),
        symbol: this.info.probes[g.fn] ?? g.fn,
      };
      return [top, ...stack];
    });
  }

  #finish(exitCode: number | null, signal: NodeJS.Signals | null): Promise<LeakReport> {
    this.#finishing ??= this.#buildFinalReport(exitCode, signal).then(
      (report) => {
        for (const group of report.leaks) this.emit('leak', group);
        this.emit('exit', report);
        this.#resolveDone(report);
        return report;
      },
      (error: unknown) => {
        this.#fail(error);
        throw error;
      },
    );
    return this.#finishing;
  }

  async #buildFinalReport(exitCode: number | null, signal: NodeJS.Signals | null): Promise<LeakReport> {
    try {
      const raw = await this.#native.snapshot();
      const columns = snapshotColumns(raw.entries);
      const counters = decodeCounters(raw.counters);
      this.#checkLost(counters);
      const groups = groupByStack(columns);
      const stacks = await this.#stacks(groups);
      const report: LeakReport = {
        version: 1,
        target: { ...this.#target, exitCode, signal },
        summary: summarize(counters, columns),
        leaks: groups.map((g, i) => toLeakGroup(g, stacks[i] ?? [])),
        durationMs: Math.round(performance.now() - this.#startedAt),
      };
      return report;
    } finally {
      this.#closed = true;
      this.#native.close();
    }
  }
}
