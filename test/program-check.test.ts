// checkLeaks / assertNoLeaks on spawned programs: the verdict, the readable message, thresholds,
// and inconclusive results failing instead of passing.
import { describe, expect, it } from 'vitest';
import {
  assertNoLeaks,
  checkLeaks,
  checkReport,
  formatCheckedReport,
  HeapErrorsError,
  LeakError,
  LeakInconclusiveError,
  tracingSupport,
} from '../lib/harness/index.js';
import type { LeakReport } from '../lib/types.js';
import type { CheckedLeakReport } from '../lib/report/checked.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind } from './helpers/valgrind.js';
import * as nodeTest from '../lib/harness/node-test.js';
import * as vitestMatchers from '../lib/harness/vitest.js';

// As valgrind runs it (test/helpers/valgrind.ts): its oracle counts are for this environment.
const heapErrorEnv: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };

describe('assertNoLeaks', () => {
  it('throws a LeakError whose message is the readable report', async () => {
    const error = await assertNoLeaks(fixturePath('seed'), { stdio: 'ignore' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeakError);
    const e = error as LeakError;
    expect(e.code).toBe('ELEAK_LEAKED');
    expect(e.message).toMatch(/^ebpf-leak: .*\/seed leaked 8 bytes in 1 blocks\n/);
    expect(e.message).toMatch(/8 bytes in 1 blocks are definitely lost in loss record 1 of 1\n {3}at 0x[0-9a-f]+: malloc /);
    // stdout's buffer is still reachable (from `stdout`): no leak, and no rule is needed for it.
    expect(e.message).toContain('   still reachable: 4,096 bytes in 1 blocks\n');
    expect(e.message).toMatch(/by 0x[0-9a-f]+: main \(.*seed\.c:22\)/);
    expect(e.message).not.toContain('suppressed:');
    expect(e.report).toMatchObject({ leakedBytes: 8, leakedBlocks: 1, inconclusive: [] });
  });

  it('passes under the threshold, and on a program that frees everything it should', async () => {
    const report = await assertNoLeaks(fixturePath('seed'), { stdio: 'ignore', maxBytes: 8 });
    expect(report.leakedBytes).toBe(8);
    // A real program whose only outstanding blocks are glibc's one-time ones.
    const clean = await assertNoLeaks('true', { stdio: 'ignore' });
    expect(clean.leaks).toEqual([]);
    expect(clean.target.exitCode).toBe(0);
  });

  it('fails with LeakInconclusiveError when the address map filled, unless allowed', async () => {
    // Without the scan: every block kept counts (the program keeps them all reachable).
    const options = { stdio: 'ignore' as const, maxAllocations: 1000, leakKinds: false };
    const error = await assertNoLeaks(fixturePath('many_outstanding'), options).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeakInconclusiveError);
    const e = error as LeakInconclusiveError;
    expect(e.code).toBe('ELEAK_INCONCLUSIVE');
    expect(e.reasons).toHaveLength(1);
    expect(e.reasons[0]).toMatch(/^19[89],\d{3} allocations were not tracked because the address map was full; raise maxAllocations$/);
    expect(e.message).toContain('allowInconclusive: true');
    // Opting out: the verdict on what was seen.
    await expect(assertNoLeaks(fixturePath('many_outstanding'), { ...options, allowInconclusive: true })).rejects.toBeInstanceOf(LeakError);
  });
});

describe('assertNoLeaks on heap errors', () => {
  it('fails on mismatched frees as valgrind counts them, with each error and its stacks in the message', async () => {
    const vg = await runValgrind(fixturePath('heap_errors'), ['mismatch'], { env: heapErrorEnv, stdio: 'ignore' });
    expect(vg.errorSummary?.errors).toBe(3);
    const error = await assertNoLeaks(fixturePath('heap_errors'), { args: ['mismatch'], env: heapErrorEnv, stdio: 'ignore' }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(HeapErrorsError);
    const e = error as HeapErrorsError<CheckedLeakReport>;
    expect(e.code).toBe('ELEAK_HEAP_ERRORS');
    expect(e.message).toMatch(/^ebpf-leak: .*\/heap_errors mismatch made 3 heap errors \(3 mismatched frees\)\n/);
    expect(e.message.match(/^Mismatched free\(\) \/ delete \/ delete \[\]$/gm)).toHaveLength(vg.errorSummary!.errors);
    // Each error: the releasing stack, then the block's allocation stack, both through mismatches().
    expect(e.message.match(/by 0x[0-9a-f]+: mismatches\(\)/g)!.length).toBeGreaterThanOrEqual(6);
    expect(e.message).toContain("bytes inside a block of size");
    expect(e.message).toContain('allowHeapErrors: true');
    expect(e.report.summary.errors).toMatchObject({ 'mismatched-free': vg.errorSummary!.errors, 'invalid-free': 0, 'double-free': 0 });
    // Allowed, the verdict is on the leaks alone: cxx_leaks() leaks.
    const leak = await assertNoLeaks(fixturePath('heap_errors'), { args: ['mismatch'], env: heapErrorEnv, stdio: 'ignore', allowHeapErrors: true }).catch(
      (x: unknown) => x,
    );
    expect(leak).toBeInstanceOf(LeakError);
  });

  it('fails on a double free, with the stacks of both frees and of the allocation; allowed, a program that leaks nothing passes', async () => {
    const vg = await runValgrind(fixturePath('heap_errors'), ['double'], { env: heapErrorEnv, stdio: 'ignore' });
    expect(vg.errorSummary?.errors).toBe(1);
    const options = { args: ['double'], env: heapErrorEnv, stdio: 'ignore' as const, maxBytes: 16 };
    const error = await assertNoLeaks(fixturePath('heap_errors'), options).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HeapErrorsError);
    const e = error as HeapErrorsError<CheckedLeakReport>;
    expect(e.message).toMatch(/made 1 heap error \(1 double free\)\n/);
    const [, afterTitle] = e.message.split(/^Invalid free\(\) \/ delete \/ delete\[\] \/ realloc\(\)\n/m);
    expect(afterTitle).toBeDefined();
    // the second free, the first free, the allocation: each through free_twice() and main.
    const [second, first, alloc] = afterTitle!.split(/^ (?:Address .*|Block was alloc'd at)$/m);
    for (const stack of [second, first, alloc]) {
      expect(stack).toMatch(/by 0x[0-9a-f]+: free_twice\(\)/);
      expect(stack).toMatch(/by 0x[0-9a-f]+: main /);
    }
    expect(alloc).toMatch(/at 0x[0-9a-f]+: malloc /);
    expect(e.report.summary.errors?.['double-free']).toBe(vg.errorSummary!.errors);
    // glibc aborts on the second free; the 16-byte block kept alive is all that is left.
    const allowed = await assertNoLeaks(fixturePath('heap_errors'), { ...options, allowHeapErrors: true });
    expect(allowed.errors).toHaveLength(1);
    expect(allowed.leakedBytes).toBeLessThanOrEqual(16);
  });

  it('fails on an invalid free of a stack address; checkLeaks returns the error in the report', async () => {
    const report = await checkLeaks(fixturePath('heap_errors'), { args: ['stack'], env: heapErrorEnv, stdio: 'ignore' });
    expect(report.errors?.map((x) => x.kind)).toEqual(['invalid-free']);
    expect(report.errors![0]!.stack.map((f) => f.symbol)).toContain('free_stack_address()');
    const error = await assertNoLeaks(fixturePath('heap_errors'), { args: ['stack'], env: heapErrorEnv, stdio: 'ignore' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HeapErrorsError);
    expect((error as Error).message).toMatch(/made 1 heap error \(1 invalid free\)\n/);
    expect((error as Error).message).toMatch(/^Invalid free\(\) \/ delete \/ delete\[\] \/ realloc\(\)\n(?: {3}at| {3}by) /m);
    expect((error as Error).message).toMatch(/by 0x[0-9a-f]+: free_stack_address\(\)/);
    expect((error as Error).message).toContain('is not the start of a block the program was handed');
  });

  it('a program without heap errors never gets one, and the harness entry points export the error', async () => {
    const report = await assertNoLeaks('true', { stdio: 'ignore' });
    expect(report.summary.errors).toMatchObject({ 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 });
    expect(nodeTest.HeapErrorsError).toBe(HeapErrorsError);
    expect(vitestMatchers.HeapErrorsError).toBe(HeapErrorsError);
    expect(nodeTest.assertNoLeaks).toBe(assertNoLeaks);
  });
});

describe('checkLeaks', () => {
  it('reports without throwing, leaks after suppressions, summary of the whole program', async () => {
    const report = await checkLeaks(fixturePath('dlopen_main'), { args: [fixturePath('dlopen_plugin')], stdio: 'ignore' });
    expect(report.summary.inUseBytes).toBe(2496);
    expect(report.leakedBytes).toBe(192);
    expect(report.leaks[0]!.stack.map((f) => f.symbol)).toContain('plugin_work');
    const text = formatCheckedReport(report);
    expect(text).toContain('192 bytes in 3 blocks are definitely lost in loss record 1 of 1');
    expect(text).toContain('   definitely lost: 192 bytes in 3 blocks\n');
    expect(text).toMatch(/suppressed: 2,304 bytes in 1 blocks\n {3}2,304 bytes in 1 blocks by ld\.so-dl-find-object \(default suppressions\)/);
  });

  it('calls a report with stackless leaks inconclusive (only when stacks were on)', () => {
    const report: LeakReport = {
      version: 1,
      target: { pid: 1, command: 'x', args: [], exitCode: 0, signal: null, allocator: '/libc.so.6' },
      summary: { allocs: 3, frees: 0, bytesAllocated: 30, inUseBlocks: 3, inUseBytes: 30, lostEvents: 0, droppedAllocations: 0, unknownFrees: 0 },
      leaks: [{ bytes: 30, blocks: 3, stack: [], largestBlock: 10, sampleAddresses: [] }],
      durationMs: 1,
    };
    expect(checkReport(report, []).inconclusive).toEqual([
      '30 bytes in 3 blocks have no stack, so they cannot be placed or suppressed',
    ]);
    expect(checkReport(report, [], { stacks: false }).inconclusive).toEqual([]);
  });

  it('this machine can trace (the suites here rely on it)', () => {
    expect(tracingSupport()).toEqual({ supported: true });
  });
});
