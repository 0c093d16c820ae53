// Leak kinds in what users read and act on: the text report ends with valgrind's LEAK SUMMARY
// lines, the JSON carries the kinds (and leaves them out when nothing was scanned),
// --show-leak-kinds / --errors-for-leak-kinds and checkLeaks() count valgrind's defaults
// (definite, possible) as leaks; a running process is scanned on demand (tracer.scan(),
// `attach --scan`), briefly stopped, and its kinds equal valgrind's for the same state.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { checkLeaks, trace } from '../lib/index.js';
import type { LeakReport } from '../lib/types.js';
import { buildCli, cliPath as cli } from './helpers/built-cli.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind, valgrindEnvironment } from './helpers/valgrind.js';

const base: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const { forValgrind, forTracer } = valgrindEnvironment(base);
let tmp: string;

beforeAll(() => {
  buildCli();
  tmp = mkdtempSync(join(tmpdir(), 'ebpf-leak-kinds-'));
}, 120_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function runCli(args: string[], env: NodeJS.ProcessEnv = forTracer): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stderr }));
  });
}

/** valgrind's LEAK SUMMARY lines, without the ==PID== prefix and the "suppressed" line. */
function valgrindSummaryLines(log: string): string[] {
  const lines = log.split('\n').map((l) => l.replace(/^==\d+== ?/, ''));
  const start = lines.indexOf('LEAK SUMMARY:');
  const end = lines.findIndex((l, i) => i > start && l.trim().startsWith('suppressed:'));
  return lines.slice(start, end);
}

describe('text report', () => {
  it.each(['owner', 'interior'])('leak_kinds %s ends with valgrind LEAK SUMMARY lines', async (arg) => {
    const vg = await runValgrind(fixturePath('leak_kinds'), [arg], { env: forValgrind });
    const r = await runCli(['run', '--', fixturePath('leak_kinds'), arg]);
    const expected = valgrindSummaryLines(vg.log);
    expect(expected.length).toBeGreaterThanOrEqual(5);
    const at = r.stderr.indexOf('LEAK SUMMARY:');
    expect(r.stderr.slice(at).split('\n').slice(0, expected.length)).toEqual(expected);
  });

  it('prints "of which reachable via heuristic" as valgrind', async () => {
    const vg = await runValgrind(fixturePath('leak_kinds_cpp'), ['stdstring'], { env: forValgrind });
    const r = await runCli(['run', '--', fixturePath('leak_kinds_cpp'), 'stdstring']);
    const expected = valgrindSummaryLines(vg.log);
    expect(expected.join('\n')).toContain('of which reachable via heuristic:');
    const at = r.stderr.indexOf('LEAK SUMMARY:');
    expect(r.stderr.slice(at).split('\n').slice(0, expected.length)).toEqual(expected);
  });

  it('--show-leak-kinds picks the loss records printed', async () => {
    const fixture = fixturePath('leak_kinds');
    const byDefault = await runCli(['run', '--', fixture, 'owner']);
    expect(byDefault.stderr).toContain('are definitely lost in loss record');
    expect(byDefault.stderr).not.toContain('are still reachable in loss record');
    expect(byDefault.stderr).toContain('Reachable blocks (those to which a pointer was found) are not shown.');
    const all = await runCli(['run', '--show-leak-kinds=all', '--', fixture, 'owner']);
    expect(all.stderr).toContain('are still reachable in loss record');
    expect(all.stderr).toContain('are indirectly lost in loss record');
    expect(all.stderr).toContain('72 (32 direct, 40 indirect) bytes in 1 blocks are definitely lost');
    const reachable = await runCli(['run', '--show-leak-kinds=reachable', '--', fixture, 'owner']);
    expect(reachable.stderr).not.toContain('are definitely lost in loss record');
    expect(reachable.stderr).toContain('are still reachable in loss record');
    const bad = await runCli(['run', '--show-leak-kinds=lost', '--', fixture, 'owner']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("option '--show-leak-kinds' must be all, none, or a comma-separated list");
  });
});

describe('what counts as a leak', () => {
  // git --version leaves only still-reachable blocks (valgrind agrees: test/leak-kinds.test.ts).
  it('--error-exitcode counts definite and possible by default, and --errors-for-leak-kinds changes it', async () => {
    const git = ['/usr/bin/git', '--version'];
    expect((await runCli(['run', '--error-exitcode', '9', '--', ...git])).code).toBe(0);
    expect((await runCli(['run', '--error-exitcode', '9', '--errors-for-leak-kinds=all', '--', ...git])).code).toBe(9);
    expect((await runCli(['run', '--error-exitcode', '9', '--no-leak-kinds', '--', ...git])).code).toBe(9);
    const lost = ['--', fixturePath('leak_kinds'), 'interior'];
    expect((await runCli(['run', '--error-exitcode', '9', ...lost])).code).toBe(9);
    expect((await runCli(['run', '--error-exitcode', '9', '--errors-for-leak-kinds=reachable', ...lost])).code).toBe(0);
  });

  it('checkLeaks() lists definite and possible leaks by default; errorsForLeakKinds widens it', async () => {
    const fixture = fixturePath('leak_kinds');
    const report = await checkLeaks(fixture, { args: ['owner'], env: forTracer, stdio: 'ignore' });
    expect(new Set(report.leaks.map((g) => g.kind))).toEqual(new Set(['definite']));
    expect(report.leakedBytes).toBe(232);
    const all = await checkLeaks(fixture, { args: ['owner'], env: forTracer, stdio: 'ignore', errorsForLeakKinds: 'all' });
    expect(all.leakedBytes).toBe(all.summary.inUseBytes);
    await expect(checkLeaks(fixture, { args: ['owner'], errorsForLeakKinds: 'lost' })).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
    });
  });

  it('JSON: the kinds, the scan, and no kinds when not scanned', async () => {
    const file = join(tmp, 'kinds.json');
    await runCli(['run', '--json', file, '--', fixturePath('leak_kinds'), 'owner']);
    const json = JSON.parse(readFileSync(file, 'utf8')) as LeakReport;
    expect(json.summary).toMatchObject({
      definitelyLost: { bytes: 232, blocks: 2 },
      indirectlyLost: { bytes: 40, blocks: 1 },
      possiblyLost: { bytes: 0, blocks: 0 },
      stillReachable: { bytes: 56, blocks: 2 },
    });
    expect(json.scan).toMatchObject({ scanned: true, atExit: true });
    expect(json.leaks.every((g) => g.kind === 'definite')).toBe(true);
    expect(json.leaks.find((g) => g.bytes === 32)?.indirectBytes).toBe(40);
    await runCli(['run', '--no-leak-kinds', '--json', file, '--', fixturePath('leak_kinds'), 'owner']);
    const plain = JSON.parse(readFileSync(file, 'utf8')) as LeakReport;
    expect(plain.summary.definitelyLost).toBeUndefined();
    expect(plain.scan).toBeUndefined();
    expect(plain.leaks.some((g) => 'kind' in g)).toBe(false);
  });
});

describe('on demand, in a running process', () => {
  it('tracer.scan() stops it briefly and finds valgrind kinds; it runs on', async () => {
    const fixture = fixturePath('leak_kinds');
    const vg = await runValgrind(fixture, ['wait'], { env: forValgrind });
    const tracer = await trace({ command: fixture, args: ['wait'], env: forTracer, stdio: 'pipe' });
    const child = tracer.process!;
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    for (let i = 0; i < 3; i++) {
      const report = await tracer.scan();
      expect(report.scan).toMatchObject({ scanned: true, atExit: false });
      if (report.scan?.scanned) expect(report.scan.pauseMs).toBeGreaterThan(0);
      expect(report.summary.definitelyLost).toEqual(vg.leakSummary.definitelyLost);
      expect(report.summary.indirectlyLost).toEqual(vg.leakSummary.indirectlyLost);
      expect(report.summary.possiblyLost).toEqual(vg.leakSummary.possiblyLost);
      expect(report.summary.stillReachable).toEqual(vg.leakSummary.stillReachable);
    }
    child.stdin!.end();
    const final = await tracer.done;
    expect(final.target.exitCode).toBe(0);
    expect(final.summary.definitelyLost).toEqual(vg.leakSummary.definitelyLost);
  });

  it('attach --scan prints the pause and the LEAK SUMMARY at each interval and at the end', async () => {
    const target = spawn(fixturePath('leak_kinds'), ['wait'], { stdio: ['pipe', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve) => target.stdout.once('data', () => resolve()));
      const r = await runCli(['attach', '-p', String(target.pid), '--scan', '--interval', '0.5', '--duration', '2']);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/LEAK SUMMARY \(target stopped [\d.]+ ms for the scan\):/);
      expect(r.stderr).toMatch(/\(memory scanned for the leak kinds: target stopped [\d.]+ ms, scan [\d.]+ ms\)/);
      // Attached after the blocks were made: nothing of theirs is known, so nothing is lost.
      expect(r.stderr).toContain('   definitely lost: 0 bytes in 0 blocks');
      expect(target.exitCode).toBeNull();
    } finally {
      target.stdin.end();
      await new Promise((resolve) => target.once('close', resolve));
    }
    expect(target.exitCode).toBe(0);
  });
});

describe('at the exit of a process traced by pid', () => {
  it('with followForks it is followed with ptrace from the attach on, and held and scanned at its exit', async () => {
    // seed prints its pid, sleeps 3 s, then makes its blocks (one 8-byte block lost). Started
    // through setsid: not a child of this process, whose child_process would wait for it.
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-attach-kinds-'));
    try {
      const out = join(dir, 'seed.out');
      execFileSync('sh', ['-c', `setsid -f ${fixturePath('seed')} 3 > ${out} 2>&1`]);
      let pid = 0;
      for (let i = 0; i < 250 && pid === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        pid = Number(/pid :(\d+)/.exec(existsSync(out) ? readFileSync(out, 'utf8') : '')?.[1] ?? 0);
      }
      expect(pid).toBeGreaterThan(0);
      const tracer = await trace({ pid, followForks: true, leakKinds: true });
      const report = await tracer.done;
      const root = (report.processes ?? [report])[0]!;
      expect(root.target.pid).toBe(pid);
      expect(root.scan).toMatchObject({ scanned: true, atExit: true });
      // Its stdout buffer came before the attach: only the 8 lost bytes are known, and lost.
      expect(root.summary.definitelyLost).toEqual({ bytes: 8, blocks: 1 });
      expect(root.summary.stillReachable).toEqual({ bytes: 0, blocks: 0 });
      expect(root.summary.inUseBytes).toBe(8);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
