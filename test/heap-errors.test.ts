// Heap errors and C++'s operators against valgrind: for each scenario of the heap_errors fixture,
// the errors ebpf-leak reports (kinds, counts, the functions on their stacks) are valgrind's, and
// so are the heap summary and the C++ leaks' stacks and sizes where the program runs to its end.
// glibc aborts the program on an invalid or double free (valgrind's malloc does not), after the
// probe saw the call: those runs are compared on their errors only.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { runExitStatus } from '../lib/cli/signals.js';
import { formatHeapError } from '../lib/report/text-format.js';
import { trace } from '../lib/index.js';
import type { HeapError, LeakReport } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { parseFrameText, runValgrind, type ValgrindFrame } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };

interface ValgrindError {
  title: string;
  stack: ValgrindFrame[];
  address: string;
  /** Stacks after the address line: the block's (and for a double free, the first free's). */
  more: ValgrindFrame[][];
}

/** The "Invalid free()" and "Mismatched free()" errors of a valgrind log, in order. */
function valgrindErrors(log: string): ValgrindError[] {
  const lines = log.split('\n').map((l) => l.replace(/^==\d+== ?/, ''));
  const out: ValgrindError[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!/^(Invalid free\(\)|Mismatched free\(\))/.test(lines[i]!)) continue;
    const e: ValgrindError = { title: lines[i]!, stack: [], address: '', more: [] };
    let current = e.stack;
    for (i++; i < lines.length && lines[i] !== ''; i++) {
      const frame = /^\s+(at|by) (0x[0-9A-Fa-f]+): (.*)$/.exec(lines[i]!);
      if (frame) current.push(parseFrameText(frame[1] as 'at' | 'by', frame[2]!, frame[3]!));
      else if (lines[i]!.startsWith(' Address ')) e.address = lines[i]!.trim();
      if (!frame) {
        current = [];
        e.more.push(current);
      }
    }
    e.more = e.more.filter((s) => s.length > 0);
    out.push(e);
  }
  return out;
}

/** valgrind's function names, innermost first, for the frames we compare (up to main). */
function names(frames: readonly ValgrindFrame[]): string[] {
  const upTo = frames.findIndex((f) => f.function === 'main');
  return frames.slice(0, upTo < 0 ? frames.length : upTo + 1).map((f) => f.function);
}

function ourNames(stack: HeapError['stack'], count: number): string[] {
  return stack.slice(0, count).map((f) => f.symbol ?? '???');
}

/** valgrind names its replacements by the C function; the frame above is the program's. */
function sameStack(ours: HeapError['stack'], theirs: readonly ValgrindFrame[]): void {
  const expected = names(theirs);
  expect(ourNames(ours, expected.length)).toEqual(expected);
}

async function both(scenario: string): Promise<{ report: LeakReport; vg: Awaited<ReturnType<typeof runValgrind>> }> {
  const vg = await runValgrind(fixturePath('heap_errors'), [scenario], { env, stdio: 'ignore' });
  const tracer = await trace({ command: fixturePath('heap_errors'), args: [scenario], env, stdio: 'ignore' });
  return { report: await tracer.done, vg };
}

describe('heap errors against valgrind', () => {
  it('reports each mismatched pair with the allocation and release stacks; the heap summary and C++ leaks are valgrind\'s', async () => {
    const { report, vg } = await both('mismatch');
    const theirs = valgrindErrors(vg.log);
    expect(theirs).toHaveLength(3);
    expect(theirs.every((e) => e.title.startsWith('Mismatched free()'))).toBe(true);
    const ours = report.errors ?? [];
    expect(ours.map((e) => e.kind)).toEqual(['mismatched-free', 'mismatched-free', 'mismatched-free']);
    expect(report.summary.errors).toEqual({ 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 3, notRecorded: 0 });
    ours.forEach((e, i) => {
      const t = theirs[i]!;
      // Release: free / operator delete by the overload the program called (here the sized
      // one, operator delete(void*, unsigned long)), then the program's frames.
      expect(ourNames(e.stack, 1)[0]).toBe(t.stack[0]!.function);
      expect(ourNames(e.stack.slice(1), names(t.stack).length - 1)).toEqual(names(t.stack).slice(1));
      // The block: valgrind's size, and its allocation stack from operator new[] / malloc down.
      const size = Number(/block of size ([\d,]+)/.exec(t.address)![1]!.replace(/,/g, ''));
      expect(e.block?.size).toBe(size);
      expect(e.block?.offset).toBe(0);
      sameStack(e.block!.allocationStack, t.more[0]!);
    });
    expect(ours.map((e) => [e.releasedBy, e.block?.allocatedBy])).toEqual([
      ['free', 'operator new[]'],
      ['operator delete', 'malloc'],
      ['operator delete', 'operator new[]'],
    ]);

    // Counted once though new calls malloc, with the size asked for (aligned new: 32, not 64).
    const heap = { ...report.summary };
    expect({
      inUseBytes: heap.inUseBytes,
      inUseBlocks: heap.inUseBlocks,
      allocs: heap.allocs,
      frees: heap.frees,
      bytesAllocated: heap.bytesAllocated,
    }).toEqual(vg.summary);
    // Every leak of the program's own (not libstdc++'s start-up pool) has valgrind's top frames.
    const records = vg.lossRecords.filter((r) => r.frames.some((f) => f.function === 'cxx_leaks()'));
    expect(records).toHaveLength(4);
    for (const r of records) {
      const group = report.leaks.find((g) => g.bytes === r.bytes && g.stack.some((f) => f.symbol === 'cxx_leaks()'));
      expect(group, `${r.bytes} bytes at ${r.frames[0]!.function}`).toBeDefined();
      expect(group!.stack.slice(0, 3).map((f) => f.symbol)).toEqual(r.frames.slice(0, 3).map((f) => f.function));
    }
    expect(records.map((r) => r.frames[0]!.function).sort()).toEqual([
      'operator new(unsigned long)',
      'operator new(unsigned long, std::align_val_t)',
      'operator new[](unsigned long)',
      'operator new[](unsigned long, std::nothrow_t const&)',
    ]);
    expect(records.find((r) => r.frames[0]!.function.includes('align_val_t'))!.bytes).toBe(32);
  });

  it.each([
    ['stack', 'invalid-free'],
    ['interior', 'invalid-free'],
    ['double', 'double-free'],
    ['realloc', 'double-free'],
    ['delete_twice', 'double-free'],
  ] as const)('%s: one %s, with the release stack valgrind shows', async (scenario, kind) => {
    const { report, vg } = await both(scenario);
    const theirs = valgrindErrors(vg.log);
    expect(theirs).toHaveLength(1);
    expect(theirs[0]!.title).toMatch(/^Invalid free\(\)/);
    const ours = report.errors ?? [];
    expect(ours.map((e) => e.kind)).toEqual([kind]);
    const e = ours[0]!;
    sameStack(e.stack, theirs[0]!.stack);
    expect(report.summary.errors![kind]).toBe(1);
    if (scenario === 'stack') {
      expect(theirs[0]!.address).toMatch(/on thread 1's stack/);
      expect(e.block).toBeUndefined();
    }
    if (scenario === 'interior') {
      expect(theirs[0]!.address).toMatch(/is 16 bytes inside a block of size 100 alloc'd/);
      expect(e.block).toMatchObject({ size: 100, offset: 16, allocatedBy: 'malloc' });
      sameStack(e.block!.allocationStack, theirs[0]!.more[0]!);
    }
    if (kind === 'double-free') {
      // valgrind: "is 0 bytes inside a block of size N free'd", the first free's stack, then
      // "Block was alloc'd at" and the allocation's.
      const size = Number(/block of size ([\d,]+) free'd/.exec(theirs[0]!.address)![1]!.replace(/,/g, ''));
      expect(e.block).toMatchObject({ size, offset: 0, allocatedBy: scenario === 'delete_twice' ? 'operator new' : 'malloc' });
      sameStack(e.firstFree!.stack, theirs[0]!.more[0]!);
      expect(e.firstFree!.stackKept).toBeUndefined();
      sameStack(e.block!.allocationStack, theirs[0]!.more[1]!);
    }
    if (scenario === 'delete_twice') {
      // Both releases went through the sized overload: valgrind names it, and so do we.
      expect(theirs[0]!.stack[0]!.function).toBe('operator delete(void*, unsigned long)');
      expect(theirs[0]!.more[0]![0]!.function).toBe('operator delete(void*, unsigned long)');
      expect(e.stack[0]).toMatchObject({ symbol: 'operator delete(void*, unsigned long)', mangled: '_ZdlPvm' });
      expect(e.firstFree!.stack[0]).toMatchObject({ symbol: 'operator delete(void*, unsigned long)', mangled: '_ZdlPvm' });
    }
    // glibc aborts (SIGABRT, also named SIGIOT) or, reading a header that is not there, faults.
    expect(['SIGABRT', 'SIGIOT', 'SIGSEGV']).toContain(report.target.signal);
    expect(runExitStatus(report, 7)).toBe(7);
    // valgrind counts the bad call among the frees; the frees before it agree too.
    if (scenario !== 'realloc') expect(report.summary.frees).toBe(vg.summary.frees);
  });
});

describe('what is not a heap error', () => {
  it('the blocks glibc returns at thread exit, over many threads and runs', async () => {
    for (let run = 0; run < 3; run++) {
      const tracer = await trace({ command: fixturePath('threads'), env, stdio: 'ignore' });
      const report = await tracer.done;
      expect(report.errors).toEqual([]);
      expect(report.summary.errors).toEqual({ 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 });
      // glibc's tcache frees from inside libc: still counted, as frees of blocks never seen.
      expect(report.summary.unknownFrees).toBeGreaterThan(0);
    }
  }, 600_000);

  it('frees of blocks allocated before an attach', async () => {
    const work = mkdtempSync(join(tmpdir(), 'ebpf-leak-heap-errors-'));
    writeFileSync(
      join(work, 'late_free.c'),
      '#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n' +
        'int main(void) {\n  void *p[100];\n  for (int i = 0; i < 100; i++) p[i] = malloc(40);\n' +
        '  printf("ready\\n"); fflush(stdout);\n  char c; if (read(0, &c, 1) != 1) return 1;\n' +
        '  for (int i = 0; i < 100; i++) free(p[i]);\n  printf("done\\n"); fflush(stdout);\n' +
        '  read(0, &c, 1);\n  return 0;\n}\n',
    );
    execFileSync('gcc', ['-O0', '-g', '-o', join(work, 'late_free'), join(work, 'late_free.c')]);
    const child = spawn(join(work, 'late_free'), [], { stdio: ['pipe', 'pipe', 'ignore'] });
    const lines = createInterface({ input: child.stdout! });
    const next = () => new Promise<string>((resolve) => lines.once('line', resolve));
    try {
      expect(await next()).toBe('ready');
      const tracer = await trace({ pid: child.pid! });
      const done = next();
      child.stdin!.write('x');
      expect(await done).toBe('done');
      const report = await tracer.stop();
      expect(report.summary.unknownFrees).toBe(100);
      expect(report.errors).toEqual([]);
      expect(report.summary.errors?.['invalid-free']).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a correct C++ program: no errors, exit status its own', async () => {
    const tracer = await trace({ command: fixturePath('cpp_containers'), env, stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.errors).toEqual([]);
    expect(runExitStatus({ ...report, leaks: [] }, 7)).toBe(0);
  });
});

describe("keepStacktraces: 'alloc' (valgrind's --keep-stacktraces=alloc)", () => {
  it.each(['double', 'delete_twice'] as const)(
    '%s: the double free valgrind reports, its first release named but not walked, and no release walked but the error',
    async (scenario) => {
      const vg = await runValgrind(fixturePath('heap_errors'), [scenario], {
        env,
        stdio: 'ignore',
        valgrindOptions: ['--keep-stacktraces=alloc'],
      });
      const tracer = await trace({
        command: fixturePath('heap_errors'),
        args: [scenario],
        env,
        stdio: 'ignore',
        keepStacktraces: 'alloc',
      });
      const report = await tracer.done;
      const stats = tracer.unwindStats();
      const theirs = valgrindErrors(vg.log);
      expect(theirs).toHaveLength(1);
      // valgrind kept no stack of the first free either: "at 0x0: ???".
      expect(theirs[0]!.more[0]!.map((f) => f.function)).toEqual(['???']);
      const ours = report.errors ?? [];
      expect(ours.map((e) => e.kind)).toEqual(['double-free']);
      const e = ours[0]!;
      sameStack(e.stack, theirs[0]!.stack);
      sameStack(e.block!.allocationStack, theirs[0]!.more[1]!);
      expect(e.firstFree!.releasedBy).toBe(scenario === 'double' ? 'free' : 'operator delete');
      // No stack, and the report says why.
      expect(e.firstFree).toMatchObject({ stack: [], stackKept: false });
      expect(formatHeapError(e)).toContain('   (stack not kept: --keep-stacktraces=alloc)');
      // One walk per allocation, and the error's own: none for the releases.
      expect(report.summary.frees).toBeGreaterThan(1);
      expect(stats?.walks).toBe(report.summary.allocs + 1);
      expect(report.counters.stackFailures).toBe(0);
      expect(runExitStatus(report, 7)).toBe(7);
    },
  );

  it('a mismatched free still has its release stack, walked because it is an error', async () => {
    const vg = await runValgrind(fixturePath('heap_errors'), ['mismatch'], {
      env,
      stdio: 'ignore',
      valgrindOptions: ['--keep-stacktraces=alloc'],
    });
    const tracer = await trace({ command: fixturePath('heap_errors'), args: ['mismatch'], env, stdio: 'ignore', keepStacktraces: 'alloc' });
    const report = await tracer.done;
    const theirs = valgrindErrors(vg.log);
    const ours = report.errors ?? [];
    expect(theirs).toHaveLength(3);
    expect(ours.map((e) => e.kind)).toEqual(['mismatched-free', 'mismatched-free', 'mismatched-free']);
    ours.forEach((e, i) => {
      expect(ourNames(e.stack, 1)[0]).toBe(theirs[i]!.stack[0]!.function);
      expect(ourNames(e.stack.slice(1), names(theirs[i]!.stack).length - 1)).toEqual(names(theirs[i]!.stack).slice(1));
      sameStack(e.block!.allocationStack, theirs[i]!.more[0]!);
    });
    expect(report.counters.stackFailures).toBe(0);
  });

  it('is validated: another value is an EbpfLeakError naming the two it takes', async () => {
    await expect(
      trace({ command: fixturePath('heap_errors'), args: ['double'], keepStacktraces: 'free' as never }),
    ).rejects.toMatchObject({ code: 'ELEAK_OPTION', message: expect.stringMatching(/'alloc-and-free' or 'alloc'/) });
  });
});
