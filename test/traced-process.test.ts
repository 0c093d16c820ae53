// The program a `command` trace starts (lib/tracer/traced-process.ts, native/process/held_process.cc): spawned
// with posix_spawn() instead of child_process, so everything ChildProcess did for us is checked
// here: stdio in each mode, the working directory, signal dispositions, exit status, kill().
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { launcherPath, loadNative } from '../lib/native/addon.js';
import { trace } from '../lib/index.js';

const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-process-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function readAll(stream: Readable | null): Promise<string> {
  let text = '';
  stream!.setEncoding('utf8');
  for await (const chunk of stream!) text += chunk;
  return text;
}

describe("stdio: 'pipe'", () => {
  it('gives the program pipes for its stdin, stdout and stderr', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'read line; echo "out:$line"; echo err >&2; exit 4'], stdio: 'pipe' });
    const child = tracer.process!;
    const out = readAll(child.stdout);
    const err = readAll(child.stderr);
    child.stdin!.end('hello\n');
    const closed = once(child, 'close');
    const report = await tracer.done;
    expect(await out).toBe('out:hello\n');
    expect(await err).toBe('err\n');
    expect(await closed).toEqual([4, null]);
    expect(report.target.exitCode).toBe(4);
    expect(child.exitCode).toBe(4);
    expect(child.signalCode).toBeNull();
    expect(child.stdio).toEqual([child.stdin, child.stdout, child.stderr]);
  });

  it("'close' comes after 'exit' even when nobody reads the output", async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'echo unread; echo unread >&2'], stdio: 'pipe' });
    const order: string[] = [];
    tracer.process!.on('exit', () => order.push('exit'));
    const closed = once(tracer.process!, 'close').then(() => order.push('close'));
    await tracer.done;
    await closed;
    expect(order).toEqual(['exit', 'close']);
  });
});

describe("stdio: 'inherit' and 'ignore'", () => {
  it("'inherit': the program has this process's fds 0-2 open (ours are close-on-exec)", async () => {
    const tracer = await trace({
      command: 'sh',
      args: ['-c', 'test -e /proc/self/fd/0 && test -e /proc/self/fd/1 && test -e /proc/self/fd/2 || exit 9'],
      stdio: 'inherit',
    });
    expect((await tracer.done).target.exitCode).toBe(0);
    expect(tracer.process!.stdout).toBeNull();
  });

  it("'ignore': fds 0-2 are /dev/null", async () => {
    const out = join(dir, 'ignored');
    const tracer = await trace({ command: 'sh', args: ['-c', `readlink /proc/self/fd/0 /proc/self/fd/2 > ${out}`], stdio: 'ignore' });
    expect((await tracer.done).target.exitCode).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('/dev/null\n/dev/null\n');
  });
});

describe('what the program starts with', () => {
  it('runs in `cwd`, with `env`', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'echo "$PWD $GREETING"'], cwd: dir, env: { PATH: process.env.PATH, GREETING: 'hi' }, stdio: 'pipe' });
    const out = readAll(tracer.process!.stdout);
    await tracer.done;
    expect(await out).toBe(`${dir} hi\n`);
  });

  it('a missing working directory is a clear error before anything starts', async () => {
    await expect(trace({ command: 'true', cwd: join(dir, 'missing') })).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
      message: expect.stringMatching(/options\.cwd: .*missing is not a directory/),
    });
  });

  it("every signal at its default: Node's ignored SIGPIPE is not inherited", async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'kill -PIPE $$; exit 0'], stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.target.signal).toBe('SIGPIPE');
    expect(tracer.process!.signalCode).toBe('SIGPIPE');
  });
});

describe('kill()', () => {
  it('signals the running program, and is a no-op once it has ended', async () => {
    const tracer = await trace({ command: 'sleep', args: ['30'], stdio: 'ignore' });
    const child = tracer.process!;
    expect(() => child.kill('SIGNOPE' as NodeJS.Signals)).toThrow(/unknown signal SIGNOPE/);
    expect(child.killed).toBe(false);
    expect(child.kill('SIGINT')).toBe(true);
    expect(child.killed).toBe(true);
    expect(await child.exited).toEqual({ code: null, signal: 'SIGINT' });
    expect(child.kill()).toBe(false);
    expect((await tracer.done).target.signal).toBe('SIGINT');
  });
});

describe('the held launcher (native HeldProcess)', () => {
  it('never runs the program when closed before release()', async () => {
    const marker = join(dir, 'ran');
    const launcher = launcherPath();
    const held = new (loadNative().HeldProcess)(
      { file: launcher, argv: [launcher, '/bin/sh', 'sh', '-c', `touch ${marker}`], env: [], stdio: 'ignore' },
      () => {},
    );
    const { pid } = await held.start();
    // Right after the spawn the launcher may still be inside its exec, whose new command line
    // reads empty for a moment.
    for (let i = 0; i < 100 && readFileSync(`/proc/${pid}/cmdline`, 'utf8') === ''; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('ebpf-leak-exec');
    held.close();
    // The launcher reads EOF on its fd 3 and exits (a zombie: the closed watch no longer reaps).
    const deadline = Date.now() + 5000;
    while (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0] !== 'Z' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0]).toBe('Z');
    expect(existsSync(marker)).toBe(false);
    held.close(); // idempotent
  });

  it('a launcher that cannot start is an error naming it', async () => {
    const held = new (loadNative().HeldProcess)({ file: join(dir, 'no-launcher'), argv: ['x'], env: [], stdio: 'ignore' }, () => {});
    await expect(held.start()).rejects.toThrow(/cannot start .*no-launcher: posix_spawn: No such file or directory/);
  });
});
