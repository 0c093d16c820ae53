// scan() under followForks scans every live traced process, each stopped alone, one report each:
// a tree of processes that leak and hold blocks in globals, attached to by pid before it forks,
// scanned while every process waits, equals valgrind --trace-children=yes per process (every
// block is allocated before the process waits, and nothing after, so its LEAK SUMMARY at exit is
// what is outstanding while it waits). `attach --follow-forks --scan` prints each one's.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { BytesBlocks } from '../lib/types.js';
import { forTracer, forValgrind, kinds, start, waitFor } from './helpers/attached-target.js';
import { fixturePath, repoRoot } from './helpers/fixtures.js';
import { runValgrindTree } from './helpers/valgrind-children.js';

type Kinds = Record<string, BytesBlocks>;

/** Each process's kinds by valgrind, sorted (pids differ between the runs). */
async function valgrindKinds(children: number): Promise<string[]> {
  const vg = await runValgrindTree(fixturePath('fork_kinds'), [String(children)], { env: forValgrind });
  const out = [...vg.processes.values()].map((p) => {
    const { definitelyLost, indirectlyLost, possiblyLost, stillReachable } = p.leakSummary;
    return JSON.stringify({ definitelyLost, indirectlyLost, possiblyLost, stillReachable } satisfies Kinds);
  });
  return out.sort();
}

const readyCount = (text: string) => text.split('\n').filter((l) => l.startsWith('ready ')).length;

describe('scan() with followForks', () => {
  it('scans every live process: kinds per process equal valgrind --trace-children=yes (3 runs)', async () => {
    const children = 3;
    const expected = await valgrindKinds(children);
    expect(expected).toHaveLength(children + 1);
    for (let run = 0; run < 3; run++) {
      const target = await start(fixturePath('fork_kinds'), [String(children)], '');
      // start() returns at the shell's first line; the fixture prints nothing before its go.
      const tracer = await trace({ pid: target.pid, followForks: true, leakKinds: true });
      target.child.stdin!.write('g');
      await waitFor('every process to be ready', () => readyCount(target.out()) === children + 1);
      const now = await tracer.scan();
      const processes = now.processes ?? [];
      expect(processes.map((p) => p.target.pid).sort()).toEqual(
        target.out().split('\n').filter((l) => l.startsWith('ready ')).map((l) => Number(l.slice(6))).sort(),
      );
      expect(now.target.pid).toBe(target.pid);
      for (const p of processes) {
        expect(p.scan, `process ${p.target.pid}`).toMatchObject({ scanned: true, atExit: false });
        expect(p.leaks.every((g) => g.kind !== undefined)).toBe(true);
      }
      expect(processes.map((p) => JSON.stringify(kinds(p))).sort(), `run ${run + 1}`).toEqual(expected);
      // Each runs on; at their exits they are scanned again, with the same numbers.
      target.child.stdin!.end();
      const report = await tracer.done;
      expect(await target.exited).toEqual({ code: 0, signal: null });
      expect((report.processes ?? []).map((p) => JSON.stringify(kinds(p))).sort()).toEqual(expected);
    }
  });

  it('attach --follow-forks --scan prints each process\'s LEAK SUMMARY', async () => {
    const children = 2;
    const expected = await valgrindKinds(children);
    const target = await start(fixturePath('fork_kinds'), [String(children)], '');
    const cli = spawn(
      process.execPath,
      [join(repoRoot, 'dist', 'cli', 'main.js'), 'attach', '-p', String(target.pid), '--follow-forks', '--scan', '--interval', '1'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
    );
    let stderr = '';
    cli.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    cli.stdout!.resume();
    const closed = new Promise<number | null>((resolve) => cli.once('close', (c) => resolve(c)));
    await waitFor('the attach', () => stderr.includes('tracing pid'), 90_000);
    target.child.stdin!.write('g');
    await waitFor('every process to be ready', () => readyCount(target.out()) === children + 1);
    const from = stderr.length;
    // A periodic scan after all were ready: one block per process.
    const block = /\tprocess (\d+)[^\n]*:\n\tLEAK SUMMARY \(target stopped [\d.]+ ms for the scan\):\n((?:\t[^\n]*\n){4})/g;
    let seen: Map<number, Kinds> = new Map();
    await waitFor('a scan of every process', () => {
      seen = new Map();
      for (const m of stderr.slice(from).matchAll(block)) {
        const numbers = [...m[2]!.matchAll(/([\d,]+) bytes in ([\d,]+) blocks/g)].map((n) => ({
          bytes: Number(n[1]!.replaceAll(',', '')),
          blocks: Number(n[2]!.replaceAll(',', '')),
        }));
        const [definitelyLost, indirectlyLost, possiblyLost, stillReachable] = numbers as [BytesBlocks, BytesBlocks, BytesBlocks, BytesBlocks];
        seen.set(Number(m[1]), { definitelyLost, indirectlyLost, possiblyLost, stillReachable });
      }
      return seen.size === children + 1;
    }, 30_000);
    expect([...seen.values()].map((k) => JSON.stringify(k)).sort()).toEqual(expected);
    target.child.stdin!.end();
    expect(await target.exited).toEqual({ code: 0, signal: null });
    expect(await closed).toBe(0);
  });
});
