// The exit hold (the supervisor's exit stop, native/process/supervisor.cc) leaves the target as it
// was: its exit status, the signal that ended it, its stdout and stderr are the same with the scan
// on and off, through signals it handles, fatal signals (SIGKILL too), a job-control stop, and an
// exit from a second thread. A target held when the tracer dies runs on and exits.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { LeakReport } from '../lib/types.js';
import { fixturePath, repoRoot } from './helpers/fixtures.js';

interface Outcome {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  report: LeakReport;
}

function processState(pid: number): string | null {
  try {
    return /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

async function waitFor(what: string, test: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function run(args: string[], leakKinds: boolean): Promise<Outcome> {
  const tracer = await trace({ command: fixturePath('exit_status'), args, stdio: 'pipe', leakKinds });
  const child = tracer.process!;
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let continuing: ReturnType<typeof setInterval> | undefined;
  if (args[0] === 'stopped') {
    // Stopped by its own SIGSTOP ('T'; 't' under ptrace): continue it as a shell would. /proc shows
    // 't' already in the signal-delivery stop, before the supervisor passes the SIGSTOP on; a
    // SIGCONT sent then comes before the stop and is lost. A shell hears only of the group stop,
    // so keep continuing while the target shows stopped, as often as it takes.
    await waitFor('the job-control stop', () => ['T', 't'].includes(processState(tracer.pid) ?? ''), 120_000);
    continuing = setInterval(() => {
      if (['T', 't'].includes(processState(tracer.pid) ?? '')) process.kill(tracer.pid, 'SIGCONT');
    }, 50);
    process.kill(tracer.pid, 'SIGCONT');
  }
  const report = await tracer.done.finally(() => clearInterval(continuing));
  const exit = await child.exited;
  await new Promise((resolve) => setImmediate(resolve));
  return { exitCode: exit.code, signal: exit.signal, stdout, stderr, report };
}

const cases: string[][] = [['code', '0'], ['code', '7'], ['handled'], ['killed'], ['sigkill'], ['stopped'], ['threads']];

describe('the exit hold leaves the target unchanged', () => {
  it.each(cases)('%s %s', async (...args) => {
    const off = await run(args, false);
    const on = await run(args, true);
    expect({ ...on, report: undefined }).toEqual({ ...off, report: undefined });
    expect(off.report.scan).toBeUndefined();
    // A fatal signal passes the exit stop too (valgrind checks then as well); so does a SIGKILL the
    // process gets while it runs: the kernel takes it off the thread before that stop.
    if (args[0] === 'killed') expect(on.signal).toBe('SIGUSR1');
    if (args[0] === 'sigkill') expect(on.signal).toBe('SIGKILL');
    expect(on.report.scan).toMatchObject({ scanned: true, atExit: true });
    expect(on.report.summary.definitelyLost).toEqual({ bytes: 32, blocks: 1 });
    if (args[0] !== 'killed' && args[0] !== 'sigkill') {
      expect(on.stdout).toContain(args[0] === 'threads' ? 'thread exits' : 'atexit ran');
    }
    // Same blocks either way.
    expect(on.report.summary.inUseBytes).toBe(off.report.summary.inUseBytes);
  }, 300_000);

  it('a held target runs on and exits when the tracer is killed in the middle of the hold', async () => {
    const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-hold-'));
    const fifo = join(dir, 'go');
    execFileSync('mkfifo', [fifo]);
    const tracerProcess = spawn(viteNode, [join(repoRoot, 'test', 'helpers', 'hold-tracer.ts'), fixturePath('exit_status'), 'fifo', fifo], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    tracerProcess.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    let writer: number | undefined;
    try {
      await waitFor('the target pid', () => out.includes('\n'), 120_000);
      const { pid } = JSON.parse(out.split('\n')[0]!) as { pid: number };
      // A non-blocking open for writing succeeds once the target waits in its open() for reading:
      // from there it reaches its exit stop with no other stop on the way.
      await waitFor('the target at its FIFO', () => {
        try {
          writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
          return true;
        } catch {
          return false;
        }
      }, 120_000);
      // The tracer stopped, the target exits: it stays in its exit stop, held for a tracer that
      // cannot let it go, as when the tracer dies in the middle of a hold.
      tracerProcess.kill('SIGSTOP');
      await waitFor('the tracer stopped', () => processState(tracerProcess.pid!) === 'T');
      writeSync(writer!, 'g');
      await waitFor('the hold at exit', () => processState(pid) === 't', 120_000);
      await sleep(200);
      expect(processState(pid)).toBe('t');
      tracerProcess.kill('SIGKILL');
      await waitFor('the target to be gone', () => !existsSync(`/proc/${pid}`) || processState(pid) === 'Z', 10_000);
      expect(out).not.toContain('scan');
    } finally {
      tracerProcess.kill('SIGKILL');
      if (writer !== undefined) closeSync(writer);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
