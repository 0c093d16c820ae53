// stop() racing what else can happen: a second stop(), the target's own exit at the same moment,
// and the CLI's Ctrl-C while it is still attaching. Each outcome is a whole report (or, for the
// CLI, a clean exit), the target is unharmed, and no BPF object is left behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';

import { trace } from '../../lib/index.js';
import { fixturePath, repoRoot } from '../helpers/fixtures.js';
import { bpfObjectExists, bpfObjectsOf, type BpfObject } from './bpf-objects.js';

const ROUNDS = 10;

/** The gate fixture, waiting at "ready". */
async function gate(): Promise<{ child: ChildProcess; next: (text: string) => Promise<void> }> {
  const child = spawn(fixturePath('gate'), [], { stdio: ['pipe', 'pipe', 'inherit'] });
  let seen = '';
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    seen += d;
    for (const w of waiters.splice(0)) w();
  });
  const next = (text: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => (seen.includes(`${text}\n`) ? resolve() : waiters.push(check));
      child.once('exit', (code, signal) => reject(new Error(`gate exited (${code ?? signal}) before "${text}"`)));
      check();
    });
  await next('ready');
  return { child, next };
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return once(child, 'exit').then(([code, signal]) => ({ code, signal }) as { code: number | null; signal: NodeJS.Signals | null });
}

const key = (o: BpfObject) => `${o.kind}:${o.id}`;
/** BPF objects this process holds that it did not hold in `before`. */
function ownNew(before: BpfObject[]): string[] {
  const old = new Set(before.map(key));
  return bpfObjectsOf(process.pid).map(key).filter((k) => !old.has(k));
}

// What gate does once released (test/fixtures/gate.c), the realloc of a block allocated before
// the tracer attached included.
const gateWork = { allocs: 1001, frees: 990, inUseBlocks: 11, inUseBytes: 6000, unknownFrees: 1, droppedAllocations: 0 };

describe('stop() races', () => {
  it(`stop() twice, and stop() as the target exits: one whole report each (${ROUNDS} rounds)`, async () => {
    const before = bpfObjectsOf(process.pid);
    for (let round = 0; round < ROUNDS; round++) {
      const { child, next } = await gate();
      const tracer = await trace({ pid: child.pid!, stacks: round % 2 === 0 });
      child.stdin!.write('go\n');
      await next('done');
      // The target's exit and two stop()s in one tick; odd rounds let the exit go first.
      child.stdin!.end();
      if (round % 2 === 1) await exited(child);
      const first = tracer.stop();
      const second = tracer.stop();
      expect(second).toBe(first);
      const report = await first;
      expect(await tracer.done).toBe(report);
      expect(await tracer.stop()).toBe(report);
      const { allocs, frees, inUseBlocks, inUseBytes, unknownFrees, droppedAllocations } = report.summary;
      expect({ allocs, frees, inUseBlocks, inUseBytes, unknownFrees, droppedAllocations }, `round ${round}`).toEqual(gateWork);
      expect([null, 0]).toContain(report.target.exitCode);
      expect(await exited(child)).toEqual({ code: 0, signal: null });
      expect(ownNew(before), `round ${round}: BPF objects still held`).toEqual([]);
    }
  });

  it(`the CLI's Ctrl-C while it attaches: a clean exit, the target unharmed, nothing left (${ROUNDS} rounds)`, async () => {
    const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
    const outcomes = new Set<string>();
    for (let round = 0; round < ROUNDS; round++) {
      const { child: target, next } = await gate();
      const cli = spawn(viteNode, [join(repoRoot, 'test', 'reliability', 'cli-child.ts'), 'attach', '-p', String(target.pid)], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      cli.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      await new Promise<void>((resolve) => cli.stdout!.setEncoding('utf8').once('data', () => resolve()));
      // Every BPF object the CLI holds at any moment until it exits.
      const held = new Map<string, BpfObject>();
      const watch = setInterval(() => {
        for (const o of bpfObjectsOf(cli.pid!)) held.set(key(o), o);
      }, 5);
      // Before the addon loads, while programs load and probes attach, and (last rounds) after.
      await sleep(round < ROUNDS - 2 ? 80 * round : 4000);
      cli.kill('SIGINT');
      const end = await exited(cli);
      clearInterval(watch);
      // Killed by the signal before its handler was installed, or stopped by it with a report.
      outcomes.add(`${end.signal ?? `exit ${end.code}`} holding ${held.size} BPF objects`);
      expect(end.signal === 'SIGINT' || end.code === 0, `round ${round}: ${JSON.stringify(end)}\n${stderr}`).toBe(true);
      if (end.code === 0) expect(stderr).toContain('HEAP SUMMARY');
      expect(stderr).not.toMatch(/internal error|at .*\.(ts|js):\d+/i);

      expect(bpfObjectsOf(target.pid!)).toEqual([]);
      target.stdin!.write('go\n');
      await next('done');
      target.stdin!.end();
      expect(await exited(target)).toEqual({ code: 0, signal: null });

      let left = [...held.values()];
      for (let i = 0; i < 100 && left.length > 0; i++) {
        await sleep(100);
        left = left.filter(bpfObjectExists);
      }
      expect(left, `round ${round}: still in the kernel`).toEqual([]);
    }
    console.log(`CLI outcomes of Ctrl-C during attach: ${[...outcomes].join('; ')}`);
  });
});
