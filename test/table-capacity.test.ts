// maxAllocations: N promises room for at least N blocks at once, and a quarter more fit before
// one is dropped, however blocks come and go. Blocks freed and allocated at random while the
// count stays level (churn) are the hard case for two-choice buckets: without the spill they
// dropped blocks from ~55% of the slots on. Each run equals valgrind's HEAP SUMMARY.
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { HeapSummary } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { formatHeapSummary, runValgrind } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const N = 100_000;

async function traced(args: string[]): Promise<HeapSummary> {
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
  return report.summary;
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
});
