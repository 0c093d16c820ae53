// The CFI stack walker (bpf/unwind.bpf.h) against real processes: stacks through code without frame
// pointers name the function and line that called `new`, as valgrind does, whatever the program
// was built with; a dlopen()ed library's frames are named after it was closed, and walked with its
// table from its first call; nothing is left half-walked; and the per-stack totals the kernel keeps
// equal a walk of the outstanding blocks.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { trace, type LeakGroup, type LeakReport, type StackFrame } from '../lib/index.js';
import type { LeakTracer } from '../lib/tracer/leak-tracer.js';
import { loadNative } from '../lib/native/addon.js';
import { cfaTypes, isUnwoundStackId, rbpTypes, type NativeUnwindTable, type UnwindStats } from '../lib/native/unwind.js';
import { fixturePath, fixtureSource } from './helpers/fixtures.js';
import { runValgrind, type ValgrindLossRecord } from './helpers/valgrind.js';

/** One environment for the traced and the valgrind runs (as in test/oracle.test.ts). */
const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };

/** Runs a command to its end under the tracer; the report and the walker's final counters. */
async function traceCommand(
  command: string,
  args: string[] = [],
  mode?: 'auto' | 'dwarf' | 'fp',
): Promise<{ report: LeakReport; stats: UnwindStats | null }> {
  const tracer = await trace({ command, args, env, stdio: 'ignore', ...(mode ? { unwind: mode } : {}) });
  const report = await tracer.done;
  return { report, stats: tracer.unwindStats() };
}

/** Line number (1-based) of the only line of a fixture source containing `marker`. */
function lineOf(file: string, marker: string): number {
  const lines = readFileSync(fixtureSource(file), 'utf8').split('\n');
  const found = lines.flatMap((l, i) => (l.includes(marker) ? [i + 1] : []));
  if (found.length !== 1) throw new Error(`${marker}: ${found.length} matches in ${file}`);
  return found[0]!;
}

const where = (f: StackFrame) => `${f.symbol ?? '?'} ${f.file ? basename(f.file) : ''}:${f.line ?? ''}`;
const describeStack = (g: LeakGroup) => `${g.bytes} B in ${g.blocks}:\n  ${g.stack.map(where).join('\n  ')}`;

function group(report: LeakReport, bytes: number, blocks = 1): LeakGroup {
  const found = report.leaks.filter((g) => g.bytes === bytes && g.blocks === blocks);
  expect(found, `one group of ${bytes} B in ${blocks}; got\n${report.leaks.map(describeStack).join('\n')}`).toHaveLength(1);
  return found[0]!;
}

/** The group's source frames, as valgrind shows them: `file:line`, up to main. */
function sourceFrames(stack: readonly StackFrame[]): string[] {
  const upToMain = stack.findIndex((f) => f.symbol === 'main');
  const frames = upToMain >= 0 ? stack.slice(0, upToMain + 1) : stack;
  return frames.filter((f) => f.file !== undefined && f.line !== undefined).map((f) => `${basename(f.file!)}:${f.line}`);
}

function valgrindSourceFrames(record: ValgrindLossRecord): string[] {
  return record.frames.filter((f) => f.file !== undefined && f.line !== undefined).map((f) => `${basename(f.file!)}:${f.line}`);
}

function expectComplete(stats: UnwindStats | null): void {
  expect(stats).not.toBeNull();
  expect(stats!.mode).toBe('auto');
  expect(stats!.walks).toBeGreaterThan(0);
  const problems = { incomplete: stats!.incomplete, truncated: stats!.truncated, collisions: stats!.collisions, failures: stats!.failures };
  expect(problems, JSON.stringify(stats)).toEqual({ incomplete: 0, truncated: 0, collisions: 0, failures: 0 });
}

describe.each([
  ['cpp_containers_nofp', '-O2 -fomit-frame-pointer'],
  ['cpp_containers', '-O0 with frame pointers'],
])('%s (%s)', (fixture) => {
  const widget = lineOf('cpp_containers.cc', 'leaked_widget = new Widget(42);');
  const array = lineOf('cpp_containers.cc', 'leaked_array = new int[100];');
  const string = lineOf('cpp_containers.cc', "sink = new std::string(200, 'x');");
  const call = lineOf('cpp_containers.cc', '  leak_some();');

  it('names the function and line that called new, for every leaked group, as valgrind does', async () => {
    const [{ report, stats }, vg] = await Promise.all([traceCommand(fixturePath(fixture)), runValgrind(fixturePath(fixture), [], { env })]);
    expectComplete(stats);
    // new Widget: 56 bytes, called from leak_some(), called from main.
    // Stacks start at operator new, as valgrind's do (new is probed itself: its malloc is part of it).
    const w = group(report, 56);
    expect(w.stack[0]!.symbol).toBe('operator new(unsigned long)');
    expect(w.stack[1], describeStack(w)).toMatchObject({ symbol: 'leak_some()', line: widget });
    expect(basename(w.stack[1]!.file!)).toBe('cpp_containers.cc');
    expect(w.stack[2], describeStack(w)).toMatchObject({ symbol: 'main', line: call });
    // new int[100]
    const a = group(report, 400);
    expect(a.stack[0]!.symbol).toBe('operator new[](unsigned long)');
    expect(a.stack[1], describeStack(a)).toMatchObject({ symbol: 'leak_some()', line: array });
    // new std::string (32 bytes) and its buffer (201, allocated inside libstdc++)
    expect(group(report, 32).stack[1], describeStack(group(report, 32))).toMatchObject({ symbol: 'leak_some()', line: string });
    const buffer = group(report, 201);
    expect(buffer.stack.map((f) => f.line)).toContain(string);
    // Nothing leaks without a stack, and every stack was walked by the CFI walker.
    expect(report.leaks.every((g) => g.stack.length > 2)).toBe(true);

    // valgrind's loss records (replaced operator new: its frames start at the caller of new).
    for (const record of vg.lossRecords) {
      const ours = group(report, record.directBytes, record.blocks);
      expect(sourceFrames(ours.stack), `${describeStack(ours)}\nvalgrind: ${record.frames.map((f) => `${f.function} ${f.file ?? ''}:${f.line ?? ''}`).join(' / ')}`).toEqual(
        valgrindSourceFrames(record),
      );
    }
    expect(vg.lossRecords.length).toBe(report.leaks.length);
  });

  it("'dwarf' gives the same stacks", async () => {
    const auto = await traceCommand(fixturePath(fixture), [], 'auto');
    const dwarf = await traceCommand(fixturePath(fixture), [], 'dwarf');
    expect(dwarf.stats!.mode).toBe('dwarf');
    const key = (r: LeakReport) => r.leaks.map((g) => `${g.bytes}/${g.blocks}: ${g.stack.map(where).join(' < ')}`).sort();
    expect(key(dwarf.report)).toEqual(key(auto.report));
  });
});

describe("'fp': the frame-pointer walk, as before the walker", () => {
  it('keeps the caller of new but loses its callers in the -O2 -fomit-frame-pointer build', async () => {
    const { report, stats } = await traceCommand(fixturePath('cpp_containers_nofp'), [], 'fp');
    expect(stats!.mode).toBe('fp');
    expect(stats!.walks).toBe(0);
    // The stack is taken at operator new's return, where the caller is the innermost frame; from
    // there up, leak_some() keeps no frame pointer and the walk cannot reach main.
    const w = group(report, 56);
    expect(w.stack.map((f) => f.symbol).slice(0, 2)).toEqual(['operator new(unsigned long)', 'leak_some()']);
    const symbols = report.leaks.flatMap((g) => g.stack.map((f) => f.symbol));
    expect(symbols).not.toContain('main');
    expect(report.summary.inUseBlocks).toBe(5);
  });
});

describe('dlopen', () => {
  it('names plugin_work, in the library dlclose()d before the report, and its caller', async () => {
    const { report, stats } = await traceCommand(fixturePath('dlopen_main'), [fixturePath('dlopen_plugin')]);
    const plugin = group(report, 192, 3);
    const frame = plugin.stack.find((f) => f.symbol === 'plugin_work');
    expect(frame, describeStack(plugin)).toBeDefined();
    expect(frame!.module).toBe(fixturePath('dlopen_plugin'));
    expect(frame!.line).toBe(lineOf('dlopen_plugin.c', 'kept[i] = malloc(64);'));
    const main = plugin.stack.find((f) => f.symbol === 'main');
    expect(main?.line, describeStack(plugin)).toBe(lineOf('dlopen_main.c', 'int n = work();'));
    // The plugin was mapped after the tables were loaded. The loader's _dl_debug_state() stopped
    // the program once it was mapped, before its code ran, until its table was loaded: every walk
    // through it had the table.
    expect(stats!.modules.some((m) => m.path.endsWith('/dlopen_plugin.so')), JSON.stringify(stats)).toBe(true);
    expectComplete(stats);
  });
});

describe('a target that exec()s again (sh -c "exec ...")', () => {
  it('walks the new program with its own tables, loaded while it is held at its exec: every walk whole', async () => {
    const widget = lineOf('cpp_containers.cc', 'leaked_widget = new Widget(42);');
    const { report, stats } = await traceCommand('/bin/sh', ['-c', `exec ${fixturePath('cpp_containers_nofp')}`]);
    // The program and its libraries were resolved at the exec stop and their tables loaded before
    // it ran on: its first allocations' walks had them, as a command's first image does.
    expectComplete(stats);
    const g = group(report, 56);
    expect(g.stack.find((f) => f.symbol === 'leak_some()')?.line, describeStack(g)).toBe(widget);
    expect(g.stack.some((f) => f.symbol === 'main'), describeStack(g)).toBe(true);
  });
});

describe('a child a followed process forks and exec()s (followForks)', () => {
  it('walks the child\'s program with the tables loaded at its exec: every walk whole', async () => {
    const widget = lineOf('cpp_containers.cc', 'leaked_widget = new Widget(42);');
    const tracer = await trace({ command: '/bin/sh', args: ['-c', `${fixturePath('cpp_containers_nofp')}; true`], env, stdio: 'ignore', followForks: true });
    const report = await tracer.done;
    expectComplete(tracer.unwindStats());
    const child = report.processes?.find((p) => p.target.pid !== report.target.pid);
    expect(child, 'the child\'s report').toBeDefined();
    const g = group(child!, 56);
    expect(g.stack.find((f) => f.symbol === 'leak_some()')?.line, describeStack(g)).toBe(widget);
    expect(g.stack.some((f) => f.symbol === 'main'), describeStack(g)).toBe(true);
  });
});

describe('libraries a supervised program dlopen()s, which allocate as they start', () => {
  it('have their tables before their code runs: every walk whole, and the program sees no signal', async () => {
    // python3 with a SIGURG handler (the signal that stops it at its loader), importing modules
    // whose libraries allocate as they start: OpenSSL's libcrypto, sqlite, libffi.
    const script = [
      'import signal',
      'seen = []',
      'signal.signal(signal.SIGURG, lambda *a: seen.append(1))',
      'import _decimal, _hashlib, _sqlite3, _ctypes',
      'print("SIGURG", len(seen))',
    ].join('\n');
    const tracer = await trace({ command: '/usr/bin/python3', args: ['-c', script], env, stdio: 'pipe' });
    let out = '';
    tracer.process!.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await tracer.done;
    expect(out.trim()).toBe('SIGURG 0');
    const stats = tracer.unwindStats()!;
    expectComplete(stats);
    expect(stats.missingFiles, JSON.stringify(stats)).toBe(0);
    const libcrypto = stats.modules.find((m) => /\/libcrypto\.so\.3$/.test(m.path));
    expect(libcrypto?.kind, JSON.stringify(stats.modules)).toBe('table');
  });
});

describe('a library a followed child dlopen()s', () => {
  it('gets its table from the child\'s own mappings, which the first process never had', async () => {
    // python3 imports _decimal and _hashlib (dlopen()ed extension modules, the second with
    // libcrypto) and keeps them mapped while it sleeps. The table's rows were sized for what sh
    // maps; libcrypto's alone are more than that, and must fit too.
    const script = 'import _decimal, _hashlib, time; time.sleep(0.5)';
    const tracer = await trace({ command: '/bin/sh', args: ['-c', `python3 -c '${script}'; true`], env, stdio: 'ignore', followForks: true });
    await tracer.done;
    const stats = tracer.unwindStats()!;
    for (const file of [/\/_decimal\.cpython-[^/]*\.so$/, /\/libcrypto\.so\.3$/]) {
      const module = stats.modules.find((m) => file.test(m.path));
      expect(module?.kind, `${file}: ${JSON.stringify(stats.modules)}`).toBe('table');
    }
    expect(stats.tablesFull, JSON.stringify(stats)).toBe(0);
    // The child was stopped at its loader too (it is supervised): every walk had its table.
    expect(stats.incomplete, JSON.stringify(stats)).toBe(0);
  });
});

describe('exit_immediately', () => {
  it('is fully walked and symbolized though the program is gone before the report', async () => {
    const { report, stats } = await traceCommand(fixturePath('exit_immediately'));
    expectComplete(stats);
    expect(report.leaks).toHaveLength(1);
    const [leak] = report.leaks;
    expect(leak!.stack.map((f) => f.symbol)).toEqual(['malloc', 'main', '__libc_start_call_main', '__libc_start_main_impl', '_start']);
    expect(leak!.stack[1]).toMatchObject({ line: lineOf('exit_immediately.c', 'sink = malloc(24);') });
    expect(leak!.stack.every((f) => f.module !== undefined && f.symbol !== undefined)).toBe(true);
  });
});

// ---- per-stack totals

const children: Array<ReturnType<typeof spawn>> = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Every thread of `pid` stopped (after SIGSTOP): no allocation is under way. */
async function waitStopped(pid: number): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const tasks = readdirTasks(pid);
    // 't' for a process followed with ptrace (a `command` target): stopped all the same.
    if (tasks.length > 0 && tasks.every((t) => taskState(pid, t) === 'T' || taskState(pid, t) === 't')) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`process ${pid} did not stop`);
}

function readdirTasks(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}

function taskState(pid: number, tid: string): string {
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

/** Stops the target, then compares the kernel's per-stack totals with a walk of the blocks. */
async function expectTotalsEqualWalk(tracer: LeakTracer, pid: number): Promise<number> {
  process.kill(pid, 'SIGSTOP');
  try {
    await waitStopped(pid);
    const snap = await tracer.snapshot();
    const totals = tracer.stackTotals();
    const walked = new Map<number, { bytes: number; blocks: number }>();
    for (const a of snap.allocations) {
      const t = walked.get(a.stackId) ?? { bytes: 0, blocks: 0 };
      t.bytes += a.size;
      t.blocks += 1;
      walked.set(a.stackId, t);
    }
    const kernel = new Map(totals.map((t) => [t.stackId, { bytes: t.bytes, blocks: t.blocks }]));
    expect(kernel).toEqual(walked);
    return walked.size;
  } finally {
    process.kill(pid, 'SIGCONT');
  }
}

describe('per-stack totals kept in the kernel', () => {
  it('equal the per-block walk of a running process (attached by pid)', async () => {
    const child = spawn(fixturePath('forever'), [], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    await once(child.stdout!, 'data');
    const tracer = await trace({ pid: child.pid! });
    await new Promise((r) => setTimeout(r, 300));
    const stacks = await expectTotalsEqualWalk(tracer, child.pid!);
    expect(stacks).toBeGreaterThanOrEqual(1);
    const snap = await tracer.snapshot();
    expect(snap.allocations.every((a) => isUnwoundStackId(a.stackId))).toBe(true);
    await tracer.stop();
  });

  it('equal the per-block walk in the middle of 4 threads allocating, moving and freeing blocks', async () => {
    const tracer = await trace({ command: fixturePath('threads'), env, stdio: 'ignore' });
    const pid = tracer.pid;
    await new Promise((r) => setTimeout(r, 400));
    let compared = 0;
    for (let i = 0; i < 3; i++) {
      compared = Math.max(compared, await expectTotalsEqualWalk(tracer, pid));
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(compared).toBeGreaterThan(1);
    const report = await tracer.done;
    expect(report.summary.inUseBlocks).toBe(44);
  });
});

// ---- the tables themselves, against binutils' reading of the same CFI

interface ReadelfRow {
  /** ELF address where the row starts, and where the next one (or the FDE) starts. */
  start: bigint;
  end: bigint;
  cfa: string;
  ra: string;
  rbp: string | undefined;
}

/** Every row of every FDE that `readelf --debug-dump=frames-interp` prints, and each FDE's range. */
function readelfRows(path: string): { rows: ReadelfRow[]; fdes: Array<[bigint, bigint]> } {
  // readelf exits 1 after warnings it prints about other sections (libc's): its output is whole.
  const text = spawnSync('readelf', ['--debug-dump=frames-interp', path], { encoding: 'utf8', maxBuffer: 256 << 20 }).stdout;
  const rows: ReadelfRow[] = [];
  const fdes: Array<[bigint, bigint]> = [];
  const cieRows = new Map<string, ReadelfRow>(); // CIE offset -> its initial row
  let fde: [bigint, bigint] | undefined;
  let cie: string | undefined; // the CIE being read, or the FDE's CIE
  let columns: string[] = [];
  let pending: ReadelfRow[] = [];
  const flush = () => {
    if (!fde) {
      if (cie !== undefined && pending[0]) cieRows.set(cie, pending[0]);
      pending = [];
      return;
    }
    // An FDE without instructions keeps its CIE's initial row.
    const initial = cieRows.get(cie ?? '');
    if (pending.length === 0 && initial) pending.push({ ...initial, start: fde[0] });
    pending.forEach((r, i) => (r.end = pending[i + 1]?.start ?? fde![1]));
    rows.push(...pending.filter((r) => r.start < r.end));
    pending = [];
  };
  for (const line of text.split('\n')) {
    const header = /^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ (FDE cie=([0-9a-f]+)|CIE)/.exec(line);
    if (header) {
      flush();
      const pc = /pc=([0-9a-f]+)\.\.([0-9a-f]+)/.exec(line);
      fde = header[3] !== undefined && pc ? [BigInt(`0x${pc[1]}`), BigInt(`0x${pc[2]}`)] : undefined;
      cie = header[3] ?? header[1];
      if (fde) fdes.push(fde);
      continue;
    }
    const cols = /^\s+LOC\s+CFA\s+(.*)$/.exec(line);
    if (cols) {
      columns = cols[1]!.trim().split(/\s+/);
      continue;
    }
    const row = /^([0-9a-f]{16}) (\S+)\s+(.*)$/.exec(line);
    if (row) {
      // A register rule reads `r10 (r10)`: one value with a space in it.
      const values = row[3]!.trim().split(/\s+/).reduce<string[]>((out, t) => {
        if (t.startsWith('(') && out.length > 0) out[out.length - 1] += ` ${t}`;
        else out.push(t);
        return out;
      }, []);
      const col = (name: string) => {
        const i = columns.indexOf(name);
        return i >= 0 ? values[i] : undefined;
      };
      pending.push({ start: BigInt(`0x${row[1]}`), end: 0n, cfa: row[2]!, ra: col('ra') ?? '?', rbp: col('rbp') });
    }
  }
  flush();
  return { rows, fdes };
}

/** Executable PT_LOAD segments (readelf -lW): ELF address -> file offset. */
function fileOffsetOf(path: string): (vaddr: bigint) => bigint | undefined {
  const segments: Array<{ vaddr: bigint; size: bigint; offset: bigint }> = [];
  for (const line of execFileSync('readelf', ['-lW', path], { encoding: 'utf8' }).split('\n')) {
    const m = /^\s+LOAD\s+0x([0-9a-f]+) 0x([0-9a-f]+) 0x[0-9a-f]+ 0x([0-9a-f]+) 0x[0-9a-f]+ (.*)0x/.exec(line);
    if (m && m[4]!.includes('E')) segments.push({ offset: BigInt(`0x${m[1]}`), vaddr: BigInt(`0x${m[2]}`), size: BigInt(`0x${m[3]}`) });
  }
  return (vaddr) => {
    const s = segments.find((x) => vaddr >= x.vaddr && vaddr < x.vaddr + x.size);
    return s ? vaddr - s.vaddr + s.offset : undefined;
  };
}

/** The table's rule at a file offset, as [cfa, rbp] in readelf's words where they have them. */
function ruleAt(table: NativeUnwindTable, off: bigint): { cfa: string; rbp: string } {
  let lo = 0;
  let hi = table.offsets.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (BigInt(table.offsets[mid]!) <= off) lo = mid;
    else hi = mid;
  }
  if (table.offsets.length === 0 || BigInt(table.offsets[lo]!) > off) return { cfa: 'none', rbp: 'same' };
  const [cfaType, cfaOff, rbpType, rbpOff] = table.rules.subarray(4 * lo, 4 * lo + 4);
  const cfaName = cfaTypes[cfaType!]!;
  const cfa = cfaName === 'rsp' || cfaName === 'rbp' ? `${cfaName}+${cfaOff}` : cfaName;
  const rbpName = rbpTypes[rbpType!]!;
  const rbp = rbpName === 'at-cfa' ? `c${rbpOff! < 0 ? '' : '+'}${rbpOff}` : rbpName;
  return { cfa, rbp };
}

describe('unwind tables (native/unwind/unwind_table.cc) against readelf --debug-dump=frames-interp', () => {
  const files = [
    ['libstdc++', '/usr/lib/x86_64-linux-gnu/libstdc++.so.6'],
    ['libc', '/usr/lib/x86_64-linux-gnu/libc.so.6'],
    ['ld.so', '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2'],
    ['cpp_containers_nofp', fixturePath('cpp_containers_nofp')],
    ['cpp_containers', fixturePath('cpp_containers')],
  ] as const;
  it.each(files)('%s: the same rule at every row, and no rule where no FDE is', (_, path) => {
    const table = loadNative().unwindTable(path);
    expect(table.error).toBeUndefined();
    const { rows, fdes } = readelfRows(path);
    expect(table.fdes).toBe(fdes.length);
    const toOffset = fileOffsetOf(path);
    const mismatches: string[] = [];
    let compared = 0;
    for (const r of rows) {
      const off = toOffset(r.start);
      if (off === undefined) continue;
      const ours = ruleAt(table, off);
      // What the walker must do with readelf's row.
      let cfa: string | undefined = r.cfa;
      if (r.ra === 'u') cfa = 'end'; // return address undefined: the outermost frame
      else if (r.ra !== 'c-8') cfa = 'unsupported';
      else if (r.cfa === 'exp') cfa = ours.cfa === 'deref-rbp' ? 'deref-rbp' : 'unsupported'; // checked by libdw's reading
      else if (!/^(rsp|rbp)\+\d+$/.test(r.cfa)) cfa = 'unsupported';
      let rbpOk = true;
      if (cfa !== 'end' && cfa !== 'unsupported' && r.rbp !== 'exp') {
        rbpOk = r.rbp === undefined || r.rbp === 'u' ? ours.rbp === 'same' || ours.rbp === 'undefined' : ours.rbp === r.rbp;
      }
      compared++;
      if (ours.cfa !== cfa || !rbpOk) {
        mismatches.push(`0x${r.start.toString(16)}: readelf CFA ${r.cfa} rbp ${r.rbp ?? '-'} ra ${r.ra}; ours ${ours.cfa} rbp ${ours.rbp}`);
      }
    }
    // Past the end of an FDE that no other FDE covers: a gap.
    const covered = (a: bigint) => fdes.some(([s, e]) => a >= s && a < e);
    for (const [, end] of fdes) {
      const off = toOffset(end - 1n);
      if (off === undefined || covered(end)) continue;
      const ours = ruleAt(table, off + 1n);
      compared++;
      if (ours.cfa !== 'none') mismatches.push(`0x${end.toString(16)} (after an FDE): ours ${ours.cfa}, expected none`);
    }
    expect(mismatches.slice(0, 20), `${mismatches.length} of ${compared} differ`).toEqual([]);
    expect(compared).toBeGreaterThan(fdes.length);
  });

  it('tells modules built with frame pointers from those without', () => {
    expect(loadNative().unwindTable(fixturePath('cpp_containers')).keepsFramePointers).toBe(true);
    expect(loadNative().unwindTable(fixturePath('cpp_containers_nofp')).keepsFramePointers).toBe(false);
    expect(loadNative().unwindTable('/usr/lib/x86_64-linux-gnu/libstdc++.so.6').keepsFramePointers).toBe(false);
  });
});
