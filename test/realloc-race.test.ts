// realloc frees its block inside the call; from then on the allocator may hand that address to
// another thread, before realloc returns. Every interleaving must leave the counts exact: each
// program below runs many times and every run must equal valgrind's HEAP SUMMARY.
//
//   realloc_race        two threads on one arena: 40,000,544 B in 20,002 blocks;
//                       60,002 allocs, 40,000 frees, 1,080,000,544 B
//   realloc_stress 256  64 threads: 20,818,048 B in 384 blocks, and no free of an unknown block
//   realloc_fail        failed reallocs: the block stays, 3,000 B in 1 block
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { HeapSummary, TraceOptions } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { formatHeapSummary, runValgrind, type ValgrindHeapSummary } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const RUNS = 20;

const heapFields = ['inUseBytes', 'inUseBlocks', 'allocs', 'frees', 'bytesAllocated'] as const;

async function traced(command: string, args: string[], options: Partial<TraceOptions> = {}): Promise<HeapSummary> {
  const tracer = await trace({ command, args, env, stdio: 'ignore', stacks: false, ...options } as TraceOptions);
  const report = await tracer.done;
  expect(report.target.exitCode).toBe(0);
  return report.summary;
}

/** The runs that differ from valgrind, each as its numbers. */
async function mismatches(
  command: string,
  args: string[],
  vg: ValgrindHeapSummary,
  unknownFrees?: number,
): Promise<string[]> {
  const bad: string[] = [];
  for (let run = 0; run < RUNS; run++) {
    const s = await traced(command, args);
    const differs =
      heapFields.some((f) => s[f] !== vg[f]) ||
      s.droppedAllocations !== 0 ||
      s.lostEvents !== 0 ||
      (unknownFrees !== undefined && s.unknownFrees !== unknownFrees);
    if (differs) bad.push(`run ${run}: ${formatHeapSummary(s)}; dropped ${s.droppedAllocations}, unknown frees ${s.unknownFrees}`);
  }
  return bad;
}

describe('realloc racing other threads', () => {
  it(`two threads, one arena: ${RUNS} runs equal valgrind`, async () => {
    const command = fixturePath('realloc_race');
    const vg = (await runValgrind(command, [], { env })).summary;
    expect(vg.inUseBlocks).toBe(20_002);
    expect(await mismatches(command, [], vg), `valgrind: ${formatHeapSummary(vg)}`).toEqual([]);
  });

  it(`64 threads realloc, move, mremap and free each other's blocks: ${RUNS} runs equal valgrind`, async () => {
    const command = fixturePath('realloc_stress');
    const vg = (await runValgrind(command, ['256'], { env })).summary;
    expect(vg.inUseBlocks).toBe(384);
    expect(await mismatches(command, ['256'], vg, 0), `valgrind: ${formatHeapSummary(vg)}`).toEqual([]);
    // Sampling mode records few blocks, and a realloc's old block is then mostly unknown: its
    // free still counts.
    const sampled = await traced(command, ['256'], { sampleEveryBytes: 65536 });
    expect([sampled.allocs, sampled.frees, sampled.bytesAllocated, sampled.unknownFrees]).toEqual([
      vg.allocs,
      vg.frees,
      vg.bytesAllocated,
      0,
    ]);
  });

  it('a realloc that fails leaves its block tracked as it was', async () => {
    const tracer = await trace({ command: fixturePath('realloc_fail'), env, stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.target.exitCode).toBe(0);
    const { allocs, frees, inUseBlocks, inUseBytes, unknownFrees, droppedAllocations } = report.summary;
    expect({ allocs, frees, inUseBlocks, inUseBytes, unknownFrees, droppedAllocations }).toEqual({
      allocs: 1,
      frees: 0,
      inUseBlocks: 1,
      inUseBytes: 3000,
      unknownFrees: 0,
      droppedAllocations: 0,
    });
    // Still with the stack of its malloc.
    const [group] = report.leaks.filter((g) => g.bytes === 3000);
    expect(group?.stack.some((f) => f.symbol === 'main')).toBe(true);
  });
});
