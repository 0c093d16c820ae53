// Errors a user can cause are EbpfLeakErrors with a code and a message that says what to do,
// never a stack trace from inside; and a failed trace() leaves nothing running.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { EbpfLeakError, trace } from '../lib/index.js';
import { fixturePath, repoRoot } from './helpers/fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-user-errors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Our children that are still the held launcher (native/process/launcher.c). */
function ourLaunchers(): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'ebpf-leak-exec' && ppid === process.pid) found.push(Number(entry));
    } catch {
      // gone
    }
  }
  return found;
}

/** Waits (bounded) until none of our launchers is left: their exit is reaped by a thread. */
async function launchersGone(): Promise<number[]> {
  for (let i = 0; i < 500 && ourLaunchers().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  return ourLaunchers();
}

async function startReady(command: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  for await (const line of lines) if (line === 'ready') break;
  return child;
}

describe('permissions', () => {
  const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
  /** As uid nobody with CAP_BPF and CAP_PERFMON (enough to trace its own processes) but not
   *  CAP_SYS_PTRACE. */
  const attachAsNobody = (pid: number) => {
    const r = spawnSync(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all,+bpf,+perfmon', '--ambient-caps=-all,+bpf,+perfmon',
        viteNode, join(repoRoot, 'test', 'helpers', 'attach-child.ts'), String(pid)],
      { cwd: repoRoot, encoding: 'utf8', timeout: 60_000, env: { ...process.env, HOME: dir } },
    );
    expect(r.stderr).toBe('');
    return (JSON.parse(r.stdout) as { error: { name: string; code: string; message: string } }).error;
  };

  it('attach -p 1 without CAP_SYS_PTRACE: ELEAK_PERM naming CAP_SYS_PTRACE, not EACCES', () => {
    const error = attachAsNobody(1);
    expect(error).toMatchObject({ name: 'PermissionError', code: 'ELEAK_PERM' });
    expect(error.message).toMatch(/^cannot read \/proc\/1\/maps: permission denied\. Process 1 runs as uid 0; reading the memory map of another user's process can need CAP_SYS_PTRACE/);
    expect(error.message).toContain('setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep');
  });

  it("another user's process, with CAP_PERFMON and without CAP_SYS_PTRACE: this kernel lets it be traced", async () => {
    // CAP_PERFMON reads the maps of another user's process here, even one that made itself
    // non-dumpable; where the kernel refuses (pid 1 above), the refusal is ELEAK_PERM.
    writeFileSync(join(dir, 'nondumpable.c'),
      '#include <stdio.h>\n#include <sys/prctl.h>\n#include <unistd.h>\n' +
      'int main(void) { prctl(PR_SET_DUMPABLE, 0); puts("ready"); fflush(stdout); for (;;) pause(); }\n');
    execFileSync('gcc', ['-o', join(dir, 'nondumpable'), join(dir, 'nondumpable.c')]);
    for (const program of [fixturePath('forever'), join(dir, 'nondumpable')]) {
      const target = await startReady(program, []);
      try {
        expect(attachAsNobody(target.pid!)).toBeNull();
      } finally {
        target.kill('SIGKILL');
      }
    }
  });
});

describe('a target in a plain chroot', () => {
  it('is traced: the paths /proc/PID/maps shows are ours, not prefixed with its root again', async () => {
    const root = join(dir, 'chroot');
    const program = fixturePath('forever');
    // The program and what the loader maps for it, at the same paths inside the root.
    const libs = execFileSync('ldd', [program], { encoding: 'utf8' })
      .split('\n')
      .map((l) => /(\/\S+) \(0x/.exec(l)?.[1])
      .filter((p): p is string => p !== undefined);
    for (const file of [...libs, ...libs.map((p) => execFileSync('realpath', [p], { encoding: 'utf8' }).trim())]) {
      mkdirSync(join(root, dirname(file)), { recursive: true });
      copyFileSync(file, join(root, file));
    }
    copyFileSync(program, join(root, 'forever'));
    const target = await startReady('chroot', [root, '/forever']);
    try {
      const tracer = await trace({ pid: target.pid! });
      // The path the chrooted loader opened, as we see it: under the root once, not twice.
      expect(tracer.info.allocator).toBe(join(root, libs.find((p) => /libc\.so/.test(p))!));
      await new Promise((r) => setTimeout(r, 300)); // it leaks 32 bytes every 10 ms
      const report = await tracer.stop();
      expect(report.summary.allocs).toBeGreaterThan(0);
      const leak = report.leaks.find((g) => g.bytes % 32 === 0 && g.blocks > 0 && g.stack.some((f) => f.symbol === 'main'));
      expect(leak).toBeDefined();
      expect(leak!.stack[0]!.symbol).toBe('malloc');
    } finally {
      target.kill('SIGKILL');
    }
  });
});

describe('another uprobe with a reference counter on the same function', () => {
  it('names the cause and the way out (ELEAK_PROBE_CONFLICT), and leaves no launcher', async () => {
    // A private copy of libc, so that the other probe touches no other process on the machine.
    const libDir = join(dir, 'libc-copy');
    mkdirSync(libDir, { recursive: true });
    const libc = join(libDir, 'libc.so.6');
    copyFileSync('/usr/lib/x86_64-linux-gnu/libc.so.6', libc);
    const malloc = /\s([0-9a-f]+)\s+\d+\s+FUNC\s+GLOBAL\s+DEFAULT\s+\d+\s+malloc@@GLIBC/.exec(
      execFileSync('readelf', ['-sW', libc], { encoding: 'utf8' }),
    )![1]!;
    // The other tool: a uprobe trace event with a reference counter (at the ELF header's unused
    // padding bytes), on a tracefs of our own.
    const tracefs = join(dir, 'tracefs');
    mkdirSync(tracefs);
    execFileSync('mount', ['-t', 'tracefs', 'nodev', tracefs]);
    const events = join(tracefs, 'uprobe_events');
    try {
      execFileSync('sh', ['-c', `echo 'p:ebpfleaktest/conflict ${libc}:0x${malloc}(0xa)' >> ${events}`]);
      execFileSync('sh', ['-c', `echo 1 > ${tracefs}/events/ebpfleaktest/conflict/enable`]);
      const error = await trace({
        command: fixturePath('seed'),
        env: { ...process.env, LD_LIBRARY_PATH: libDir },
        stdio: 'ignore',
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(EbpfLeakError);
      expect(error).toMatchObject({ name: 'ProbeConflictError', code: 'ELEAK_PROBE_CONFLICT' });
      const message = (error as Error).message;
      expect(message).toContain(`cannot attach uretprobes to ${libc} at offset 0x${parseInt(malloc, 16).toString(16)}: Invalid argument`);
      expect(message).not.toContain('relocated');
      expect(message).toContain('ref_ctr_offset mismatch');
      expect(message).toMatch(/Stop that tool, or remove its probe/);
      expect(await launchersGone()).toEqual([]);
    } finally {
      spawnSync('sh', ['-c', `echo 0 > ${tracefs}/events/ebpfleaktest/conflict/enable; echo '-:ebpfleaktest/conflict' >> ${events}`]);
      execFileSync('umount', [tracefs]);
    }
  });
});

describe('a failure inside trace() after the launcher started', () => {
  it('ends the launcher: a library without malloc named as the allocator', async () => {
    const error = await trace({
      command: fixturePath('seed'),
      allocator: { path: '/usr/lib/x86_64-linux-gnu/libz.so.1' },
      stdio: 'ignore',
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ELEAK_SYMBOL_NOT_FOUND' });
    expect(await launchersGone()).toEqual([]);
  });

  it('ends the launcher when attaching fails', async () => {
    // An allocator file the kernel cannot probe at the offsets readElf found: a copy of libc
    // removed right after trace() read it is the simplest; here the library is a FIFO.
    const fifo = join(dir, 'fifo.so');
    execFileSync('mkfifo', [fifo]);
    const error = await trace({ command: fixturePath('seed'), allocator: { path: fifo }, stdio: 'ignore' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ELEAK_UNSAFE_FILE' });
    expect((error as Error).message).toMatch(/is a FIFO, not a regular file: not opened/);
    expect(await launchersGone()).toEqual([]);
  });
});

describe('zombies and kernel threads', () => {
  it('a kernel thread is named as one', async () => {
    const kthreadd = 2;
    expect(readFileSync(`/proc/${kthreadd}/comm`, 'utf8').trim()).toBe('kthreadd');
    const error = await trace({ pid: kthreadd }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ELEAK_OPTION' });
    expect((error as Error).message).toBe(
      'process 2 (kthreadd) is a kernel thread: it has no user-space memory or malloc to trace. Give the pid of a user-space program.',
    );
  });

  it('a zombie is named as one', async () => {
    // The child exits at once; its parent (sh, busy in sleep) does not reap it for a while.
    const parent = spawn('sh', ['-c', '/bin/true & exec sleep 30'], { stdio: 'ignore' });
    let zombie: number | undefined;
    for (let i = 0; i < 500 && zombie === undefined; i++) {
      await new Promise((r) => setTimeout(r, 10));
      const children = readFileSync(`/proc/${parent.pid}/task/${parent.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
      zombie = children.map(Number).find((pid) => readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '));
    }
    try {
      expect(zombie).toBeDefined();
      const error = await trace({ pid: zombie! }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'ELEAK_TARGET_EXITED' });
      expect((error as Error).message).toMatch(new RegExp(`^process ${zombie} \\(true\\) has exited: it is a zombie`));
    } finally {
      parent.kill('SIGKILL');
      await once(parent, 'exit');
    }
  });
});
