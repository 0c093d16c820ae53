// Every error a user can meet has a stable code, a typed class and a message that says what to do.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BpfError,
  CommandNotFoundError,
  EbpfLeakError,
  InvalidOptionError,
  LibraryNotFoundError,
  NoBtfError,
  NoSuchProcessError,
  SymbolNotFoundError,
  TargetExitedError,
  UnsupportedAllocatorError,
  UprobesUnsupportedError,
  trace,
  type TraceOptions,
} from '../lib/index.js';
import { fixturePath, repoRoot } from './helpers/fixtures.js';

const work = mkdtempSync(join(tmpdir(), 'ebpf-leak-errors-'));
chmodSync(work, 0o755);
const savedEnv = { ...process.env };
afterEach(() => {
  for (const key of ['EBPF_LEAK_BTF_PATH', 'EBPF_LEAK_SYSFS']) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
});

async function rejection(options: TraceOptions): Promise<EbpfLeakError> {
  try {
    const tracer = await trace(options);
    await tracer.stop();
  } catch (error) {
    expect(error).toBeInstanceOf(EbpfLeakError);
    return error as EbpfLeakError;
  }
  throw new Error('trace() succeeded but was expected to fail');
}

function unusedPid(): number {
  for (let pid = 4_000_000; ; pid++) if (!existsSync(`/proc/${pid}`)) return pid;
}

describe('error codes', () => {
  it('ELEAK_PERM: an unprivileged user is told which capabilities are needed', () => {
    // A real unprivileged process: nobody (65534), running our library.
    const script = `import('${join(repoRoot, 'dist', 'index.js')}').then(m => m.trace({ command: 'true' }))
      .then(() => console.log('NO ERROR'), e => console.log(JSON.stringify({ code: e.code, name: e.name, message: e.message })))`;
    const out = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: '/' });
    expect(out.stderr).toBe('');
    const result = JSON.parse(out.stdout) as { code: string; name: string; message: string };
    expect(result.code).toBe('ELEAK_PERM');
    expect(result.name).toBe('PermissionError');
    expect(result.message).toContain('CAP_BPF');
    expect(result.message).toContain('CAP_PERFMON');
    expect(result.message).toContain('sudo');
  });

  it('ELEAK_NO_PID: no such process', async () => {
    const pid = unusedPid();
    const error = await rejection({ pid });
    expect(error).toBeInstanceOf(NoSuchProcessError);
    expect(error.code).toBe('ELEAK_NO_PID');
    expect(error.message).toContain(`no process with pid ${pid}`);
  });

  it('ELEAK_NO_BTF: the kernel BTF is missing', async () => {
    process.env.EBPF_LEAK_BTF_PATH = join(work, 'no-such-btf');
    const error = await rejection({ command: 'true' });
    expect(error).toBeInstanceOf(NoBtfError);
    expect(error.code).toBe('ELEAK_NO_BTF');
    expect(error.message).toContain('BTF');
  });

  it('ELEAK_NO_UPROBES: the kernel cannot place uprobes', async () => {
    // A sysfs with BTF but no uprobe event source, as on a kernel without CONFIG_UPROBE_EVENTS.
    const sysfs = join(work, 'sys');
    mkdirSync(join(sysfs, 'kernel', 'btf'), { recursive: true });
    writeFileSync(join(sysfs, 'kernel', 'btf', 'vmlinux'), '');
    process.env.EBPF_LEAK_SYSFS = sysfs;
    const error = await rejection({ command: 'true' });
    expect(error).toBeInstanceOf(UprobesUnsupportedError);
    expect(error.message).toContain('CONFIG_UPROBES');
  });

  it('ELEAK_BPF: loading fails, and libbpf\'s own log is in the message', async () => {
    const bogus = join(work, 'bogus.btf');
    writeFileSync(bogus, 'not BTF at all');
    process.env.EBPF_LEAK_BTF_PATH = bogus;
    const error = await rejection({ command: fixturePath('seed'), stdio: 'ignore' });
    expect(error).toBeInstanceOf(BpfError);
    expect(error.code).toBe('ELEAK_BPF');
    expect(error.message).toContain('libbpf log');
  });

  it('ELEAK_LIB_NOT_FOUND: the named allocator library does not exist', async () => {
    const error = await rejection({ command: 'true', allocator: { path: '/nonexistent/libjemalloc.so.2' } });
    expect(error).toBeInstanceOf(LibraryNotFoundError);
    expect(error.message).toContain('/nonexistent/libjemalloc.so.2 does not exist');
  });

  it('ELEAK_SYMBOL_NOT_FOUND: the allocator has no malloc', async () => {
    const libz = '/lib/x86_64-linux-gnu/libz.so.1';
    const error = await rejection({ command: 'true', allocator: { path: libz } });
    expect(error).toBeInstanceOf(SymbolNotFoundError);
    expect(error.message).toContain(`${libz} has no function malloc`);
  });

  it('ELEAK_TARGET_EXITED: the process is gone before the probes are attached', async () => {
    // A zombie: the process has exited but is not reaped. Its parent forks it, never waits, and
    // sleeps, so the pid exists while nothing runs.
    const holder = spawn(
      'python3',
      ['-c', 'import os, time\npid = os.fork()\nif pid == 0: os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const [line] = (await once(holder.stdout!, 'data')) as [Buffer];
      const zombie = Number(line.toString().trim());
      // Under load the child can take a moment to run and exit: wait for the zombie.
      for (let i = 0; i < 500 && !/\) Z /.test(safeStat(zombie)); i++) await new Promise((r) => setTimeout(r, 10));
      expect(safeStat(zombie), 'the test setup did not produce a zombie').toMatch(/\) Z /);
      const error = await rejection({ pid: zombie, allocator: { path: '/lib/x86_64-linux-gnu/libc.so.6' } });
      expect(error).toBeInstanceOf(TargetExitedError);
      expect(error.message).toContain(`process ${zombie} exited`);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('ELEAK_ALLOCATOR: a stripped static binary (no malloc to find) is refused with what to do instead', async () => {
    const src = join(work, 'static.c');
    writeFileSync(src, '#include <stdlib.h>\nint main(void){ return malloc(1) == 0; }\n');
    const exe = join(work, 'static');
    execFileSync('gcc', ['-static', '-s', '-O0', '-o', exe, src]);
    const error = await rejection({ command: exe });
    expect(error).toBeInstanceOf(UnsupportedAllocatorError);
    expect(error.message).toContain('a static executable without its symbol table');
    expect(error.message).toContain('allocator: { path, symbols: {');
  });

  it('ELEAK_ALLOCATOR: a malloc interposed by another library (jemalloc-like) is refused', async () => {
    const src = join(work, 'mymalloc.c');
    writeFileSync(
      src,
      '#include <stddef.h>\nstatic char heap[1<<20]; static size_t used;\n' +
        'void *malloc(size_t n){ void *p = heap + used; used += (n + 15) & ~15UL; return p; }\n' +
        'void free(void *p){ (void)p; }\n',
    );
    const lib = join(work, 'libmymalloc.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', lib, src]);
    const error = await rejection({ command: 'true', env: { ...process.env, LD_PRELOAD: lib } });
    expect(error).toBeInstanceOf(UnsupportedAllocatorError);
    expect(error.message).toContain(`allocates through ${lib}`);
  });

  it('ELEAK_COMMAND_NOT_FOUND: the command does not exist', async () => {
    const error = await rejection({ command: 'no-such-command-ebpf-leak' });
    expect(error).toBeInstanceOf(CommandNotFoundError);
    expect(error.message).toContain('not found in PATH');
  });

  it('ELEAK_OPTION: bad options get exact messages', async () => {
    const cases: Array<[unknown, string]> = [
      [{}, 'options must have exactly one of pid (attach to a running process) or command (start one)'],
      [{ pid: 1, command: 'x' }, 'options must have exactly one of pid (attach to a running process) or command (start one)'],
      [{ pid: -4 }, 'options.pid must be an integer from 1 to 4194304 (got -4)'],
      [{ pid: 1.5 }, 'options.pid must be an integer from 1 to 4194304 (got 1.5)'],
      [{ command: '' }, 'options.command must be a non-empty string: the program to run (got "")'],
      [{ command: 'true', args: [1] }, 'options.args must be an array of strings (got an array)'],
      [{ command: 'true', maxAllocations: 0 }, 'options.maxAllocations must be an integer from 1 to 20000000 (got 0)'],
      [{ command: 'true', eventBufferBytes: 5000 }, 'options.eventBufferBytes must be a power of two (got 5000)'],
      [{ command: 'true', stdio: 'tty' }, "options.stdio must be 'inherit', 'pipe' or 'ignore' (got \"tty\")"],
      [{ command: 'true', allocator: { path: '/x', symbols: { mallocz: 'm' } } }, 'options.allocator.symbols.mallocz is not an allocator function'],
    ];
    for (const [options, message] of cases) {
      const error = await rejection(options as TraceOptions);
      expect(error).toBeInstanceOf(InvalidOptionError);
      expect(error.code).toBe('ELEAK_OPTION');
      expect(error.message).toContain(message);
    }
  });
});

function safeStat(pid: number): string {
  try {
    return execFileSync('cat', [`/proc/${pid}/stat`], { encoding: 'utf8' });
  } catch {
    return '';
  }
}
