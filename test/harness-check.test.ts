// checkLeaks / assertNoLeaks on spawned programs: the verdict, the readable message, thresholds,
// and inconclusive results failing instead of passing.
import { describe, expect, it } from 'vitest';
import {
  assertNoLeaks,
  checkLeaks,
  checkReport,
  formatCheckedReport,
  LeakError,
  LeakInconclusiveError,
  tracingSupport,
} from '../lib/harness/index.js';
import type { LeakReport } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';

describe('assertNoLeaks', () => {
  it('throws a LeakError whose message is the readable report', async () => {
    const error = await assertNoLeaks(fixturePath('seed'), { stdio: 'ignore' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeakError);
    const e = error as LeakError;
    expect(e.code).toBe('ELEAK_LEAKED');
    expect(e.message).toMatch(/^ebpf-leak: .*\/seed leaked 8 bytes in 1 blocks\n/);
    expect(e.message).toMatch(/8 bytes in 1 blocks are definitely lost in loss record 1 of 1\n {3}at 0x[0-9a-f]+: malloc /);
    // stdout's buffer is still reachable (from `stdout`): no leak, and its rule still accounts for it.
    expect(e.message).toContain('   still reachable: 4,096 bytes in 1 blocks\n');
    expect(e.message).toMatch(/by 0x[0-9a-f]+: main \(.*seed\.c:22\)/);
    expect(e.message).toContain('suppressed: 4,096 bytes in 1 blocks');
    expect(e.message).toContain('4,096 bytes in 1 blocks by glibc-stdio-buffer (default suppressions)');
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
