// A process we attach to is not our child: its exit status comes from the kernel (recorded by the
// BPF program as its last thread exits), so a crash under `attach` is named, not just "exited".
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { formatReport } from '../lib/report/text-format.js';
import { trace } from '../lib/index.js';
import { decodeWaitStatus } from '../lib/tracer/leak-tracer.js';
import { fixturePath } from './helpers/fixtures.js';

async function startForever(): Promise<number> {
  const child = spawn(fixturePath('forever'), [], { stdio: ['ignore', 'pipe', 'ignore'] });
  const lines = createInterface({ input: child.stdout! });
  for await (const line of lines) if (line === 'ready') break;
  return child.pid!;
}

describe('decodeWaitStatus', () => {
  it('reads exit codes and signals, core dumps included', () => {
    expect(decodeWaitStatus(null)).toEqual([null, null]);
    expect(decodeWaitStatus(7 << 8)).toEqual([7, null]);
    expect(decodeWaitStatus(0)).toEqual([0, null]);
    expect(decodeWaitStatus(11)).toEqual([null, 'SIGSEGV']);
    expect(decodeWaitStatus(0x80 | 6)).toEqual([null, 'SIGABRT']);
  });
});

describe('the exit of an attached process', () => {
  it('a crash is named with its signal', async () => {
    const pid = await startForever();
    const tracer = await trace({ pid });
    process.kill(pid, 'SIGSEGV');
    const report = await tracer.done;
    expect(report.target).toMatchObject({ pid, signal: 'SIGSEGV', exitCode: null });
    expect(formatReport(report)).toContain('killed by SIGSEGV;');
  });

  it('an exit status is reported', async () => {
    const child = spawn('sh', ['-c', 'read line; exit 7'], { stdio: ['pipe', 'ignore', 'ignore'] });
    // Attach once sh has exec'd and mapped libc (it then waits in read()), then let it go on.
    const mapsOf = () => {
      try {
        return readFileSync(`/proc/${child.pid}/maps`, 'utf8');
      } catch {
        return '';
      }
    };
    while (!mapsOf().includes('libc.so.6') || !mapsOf().includes('/dash')) await new Promise((r) => setImmediate(r));
    const tracer = await trace({ pid: child.pid! });
    child.stdin!.end('go\n');
    const report = await tracer.done;
    expect(report.target).toMatchObject({ exitCode: 7, signal: null });
    expect(formatReport(report)).toContain('exited with status 7;');
  });
});
