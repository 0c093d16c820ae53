// maxAllocations: N promises room for at least N blocks at once, and a quarter more fit before
// one is dropped, however blocks come and go. Blocks freed and allocated at random while the
// count stays level (churn) are the hard case for two-choice buckets: without the spill they
// dropped blocks from ~55% of the slots on. Each run equals valgrind's HEAP SUMMARY.
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { HeapSummary, LeakReport } from '../lib/types.js';
import { checkReport } from '../lib/report/checked.js';
import { fixturePath } from './helpers/fixtures.js';
import { kinds } from './helpers/attached-target.js';
import { formatHeapSummary, runValgrind, valgrindKinds } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const N = 100_000;

async function traced(args: string[]): Promise<HeapSummary> {
  return (await tracedReport(args)).summary;
}

async function tracedReport(args: string[]): Promise<LeakReport> {
  const tracer = await trace({
    command: fixturePath('many_outstanding'),
    args,
    env,
    stdio: 'ignore',
    stacks: false,
    maxAllocations: N,
  });
  const report = await tracer.done;
  expect(report.target.exitCode).toBe(0);
  return report;
}

describe('the table holds what maxAllocations promises', () => {
  for (const percent of [100, 125]) {
    const blocks = (N * percent) / 100;
    it(`${percent}% of N live, with twice as many random frees and allocations: nothing dropped, equal to valgrind`, async () => {
      const args = [String(blocks), String(2 * blocks)];
      const vg = (await runValgrind(fixturePath('many_outstanding'), args, { env })).summary;
      expect(vg.inUseBlocks).toBe(blocks);
      const s = await traced(args);
      const text = `valgrind: ${formatHeapSummary(vg)}\nebpf-leak: ${formatHeapSummary(s)}`;
      expect({ dropped: s.droppedAllocations, unknownFrees: s.unknownFrees }, text).toEqual({ dropped: 0, unknownFrees: 0 });
      expect(
        [s.inUseBlocks, s.inUseBytes, s.allocs, s.frees, s.bytesAllocated],
        text,
      ).toEqual([vg.inUseBlocks, vg.inUseBytes, vg.allocs, vg.frees, vg.bytesAllocated]);
    });
  }

  it('past the room, drops are counted and every block the table holds is reported', async () => {
    const blocks = 3 * N;
    const s = await traced([String(blocks)]);
    expect(s.droppedAllocations).toBeGreaterThan(0);
    expect(s.inUseBlocks + s.droppedAllocations).toBe(blocks);
    expect(s.inUseBlocks).toBeGreaterThanOrEqual(1.25 * N);
    expect([s.allocs, s.frees]).toEqual([blocks, 0]);
  });

  it('past the room, with frees of dropped blocks: allocs and frees equal valgrind, no heap error is claimed, and the run is inconclusive', async () => {
    // Every block was allocated while traced, so a free the table cannot place is a dropped
    // block's (or an invalid free: valgrind counts both among the frees). An earlier life of the
    // address among the recently freed proves nothing once blocks were dropped.
    const args = [String(3 * N), String(6 * N)];
    const vg = (await runValgrind(fixturePath('many_outstanding'), args, { env })).summary;
    const report = await tracedReport(args);
    const s = report.summary;
    const text = `valgrind: ${formatHeapSummary(vg)}\nebpf-leak: ${formatHeapSummary(s)}`;
    expect(s.droppedAllocations, text).toBeGreaterThan(0);
    expect([s.allocs, s.frees, s.bytesAllocated, s.unknownFrees], text).toEqual([vg.allocs, vg.frees, vg.bytesAllocated, 0]);
    expect(s.inUseBlocks + s.droppedAllocations, text).toBeGreaterThanOrEqual(vg.inUseBlocks);
    expect(s.errors).toEqual({ 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 });
    expect(report.errors).toEqual([]);
    expect(checkReport(report, []).inconclusive.some((r) => r.includes('not tracked because the address map was full'))).toBe(true);
  });
});

// Readers map and read only the groups of 64 buckets a block was ever put in. With the default
// room (a million blocks: 2,442 groups in 25 windows of 2 MiB), 1,500 blocks and 3,000 rounds of
// churn put blocks in most groups but not all: runs of groups that start and end inside windows
// and cross their edges, and gaps between them.
describe('the table is read only where blocks went', () => {
  // Both reads at the end: the scan at the exit stop (leak kinds) and the report (heap summary).
  it('a sparse table: every block reported, its heap and leak summaries equal to valgrind', async () => {
    const args = ['1500', '3000'];
    const log = await runValgrind(fixturePath('many_outstanding'), args, { env });
    const vg = log.summary;
    const tracer = await trace({ command: fixturePath('many_outstanding'), args, env, stdio: 'ignore', stacks: false });
    const report = await tracer.done;
    const s = report.summary;
    expect(kinds(report)).toEqual(valgrindKinds(log));
    const text = `valgrind: ${formatHeapSummary(vg)}\nebpf-leak: ${formatHeapSummary(s)}`;
    expect(vg.inUseBlocks).toBe(1500);
    expect([s.inUseBlocks, s.inUseBytes, s.allocs, s.frees, s.bytesAllocated], text).toEqual([
      vg.inUseBlocks,
      vg.inUseBytes,
      vg.allocs,
      vg.frees,
      vg.bytesAllocated,
    ]);
    expect(s.droppedAllocations).toBe(0);
  });
});
