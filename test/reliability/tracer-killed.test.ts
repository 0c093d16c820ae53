// SIGKILL to a tracer mid-trace (its process runs trace() on a busy target: 4 threads of
// realloc, free and the aligned allocators) leaves the target running unharmed to its normal
// exit, and leaves nothing in the kernel: every BPF program, map and link the tracer held is gone
// (bpftool), and the target holds none.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';

import { fixturePath, repoRoot } from '../helpers/fixtures.js';
import { bpfObjectExists, bpfObjectsOf, bpftoolVersion } from './bpf-objects.js';

const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
const ROUNDS = 4;

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return once(child, 'exit').then(([code, signal]) => ({ code, signal }) as { code: number | null; signal: NodeJS.Signals | null });
}

async function line(child: ChildProcess, text: string): Promise<void> {
  let seen = '';
  let errors = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (errors += d));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      seen += d;
      if (seen.includes(`${text}\n`)) resolve();
    });
    child.once('exit', (code, signal) => reject(new Error(`exited (${code ?? signal}) before "${text}": ${errors}`)));
  });
}

describe('the tracer killed mid-trace', () => {
  it(`leaves the target unharmed and no BPF objects behind (${ROUNDS} rounds)`, async () => {
    expect(bpftoolVersion()).toMatch(/^bpftool v/);
    for (let round = 0; round < ROUNDS; round++) {
      const target = spawn(fixturePath('realloc_stress'), ['0', '4'], { stdio: ['pipe', 'ignore', 'inherit'] });
      const tracer = spawn(viteNode, [join(repoRoot, 'test', 'reliability', 'tracer-child.ts'), String(target.pid)], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      await line(tracer, 'attached');
      const held = bpfObjectsOf(tracer.pid!);
      expect(new Set(held.map((o) => o.kind))).toEqual(new Set(['prog', 'map', 'link']));
      await sleep(100 + 300 * round); // snapshots and probe hits in flight
      expect(target.exitCode).toBeNull();
      tracer.kill('SIGKILL');
      expect((await exited(tracer)).signal).toBe('SIGKILL');

      // The target runs on, with no BPF fd of ours, and ends as it would have.
      await sleep(200);
      expect(target.exitCode, 'the target died with its tracer').toBeNull();
      expect(bpfObjectsOf(target.pid!)).toEqual([]);
      target.stdin!.end();
      expect(await exited(target)).toEqual({ code: 0, signal: null });

      // The kernel frees programs and maps after an RCU grace period once the last fd closes.
      let left = held;
      for (let i = 0; i < 100 && left.length > 0; i++) {
        await sleep(100);
        left = left.filter(bpfObjectExists);
      }
      expect(left, `round ${round}: still in the kernel`).toEqual([]);
    }
  });
});
