// 64 threads that realloc (grow, shrink, move, mremap, realloc(NULL, n), reallocarray,
// realloc(p, 0)), use the aligned allocators and free each other's blocks on one arena, for about
// 10 s under the tracer on the 2-vCPU test machine: the counts equal valgrind's exactly. valgrind
// needs minutes for a run that long, so it runs the same program at 64, 128 and 192 rounds per
// thread: the counts are linear in the rounds (the fixture repeats its sizes every 64 rounds),
// the third run checks that, and the line through them gives valgrind's counts for the long run.
import { describe, expect, it } from 'vitest';

import { trace } from '../../lib/index.js';
import type { HeapSummary } from '../../lib/types.js';
import { fixturePath } from '../helpers/fixtures.js';
import { formatHeapSummary, runValgrind, type ValgrindHeapSummary } from '../helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const fields = ['inUseBytes', 'inUseBlocks', 'allocs', 'frees', 'bytesAllocated'] as const;
const ROUNDS = 768;
const RUNS = 2;

async function valgrindAt(rounds: number): Promise<ValgrindHeapSummary> {
  return (await runValgrind(fixturePath('realloc_stress'), [String(rounds), '64'], { env })).summary;
}

/** valgrind's counts at `rounds`, on the line through a (at 64 rounds) and b (at 128). */
function predicted(a: ValgrindHeapSummary, b: ValgrindHeapSummary, rounds: number): ValgrindHeapSummary {
  const k = (rounds - 64) / 64;
  return Object.fromEntries(fields.map((f) => [f, a[f] + k * (b[f] - a[f])])) as unknown as ValgrindHeapSummary;
}

describe('64 threads for about 10 s', () => {
  it(`realloc_stress ${ROUNDS} rounds x 64 threads, ${RUNS} runs: equal to valgrind`, async () => {
    const [a, b, c] = [await valgrindAt(64), await valgrindAt(128), await valgrindAt(192)];
    expect(c, 'the counts are linear in the rounds').toEqual(predicted(a, b, 192));
    const expected = predicted(a, b, ROUNDS);
    for (let run = 0; run < RUNS; run++) {
      const started = performance.now();
      const tracer = await trace({
        command: fixturePath('realloc_stress'),
        args: [String(ROUNDS), '64'],
        env,
        stdio: 'ignore',
      });
      const report = await tracer.done;
      const seconds = (performance.now() - started) / 1000;
      const s: HeapSummary = report.summary;
      const text = `run ${run} (${seconds.toFixed(1)} s)\nvalgrind:  ${formatHeapSummary(expected)}\nebpf-leak: ${formatHeapSummary(s)}`;
      console.log(text);
      expect(report.target.exitCode).toBe(0);
      expect([s.droppedAllocations, s.lostEvents, s.unknownFrees, report.target.exitCode], text).toEqual([0, 0, 0, 0]);
      expect(Object.fromEntries(fields.map((f) => [f, s[f]])), text).toEqual(expected);
    }
  });
});
