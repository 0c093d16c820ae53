// End to end: the built CLI (dist/cli/main.js) against real programs, traced for real. Needs what the
// tracer needs (root or CAP_BPF+CAP_PERFMON, BTF, uprobes), the native addon built
// (`npm run build:native`) and the C fixtures (test/helpers/fixtures.ts).
//
// Expected numbers are valgrind's for the same fixture, run with --run-libc-freeres=no (valgrind
// otherwise frees glibc's internal buffers at exit, which a uprobe tracer never sees happen):
//
//   seed, stdout a pipe:  in use at exit: 4,104 bytes in 2 blocks
//                         total heap usage: 11 allocs, 9 frees, 4,176 bytes allocated
//     (the 8-byte leak, plus the 4,096-byte stdout buffer printf() allocates for a pipe)
//   exit_immediately:     in use at exit: 24 bytes in 1 blocks
//                         total heap usage: 1 allocs, 0 frees, 24 bytes allocated

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildCli, cliPath as cli } from './helpers/built-cli.js';
import { fixturePath } from './helpers/fixtures.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function startCli(args: string[]): { child: ChildProcess; result: Promise<Result> } {
  const child = spawn(process.execPath, [cli, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const result = new Promise<Result>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, result };
}

function runCli(args: string[], timeoutMs = 30_000): Promise<Result> {
  const { child, result } = startCli(args);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return result.finally(() => clearTimeout(timer));
}

/** Lines of the report group whose header starts with `header`, up to the next blank line. */
function groupLines(stderr: string, header: string): string[] {
  const lines = stderr.split('\n');
  const start = lines.findIndex((l) => l.startsWith(header));
  if (start < 0) return [];
  const end = lines.indexOf('', start);
  return lines.slice(start, end < 0 ? undefined : end);
}

/** Starts a program and resolves once it printed a line matching `ready`. */
function startProgram(
  file: string,
  args: string[],
  ready: RegExp,
): Promise<{ child: ChildProcess; match: RegExpMatchArray }> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.on('error', reject);
    child.on('exit', () => reject(new Error(`${file} exited before printing ${ready}`)));
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const match = out.match(ready);
      if (match) resolve({ child, match });
    });
  });
}

const seedSummary = {
  allocs: 11,
  frees: 9,
  bytesAllocated: 4176,
  inUseBlocks: 2,
  inUseBytes: 4104,
  lostEvents: 0,
  droppedAllocations: 0,
  unknownFrees: 0,
  errors: { 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 },
};

let tmp: string;
const started: ChildProcess[] = [];

beforeAll(() => {
  buildCli();
  for (const name of ['seed', 'exit_immediately', 'forever']) {
    if (!existsSync(fixturePath(name))) throw new Error(`fixture ${name} not built: ${fixturePath(name)}`);
  }
  tmp = mkdtempSync(join(tmpdir(), 'ebpf-leak-cli-'));
}, 120_000);

afterAll(() => {
  for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('help and usage (no tracing)', () => {
  it('--help lists the commands and exits 0', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ebpf-leak run [OPTIONS] -- COMMAND [ARGS...]');
    expect(r.stdout).toContain('ebpf-leak attach -p PID [OPTIONS]');
    expect(r.stdout).toContain('Exit status:');
    expect(r.stderr).toBe('');
  });

  it('help run, run --help, attach --help', async () => {
    const [helpRun, runHelp, attachHelp] = await Promise.all([
      runCli(['help', 'run']),
      runCli(['run', '--no-leak-kinds', '--help']),
      runCli(['attach', '--help']),
    ]);
    expect(helpRun.code).toBe(0);
    expect(runHelp.code).toBe(0);
    expect(helpRun.stdout).toBe(runHelp.stdout);
    expect(runHelp.stdout).toMatch(/^Usage: ebpf-leak run \[OPTIONS\] \[--\] COMMAND \[ARGS\.\.\.\]\n/);
    for (const flag of ['--json FILE', '--error-exitcode N', '--top N', '--max-allocations N', '--events', '--verbose']) {
      expect(runHelp.stdout).toContain(flag);
    }
    expect(attachHelp.code).toBe(0);
    for (const flag of ['-p, --pid PID', '--interval S', '--duration S', '--top N', '--json FILE']) {
      expect(attachHelp.stdout).toContain(flag);
    }
  });

  it('--version prints the package version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`ebpf-leak ${version}\n`);
  });

  it('an unknown flag is a one-line error pointing at the help, exit 2', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--frobnicate', '--', 'true']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      "ebpf-leak: unknown option '--frobnicate'\n" +
        'usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]\n' +
        "try 'ebpf-leak run --help'\n",
    );
  });

  it('a missing argument is a usage error, exit 2', async () => {
    const r = await runCli(['attach']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe('ebpf-leak: missing the process to trace: -p PID');
    expect(r.stderr).toContain("try 'ebpf-leak attach --help'");
  });
});

describe('run', () => {
  it('reports the seed: the 8-byte leak and the stdout buffer, program stdout untouched', async () => {
    const seed = fixturePath('seed');
    const r = await runCli(['run', '--no-leak-kinds', '--', seed]);
    expect(r.stderr).not.toMatch(/^ebpf-leak: /m);
    expect(r.code).toBe(0);
    // The program's stdout is exactly its own.
    const m = /^pid :(\d+)\n$/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    const pid = Number(m?.[1]);

    const lines = r.stderr.split('\n');
    expect(lines[0]).toBe(`pid ${pid}: ${seed}`);
    expect(lines[1]).toMatch(/^exited with status 0; traced for .+; allocator \/.*libc\.so\.6$/);
    expect(lines).toContain('HEAP SUMMARY:');
    expect(lines).toContain('    in use at exit: 4,104 bytes in 2 blocks');
    expect(lines).toContain('  total heap usage: 11 allocs, 9 frees, 4,176 bytes allocated');
    expect(r.stderr).not.toContain('warning:');

    // The leak list leaves out glibc's one-time stdout buffer (a default suppression) and says so;
    // the HEAP SUMMARY above still counts it, as valgrind does.
    const leak = groupLines(r.stderr, '8 bytes in 1 blocks are still allocated');
    expect(leak[0]).toBe('8 bytes in 1 blocks are still allocated in loss record 1 of 1');
    expect(leak.slice(1).some((l) => /^ {3}(at|by) 0x[0-9a-f]+: main \(.*seed\.c:22\)/.test(l)), leak.join('\n')).toBe(true);
    expect(lines).toContain('LEAK SUMMARY: leaked: 8 bytes in 1 blocks in 1 groups');
    expect(lines).toContain('suppressed: 4,096 bytes in 1 blocks');
    expect(lines).toContain('   4,096 bytes in 1 blocks by glibc-stdio-buffer (default suppressions)');
  }, 60_000);

  it('--no-default-suppressions lists every block still allocated, like valgrind', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--no-default-suppressions', '--', fixturePath('seed')]);
    expect(r.code).toBe(0);
    const leak = groupLines(r.stderr, '8 bytes in 1 blocks are still allocated');
    expect(leak[0]).toBe('8 bytes in 1 blocks are still allocated in loss record 2 of 2');
    const buffer = groupLines(r.stderr, '4,096 bytes in 1 blocks are still allocated');
    expect(buffer[0]).toBe('4,096 bytes in 1 blocks are still allocated in loss record 1 of 2');
    expect(buffer.some((l) => /_IO_file_doallocate/.test(l)), buffer.join('\n')).toBe(true);
    expect(r.stderr).toContain('LEAK SUMMARY: leaked: 4,104 bytes in 2 blocks in 2 groups');
    expect(r.stderr).not.toContain('suppressed:');
  }, 60_000);

  it('--suppressions FILE and --gen-suppressions: generated rules suppress what was found', async () => {
    const gen = await runCli(['run', '--no-leak-kinds', '--gen-suppressions', '--', fixturePath('seed')]);
    const rules = gen.stderr.slice(gen.stderr.indexOf('{'));
    expect(rules).toMatch(/^\{\n {3}ebpf-leak-1\n {3}Memcheck:Leak\n/);
    expect(rules).toContain('fun:main');
    const supp = join(tmp, 'seed.supp');
    writeFileSync(supp, rules);
    const r = await runCli(['run', '--no-leak-kinds', '--error-exitcode', '7', '--suppressions', supp, '--', fixturePath('seed')]);
    expect(r.code).toBe(0); // nothing left unsuppressed
    expect(r.stderr).toContain('LEAK SUMMARY: no leaks');
    expect(r.stderr).toContain(`8 bytes in 1 blocks by ebpf-leak-1 (${supp}:`);
  }, 60_000);

  it('--json FILE writes the documented schema', async () => {
    const seed = fixturePath('seed');
    const file = join(tmp, 'seed.json');
    const r = await runCli(['run', '--no-leak-kinds', '--json', file, '--', seed, '0']);
    expect(r.code).toBe(0);
    const pid = Number(/^pid :(\d+)\n$/.exec(r.stdout)?.[1]);
    const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;

    expect(Object.keys(json)).toEqual(['version', 'target', 'durationMs', 'summary', 'leaks', 'errors', 'suppressed', 'untracedChildren']);
    expect(json.errors).toEqual([]);
    expect(json.untracedChildren).toBe(0);
    expect(json.suppressed).toEqual([{ rule: 'glibc-stdio-buffer', source: 'default', bytes: 4096, blocks: 1, groups: 1 }]);
    expect(json.version).toBe(1);
    expect(json.target).toEqual({
      pid,
      command: seed,
      args: ['0'],
      exitCode: 0,
      signal: null,
      allocator: expect.stringMatching(/^\/.*libc\.so\.6$/),
      commandLine: [seed, '0'],
      allocatorName: 'glibc',
    });
    expect(json.durationMs).toEqual(expect.any(Number));
    expect(json.summary).toEqual(seedSummary);

    const leaks = json.leaks as Array<Record<string, unknown>>;
    expect(leaks.map((g) => [g.bytes, g.blocks, g.largestBlock])).toEqual([[8, 1, 8]]);
    for (const g of leaks) {
      expect(Object.keys(g).sort()).toEqual(['blocks', 'bytes', 'largestBlock', 'sampleAddresses', 'stack']);
      const samples = g.sampleAddresses as string[];
      expect(samples.length).toBeGreaterThan(0);
      for (const a of samples) expect(a).toMatch(/^0x[0-9a-f]+$/);
      const stack = g.stack as Array<Record<string, unknown>>;
      expect(stack.length).toBeGreaterThan(0);
      for (const f of stack) {
        expect(f.address).toMatch(/^0x[0-9a-f]+$/);
        for (const key of Object.keys(f)) {
          expect(['address', 'module', 'buildId', 'offset', 'symbol', 'file', 'line', 'inlined']).toContain(key);
        }
      }
    }
    expect((leaks[0]?.stack as Array<{ symbol?: string }>).some((f) => f.symbol === 'main')).toBe(true);
  }, 60_000);

  it("--json - writes the JSON to stdout after the program's own output", async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--json', '-', '--', fixturePath('seed')]);
    expect(r.code).toBe(0);
    const [first, ...rest] = r.stdout.split('\n');
    expect(first).toMatch(/^pid :\d+$/);
    const json = JSON.parse(rest.join('\n')) as { summary: unknown };
    expect(json.summary).toEqual(seedSummary);
    // The human report still goes to stderr.
    expect(r.stderr).toContain('    in use at exit: 4,104 bytes in 2 blocks');
  }, 60_000);

  it('--follow-forks: one section per process, processes[] in the JSON, and a leaking child fails the run', async () => {
    const r = await runCli(['run', '--follow-forks', '--error-exitcode', '9', '--json', '-', '--', fixturePath('fork_children'), '1']);
    expect(r.code).toBe(9);
    const sections = r.stderr.split('\n').filter((l) => l.startsWith('== process '));
    expect(sections).toHaveLength(2);
    expect(sections[0]).toMatch(/^== process (\d+): \S*fork_children 1 \(exit status 0\) ==$/);
    expect(sections[1]).toMatch(/^== process \d+: \S*fork_children 1 \(exit status 0, child of \d+\) ==$/);
    const json = JSON.parse(r.stdout) as { target: { pid: number }; processes: Array<{ target: { pid: number; parentPid?: number }; summary: Record<string, number> }> };
    expect(json.processes.map((p) => p.target.parentPid)).toEqual([undefined, json.target.pid]);
    expect(json.processes[1]!.summary).toMatchObject({ inUseBytes: 110, inUseBlocks: 2, allocs: 2, frees: 0 });
  }, 60_000);

  it('without --follow-forks, the report counts the children and names the option', async () => {
    const r = await runCli(['run', '--', fixturePath('fork_children'), '2']);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('note: 2 child processes ran untraced; trace them with --follow-forks');
  }, 60_000);

  it('--error-exitcode 7 exits 7 when blocks leaked', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--error-exitcode', '7', '--', fixturePath('seed')]);
    expect(r.code).toBe(7);
    expect(r.stderr).toContain('LEAK SUMMARY: leaked: 8 bytes in 1 blocks in 1 groups');
  }, 60_000);

  it('--error-exitcode fires on heap errors, printed as valgrind prints them', async () => {
    // No leak of its own (the C++ runtime's start-up pool is still reachable): the three
    // mismatched frees alone set the status. valgrind's wording, the release stack, the block.
    const r = await runCli(['run', '--error-exitcode', '9', '--', fixturePath('heap_errors'), 'mismatch'], 60_000);
    expect(r.code).toBe(9);
    const first = groupLines(r.stderr, 'Mismatched free() / delete / delete []');
    expect(first[1]).toMatch(/^ {3}at 0x[0-9a-f]+: free \[/);
    expect(first[2]).toMatch(/^ {3}by 0x[0-9a-f]+: mismatches\(\) \(.*heap_errors\.cc:\d+\)/);
    expect(first.find((l) => l.startsWith(' Address '))).toMatch(/^ Address 0x[0-9a-f]+ is 0 bytes inside a block of size 10 alloc'd$/);
    expect(first).toContainEqual(expect.stringMatching(/^ {3}at 0x[0-9a-f]+: operator new\[\]\(unsigned long\) \[/));
    expect(r.stderr).toContain('ERROR SUMMARY: 3 errors (3 mismatched frees)');
    const stack = await runCli(['run', '--error-exitcode', '9', '--', fixturePath('heap_errors'), 'stack'], 60_000);
    expect(stack.code).toBe(9); // not the 134 of glibc's abort
    expect(stack.stderr).toContain('Invalid free() / delete / delete[] / realloc()');
    expect(stack.stderr).toContain('ERROR SUMMARY: 1 errors (1 invalid frees)');
  }, 120_000);

  it('--preload: the seed traced through the preloaded entry points; refused with --follow-forks', async () => {
    const r = await runCli(['run', '--preload', '--error-exitcode', '7', '--', fixturePath('seed')]);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(/; allocator \S*\/libebpf-leak-preload\.so\n/);
    expect(r.stderr).toMatch(/8 bytes in 1 blocks are definitely lost in loss record \d+ of \d+\n {3}at 0x[0-9a-f]+: malloc \[\S*libebpf-leak-preload\.so\]\n {3}by 0x[0-9a-f]+: main \(.*seed\.c:\d+\)/);
    expect(r.stderr).toContain('total heap usage: 11 allocs, 9 frees');
    const refused = await runCli(['run', '--preload', '--follow-forks', '--', fixturePath('seed')]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('options.preload cannot be used with followForks');
  }, 60_000);

  it('--top 1 shows the largest group and counts the rest', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--top', '1', '--no-default-suppressions', '--', fixturePath('seed')]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('4,096 bytes in 1 blocks are still allocated in loss record 1 of 2');
    expect(r.stderr).not.toContain('8 bytes in 1 blocks are still allocated');
    expect(r.stderr).toContain('... 1 more group (8 bytes in 1 blocks) not shown;');
  }, 60_000);

  it('a program leaving with _exit() right after its only allocation', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--', fixturePath('exit_immediately')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('    in use at exit: 24 bytes in 1 blocks\n');
    expect(r.stderr).toContain('  total heap usage: 1 allocs, 0 frees, 24 bytes allocated\n');
    expect(r.stderr).toContain('24 bytes in 1 blocks are still allocated in loss record 1 of 1\n');
  }, 60_000);

  it("passes on the program's exit status", async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--', '/bin/sh', '-c', 'exit 3']);
    expect(r.stderr).toContain('exited with status 3;');
    expect(r.code).toBe(3);
  }, 60_000);

  it('exits 128+N when signal N killed the program, like a shell', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--', '/bin/sh', '-c', 'kill -TERM $$']);
    expect(r.stderr).toContain('killed by SIGTERM;');
    expect(r.code).toBe(143);
  }, 60_000);

  it('forwards SIGTERM sent to ebpf-leak to the program, then reports', async () => {
    // Without the default rules: killed right after "ready", stdout's buffer may be all it holds.
    const { child, result } = startCli(['run', '--no-leak-kinds', '--no-default-suppressions', '--', fixturePath('forever')]);
    started.push(child);
    await new Promise<void>((resolve) => {
      let out = '';
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready\n')) resolve();
      });
    });
    child.kill('SIGTERM');
    const r = await result;
    expect(r.code).toBe(143);
    expect(r.stderr).toContain('killed by SIGTERM;');
    expect(r.stderr).toMatch(/ bytes in \d+ blocks are still allocated/);
  }, 60_000);

  it('a command that does not exist: the message, no stack trace, exit 2', async () => {
    const r = await runCli(['run', '--no-leak-kinds', '--', join(tmp, 'no-such-program')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ebpf-leak: .*no-such-program/);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stderr).not.toContain('internal error');
  }, 60_000);
});

describe('attach', () => {
  it('prints top stacks periodically and a report after --duration; the process keeps running', async () => {
    const { child } = await startProgram(fixturePath('forever'), [], /ready\n/);
    started.push(child);
    const file = join(tmp, 'attach.json');
    const r = await runCli(['attach', '-p', String(child.pid), '--interval', '0.5', '--duration', '2', '--json', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      /\[\d\d:\d\d:\d\d\] Top 10 stacks with outstanding allocations:\n\t[\d,]+ bytes in [\d,]+ allocations from (stack\n\t\t0x[0-9a-f]+: |an uncaptured stack\n)/,
    );
    expect(r.stderr).toContain(`pid ${child.pid}\nstill running (tracing stopped); traced for `);
    // One 32-byte node leaks every 10 ms or so; the 64-byte block is freed right away.
    expect(r.stderr).toMatch(/\n    in use at stop: [\d,]+ bytes in [\d,]+ blocks\n/);
    expect(r.stderr).toMatch(/\n[\d,]+ bytes in [\d,]+ blocks are still allocated in loss record 1 of \d+\n/);
    const json = JSON.parse(readFileSync(file, 'utf8')) as {
      target: { pid: number; command: unknown; exitCode: unknown; signal: unknown };
      leaks: Array<{ bytes: number; blocks: number; largestBlock: number }>;
    };
    expect(json.target).toMatchObject({ pid: child.pid, command: null, exitCode: null, signal: null });
    expect(json.leaks[0]?.largestBlock).toBe(32);
    expect(json.leaks[0]?.bytes).toBe(32 * (json.leaks[0]?.blocks ?? 0));
    expect(child.exitCode).toBeNull();
    child.kill('SIGKILL');
  }, 60_000);

  it('reports when the process exits, with only what was allocated after the attach', async () => {
    // seed sleeps 3 s before its allocations; its stdout buffer was allocated before the attach.
    const { child, match } = await startProgram(fixturePath('seed'), ['3'], /pid :(\d+)\n/);
    started.push(child);
    expect(Number(match[1])).toBe(child.pid);
    const r = await runCli(['attach', '-p', String(child.pid), '--interval', '0']);
    expect(r.code).toBe(0);
    // Not our child, but the kernel told the exit status.
    expect(r.stderr).toContain(`pid ${child.pid}\nexited with status 0; traced for `);
    expect(r.stderr).toContain('\n    in use at exit: 8 bytes in 1 blocks\n');
    expect(r.stderr).toContain('  total heap usage: 10 allocs, 9 frees, 80 bytes allocated\n');
    expect(r.stderr).toContain('8 bytes in 1 blocks are still allocated in loss record 1 of 1\n');
    // Not held at its exit: the blocks have no kind, and the report says so.
    expect(r.stderr).toContain('leak kinds: not scanned (--scan stops the process briefly to scan its memory)');
    expect(r.stderr).not.toContain('definitely lost');
    expect(r.stderr).not.toContain('Top 10 stacks');
  }, 60_000);

  it('no such process: the message, no stack trace, exit 2', async () => {
    const r = await runCli(['attach', '-p', '4194304']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ebpf-leak: /);
    expect(r.stderr).not.toMatch(/^\s+at /m);
  }, 60_000);
});
