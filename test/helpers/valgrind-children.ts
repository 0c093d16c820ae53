// valgrind --trace-children=yes: one memcheck report per process of a program's tree, the oracle
// for followed processes. Each process writes its own log (vg.<pid>.log); an exec keeps the pid
// and valgrind starts over in the new image, whose log replaces the old image's, so every log is
// the report of a process's last image, as ebpf-leak reports it.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseValgrindLog, valgrindArgs, valgrindExecutable, type ParsedValgrindLog } from './valgrind.js';

export interface ValgrindTree {
  /** The first process's pid (valgrind runs the program in its own process). */
  rootPid: number;
  /** One report per process, by pid. */
  processes: Map<number, ParsedValgrindLog>;
}

export async function runValgrindTree(
  file: string,
  args: readonly string[],
  opts: { env: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number },
): Promise<ValgrindTree> {
  const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-valgrind-tree-'));
  try {
    const child = spawn(
      valgrindExecutable(),
      [...valgrindArgs, '--trace-children=yes', `--log-file=${join(dir, 'vg.%p.log')}`, file, ...args],
      { env: opts.env, stdio: 'ignore', ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) },
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`valgrind --trace-children=yes ${file}: no exit after ${opts.timeoutMs ?? 300_000} ms`));
      }, opts.timeoutMs ?? 300_000);
      child.once('error', reject);
      child.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const processes = new Map<number, ParsedValgrindLog>();
    for (const name of readdirSync(dir)) {
      const parsed = parseValgrindLog(readFileSync(join(dir, name), 'utf8'));
      processes.set(parsed.pid, parsed);
    }
    return { rootPid: child.pid!, processes };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
