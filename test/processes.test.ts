// One file by design: each case runs one process tree under valgrind and under the tracer, with the helpers that compare the two.
// Processes as they really run: an exec starts the new image's report, and with followForks every
// child and grandchild gets a report of its own. The oracle is valgrind --trace-children=yes: each
// process's HEAP SUMMARY (in use at exit, total heap usage) must equal the report of the process
// it ran as. Pids differ between the two runs, so the processes of a tree are compared as a
// multiset of summaries, and the first process by its own.
//
// Both runs get one explicit environment and stdio 'ignore', as in test/oracle.test.ts: valgrind
// is run as valgrind.bin, so it adds only LD_PRELOAD (its preload libraries) to the environment,
// and the traced run gets an LD_PRELOAD too, of the same length, made of separators the dynamic
// loader skips: a shell keeps a record per variable of its environment (dash: 32 bytes each),
// and make a copy of each value, which would otherwise differ.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { assertReport } from '../lib/harness/program-check.js';
import { checkReport, formatCheckedReport } from '../lib/report/checked.js';
import { LeakError, trace } from '../lib/index.js';
import { heapErrorTotal } from '../lib/report/heap-errors.js';
import { toJsonReport } from '../lib/report/json-format.js';
import type { AllocEvent, HeapSummary, LeakReport, ProcessSnapshot } from '../lib/types.js';
import { fixturePath, fixturesDir } from './helpers/fixtures.js';
import { runValgrind, type ValgrindHeapSummary } from './helpers/valgrind.js';
import { runValgrindTree, type ValgrindTree } from './helpers/valgrind-children.js';
import { bpfObjectsOf } from './reliability/bpf-objects.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const fields = ['inUseBytes', 'inUseBlocks', 'allocs', 'frees', 'bytesAllocated'] as const;

/** valgrind's LD_PRELOAD (its two preload libraries), as the programs see it. */
function valgrindPreload(): string {
  const dirs = ['/usr/libexec/valgrind', '/usr/lib/x86_64-linux-gnu/valgrind', '/usr/lib/valgrind'];
  const dir = dirs.find((d) => existsSync(join(d, 'vgpreload_core-amd64-linux.so')));
  if (!dir) throw new Error(`valgrind's preload libraries are not in ${dirs.join(', ')}`);
  return `${dir}/vgpreload_core-amd64-linux.so:${dir}/vgpreload_memcheck-amd64-linux.so`;
}
const preloadStandIn = ':'.repeat(valgrindPreload().length);

function tuple(s: HeapSummary | ValgrindHeapSummary): string {
  return fields.map((f) => s[f]).join('/');
}

/** Each process's summary, sorted: the tree as a multiset. */
function ours(report: LeakReport): string[] {
  return (report.processes ?? [report]).map((p) => tuple(p.summary)).sort();
}
function theirs(tree: ValgrindTree): string[] {
  return [...tree.processes.values()].map((p) => tuple(p.summary)).sort();
}

function expectClean(report: LeakReport): void {
  for (const p of report.processes ?? [report]) {
    expect(p.summary.droppedAllocations, `process ${p.target.pid}`).toBe(0);
    expect(p.summary.lostEvents, `process ${p.target.pid}`).toBe(0);
    expect(p.untraced, `process ${p.target.pid}`).toBeUndefined();
  }
}

async function traced(
  command: string,
  args: string[],
  options: { followForks?: boolean; cwd?: string; maxAllocations?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<LeakReport> {
  const tracer = await trace({
    command,
    args,
    env: { ...(options.env ?? env), LD_PRELOAD: preloadStandIn },
    stdio: 'ignore',
    followForks: options.followForks ?? false,
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    ...(options.maxAllocations !== undefined ? { maxAllocations: options.maxAllocations } : {}),
  });
  return tracer.done;
}

async function compareTree(command: string, args: string[], options: { cwd?: string; maxAllocations?: number } = {}) {
  const vg = await runValgrindTree(command, args, { env, ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) });
  const report = await traced(command, args, { followForks: true, ...options });
  expectClean(report);
  expect(ours(report)).toEqual(theirs(vg));
  // The top-level report is the first process's.
  expect(tuple(report.summary)).toBe(tuple(vg.processes.get(vg.rootPid)!.summary));
  expect(report.processes![0]!.target.pid).toBe(report.target.pid);
  return { vg, report };
}

/** The BPF maps `pid` holds, by name. */
function bpfMapsOf(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const o of bpfObjectsOf(pid)) {
    if (o.kind !== 'map') continue;
    const info = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'id', String(o.id)], { encoding: 'utf8' })) as { name: string };
    out.set(info.name, o.id);
  }
  return out;
}

/** A map's entries as bpftool dumps them: raw key and value bytes (per CPU for per-CPU maps). */
function dumpMap(id: number): { key: Buffer; values: Buffer[] }[] {
  const bytes = (hex: string[]) => Buffer.from(hex.map((h) => Number(h)));
  const entries = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'dump', 'id', String(id)], { encoding: 'utf8', maxBuffer: 1 << 28 })) as {
    key: string[];
    value?: string[];
    values?: { value: string[] }[];
  }[];
  return entries.map((e) => ({ key: bytes(e.key), values: e.value ? [bytes(e.value)] : (e.values ?? []).map((v) => bytes(v.value)) }));
}

/** What the tracer's per-process maps hold: the pids in traced_procs, the process bits of every
 *  block (allocs and its spill) and of every recently released one, and the indexes whose
 *  counters are not all zero. */
function perProcessEntries(maps: Map<string, number>) {
  const id = (name: string) => {
    const found = maps.get(name);
    if (found === undefined) throw new Error(`the tracer holds no map ${name} (it has ${[...maps.keys()].join(', ')})`);
    return found;
  };
  const bits = (key: bigint) => key & ~((1n << 48n) - 1n);
  const tracedProcesses = dumpMap(id('traced_procs')).map((e) => e.key.readUInt32LE(0));
  // allocs' buckets and freed_blocks' sets both begin with 8 keys; 0 is an empty slot, 1 one
  // being written.
  const keyBits = (map: string): bigint[] =>
    dumpMap(id(map)).flatMap((entry) =>
      Array.from({ length: 8 }, (_, i) => entry.values[0]!.readBigUInt64LE(i * 8))
        .filter((key) => key > 1n)
        .map(bits),
    );
  const blockBits = keyBits('allocs');
  for (const e of dumpMap(id('spilled_allocs'))) blockBits.push(bits(e.key.readBigUInt64LE(0)));
  const freedBits = keyBits('freed_blocks');
  const countedIndexes = dumpMap(id('process_counter')) // names are cut to 15 characters
    .filter((e) => e.values.some((v) => v.some((b) => b !== 0)))
    .map((e) => e.key.readUInt32LE(0));
  return { tracedProcesses, blockBits, freedBits, countedIndexes };
}

/** A shell's run, with what its vfork'ed children did in its heap: dash starts each command with
 *  vfork(), and the child, in the shell's address space until its exec, may grow the shell's
 *  memory (a 512-byte block for a command with arguments), which the shell frees later. That is
 *  the shell's heap, and its report counts it; valgrind runs the vfork as a fork, where the block
 *  is the child's copy's and that free never happens. The event stream says which blocks. */
/** What dash allocates depends on the lengths of the strings it builds: a stack block a vfork'ed
 *  child grows stays the shell's afterwards, where under valgrind (vfork run as a fork) the shell
 *  may grow one of its own later. With paths as short as 17 characters or as long as 53 the
 *  children here allocate nothing in the shell's memory; at 30 and 41 the shell under valgrind
 *  makes one allocation more than the real one's own; at 23, what these tests use, the shell's
 *  own allocations are valgrind's, and its summary is valgrind's plus what its children allocated
 *  for it. A fixed directory makes that the same in every checkout. */
const shellDir = '/tmp/ebpf-leak-vfork-sh';
function inShellDir(name: string): string {
  mkdirSync(shellDir, { recursive: true });
  const link = join(shellDir, name);
  rmSync(link, { force: true });
  symlinkSync(fixturePath(name), link);
  return link;
}

async function tracedShell(script: string): Promise<{ report: LeakReport; shared: { blocks: number; bytes: number } }> {
  const tracer = await trace({
    command: '/bin/sh',
    args: ['-c', script],
    cwd: shellDir,
    env: { ...env, LD_PRELOAD: preloadStandIn },
    stdio: 'ignore',
    followForks: true,
    events: true,
  });
  const byChildren = new Map<bigint, number>();
  const shared = { blocks: 0, bytes: 0 };
  tracer.on('alloc', (e) => {
    if (e.pid !== tracer.pid) byChildren.set(e.address, e.size);
  });
  tracer.on('free', (e) => {
    if (e.pid === tracer.pid && byChildren.get(e.address) === e.size) {
      shared.blocks++;
      shared.bytes += e.size;
    }
    if (e.pid !== tracer.pid) byChildren.delete(e.address);
  });
  const report = await tracer.done;
  return { report, shared };
}

/** valgrind's summary of the shell, plus the blocks its vfork'ed children allocated in its heap and
 *  it freed: one alloc and one free each. */
function shellSummary(vg: ValgrindHeapSummary, shared: { blocks: number; bytes: number }): string {
  return tuple({ ...vg, allocs: vg.allocs + shared.blocks, frees: vg.frees + shared.blocks, bytesAllocated: vg.bytesAllocated + shared.bytes });
}

describe('exec: the report covers the image that exits', () => {
  it('a wrapper script that execs the program', async () => {
    const wrapper = join(fixturesDir, 'exec_wrapper.sh');
    const vg = await runValgrindTree(wrapper, [fixturePath('seed')], { env });
    const report = await traced(wrapper, [fixturePath('seed')]);
    expectClean(report);
    expect(vg.processes.size).toBe(1);
    expect(tuple(report.summary)).toBe(tuple(vg.processes.get(vg.rootPid)!.summary));
    expect(report.summary.inUseBytes).toBe(4104);
    expect(report.target.commandLine).toEqual([fixturePath('seed')]);
    // The shell's own blocks are labelled as the image before the exec, apart from the summary.
    expect(report.previousImages).toHaveLength(1);
    expect(report.previousImages![0]!.commandLine).toEqual([wrapper, fixturePath('seed')]);
    expect(report.previousImages![0]!.inUseBlocks).toBeGreaterThan(10);
    expect(report.untracedChildren).toBe(0);
  });

  it('env and nice in front of the program', async () => {
    const args = ['X=1', '/usr/bin/nice', '-n', '1', fixturePath('seed')];
    const vg = await runValgrindTree('/usr/bin/env', args, { env });
    const report = await traced('/usr/bin/env', args);
    expectClean(report);
    expect(tuple(report.summary)).toBe(tuple(vg.processes.get(vg.rootPid)!.summary));
    expect(report.previousImages!.map((i) => i.commandLine[0])).toEqual(['/usr/bin/env', '/usr/bin/nice']);
    // Not one of env's or nice's blocks is blamed on the program.
    expect(report.leaks.reduce((n, g) => n + g.blocks, 0)).toBe(2);
  });

  it('a program that mallocs and then execs: its block is no leak of either', async () => {
    for (const next of ['/bin/true', fixturePath('seed')]) {
      const vg = await runValgrindTree(fixturePath('malloc_exec'), [next], { env });
      const report = await traced(fixturePath('malloc_exec'), [next]);
      expectClean(report);
      expect(tuple(report.summary), next).toBe(tuple(vg.processes.get(vg.rootPid)!.summary));
      expect(report.leaks.some((g) => g.bytes === 999)).toBe(false);
      expect(report.previousImages).toEqual([
        { commandLine: [fixturePath('malloc_exec'), next], allocs: 1, frees: 0, bytesAllocated: 999, inUseBlocks: 1, inUseBytes: 999 },
      ]);
    }
  });

  it('without followForks, the report counts the children that ran untraced and names the option', async () => {
    const report = await traced(fixturePath('fork_children'), ['3']);
    expect(report.untracedChildren).toBe(3);
    expect(report.processes).toBeUndefined();
    // The parent alone: its 7 bytes; the 100 it freed; nothing of its children.
    expect(report.summary).toMatchObject({ inUseBytes: 7, inUseBlocks: 1, allocs: 2, frees: 1 });
    const text = formatCheckedReport(checkReport(report, []));
    expect(text).toContain('3 child processes ran untraced; trace them with --follow-forks (the library\'s followForks: true)');
  });
});

describe('exec into another allocator: attached before the image runs', () => {
  const symbols = (g: LeakReport['leaks'][number]) => g.stack.map((f) => f.symbol);

  it('a static binary (its malloc inside the executable)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-static-'));
    try {
      const exe = join(dir, 'seed_static');
      execFileSync('gcc', ['-static', '-O0', '-g', '-fno-builtin', '-o', exe, join(fixturesDir, 'seed.c')]);
      const report = await traced(fixturePath('malloc_exec'), [exe]);
      expect(report.untraced).toBeUndefined();
      expect(report.target.commandLine).toEqual([exe]);
      // The seed's 10 x 8 bytes, 9 freed, seen through the executable's own malloc and free.
      const eight = report.leaks.find((g) => g.bytes === 8 && g.blocks === 1);
      expect(eight, JSON.stringify(report.leaks, null, 1)).toBeDefined();
      expect(symbols(eight!)).toContain('main');
      expect(report.summary.frees).toBeGreaterThanOrEqual(9);
      expect(report.previousImages![0]!.inUseBytes).toBe(999);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a preloaded allocator (jemalloc through env LD_PRELOAD=...)', async () => {
    const jemalloc = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2';
    const report = await traced('/usr/bin/env', [`LD_PRELOAD=${jemalloc}`, fixturePath('seed')]);
    expect(report.untraced).toBeUndefined();
    const eight = report.leaks.find((g) => g.bytes === 8 && g.blocks === 1);
    expect(eight, JSON.stringify(report.leaks, null, 1)).toBeDefined();
    expect(symbols(eight!)).toContain('main');
    // glibc's malloc is never called: every count is jemalloc's.
    expect(report.summary).toMatchObject({ frees: 9, unknownFrees: 0 });
  });

  it("an image that cannot be traced is reported as such, never as an empty report", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-stripped-'));
    try {
      const exe = join(dir, 'seed_stripped');
      execFileSync('gcc', ['-static', '-O0', '-s', '-o', exe, join(fixturesDir, 'seed.c')]);
      const report = await traced(fixturePath('malloc_exec'), [exe]);
      expect(report.untraced).toMatch(/seed_stripped cannot be traced: .* statically linked without a symbol table/);
      expect(checkReport(report, []).inconclusive).toContain(report.untraced);
      expect(() => assertReport(checkReport(report, []))).toThrow(/inconclusive|cannot be traced/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("an exec into a C++ program: its operators new and delete are probed, whatever the first image's were", () => {
  it('a C program that execs a C++ one: stacks from operator new[], mismatches and counts as valgrind', async () => {
    const args = [fixturePath('heap_errors'), 'mismatch'];
    const vg = await runValgrindTree(fixturePath('malloc_exec'), args, { env });
    const theirs = vg.processes.get(vg.rootPid)!;
    const report = await traced(fixturePath('malloc_exec'), args);
    expectClean(report);
    expect(report.target.commandLine).toEqual(args);
    // Counted once though new calls malloc, with the size asked for: valgrind's summary.
    expect(tuple(report.summary)).toBe(tuple(theirs.summary));
    expect(report.summary.errors).toMatchObject({ 'mismatched-free': 3 });
    expect(report.summary.errors!['mismatched-free']).toBe(theirs.errorSummary!.errors);
    const newArray = report.leaks.find((g) => g.bytes === 24);
    expect(newArray?.stack[0]?.symbol, JSON.stringify(report.leaks.map((g) => g.stack.slice(0, 2)))).toBe('operator new[](unsigned long)');
  });
});

describe('followForks: one report per process, as valgrind --trace-children=yes', () => {
  it("forked children that leak and leave with _exit, each with what it inherited (10 runs)", async () => {
    const { vg, report } = await compareTree(fixturePath('fork_children'), ['3']);
    // Copies at each fork race the parent and child running on: the same answer every time.
    for (let run = 0; run < 9; run++) {
      const again = await traced(fixturePath('fork_children'), ['3'], { followForks: true });
      expectClean(again);
      expect(ours(again), `run ${run + 2}`).toEqual(theirs(vg));
    }
    expect(report.processes).toHaveLength(4);
    const children = report.processes!.slice(1);
    expect(children.map((c) => c.target.exitCode)).toEqual([0, 1, 2]);
    expect(children.map((c) => c.target.parentPid)).toEqual([report.target.pid, report.target.pid, report.target.pid]);
    // Each child: the 100 bytes it inherited, and its own 10 * (i + 1).
    expect(children.map((c) => c.leaks.map((g) => g.bytes).sort((a, b) => a - b))).toEqual([[10, 100], [20, 100], [30, 100]]);
  });

  it('a child that forks a grandchild', async () => {
    const { report } = await compareTree(fixturePath('fork_children'), ['2', 'grand']);
    expect(report.processes).toHaveLength(5);
    const grandchildren = report.processes!.filter((p) => p.target.exitCode === 7);
    expect(grandchildren).toHaveLength(2);
    for (const g of grandchildren) expect(g.summary).toMatchObject({ inUseBytes: 133, inUseBlocks: 2 });
  });

  it("sh -c 'a; b'", async () => {
    const [seed, mallocExec] = [inShellDir('seed'), inShellDir('malloc_exec')];
    const script = `${seed}; ${mallocExec} /bin/true`;
    const vg = await runValgrindTree('/bin/sh', ['-c', script], { env, cwd: shellDir });
    const { report, shared } = await tracedShell(script);
    expectClean(report);
    // The children as valgrind has them; the shell too, but for its vfork'ed children's blocks.
    const vgShell = vg.processes.get(vg.rootPid)!;
    expect(ours(report).length).toBe(vg.processes.size);
    expect(report.processes!.slice(1).map((p) => tuple(p.summary)).sort()).toEqual(
      [...vg.processes.values()].filter((p) => p !== vgShell).map((p) => tuple(p.summary)).sort(),
    );
    expect(shared.blocks).toBeGreaterThan(0);
    expect(tuple(report.summary)).toBe(shellSummary(vgShell.summary, shared));
    // dash forks for each command and waits: the shell, then the two programs.
    expect(report.processes).toHaveLength(3);
    expect(report.target.commandLine).toEqual(['/bin/sh', '-c', script]);
    expect(report.processes!.slice(1).map((p) => p.target.commandLine)).toEqual([[seed], ['/bin/true']]);
    // The second was the shell's vfork, then malloc_exec, then /bin/true: the 999 bytes are no
    // leak; what the shell's child allocated before its exec is in the shell's report.
    expect(report.processes![2]!.previousImages!.map((i) => i.commandLine[0])).toEqual(['/bin/sh', mallocExec]);
    expect(report.processes![2]!.previousImages![0]!.allocs).toBe(0);
    expect(report.processes![2]!.previousImages![1]!.inUseBytes).toBe(999);
  });

  it('make running two leaking programs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-make-'));
    try {
      writeFileSync(join(dir, 'Makefile'), `all:\n\t${fixturePath('seed')}\n\t${fixturePath('fork_children')} 1\n`);
      const { report } = await compareTree('/usr/bin/make', ['-s'], { cwd: dir });
      const programs = report.processes!.map((p) => p.target.commandLine?.[0]);
      expect(programs).toContain(fixturePath('seed'));
      expect(programs.filter((p) => p === fixturePath('fork_children'))).toHaveLength(2); // it and its child
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('200 short-lived children: none lost, the kernel table no larger than the live processes need', async () => {
    // Room for 64 blocks (80 slots): the 200 children hold 400 blocks between them, so each
    // process's blocks must leave the table at its exit, or allocations would be dropped.
    const { report } = await compareTree(fixturePath('fork_children'), ['200'], { maxAllocations: 64 });
    expect(report.processes).toHaveLength(201);
    expect(report.untracedChildren).toBe(0);
    expect(new Set(report.processes!.map((p) => p.target.pid)).size).toBe(201);
  });

  it("a shell loop's 200 short-lived children: all reported, and none leaves an entry in the kernel's maps (3 runs)", async () => {
    // dash vforks each command: each child allocates as the shell until its exec, then as itself,
    // and frees (the queue of released blocks has entries of its own) before it exits.
    const loop = `i=0; while [ $i -lt 200 ]; do ${fixturePath('seed')}; i=$((i + 1)); done; read line`;
    for (let run = 0; run < 3; run++) {
      const tracer = await trace({ command: '/bin/sh', args: ['-c', loop], env: { ...env, LD_PRELOAD: preloadStandIn }, stdio: 'pipe', followForks: true, maxAllocations: 64 });
      try {
        tracer.process!.stdout!.resume();
        // Each seed prints a line: the loop is over at the 200th, and the shell waits for stdin.
        let lines = 0;
        await new Promise<void>((resolve) =>
          tracer.process!.stdout!.on('data', (chunk: Buffer) => {
            lines += chunk.toString().split('\n').length - 1;
            if (lines >= 200) resolve();
          }),
        );
        // The last child's exit is handled once its exit stop has been: the maps are read when
        // only the shell is left, as the tracer sees it.
        for (let i = 0; i < 100 && (await tracer.snapshot()).processes!.length > 1; i++) await new Promise((r) => setTimeout(r, 50));
        const left = perProcessEntries(bpfMapsOf(process.pid));
        const shellBits = 1n << 48n; // the first process's index, 1
        expect(left.tracedProcesses, `run ${run + 1}`).toEqual([tracer.pid]);
        // The shell's own entries are there: the dumps are read.
        expect(left.blockBits.length).toBeGreaterThan(0);
        expect(left.freedBits.length).toBeGreaterThan(0);
        expect(left.countedIndexes).toContain(1);
        expect(left.blockBits.filter((b) => b !== shellBits), `run ${run + 1}`).toEqual([]);
        expect(left.freedBits.filter((b) => b !== shellBits), `run ${run + 1}`).toEqual([]);
        expect(left.countedIndexes.filter((i) => i !== 1), `run ${run + 1}`).toEqual([]);
        tracer.process!.stdin!.end('\n');
        const report = await tracer.done;
        expectClean(report);
        expect(report.processes, `run ${run + 1}`).toHaveLength(201);
        expect(report.untracedChildren).toBe(0);
        const seeds = report.processes!.filter((p) => p.target.commandLine?.[0] === fixturePath('seed'));
        expect(seeds).toHaveLength(200);
        for (const p of seeds) expect(p.summary).toMatchObject({ inUseBytes: 8 + 4096, inUseBlocks: 2, allocs: 11, frees: 9 });
        expect(report.processes!.every((p) => heapErrorTotal(p.summary.errors) === 0)).toBe(true);
      } finally {
        tracer.process?.kill('SIGKILL');
      }
    }
  });

  it('a Node script that spawns two leaking C programs, as a test runner does', async () => {
    const script =
      `const { spawnSync } = require('node:child_process');` +
      `spawnSync(${JSON.stringify(fixturePath('seed'))}, [], { stdio: 'ignore' });` +
      `spawnSync(${JSON.stringify(fixturePath('fork_children'))}, ['1'], { stdio: 'ignore' });`;
    const nodeEnv = { ...env, PATH: `${dirname(process.execPath)}:${env.PATH}` };
    const tracer = await trace({ command: process.execPath, args: ['-e', script], env: { ...nodeEnv, LD_PRELOAD: preloadStandIn }, stdio: 'ignore', followForks: true });
    const report = await tracer.done;
    expectClean(report);
    const byProgram = (path: string) => report.processes!.filter((p) => p.target.commandLine?.[0] === path);
    const seedVg = await runValgrind(fixturePath('seed'), [], { env: nodeEnv });
    expect(byProgram(fixturePath('seed')).map((p) => tuple(p.summary))).toEqual([tuple(seedVg.summary)]);
    const forkVg = await runValgrindTree(fixturePath('fork_children'), ['1'], { env: nodeEnv });
    expect(byProgram(fixturePath('fork_children')).map((p) => tuple(p.summary)).sort()).toEqual(theirs(forkVg));
    // An assertion fails for any leaking process, and names it. Each process was scanned at its
    // exit: seed's 8 bytes are definitely lost, its stdout buffer still reachable.
    const checked = checkReport(report, []);
    expect(() => assertReport(checked)).toThrowError(LeakError);
    try {
      assertReport(checked);
    } catch (error) {
      expect((error as Error).message).toMatch(new RegExp(`process \\d+ \\(${fixturePath('seed').replace(/[/.]/g, '\\$&')}\\): 8 bytes in 1 blocks`));
    }
  });

  it("mismatched frees per process: a child's are its own, counted as valgrind counts them", async () => {
    const script = `${fixturePath('heap_errors')} mismatch; ${fixturePath('seed')}`;
    const vg = await runValgrindTree('/bin/sh', ['-c', script], { env });
    const report = await traced('/bin/sh', ['-c', script], { followForks: true });
    const vgErrors = [...vg.processes.values()].map((p) => p.errorSummary!.errors).sort();
    expect(vgErrors).toEqual([0, 0, 3]);
    expect(report.processes!.map((p) => heapErrorTotal(p.summary.errors)).sort()).toEqual(vgErrors);
    const child = report.processes!.find((p) => p.target.commandLine?.join(' ') === `${fixturePath('heap_errors')} mismatch`)!;
    expect(child.errors!.map((e) => [e.releasedBy, e.block?.allocatedBy])).toEqual([
      ['free', 'operator new[]'],
      ['operator delete', 'malloc'],
      ['operator delete', 'operator new[]'],
    ]);
    expect(heapErrorTotal(report.summary.errors)).toBe(0); // the shell's
  });

  it("sh -c 'a; b' with an invalid and a double free inside b: b's errors are valgrind's, nothing false from the shell (5 runs)", async () => {
    const [seedPath, heapErrors] = [inShellDir('seed'), inShellDir('heap_errors')];
    const script = `${seedPath}; ${heapErrors} invalid_double`;
    const vg = await runValgrindTree('/bin/sh', ['-c', script], { env, cwd: shellDir });
    const vgErrors = [...vg.processes.values()].map((p) => p.errorSummary!.errors).sort();
    expect(vgErrors).toEqual([0, 0, 2]);
    const vgShell = vg.processes.get(vg.rootPid)!;
    const vgSeed = [...vg.processes.values()].find((p) => p !== vgShell && p.errorSummary!.errors === 0)!;
    const vgB = [...vg.processes.values()].find((p) => p.errorSummary!.errors === 2)!;
    for (let run = 0; run < 5; run++) {
      const { report, shared } = await tracedShell(script);
      expectClean(report);
      expect(report.processes, `run ${run + 1}`).toHaveLength(3);
      expect(report.processes!.map((p) => heapErrorTotal(p.summary.errors)).sort(), `run ${run + 1}`).toEqual(vgErrors);
      // The shell frees the blocks its vfork'ed children allocated in its heap: no error.
      expect(shared.blocks, `run ${run + 1}`).toBeGreaterThan(0);
      expect(tuple(report.summary), `run ${run + 1}`).toBe(shellSummary(vgShell.summary, shared));
      const seed = report.processes!.find((p) => p.target.commandLine?.[0] === seedPath)!;
      expect(tuple(seed.summary)).toBe(tuple(vgSeed.summary));
      const b = report.processes!.find((p) => p.target.commandLine?.[1] === 'invalid_double')!;
      expect(b.errors!.map((e) => e.kind)).toEqual(['invalid-free', 'double-free']);
      // glibc aborts at the double free, the last thing b does; valgrind's malloc returns.
      expect(b.target.signal).toBe('SIGABRT');
      expect(tuple(b.summary)).toBe(tuple(vgB.summary));
      expect(b.errors!.map((e) => e.stack.find((f) => /free_/.test(f.symbol ?? ''))?.symbol)).toEqual([
        'free_static_address()',
        'free_twice()',
      ]);
    }
  });

  it("a vfork child mallocs, then execs: its block is in its parent's heap, as the program counts it (6 runs)", async () => {
    const program = fixturePath('vfork_exec');
    for (const mode of ['free', 'keep'] as const) {
      const args = ['3', mode, '/bin/true'];
      // valgrind runs the vfork as a fork: the child's block is in a copy, its parent never sees it.
      const vg = await runValgrindTree(program, args, { env });
      const vgParent = vg.processes.get(vg.rootPid)!;
      expect(vg.processes.size).toBe(4);
      expect([...vg.processes.values()].every((p) => p.errorSummary!.errors === 0)).toBe(true);
      // The program's own account, run as it really runs: the children's blocks it found in its heap.
      const own = /^shared (\d+) (\d+) (\d+)$/m.exec(execFileSync(program, args, { env, encoding: 'utf8' }));
      const [blocks, bytes, freed] = own!.slice(1).map(Number) as [number, number, number];
      expect([blocks, bytes, freed]).toEqual([3, 2331, mode === 'free' ? 3 : 0]);
      for (let run = 0; run < 3; run++) {
        const report = await traced(program, args, { followForks: true });
        expectClean(report);
        const what = `${mode}, run ${run + 1}`;
        expect(report.processes, what).toHaveLength(4);
        // No process frees what it does not own: the parent's frees of its children's blocks are
        // of blocks in its own heap.
        expect(report.processes!.map((p) => heapErrorTotal(p.summary.errors)), what).toEqual([0, 0, 0, 0]);
        const s = vgParent.summary;
        expect(report.summary, what).toMatchObject({
          allocs: s.allocs + blocks,
          frees: s.frees + freed,
          bytesAllocated: s.bytesAllocated + bytes,
          inUseBlocks: s.inUseBlocks + blocks - freed,
          inUseBytes: s.inUseBytes + (bytes / blocks) * (blocks - freed),
        });
        for (const child of report.processes!.slice(1)) {
          expect(tuple(child.summary), what).toBe('0/0/0/0/0'); // /bin/true, as valgrind has it
          expect(child.previousImages!.map((i) => [i.commandLine[0], i.allocs, i.inUseBlocks]), what).toEqual([[program, 0, 0]]);
        }
      }
    }
  });

  it('posix_spawn (clone with CLONE_VM | CLONE_VFORK): each child reported as valgrind reports it, no errors (5 runs)', async () => {
    const args = ['3', fixturePath('seed')];
    const vg = await runValgrindTree(fixturePath('spawn_children'), args, { env });
    expect(vg.processes.size).toBe(4);
    for (let run = 0; run < 5; run++) {
      const report = await traced(fixturePath('spawn_children'), args, { followForks: true });
      expectClean(report);
      expect(ours(report), `run ${run + 1}`).toEqual(theirs(vg));
      expect(tuple(report.summary)).toBe(tuple(vg.processes.get(vg.rootPid)!.summary));
      expect(report.processes!.map((p) => heapErrorTotal(p.summary.errors)), `run ${run + 1}`).toEqual([0, 0, 0, 0]);
    }
  });

  it('JSON: processes[] holds one report per process with the top-level fields', async () => {
    const report = await traced(fixturePath('fork_children'), ['1'], { followForks: true });
    const json = toJsonReport(checkReport(report, []));
    expect(json.processes).toHaveLength(2);
    const top = Object.keys(json).filter((k) => k !== 'processes' && k !== 'untracedChildren');
    for (const p of json.processes!) for (const key of top.filter((k) => k !== 'previousImages')) expect(p).toHaveProperty(key);
    expect(json.processes![0]!.target.pid).toBe(json.target.pid);
    expect(json.processes![1]!.target.parentPid).toBe(json.target.pid);
    expect(json.processes![1]!.summary).toMatchObject({ inUseBytes: 110, inUseBlocks: 2 });
    JSON.stringify(json); // no cycle
    const text = formatCheckedReport(checkReport(report, []));
    expect(text).toMatch(new RegExp(`^== process ${json.target.pid}: .*fork_children 1 \\(exit status 0\\) ==$`, 'm'));
    expect(text).toMatch(/^== process \d+: .*fork_children 1 \(exit status 0, child of \d+\) ==$/m);
  });
});

describe('followForks: live views per process while it runs', () => {
  it('snapshot(), report() and the event stream each say which process', async () => {
    const tracer = await trace({ command: fixturePath('fork_wait'), env: { ...env, LD_PRELOAD: preloadStandIn }, stdio: 'pipe', followForks: true, events: true });
    const allocs: AllocEvent[] = [];
    tracer.on('alloc', (e) => allocs.push(e));
    try {
      await new Promise<void>((resolve) => tracer.process!.stdout!.once('data', () => resolve()));
      tracer.process!.stdout!.resume();
      const snap = await tracer.snapshot();
      expect(snap.processes).toHaveLength(2);
      const [parent, child] = snap.processes!;
      expect(parent!.pid).toBe(tracer.pid);
      expect(child!.pid).not.toBe(tracer.pid);
      const sizes = (p: ProcessSnapshot) => p.allocations.map((a) => a.size).sort((a, b) => a - b);
      expect(sizes(parent!)).toEqual([100]);
      expect(sizes(child!)).toEqual([10, 100]);
      expect(parent!.summary).toMatchObject({ inUseBytes: 100, inUseBlocks: 1, allocs: 1 });
      expect(child!.summary).toMatchObject({ inUseBytes: 110, inUseBlocks: 2, allocs: 2 });
      // The inherited block at the address both processes see, without the table's process bits.
      const inherited = child!.allocations.find((a) => a.size === 100)!;
      expect(inherited.address).toBe(parent!.allocations[0]!.address);
      expect(inherited.address < 1n << 47n).toBe(true);
      // The top level is the first process's.
      expect(snap.summary).toEqual(parent!.summary);

      const live = await tracer.report();
      expect(live.processes!.map((p) => p.target.pid)).toEqual([parent!.pid, child!.pid]);
      expect(live.summary.inUseBytes).toBe(100);
      expect(live.processes![1]!.leaks.map((g) => g.bytes).sort((a, b) => a - b)).toEqual([10, 100]);
      for (const g of live.processes![1]!.leaks) for (const a of g.sampleAddresses ?? []) expect(BigInt(a) < 1n << 47n).toBe(true);
      // Asked again, the same: a report is not changed by the ones made before it.
      expect((await tracer.report()).processes).toHaveLength(2);

      tracer.process!.stdin!.end('go\n');
      const report = await tracer.done;
      expect(report.processes).toHaveLength(2);
      // The first process's report keeps its scopes; the children's are plain data, which do not
      // hold their blocks' buffers for as long as the trace runs.
      expect(report.since(0).summary.inUseBytes).toBe(100);
      expect(report.blocks().map((b) => b.size)).toEqual([100]);
      expect('since' in report.processes![1]!).toBe(false);
      expect(report.processes![1]!.summary).toMatchObject({ inUseBytes: 110, inUseBlocks: 2 });
      // Each event names its process.
      expect(allocs.filter((e) => e.size === 100).map((e) => e.pid)).toEqual([parent!.pid]);
      expect(allocs.filter((e) => e.size === 10).map((e) => e.pid)).toEqual([child!.pid]);
    } finally {
      tracer.process?.kill('SIGKILL');
    }
  });
});

describe('another root (chroot) with its own libc', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'ebpf-leak-chroot-'));
    const seedLibs = ['/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2'];
    for (const lib of seedLibs) {
      mkdirSync(join(root, dirname(lib)), { recursive: true });
      copyFileSync(lib, join(root, lib)); // a file of its own: another inode than ours
    }
    copyFileSync(fixturePath('seed'), join(root, 'seed'));
    // A second root whose libc is only found through LD_LIBRARY_PATH.
    mkdirSync(join(root, 'hidden/opt'), { recursive: true });
    mkdirSync(join(root, 'hidden/lib64'), { recursive: true });
    copyFileSync('/lib/x86_64-linux-gnu/libc.so.6', join(root, 'hidden/opt/libc.so.6'));
    copyFileSync('/lib64/ld-linux-x86-64.so.2', join(root, 'hidden/lib64/ld-linux-x86-64.so.2'));
    copyFileSync(fixturePath('seed'), join(root, 'hidden/seed'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('is traced through the libc inside the root', async () => {
    const vg = await runValgrind(fixturePath('seed'), [], { env });
    const report = await traced('/usr/sbin/chroot', [root, '/seed']);
    expectClean(report);
    expect(tuple(report.summary)).toBe(tuple(vg.summary));
    expect(report.target.commandLine).toEqual(['/seed']);
  });

  it('or clearly refused, saying why, when its libc cannot be found', async () => {
    const report = await traced('/usr/sbin/chroot', [join(root, 'hidden'), '/seed'], { env: { ...env, LD_LIBRARY_PATH: '/opt' } });
    expect(report.untraced).toMatch(/^\/seed cannot be traced: .* runs in another root .* whose libc\.so\.6 was not found/);
    const checked = checkReport(report, []);
    expect(checked.inconclusive).toContain(report.untraced);
    expect(formatCheckedReport(checked)).toContain('warning: not traced: /seed cannot be traced');
  });
});

describe('attach -p PID with followForks: a pre-fork server', () => {
  it("follows the workers it forks from then on", async () => {
    // Through setsid -f: a child of this process could not be followed (trace() refuses it). Its
    // commands come through a FIFO: setsid exits at once, and with it our end of its stdin.
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-server-'));
    const fifo = join(dir, 'commands');
    execFileSync('/usr/bin/mkfifo', [fifo]);
    const server = spawn('/usr/bin/setsid', ['-f', fixturePath('prefork_server'), fifo], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: string[] = [];
    let waiting: (() => void) | undefined;
    let buffered = '';
    server.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buffered += d;
      const parts = buffered.split('\n');
      buffered = parts.pop()!;
      lines.push(...parts);
      waiting?.();
    });
    let serverPid = 0;
    const line = async (n: number): Promise<string> => {
      while (lines.length < n) await new Promise<void>((r) => (waiting = r));
      return lines[n - 1]!;
    };
    try {
      const pid = Number((await line(1)).split(' ')[1]);
      serverPid = pid;
      const tracer = await trace({ pid, followForks: true });
      const commands = openSync(fifo, 'w'); // the server waits in its open() for this
      writeSync(commands, 'f\n');
      await line(2);
      writeSync(commands, 'f\n');
      await line(3);
      writeSync(commands, 'q\n');
      closeSync(commands);
      const report = await tracer.done;

      expectClean(report);
      expect(report.processes).toHaveLength(3);
      const workers = report.processes!.slice(1);
      expect(workers.map((w) => `worker ${w.target.pid}`)).toEqual([lines[1], lines[2]]);
      for (const w of workers) {
        expect(w.target.exitCode).toBe(3);
        expect(w.target.parentPid).toBe(pid);
        // Its 64 bytes, and what it inherited from the server, allocated since the attach and live
        // at the fork: the request block and the command stream's 4,096-byte buffer.
        expect(w.summary).toMatchObject({ inUseBytes: 4192, inUseBlocks: 3 });
        expect(w.leaks.map((g) => g.bytes).sort((a, b) => a - b)).toEqual([32, 64, 4096]);
      }
      expect(report.target.exitCode).toBe(0); // seen at its exit stop
      expect(report.summary).toMatchObject({ inUseBytes: 4096, inUseBlocks: 1 }); // the stream's buffer
    } finally {
      if (serverPid) {
        try {
          process.kill(serverPid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a child of the tracing process itself, saying why', async () => {
    const child = spawn(fixturePath('forever'), ['1000'], { env, stdio: 'ignore' });
    try {
      await expect(trace({ pid: child.pid!, followForks: true })).rejects.toMatchObject({
        code: 'ELEAK_PTRACE',
        message: expect.stringContaining('it is a child of this process'),
      });
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('attach -p PID without followForks: the attached process execs', () => {
  /** Starts attach_exec with `next`, attaches to it at "ready", lets it go on, and returns the
   *  report of the image that exits. */
  async function attachedExec(next: string[]): Promise<{ report: LeakReport; pid: number }> {
    const child = spawn(fixturePath('attach_exec'), next, { env: { ...env, LD_PRELOAD: preloadStandIn }, stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      child.stdout!.setEncoding('utf8');
      await new Promise<void>((resolve, reject) => {
        child.stdout!.once('data', () => resolve());
        child.once('error', reject);
      });
      child.stdout!.resume();
      const tracer = await trace({ pid: child.pid! });
      child.stdin!.end('go\n');
      return { report: await tracer.done, pid: child.pid! };
    } finally {
      child.kill('SIGKILL');
    }
  }

  it("drops the old image's blocks and reports the new one as valgrind does", async () => {
    const vg = await runValgrind(fixturePath('seed'), [], { env });
    for (let run = 0; run < 3; run++) {
      const { report, pid } = await attachedExec([fixturePath('seed')]);
      expectClean(report);
      // Traced from its exec on: every count of the new image, as valgrind's for the program alone.
      expect(tuple(report.summary), `run ${run + 1}`).toBe(tuple(vg.summary));
      expect(report.leaks.some((g) => g.bytes === 300)).toBe(false);
      expect(report.target.pid).toBe(pid);
      expect(report.target.commandLine).toEqual([fixturePath('seed')]);
      expect(report.target.exitCode).toBe(0);
      expect(report.previousImages).toEqual([
        { commandLine: [fixturePath('attach_exec'), fixturePath('seed')], allocs: 2, frees: 1, bytesAllocated: 350, inUseBlocks: 1, inUseBytes: 300 },
      ]);
      // Children are not watched without ptrace: no count is claimed.
      expect(report.untracedChildren).toBeUndefined();
    }
  });

  it('a new image with another allocator is attached, and the report says from when', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-static-'));
    try {
      const exe = join(dir, 'seed_static');
      execFileSync('gcc', ['-static', '-O0', '-g', '-fno-builtin', '-o', exe, join(fixturesDir, 'seed.c')]);
      // It sleeps 3 s before it allocates: its probes are attached by then.
      const { report } = await attachedExec([exe, '3']);
      expect(report.target.commandLine).toEqual([exe, '3']);
      expect(report.previousImages![0]!.inUseBytes).toBe(300);
      expect(report.leaks.some((g) => g.bytes === 300)).toBe(false);
      expect(report.leaks.find((g) => g.bytes === 8 && g.blocks === 1), JSON.stringify(report.leaks)).toBeDefined();
      expect(report.untraced).toMatch(/seed_static 3 was traced only from a moment after its exec: its allocator \(.*seed_static\) is another file/);
      expect(checkReport(report, []).inconclusive).toContain(report.untraced);
      // Gone at once, maybe before it could be looked at: never a clean report either way.
      const quick = (await attachedExec([exe])).report;
      expect(quick.untraced).toMatch(/seed_static (was traced only from a moment after its exec|exited before its allocator could be checked)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
