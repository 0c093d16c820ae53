// A program started under a shell, so that it is not a child of the test process (whose
// child_process handling would take its ptrace stops), for tests that attach to it by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BytesBlocks, LeakReport } from '../../lib/types.js';
import { valgrindEnvironment } from './valgrind.js';

const base: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
export const { forValgrind, forTracer } = valgrindEnvironment(base);

const zero: BytesBlocks = { bytes: 0, blocks: 0 };

export function kinds(r: LeakReport): Record<string, BytesBlocks> {
  const s = r.summary;
  return {
    definitelyLost: s.definitelyLost ?? zero,
    indirectlyLost: s.indirectlyLost ?? zero,
    possiblyLost: s.possiblyLost ?? zero,
    stillReachable: s.stillReachable ?? zero,
  };
}

export function status(pid: number): { state: string; tracerPid: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    return { state: /^State:\s+(\S)/m.exec(text)![1]!, tracerPid: Number(/^TracerPid:\s+(\d+)/m.exec(text)![1]) };
  } catch {
    return null;
  }
}

export interface Started {
  /** The shell it runs under. */
  child: ChildProcess;
  pid: number;
  /** Everything it printed so far. */
  out: () => string;
  /** The shell's exit: the program's exit status, or 128 + the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `file args` under a shell (a child of this process would have its ptrace stops taken by
 *  child_process's waitpid(), and trace() does not hold it), its stdin and stdout piped to us, and
 *  waits for the line that starts with `first`, or with `first` '' (a program that prints nothing
 *  before its go) for it to wait in read(): right after its exec the loader has not mapped its libc
 *  yet, and an attach then finds no allocator. */
export async function start(file: string, args: string[], first: string): Promise<Started & { line: string }> {
  const script = 'exec 3<&0; "$0" "$@" <&3 3<&- & echo "pid $!"; wait $!';
  const child = spawn('/bin/sh', ['-c', script, file, ...args], { env: forTracer, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let text = '';
  let pid = 0;
  const lines = createInterface({ input: child.stdout! });
  let line = '';
  const found = new Promise<void>((resolve) =>
    lines.on('line', (l) => {
      if (!pid && l.startsWith('pid ')) {
        pid = Number(l.slice(4));
        if (line || first === '') resolve();
        return;
      }
      text += l + '\n';
      if (!line && first !== '' && l.startsWith(first)) line = l;
      if (line && pid) resolve();
    }),
  );
  await found;
  // The shell's child has exec'd the program.
  const exe = (): string => {
    try {
      return readlinkSync(`/proc/${pid}/exe`);
    } catch {
      return '';
    }
  };
  while (exe() !== file) await sleep(5);
  if (first === '') while (!inRead(pid)) await sleep(5);
  return { child, pid, out: () => text, exited, line };
}

/** Asleep in the read() system call (number 0 on x86-64, 63 on arm64), as /proc/PID/syscall
 *  shows: waiting on its stdin, not the loader reading a library, which does not sleep. */
function inRead(pid: number): boolean {
  if (status(pid)?.state !== 'S') return false;
  try {
    const nr = readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0];
    return nr === (process.arch === 'arm64' ? '63' : '0');
  } catch {
    return false;
  }
}

export async function waitFor(what: string, test: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

