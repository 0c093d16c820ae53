// Tracers that share the machine: two on one process (both see every call, neither disturbs the
// other), and two on two processes at once (each sees its own process only).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';

import { trace } from '../../lib/index.js';
import type { HeapSummary } from '../../lib/types.js';
import { fixturePath } from '../helpers/fixtures.js';
import { formatHeapSummary, runValgrind } from '../helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const fields = ['inUseBytes', 'inUseBlocks', 'allocs', 'frees', 'bytesAllocated'] as const;
const pick = (s: Pick<HeapSummary, (typeof fields)[number]>) => Object.fromEntries(fields.map((f) => [f, s[f]]));

describe('several tracers', () => {
  it('two on one process: each sees exactly what the process did while traced (3 rounds)', async () => {
    for (let round = 0; round < 3; round++) {
      const child = spawn(fixturePath('gate'), [], { stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      const seen = (text: string) =>
        new Promise<void>((resolve) => {
          const check = () => {
            if (out.includes(`${text}\n`)) resolve();
            else child.stdout!.once('data', check);
          };
          check();
        });
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
      await seen('ready');
      const a = await trace({ pid: child.pid! });
      const b = await trace({ pid: child.pid!, stacks: round !== 1 });
      child.stdin!.write('go\n');
      await seen('done');
      // Either may stop first; the other keeps its own table.
      const [first, second] = round === 2 ? [b, a] : [a, b];
      const r1 = await first.stop();
      const r2 = await second.stop();
      for (const r of [r1, r2]) {
        // test/fixtures/gate.c: 1,000 mallocs, 990 frees, and a realloc of a block from before.
        expect(pick(r.summary), `round ${round}`).toEqual({
          inUseBytes: 6000,
          inUseBlocks: 11,
          allocs: 1001,
          frees: 990,
          bytesAllocated: 105_000,
        });
        expect([r.summary.unknownFrees, r.summary.droppedAllocations]).toEqual([1, 0]);
      }
      child.stdin!.end();
      const [code, signal] = await once(child, 'exit');
      expect({ code, signal }).toEqual({ code: 0, signal: null });
    }
  });

  it('two on two processes at once: each equal to valgrind for its own (3 rounds)', async () => {
    const programs = [
      { command: fixturePath('realloc_race'), args: [] as string[] },
      { command: fixturePath('realloc_stress'), args: ['256', '16'] },
    ];
    const oracle = await Promise.all(programs.map((p) => runValgrind(p.command, p.args, { env })));
    for (let round = 0; round < 3; round++) {
      const tracers = await Promise.all(programs.map((p) => trace({ ...p, env, stdio: 'ignore' })));
      const reports = await Promise.all(tracers.map((t) => t.done));
      reports.forEach((r, i) => {
        const vg = oracle[i]!.summary;
        const text = `${programs[i]!.command}\nvalgrind:  ${formatHeapSummary(vg)}\nebpf-leak: ${formatHeapSummary(r.summary)}`;
        expect(r.target.exitCode, text).toBe(0);
        expect(pick(r.summary), text).toEqual(pick(vg));
        expect([r.summary.droppedAllocations, r.summary.lostEvents], text).toEqual([0, 0]);
      });
    }
  });
});
