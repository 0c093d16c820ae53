// An attached process (a pid target) is held in ptrace's exit stop for the leak-kind scan, as a
// program ebpf-leak starts is: its kinds equal valgrind's LEAK SUMMARY for the same program, the
// target is unchanged (its signals delivered, its output and exit status the same), and stopping
// the trace before it exits lets it go, neither stopped nor traced. When the hold cannot be had
// (another process already traces it), the trace goes on and its report says why it has no kinds.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';

import { checkReport, trace } from '../lib/index.js';
import { forTracer, forValgrind, kinds, start, status, waitFor, type Started } from './helpers/attached-target.js';
import { fixturePath, repoRoot } from './helpers/fixtures.js';
import { runValgrind } from './helpers/valgrind.js';

/** Let go: as seen from /proc and from its parent, running (sleeping in read()) with nobody tracing
 *  it, its SIGUSR1 handled; then told to go on ('g' on its stdin). */
async function expectLetGoUnharmed(target: Started): Promise<void> {
  await waitFor('the target to be let go', () => status(target.pid)?.tracerPid === 0);
  await sleep(100);
  expect(status(target.pid)).toEqual({ state: 'S', tracerPid: 0 });
  process.kill(target.pid, 'SIGUSR1');
  await waitFor('the SIGUSR1 handler', () => target.out().includes('usr1'));
  target.child.stdin!.end('g');
}

describe('an attached process is held at its exit', () => {
  it('its kinds equal valgrind LEAK SUMMARY, its signals, output and exit status unchanged (3 runs)', async () => {
    const path = fixturePath('leak_kinds');
    const vg = await runValgrind(path, ['attach'], { env: forValgrind });
    const { definitelyLost, indirectlyLost, possiblyLost, stillReachable } = vg.leakSummary;
    const expected = { definitelyLost, indirectlyLost, possiblyLost, stillReachable };
    expect(vg.summary.inUseBlocks).toBeGreaterThan(0);
    for (let run = 0; run < 3; run++) {
      const target = await start(path, ['attach'], 'ready');
      const pid = target.pid;
      const tracer = await trace({ pid, leakKinds: true });
      expect(status(pid)?.tracerPid).toBeGreaterThan(0);
      process.kill(pid, 'SIGUSR1');
      await waitFor('the SIGUSR1 handler', () => target.out().includes('usr1'));
      target.child.stdin!.end('g');
      const report = await tracer.done;
      expect(await target.exited).toEqual({ code: 3, signal: null });
      expect(target.out()).toBe('ready\nusr1\n');
      expect(report.target).toMatchObject({ pid, exitCode: 3, signal: null });
      expect(report.scan, `run ${run + 1}`).toMatchObject({ scanned: true, atExit: true });
      expect(report.summary.inUseBytes).toBe(vg.summary.inUseBytes);
      expect(report.summary.inUseBlocks).toBe(vg.summary.inUseBlocks);
      expect(kinds(report), `run ${run + 1}`).toEqual(expected);
      for (const g of report.leaks) expect(g.kind).toBeDefined();
    }
  });

  it('a thread started while attached: kinds equal valgrind LEAK SUMMARY every time (5 runs)', async () => {
    const path = fixturePath('leak_kinds');
    const vg = await runValgrind(path, ['attach-thread'], { env: forValgrind });
    const { definitelyLost, indirectlyLost, possiblyLost, stillReachable } = vg.leakSummary;
    const expected = { definitelyLost, indirectlyLost, possiblyLost, stillReachable };
    expect(stillReachable.blocks).toBeGreaterThan(0);
    for (let run = 0; run < 5; run++) {
      const target = await start(path, ['attach-thread'], 'ready');
      const tracer = await trace({ pid: target.pid, leakKinds: true });
      target.child.stdin!.end('g');
      const report = await tracer.done;
      expect(await target.exited).toEqual({ code: 0, signal: null });
      expect(report.scan, `run ${run + 1}`).toMatchObject({ scanned: true, atExit: true });
      expect(report.summary.inUseBytes).toBe(vg.summary.inUseBytes);
      expect(kinds(report), `run ${run + 1}`).toEqual(expected);
    }
  });

  it('stop() before it exits lets it go: not stopped, not traced, and it runs on unharmed', async () => {
    const target = await start(fixturePath('leak_kinds'), ['attach'], 'ready');
    const pid = target.pid;
    const tracer = await trace({ pid, leakKinds: true });
    expect(status(pid)?.tracerPid).toBeGreaterThan(0);
    const now = await tracer.scan();
    expect(now.scan).toMatchObject({ scanned: true, atExit: false });
    const report = await tracer.stop();
    expect(report.scan).toMatchObject({ scanned: true, atExit: false });
    await expectLetGoUnharmed(target);
    expect(await target.exited).toEqual({ code: 3, signal: null });
    expect(target.out()).toBe('ready\nusr1\n');
  });

  it('the tracer killed while attached, or while it holds the target at its exit: the target runs on', async () => {
    const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
    for (const when of ['attached', 'held'] as const) {
      const target = await start(fixturePath('leak_kinds'), ['attach'], 'ready');
      const pid = target.pid;
      const tracerProcess = spawn(viteNode, [join(repoRoot, 'test', 'helpers', 'hold-tracer.ts'), '--pid', String(pid)], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      tracerProcess.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      try {
        await waitFor('the attach', () => out.includes('\n'), 120_000);
        // TracerPid is the tracing thread: one of the tracer process's.
        expect(existsSync(`/proc/${tracerProcess.pid}/task/${status(pid)?.tracerPid}`)).toBe(true);
        if (when === 'held') {
          // The tracer stopped, the target exits: it stays in its exit stop, held for a tracer
          // that cannot let it go, as when the tracer dies in the middle of a hold.
          tracerProcess.kill('SIGSTOP');
          await waitFor('the tracer stopped', () => status(tracerProcess.pid!)?.state === 'T');
          target.child.stdin!.end('g');
          await waitFor('the hold at exit', () => status(pid)?.state === 't', 60_000);
          await sleep(200);
          expect(status(pid)?.state).toBe('t');
        }
        tracerProcess.kill('SIGKILL');
        if (when === 'attached') await expectLetGoUnharmed(target);
        expect(await target.exited, when).toEqual({ code: 3, signal: null });
        expect(out).not.toContain('scan');
      } finally {
        tracerProcess.kill('SIGKILL');
      }
    }
  }, 300_000);

  it('a fatal signal while held is its end, as without the trace', async () => {
    const target = await start(fixturePath('leak_kinds'), ['attach'], 'ready');
    const pid = target.pid;
    const tracer = await trace({ pid, leakKinds: true });
    process.kill(pid, 'SIGTERM');
    const report = await tracer.done;
    expect(await target.exited).toEqual({ code: 128 + 15, signal: null });
    expect(report.target).toMatchObject({ pid, signal: 'SIGTERM' });
  });
});

describe('an attached process that is a child of the tracing process', () => {
  it('is not held (its stops would go to child_process): the report says so, and it exits as it would', async () => {
    const child = spawn(fixturePath('leak_kinds'), ['attach'], { env: forTracer, stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    await new Promise((resolve) => child.stdout!.once('data', resolve));
    const tracer = await trace({ pid: child.pid!, leakKinds: true });
    expect(status(child.pid!)?.tracerPid).toBe(0);
    child.stdin!.end('g');
    const report = await tracer.done;
    expect(await exited).toEqual({ code: 3, signal: null });
    expect(report.scan?.scanned === false && report.scan.reason).toMatch(/could not be held at its exit: it is a child of this process/);
    expect(report.summary.inUseBlocks).toBeGreaterThan(0);
  });
});

describe('an attached process another one already traces', () => {
  it('is traced without the hold: its blocks are all reported, the report and the CLI say why it has no kinds', async () => {
    const target = await start(fixturePath('seized_child'), [], 'child ');
    const pid = Number(target.line.split(' ')[1]);
    expect(pid).not.toBe(target.pid);
    expect(status(pid)?.tracerPid).toBe(target.pid);
    const tracer = await trace({ pid, leakKinds: true });
    target.child.stdin!.end('g');
    const report = await tracer.done;
    expect(await target.exited).toEqual({ code: 5, signal: null });
    expect(report.target).toMatchObject({ pid, exitCode: 5 });
    expect(report.scan).toMatchObject({ scanned: false });
    expect(report.scan?.scanned === false && report.scan.reason).toMatch(/could not be held at its exit: .*ptrace.*traced already/);
    expect(report.summary.definitelyLost).toBeUndefined();
    expect(report.summary).toMatchObject({ inUseBytes: 300, inUseBlocks: 2 });
    // Without kinds every block still allocated counts: the verdict is no "no leaks".
    const checked = checkReport(report, []);
    expect(checked.leakedBytes).toBe(300);
    expect(checked.leaks.every((g) => g.kind === undefined)).toBe(true);
  });

  it('attach --scan: the report says "not scanned" with the reason, and --error-exitcode fails', async () => {
    const target = await start(fixturePath('seized_child'), [], 'child ');
    const pid = Number(target.line.split(' ')[1]);
    expect(pid).not.toBe(target.pid);
    const cli = spawn(process.execPath, [join(repoRoot, 'dist', 'cli', 'main.js'), 'attach', '-p', String(pid), '--scan', '--interval', '0', '--error-exitcode', '9'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let stderr = '';
    cli.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    cli.stdout!.resume();
    const code = new Promise<number | null>((resolve) => cli.once('close', (c) => resolve(c)));
    await waitFor('the attach', () => stderr.includes('tracing pid'), 90_000);
    target.child.stdin!.end('g');
    expect(await code).toBe(9);
    expect(await target.exited).toEqual({ code: 5, signal: null });
    expect(stderr).toMatch(/leak kinds: not scanned: it could not be held at its exit: .*traced already/);
    expect(stderr).not.toContain('no leaks');
  });
});
