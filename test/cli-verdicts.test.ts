// The CLI's verdicts and words, end to end (dist/cli/main.js against real programs): incomplete
// runs fail with their own exit status, crashes come before --error-exitcode, what is checked
// before the program starts is checked before, and messages are true and name CLI flags.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath } from './helpers/fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-cli-verdicts-'));
const started: ChildProcess[] = [];

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function startCli(args: string[], options: { env?: NodeJS.ProcessEnv; prefix?: string[] } = {}) {
  const prefix = options.prefix ?? [];
  const argv = [...prefix, process.execPath, cli, ...args];
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', ...options.env },
  });
  started.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const result = new Promise<Result>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  /** Resolves once stderr contains `text`. */
  const stderrHas = (text: string) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (stderr.includes(text) || child.exitCode !== null) resolve();
        else child.stderr.once('data', () => setImmediate(check));
      };
      check();
    });
  return { child, result, stderrHas };
}

function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; prefix?: string[] } = {}): Promise<Result> {
  return startCli(args, options).result;
}

function compile(name: string, source: string, flags: string[] = []): string {
  const out = join(dir, name);
  writeFileSync(`${out}.c`, source);
  execFileSync('gcc', ['-g', '-O0', '-fno-omit-frame-pointer', ...flags, '-o', out, `${out}.c`]);
  return out;
}

async function startReady(program: string): Promise<ChildProcess> {
  const child = spawn(program, [], { stdio: ['ignore', 'pipe', 'ignore'] });
  started.push(child);
  for await (const line of createInterface({ input: child.stdout! })) if (line === 'ready') break;
  return child;
}

beforeAll(() => {
  if (!existsSync(cli)) execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: root });
}, 120_000);

afterAll(() => {
  for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('incomplete runs', () => {
  it('fail with exit status 3 and never say "all heap blocks were freed", even with --error-exitcode', async () => {
    // Without the scan, every block kept counts (the program keeps them all reachable).
    const r = await runCli(['run', '--no-leak-kinds', '--max-allocations', '1000', '--error-exitcode', '9', '--', fixturePath('many_outstanding')]);
    expect(r.stderr).toMatch(/allocations were not tracked because the address map was full/);
    expect(r.stderr).not.toContain('all heap blocks were freed');
    expect(r.stderr).toMatch(/inconclusive/);
    // Blocks were listed too: --error-exitcode wins over inconclusive (a definite failure).
    expect(r.code).toBe(9);
    const quiet = await runCli(['run', '--max-allocations', '1000', '--', fixturePath('many_outstanding')]);
    expect(quiet.code).toBe(3);
    expect(quiet.stderr).toContain('ebpf-leak: the data is incomplete, so the run fails as inconclusive; --allow-inconclusive accepts it\n');
  });

  it('--allow-inconclusive opts out: the program\'s own status', async () => {
    const r = await runCli(['run', '--allow-inconclusive', '--max-allocations', '1000', '--', fixturePath('many_outstanding')]);
    expect(r.code).toBe(0);
  });

  it('"in use at exit" all suppressed is said to be suppressed', async () => {
    const supp = join(dir, 'all.supp');
    writeFileSync(supp, '{\n   exit-immediately\n   Memcheck:Leak\n   fun:malloc\n   fun:main\n}\n');
    const r = await runCli(['run', '--no-leak-kinds', '--suppressions', supp, '--', fixturePath('exit_immediately')]);
    expect(r.stderr).toContain('    in use at exit: 24 bytes in 1 blocks\n');
    expect(r.stderr).toContain('LEAK SUMMARY: no leaks listed: the 24 bytes in 1 blocks still in use are all suppressed');
    expect(r.stderr).not.toContain('all heap blocks were freed');
    expect(r.code).toBe(0);
  });
});

describe('crashes', () => {
  it('abort() is SIGABRT, and a crash takes priority over --error-exitcode, as with valgrind', async () => {
    const prog = compile('leak_abort', '#include <stdlib.h>\nvoid *volatile p;\nint main(void) { p = malloc(40); p = 0; abort(); }\n');
    // Unscanned: abort()'s own frames hold a stale copy of the pointer, which a scan of raw memory
    // takes for a live one (docs/leak-kinds.md, "Where it differs from valgrind").
    const r = await runCli(['run', '--no-leak-kinds', '--error-exitcode', '9', '--', prog]);
    expect(r.stderr).toContain('killed by SIGABRT;');
    expect(r.stderr).not.toContain('SIGIOT');
    expect(r.stderr).toContain('40 bytes in 1 blocks are still allocated');
    expect(r.code).toBe(134);
  });

  it('a crash under attach is named', async () => {
    const child = await startReady(fixturePath('forever'));
    const cliRun = startCli(['attach', '-p', String(child.pid), '--interval', '0']);
    await cliRun.stderrHas(`ebpf-leak: tracing pid ${child.pid}`);
    child.kill('SIGSEGV');
    const r = await cliRun.result;
    expect(r.stderr).toContain(`pid ${child.pid}\nkilled by SIGSEGV;`);
  });
});

describe('checked before the program starts', () => {
  it('--json into a missing directory: exit 2, and the program never ran', async () => {
    const marker = join(dir, 'ran');
    const r = await runCli(['run', '--json', join(dir, 'missing', 'report.json'), '--', 'sh', '-c', `touch ${marker}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`ebpf-leak: cannot write the JSON report to ${join(dir, 'missing', 'report.json')}: directory ${join(dir, 'missing')} does not exist\n`);
    expect(existsSync(marker)).toBe(false);
  });

  it.each([
    [['attach', '-p', '-1'], "option '--pid' needs an integer from 1 to 4194304, not '-1'"],
    [['run', '--top', '-1', '--', 'true'], "option '--top' needs an integer from 0 to"],
    [['attach', '-p', '1', '--interval', '-1'], "option '--interval' needs a number of seconds (0 or more), not '-1'"],
  ])('%j: the value is wrong, not missing', async (args, message) => {
    const r = await runCli(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stderr).not.toContain('needs a value');
  });

  it('a directory given as the command', async () => {
    const r = await runCli(['run', '--', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`ebpf-leak: cannot run ${dir}: it is a directory. Give the program inside it.\n`);
  });

  it('a kernel thread', async () => {
    const r = await runCli(['attach', '-p', '2']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('ebpf-leak: process 2 (kthreadd) is a kernel thread: it has no user-space memory or malloc to trace. Give the pid of a user-space program.\n');
  });
});

describe('words', () => {
  it('the permission message is not "ebpf-leak: ebpf-leak"', async () => {
    const r = await runCli(['run', '--', 'true'], { prefix: ['setpriv', '--inh-caps=-all', '--bounding-set=-all'] });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ebpf-leak cannot load BPF programs/);
    expect(r.stderr).not.toContain('ebpf-leak: ebpf-leak');
  });

  it('messages name CLI flags, not library options', async () => {
    // A static executable without its symbol table: no malloc to find, so the user must name it.
    const prog = compile('static_prog', 'int main(void) { return 0; }\n', ['-static', '-s']);
    const r = await runCli(['run', '--', prog]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Name it with --allocator PATH --allocator-symbol malloc=je_malloc ...');
    expect(r.stderr).not.toContain('allocator: {');
  });

  it('a program that ends threads: no warning about frees never seen allocated', async () => {
    const r = await runCli(['run', '--', fixturePath('threads')]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('never seen allocated');
    expect(r.stderr).not.toContain('another allocator');
  });

  it('attach prints the top stacks with their frames, not stack ids', async () => {
    const child = await startReady(fixturePath('forever'));
    const r = await runCli(['attach', '-p', String(child.pid), '--interval', '0.5', '--duration', '2']);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toMatch(/from stack \d/);
    expect(r.stderr).toMatch(/\t[\d,]+ bytes in [\d,]+ allocations from stack\n(\t\t.*\n)*\t\t0x[0-9a-f]+: main \(.*forever\.c:\d+\)/);
  });
});

describe('sudo', () => {
  it('runs the program as the invoking user (SUDO_UID, SUDO_GID), unless --as-root', async () => {
    const env = { SUDO_UID: '65534', SUDO_GID: '65534', SUDO_USER: 'nobody' };
    const asUser = await runCli(['run', '--', 'sh', '-c', 'id -u; id -g; echo "$HOME"'], { env });
    expect(asUser.code).toBe(0);
    expect(asUser.stdout).toBe('65534\n65534\n/nonexistent\n');
    const asRoot = await runCli(['run', '--as-root', '--', 'id', '-u'], { env });
    expect(asRoot.stdout).toBe('0\n');
    const noSudo = await runCli(['run', '--', 'id', '-u'], { env: { SUDO_UID: undefined, SUDO_GID: undefined } });
    expect(noSudo.stdout).toBe('0\n');
  });
});
