// One file by design: every case symbolizes the programs compiled once by its top-level beforeAll.
// Symbolizer tests: real programs and a shared library compiled here (gcc/g++ -g), run to get
// their real addresses and /proc/self/maps, then symbolized through lib/report/symbolize.ts and the
// native addon. Also: stripped binaries with debug files found by build ID and .gnu_debuglink,
// MiniDebugInfo, truncated/corrupt ELF files, cache invalidation, and the maps and perf map of a live
// process (their parsers: test/unit/proc-maps.test.ts).

import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { nativeBuildDir } from '../lib/native/addon.js';
import {
  PerfMap,
  findMapping,
  parsePerfMap,
  parseProcMaps,
  readPerfMap,
  readProcMaps,
  type ProcMapping,
} from '../lib/target/proc-maps.js';
import { symbolizeStacks, type NativeSymbolizer, type SymbolizedBatch, type SymbolizeResult } from '../lib/report/symbolize.js';
import { expandBatch } from '../lib/native/symbolized-batch.js';

const execFileAsync = promisify(execFile);

// The addon as lib/native/addon.ts finds it (build/Release or build/Debug), or EBPF_LEAK_ADDON: any
// .node that registers the symbolizer (used for sanitizer builds). A missing addon fails the tests.
function addonPath(): string {
  return process.env.EBPF_LEAK_ADDON ?? join(nativeBuildDir(), 'ebpf_leak.node');
}

/** The addon's symbolizer with its compact results expanded into objects, for assertions. */
type Addon = {
  symbolize(path: string, offsets: BigUint64Array | Array<number | bigint>, o?: { debugDirs?: string[] }): Promise<SymbolizeResult[]>;
  readBuildId(path: string): string | null;
};

type RawAddon = NativeSymbolizer;

function loadRawAddon(): RawAddon {
  return createRequire(import.meta.url)(addonPath()) as RawAddon;
}

function loadAddon(): Addon {
  const raw = loadRawAddon();
  return {
    // Not async: bad arguments throw at the call.
    symbolize: (path, offsets, o) => raw.symbolize(path, offsets, o).then(expandBatch),
    readBuildId: (path) => raw.readBuildId(path),
  };
}

// --- sources; `@NAME` comments mark lines the assertions look for -------------------------------

const progC = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *volatile recorded_ra;

__attribute__((noinline)) void record_ra(void) { recorded_ra = __builtin_return_address(0); }

static inline __attribute__((always_inline)) int helper_inline(int x) {
  record_ra(); // @INLINE_BODY
  return x * 7;
}

__attribute__((noinline)) int with_inline(int x) {
  int y = helper_inline(x); // @INLINE_CALL
  return y + 1;
}

__attribute__((noinline)) void *leaf_fn(void) { return __builtin_return_address(0); }

__attribute__((noinline)) void *caller_fn(void) { // @CALLER_DECL
  void *ret = leaf_fn(); // @CALL_LEAF
  __asm__ volatile("" ::: "memory");
  return ret;
}

static __attribute__((noinline)) int static_fn(int x) { // @STATIC_DECL
  return x * 3 + (int)(long)getenv("NOT_SET_ANYWHERE");
}

static void dump_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[4096];
  while (f && fgets(line, sizeof line, f)) printf("MAP %s", line);
  if (f) fclose(f);
}

int main(int argc, char **argv) {
  void *ra = caller_fn();
  with_inline(argc);
  printf("ADDR caller_fn %p\\n", (void *)&caller_fn);
  printf("ADDR leaf_fn %p\\n", (void *)&leaf_fn);
  printf("ADDR static_fn %p\\n", (void *)&static_fn);
  printf("ADDR ra_caller %p\\n", ra);
  printf("ADDR ra_inline %p\\n", recorded_ra);
  printf("ADDR with_inline %p\\n", (void *)&with_inline);
  printf("VAL %d\\n", static_fn(argc));
  dump_maps();
  if (argc > 1 && strcmp(argv[1], "wait") == 0) {
    printf("READY\\n");
    fflush(stdout);
    getchar();
  }
  return 0;
}
`;

const progCpp = `#include <cstdio>
#include <vector>

namespace leakns {
struct Widget {
  __attribute__((noinline)) static int make(int v); // declared here, defined below
};
__attribute__((noinline)) int Widget::make(int v) { // @MAKE_DECL
  return v * 2;
}
__attribute__((noinline)) int compute(int a, double b) { // @COMPUTE_DECL
  return a + static_cast<int>(b);
}
template <typename T> __attribute__((noinline)) T twice(T v) { return v + v; }
}  // namespace leakns

int main() {
  volatile int sink = leakns::compute(1, 2.0) + leakns::Widget::make(3) + (int)leakns::twice<long>(4);
  (void)sink;
  std::printf("ADDR compute %p\\n", (void *)&leakns::compute);
  std::printf("ADDR make %p\\n", (void *)&leakns::Widget::make);
  std::printf("ADDR twice %p\\n", (void *)&leakns::twice<long>);
  FILE *f = std::fopen("/proc/self/maps", "r");
  char line[4096];
  while (f && std::fgets(line, sizeof line, f)) std::printf("MAP %s", line);
  if (f) std::fclose(f);
  return 0;
}
`;

const libC = `__attribute__((noinline)) void *lib_ra(void) { return __builtin_return_address(0); }

__attribute__((noinline)) void *lib_caller(void) { // @LIB_DECL
  void *r = lib_ra(); // @LIB_CALL
  __asm__ volatile("" ::: "memory");
  return r;
}

void *lib_caller_address(void) { return (void *)&lib_caller; }
`;

const libMainC = `#include <stdio.h>
void *lib_caller(void);
void *lib_caller_address(void);
int main(void) {
  void *ra = lib_caller();
  printf("ADDR lib_caller %p\\n", lib_caller_address());
  printf("ADDR lib_ra_in_caller %p\\n", ra);
  FILE *f = fopen("/proc/self/maps", "r");
  char line[4096];
  while (f && fgets(line, sizeof line, f)) printf("MAP %s", line);
  if (f) fclose(f);
  return 0;
}
`;

function lineOf(source: string, marker: string): number {
  const idx = source.split('\n').findIndex((l) => l.includes(marker));
  if (idx < 0) throw new Error(`marker ${marker} not found`);
  return idx + 1;
}

interface Run {
  addrs: Record<string, bigint>;
  maps: ProcMapping[];
}

function runProgram(path: string): Run {
  const out = execFileSync(path, [], { encoding: 'utf8' });
  const addrs: Record<string, bigint> = {};
  const mapLines: string[] = [];
  for (const line of out.split('\n')) {
    const a = /^ADDR (\S+) (?:0x)?([0-9a-f]+)$/.exec(line);
    if (a) addrs[a[1]!] = BigInt('0x' + a[2]!);
    if (line.startsWith('MAP ')) mapLines.push(line.slice(4));
  }
  // No pid: hostPath is the path itself (this process can open it directly).
  return { addrs, maps: parseProcMaps(mapLines.join('\n')) };
}

/** Starts a program that prints its addresses and then waits for its stdin to close. */
async function spawnWaiting(path: string): Promise<{ child: ChildProcess; addrs: Record<string, bigint> }> {
  const child = spawn(path, ['wait'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('READY\n')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`${path} exited early (${code})`)));
    child.on('error', reject);
  });
  const addrs: Record<string, bigint> = {};
  for (const m of out.matchAll(/^ADDR (\S+) (?:0x)?([0-9a-f]+)$/gm)) addrs[m[1]!] = BigInt('0x' + m[2]!);
  return { child, addrs };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.stdin!.end();
  await exited;
}

/** File offset of a runtime address, through the process's own maps. */
function fileOffset(run: Run, address: bigint): bigint {
  const m = findMapping(run.maps, address);
  if (!m) throw new Error(`address 0x${address.toString(16)} not mapped`);
  return address - m.start + m.offset;
}

function sh(cmd: string, args: string[], cwd?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

function buildIdOf(path: string): string {
  const out = sh('readelf', ['-n', path]);
  const m = /Build ID:\s*([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`no build id in ${path}`);
  return m[1]!;
}

/** PT_LOAD segments of a file, from readelf. */
function loadSegments(path: string): Array<{ offset: bigint; vaddr: bigint; filesz: bigint }> {
  const out: Array<{ offset: bigint; vaddr: bigint; filesz: bigint }> = [];
  for (const line of sh('readelf', ['-lW', path]).split('\n')) {
    const m = /^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)/.exec(line);
    if (m) out.push({ offset: BigInt('0x' + m[1]!), vaddr: BigInt('0x' + m[2]!), filesz: BigInt('0x' + m[3]!) });
  }
  return out;
}

type Oracle = Array<Array<{ symbol?: string; line?: number }>>;

/** binutils addr2line -f -i -C for file offsets: an independent implementation to agree with. */
function addr2line(path: string, offsets: readonly bigint[]): Oracle {
  const segs = loadSegments(path);
  const vaddrs = offsets.map((o) => {
    const s = segs.find((g) => o >= g.offset && o < g.offset + g.filesz);
    if (!s) throw new Error(`offset ${o} in no PT_LOAD`);
    return '0x' + (o - s.offset + s.vaddr).toString(16);
  });
  const lines = execFileSync('addr2line', ['-f', '-i', '-C', '-a', '-e', path, ...vaddrs], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  }).split('\n');
  const out: Oracle = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (/^0x[0-9a-f]+$/.test(l)) {
      out.push([]);
      continue;
    }
    if (l === '') continue;
    const loc = /^(.*):(\d+|\?)/.exec(lines[++i] ?? '');
    const frame: { symbol?: string; line?: number } = {};
    if (l !== '??') frame.symbol = l;
    if (loc && loc[2] !== '?' && loc[2] !== '0') frame.line = Number(loc[2]);
    out[out.length - 1]!.push(frame);
  }
  return out;
}

/** Our frames in the oracle's shape; [] when nothing was found (addr2line says ?? there). */
function comparable(r: SymbolizeResult): Array<{ symbol?: string; line?: number }> {
  if (!Array.isArray(r)) return [{ symbol: `error: ${r.error}` }];
  return r.map((f) => {
    const o: { symbol?: string; line?: number } = {};
    if (f.symbol !== undefined) o.symbol = f.symbol;
    if (f.line !== undefined) o.line = f.line;
    return o;
  });
}

/** At -O2 the first instruction of a function may carry its first statement's line. */
function expectEntryLine(line: number | undefined, declLine: number): void {
  expect(line).toBeGreaterThanOrEqual(declLine);
  expect(line).toBeLessThanOrEqual(declLine + 1);
}

function frames(r: SymbolizeResult | undefined): Array<{ symbol?: string; file?: string; line?: number; inlined: boolean }> {
  if (r === undefined) throw new Error('no result');
  if (!Array.isArray(r)) throw new Error(`unexpected error result: ${r.error}`);
  return r;
}

// --- fixture build -------------------------------------------------------------------------------

let dir: string;
let addon: Addon;
/** The addon itself, as symbolizeStacks() takes it. */
let native: NativeSymbolizer;
let prog: string;
let progRun: Run;

beforeAll(() => {
  addon = loadAddon();
  native = loadRawAddon();
  dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-sym-'));
  writeFileSync(join(dir, 'prog.c'), progC);
  writeFileSync(join(dir, 'prog.cpp'), progCpp);
  writeFileSync(join(dir, 'leaklib.c'), libC);
  writeFileSync(join(dir, 'libmain.c'), libMainC);
  prog = join(dir, 'prog');
  sh('gcc', ['-g', '-O2', '-fPIE', '-pie', '-Wl,--build-id', '-o', prog, 'prog.c'], dir);
  progRun = runProgram(prog);
}, 120_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('native symbolize on a PIE C program', () => {
  it('is a PIE (ET_DYN) executable, so file offsets and runtime addresses differ', () => {
    expect(sh('readelf', ['-h', prog])).toMatch(/Type:\s+DYN/);
    const m = findMapping(progRun.maps, progRun.addrs.caller_fn!)!;
    expect(m.path).toBe(prog);
    expect(m.start).toBeGreaterThan(0x10000n);
  });

  it('names functions with file and declaration line', async () => {
    const offs = ['caller_fn', 'leaf_fn', 'static_fn'].map((n) => fileOffset(progRun, progRun.addrs[n]!));
    const res = await addon.symbolize(prog, BigUint64Array.from(offs));
    expect(res).toHaveLength(3);
    const [caller, leaf, stat] = res.map(frames);
    expect(caller).toHaveLength(1);
    expect(caller![0]).toMatchObject({ symbol: 'caller_fn', inlined: false });
    expectEntryLine(caller![0]!.line, lineOf(progC, '@CALLER_DECL'));
    expect(caller![0]!.file).toBe(join(dir, 'prog.c'));
    expect(leaf![0]!.symbol).toBe('leaf_fn');
    expect(stat![0]!.symbol).toBe('static_fn');
    expectEntryLine(stat![0]!.line, lineOf(progC, '@STATIC_DECL'));
  });

  it('agrees with binutils addr2line (names, lines, inline chains) on every instruction of the program', async () => {
    const text = /\.text\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(sh('readelf', ['-SW', prog]))!;
    const start = BigInt('0x' + text[1]!);
    const size = Number(BigInt('0x' + text[2]!));
    const offsets = Array.from({ length: size }, (_, i) => start + BigInt(i));
    const ours = await addon.symbolize(prog, offsets);
    const theirs = addr2line(prog, offsets);
    let compared = 0;
    let inlinedSeen = 0;
    for (let i = 0; i < offsets.length; i++) {
      const mine = comparable(ours[i]!);
      // Alignment padding between functions: addr2line names the previous symbol, we name none.
      if (mine.length === 0 || mine[0]!.symbol === undefined) continue;
      expect({ offset: offsets[i], frames: mine }).toEqual({ offset: offsets[i], frames: theirs[i] });
      compared++;
      if (mine.length > 1) inlinedSeen++;
    }
    expect(compared).toBeGreaterThan(size * 0.8);
    expect(inlinedSeen).toBeGreaterThan(0);
  });

  it('accepts number[] offsets and returns the same as for a BigUint64Array', async () => {
    const off = fileOffset(progRun, progRun.addrs.caller_fn!);
    const a = await addon.symbolize(prog, [Number(off)]);
    const b = await addon.symbolize(prog, BigUint64Array.of(off));
    expect(a).toEqual(b);
    expect(frames(a[0])[0]!.symbol).toBe('caller_fn');
  });

  it('with no offsets, opens the module as a warm-up and resolves empty; lookups after it are the same', async () => {
    const off = fileOffset(progRun, progRun.addrs.caller_fn!);
    const before = await addon.symbolize(prog, [off]);
    expect(await addon.symbolize(prog, [])).toEqual([]);
    expect(await addon.symbolize(join(dir, 'does-not-exist'), [])).toEqual([]);
    expect(await addon.symbolize(prog, [off])).toEqual(before);
  });

  it('gives the line of a call for a return address (address - 1)', async () => {
    const ra = progRun.addrs.ra_caller!;
    const [res] = await addon.symbolize(prog, [fileOffset(progRun, ra - 1n)]);
    const f = frames(res);
    expect(f[0]).toMatchObject({ symbol: 'caller_fn', line: lineOf(progC, '@CALL_LEAF'), inlined: false });
  });

  it('expands inlined frames, innermost first, with the call site as the caller line', async () => {
    const ra = progRun.addrs.ra_inline!;
    // The return address lies in with_inline's own code, where helper_inline was inlined.
    const wi = progRun.addrs.with_inline!;
    expect(ra).toBeGreaterThan(wi);
    const [res] = await addon.symbolize(prog, [fileOffset(progRun, ra - 1n)]);
    const f = frames(res);
    expect(f).toHaveLength(2);
    expect(f[0]).toMatchObject({ symbol: 'helper_inline', line: lineOf(progC, '@INLINE_BODY'), inlined: true });
    expect(f[0]!.file).toBe(join(dir, 'prog.c'));
    expect(f[1]).toMatchObject({ symbol: 'with_inline', line: lineOf(progC, '@INLINE_CALL'), inlined: false });
    expect(f[1]!.file).toBe(join(dir, 'prog.c'));
  });

  it('returns { error } for an offset outside every PT_LOAD while the rest of the batch resolves', async () => {
    const good = fileOffset(progRun, progRun.addrs.caller_fn!);
    const res = await addon.symbolize(prog, [good, 0x7fff_ffffn, good]);
    expect(frames(res[0])[0]!.symbol).toBe('caller_fn');
    expect(res[1]).toMatchObject({ error: expect.stringMatching(/PT_LOAD/) });
    expect(frames(res[2])[0]!.symbol).toBe('caller_fn');
  });

  it('returns { error } for a missing file and throws TypeError on bad arguments', async () => {
    const res = await addon.symbolize(join(dir, 'does-not-exist'), [1, 2]);
    expect(res).toHaveLength(2);
    for (const r of res) expect(r).toMatchObject({ error: expect.stringMatching(/cannot open/) });
    expect(() => addon.symbolize(42 as unknown as string, [1])).toThrow(TypeError);
    expect(() => addon.symbolize(prog, [-1])).toThrow(TypeError);
    expect(() => addon.symbolize(prog, new Float64Array(1) as unknown as BigUint64Array)).toThrow(TypeError);
  });

  it('a non-PIE build of the same program resolves too', async () => {
    const exe = join(dir, 'prog-nopie');
    sh('gcc', ['-g', '-O2', '-fno-pie', '-no-pie', '-o', exe, 'prog.c'], dir);
    expect(sh('readelf', ['-h', exe])).toMatch(/Type:\s+EXEC/);
    const run = runProgram(exe);
    const [res] = await addon.symbolize(exe, [fileOffset(run, run.addrs.caller_fn!)]);
    expect(frames(res)[0]!.symbol).toBe('caller_fn');
    expectEntryLine(frames(res)[0]!.line, lineOf(progC, '@CALLER_DECL'));
  });
});

describe('readBuildId', () => {
  it('matches readelf, and is null for non-ELF and missing files', () => {
    expect(addon.readBuildId(prog)).toBe(buildIdOf(prog));
    expect(addon.readBuildId(join(dir, 'prog.c'))).toBeNull();
    expect(addon.readBuildId(join(dir, 'missing'))).toBeNull();
  });
});

describe('C++', () => {
  let exe: string;
  let run: Run;
  beforeAll(() => {
    exe = join(dir, 'progxx');
    sh('g++', ['-g', '-O1', '-o', exe, 'prog.cpp'], dir);
    run = runProgram(exe);
  }, 60_000);

  it('demangles names from DWARF', async () => {
    const res = await addon.symbolize(exe, ['compute', 'make', 'twice'].map((n) => fileOffset(run, run.addrs[n]!)));
    const [compute, make, twice] = res.map(frames);
    expect(compute![0]!.symbol).toBe('leakns::compute(int, double)');
    expectEntryLine(compute![0]!.line, lineOf(progCpp, '@COMPUTE_DECL'));
    expect(make![0]!.symbol).toBe('leakns::Widget::make(int)');
    expectEntryLine(make![0]!.line, lineOf(progCpp, '@MAKE_DECL'));
    expect(twice![0]!.symbol).toContain('leakns::twice<long>(long)');
  });

  it('demangles names from the ELF symbol table when there is no DWARF', async () => {
    const nodebug = join(dir, 'progxx-nodebug');
    sh('strip', ['--strip-debug', '-o', nodebug, exe]);
    const res = await addon.symbolize(nodebug, [fileOffset(run, run.addrs.compute!)]);
    const f = frames(res[0]);
    expect(f).toHaveLength(1);
    expect(f[0]!.symbol).toBe('leakns::compute(int, double)');
    expect(f[0]!.file).toBeUndefined();
  });
});

describe('shared library', () => {
  it('resolves functions and call lines in a .so mapped at a random base', async () => {
    const lib = join(dir, 'libleaklib.so');
    sh('gcc', ['-g', '-O2', '-fPIC', '-shared', '-o', lib, 'leaklib.c'], dir);
    const exe = join(dir, 'libmain');
    sh('gcc', ['-g', '-O2', '-o', exe, 'libmain.c', `-L${dir}`, '-lleaklib', `-Wl,-rpath,${dir}`], dir);
    const run = runProgram(exe);
    const m = findMapping(run.maps, run.addrs.lib_caller!)!;
    expect(m.path).toBe(lib);
    const res = await addon.symbolize(lib, [
      fileOffset(run, run.addrs.lib_caller!),
      fileOffset(run, run.addrs.lib_ra_in_caller! - 1n),
    ]);
    const [decl, call] = res.map(frames);
    expect(decl![0]).toMatchObject({ symbol: 'lib_caller', line: lineOf(libC, '@LIB_DECL') });
    expect(decl![0]!.file).toBe(join(dir, 'leaklib.c'));
    expect(call![0]).toMatchObject({ symbol: 'lib_caller', line: lineOf(libC, '@LIB_CALL') });
  });
});

describe('separate debug information', () => {
  it('finds a stripped binary\'s debug file by build ID under a debug dir', async () => {
    const stripped = join(dir, 'prog-stripped');
    const debugRoot = join(dir, 'debugroot');
    const id = buildIdOf(prog);
    const debugFile = join(debugRoot, '.build-id', id.slice(0, 2), `${id.slice(2)}.debug`);
    mkdirSync(dirname(debugFile), { recursive: true });
    sh('objcopy', ['--only-keep-debug', prog, debugFile]);
    sh('strip', ['--strip-all', '-o', stripped, prog]);
    expect(sh('readelf', ['-S', stripped])).not.toMatch(/\.debug_info|\.symtab/);
    const off = fileOffset(progRun, progRun.addrs.static_fn!);

    const without = frames((await addon.symbolize(stripped, [off]))[0]);
    // No .symtab and no debug file: static_fn is not in .dynsym.
    expect(without.find((f) => f.symbol === 'static_fn')).toBeUndefined();

    const withDir = frames((await addon.symbolize(stripped, [off], { debugDirs: [debugRoot] }))[0]);
    expect(withDir[0]!.symbol).toBe('static_fn');
    expectEntryLine(withDir[0]!.line, lineOf(progC, '@STATIC_DECL'));
    expect(withDir[0]!.file).toBe(join(dir, 'prog.c'));
  });

  it('follows .gnu_debuglink (no build ID; CRC checked, a mismatching candidate is skipped)', async () => {
    const sub = join(dir, 'dl');
    mkdirSync(join(sub, '.debug'), { recursive: true });
    const full = join(sub, 'prog-dl-full');
    sh('gcc', ['-g', '-O2', '-Wl,--build-id=none', '-o', full, join(dir, 'prog.c')], sub);
    expect(sh('readelf', ['-n', full])).not.toMatch(/Build ID/);
    // The right debug file goes to .debug/; a wrong one (another build) with the same name sits
    // next to the binary, where it is looked for first, and must be rejected by its CRC.
    sh('objcopy', ['--only-keep-debug', full, join(sub, '.debug', 'prog-dl.debug')]);
    const other = join(sub, 'other');
    sh('gcc', ['-g', '-O0', '-Wl,--build-id=none', '-o', other, join(dir, 'prog.c')], sub);
    sh('objcopy', ['--only-keep-debug', other, join(sub, 'prog-dl.debug')]);
    const exe = join(sub, 'prog-dl');
    sh('strip', ['--strip-all', '-o', exe, full]);
    sh('objcopy', [`--add-gnu-debuglink=${join(sub, '.debug', 'prog-dl.debug')}`, exe]);
    expect(sh('readelf', ['--string-dump=.gnu_debuglink', exe])).toMatch(/prog-dl\.debug/);

    const run = runProgram(exe);
    const res = await addon.symbolize(exe, [
      fileOffset(run, run.addrs.static_fn!),
      fileOffset(run, run.addrs.ra_caller! - 1n),
    ]);
    const [stat, call] = res.map(frames);
    expect(stat![0]!.symbol).toBe('static_fn');
    expect(stat![0]!.file).toBe(join(dir, 'prog.c'));
    expect(call![0]).toMatchObject({ symbol: 'caller_fn', line: lineOf(progC, '@CALL_LEAF') });
  });

  it('reads the MiniDebugInfo (.gnu_debugdata) symbol table of a fully stripped binary', async () => {
    const mini = join(dir, 'prog-mini');
    const script = `
      set -e
      nm -D "$1" --format=posix --defined-only | awk '{ print $1 }' | sort > dynsyms
      nm "$1" --format=posix --defined-only | awk '{ if ($2 == "T" || $2 == "t") print $1 }' | sort > funcsyms
      comm -13 dynsyms funcsyms > keep_symbols
      objcopy --only-keep-debug "$1" mini_debuginfo
      objcopy -S --remove-section .gdb_index --remove-section .comment --keep-symbols=keep_symbols mini_debuginfo mini_debuginfo
      strip --strip-all -R .comment -o "$2" "$1"
      rm -f mini_debuginfo.xz
      xz mini_debuginfo
      objcopy --add-section .gnu_debugdata=mini_debuginfo.xz "$2"
    `;
    execFileSync('bash', ['-c', script, 'mini', prog, mini], { cwd: dir });
    expect(sh('readelf', ['-S', mini])).toMatch(/\.gnu_debugdata/);
    expect(sh('readelf', ['-S', mini])).not.toMatch(/\.symtab/);
    const res = await addon.symbolize(mini, [fileOffset(progRun, progRun.addrs.static_fn!)]);
    const f = frames(res[0]);
    expect(f[0]!.symbol).toBe('static_fn');
    expect(f[0]!.file).toBeUndefined();
  });
});

describe('damaged files', () => {
  it('a truncated ELF gives { error } for its frames; other modules in the same stacks resolve', async () => {
    const bad = join(dir, 'prog-truncated');
    copyFileSync(prog, bad);
    truncateSync(bad, 100);
    const off = fileOffset(progRun, progRun.addrs.caller_fn!);
    const res = await addon.symbolize(bad, [off, off + 16n]);
    for (const r of res) expect(r).toMatchObject({ error: expect.any(String) });
    expect(addon.readBuildId(bad)).toBeNull();

    // Through symbolizeStacks: a made-up mapping for the truncated file next to the real ones.
    const progMap = findMapping(progRun.maps, progRun.addrs.caller_fn!)!;
    const fake: ProcMapping = { ...progMap, start: 0x1000_0000n, end: 0x1001_0000n, path: bad, hostPath: bad };
    const stacks = [[progRun.addrs.leaf_fn!, 0x1000_0100n, progRun.addrs.ra_caller!]];
    const [stack] = await symbolizeStacks(stacks, [...progRun.maps, fake], { native });
    expect(stack).toHaveLength(3);
    expect(stack![0]).toMatchObject({ symbol: 'leaf_fn', module: prog });
    expect(stack![1]).toEqual({ address: '0x10000100', module: bad, offset: '0x' + (progMap.offset + 0x100n).toString(16) });
    expect(stack![2]).toMatchObject({ symbol: 'caller_fn', line: lineOf(progC, '@CALL_LEAF') });
  });

  it('garbage over the section header table gives { error }, and the process survives', async () => {
    const bad = join(dir, 'prog-corrupt-shdr');
    const buf = readFileSync(prog);
    const shoff = Number(buf.readBigUInt64LE(0x28));
    const shnum = buf.readUInt16LE(0x3c);
    expect(shoff + shnum * 64).toBeLessThanOrEqual(buf.length);
    buf.fill(0x41, shoff, shoff + shnum * 64);
    writeFileSync(bad, buf);
    const off = fileOffset(progRun, progRun.addrs.caller_fn!);
    const res = await addon.symbolize(bad, [off, off + 4n]);
    for (const r of res) expect(r).toMatchObject({ error: expect.stringMatching(/section|ELF/i) });
    // The intact file still resolves in the next batch.
    expect(frames((await addon.symbolize(prog, [off]))[0])[0]!.symbol).toBe('caller_fn');
  });

  it('garbage inside .debug_info and .debug_line does not crash', async () => {
    const bad = join(dir, 'prog-corrupt-dwarf');
    const buf = readFileSync(prog);
    const sections = sh('readelf', ['-SW', prog]);
    let hits = 0;
    for (const name of ['.debug_info', '.debug_line', '.debug_abbrev']) {
      const m = new RegExp(`\\${name}\\s+\\S+\\s+[0-9a-f]+\\s+([0-9a-f]+)\\s+([0-9a-f]+)`).exec(sections);
      if (!m) continue;
      const start = parseInt(m[1]!, 16);
      const size = parseInt(m[2]!, 16);
      for (let i = 0; i < size; i++) buf[start + i] = (i * 131 + 17) & 0xff;
      hits++;
    }
    expect(hits).toBe(3);
    writeFileSync(bad, buf);
    const offs = ['caller_fn', 'leaf_fn', 'static_fn', 'with_inline'].map((n) => fileOffset(progRun, progRun.addrs[n]!));
    const res = await addon.symbolize(bad, offs);
    expect(res).toHaveLength(4);
    // The symbol table is intact, so names still come back (from .symtab) or an error does.
    for (const r of res) expect(Array.isArray(r) || typeof r.error === 'string').toBe(true);
  });

  it('notices a file replaced at the same path (cache invalidation)', async () => {
    const path = join(dir, 'prog-swap');
    copyFileSync(prog, path);
    const off = fileOffset(progRun, progRun.addrs.caller_fn!);
    expect(frames((await addon.symbolize(path, [off]))[0])[0]!.symbol).toBe('caller_fn');
    const tmp = join(dir, 'prog-swap.tmp');
    copyFileSync(prog, tmp);
    truncateSync(tmp, 100);
    renameSync(tmp, path);
    expect((await addon.symbolize(path, [off]))[0]).toMatchObject({ error: expect.any(String) });
  });
});

describe('symbolizeStacks', () => {
  it('maps addresses to modules, fills StackFrames, and expands inlined frames', async () => {
    const { addrs, maps } = progRun;
    const stacks = [[addrs.leaf_fn!, addrs.ra_caller!], [addrs.caller_fn!, addrs.ra_inline!, 0x10n]];
    const res = await symbolizeStacks(stacks, maps, { native });
    const buildId = buildIdOf(prog);
    const [s1, s2] = res;
    expect(s1).toHaveLength(2);
    expect(s1![0]).toEqual({
      address: '0x' + addrs.leaf_fn!.toString(16),
      module: prog,
      buildId,
      offset: '0x' + fileOffset(progRun, addrs.leaf_fn!).toString(16),
      symbol: 'leaf_fn',
      file: join(dir, 'prog.c'),
      line: expect.any(Number),
      inlined: false,
    });
    // Frame 1 is a return address: reported as is, symbolized at address - 1 (the call).
    expect(s1![1]).toMatchObject({
      address: '0x' + addrs.ra_caller!.toString(16),
      offset: '0x' + fileOffset(progRun, addrs.ra_caller!).toString(16),
      symbol: 'caller_fn',
      line: lineOf(progC, '@CALL_LEAF'),
    });
    // caller_fn, then the return address in inlined code (2 frames), then an unmapped address.
    expect(s2!.map((f) => f.symbol)).toEqual(['caller_fn', 'helper_inline', 'with_inline', undefined]);
    expect(s2![1]).toMatchObject({ inlined: true, line: lineOf(progC, '@INLINE_BODY') });
    expect(s2![2]).toMatchObject({ inlined: false, line: lineOf(progC, '@INLINE_CALL') });
    expect(s2![1]!.address).toBe(s2![2]!.address);
    expect(s2![3]).toEqual({ address: '0x10' });
  });

  it('returnAddresses: false symbolizes every address as is', async () => {
    const { addrs, maps } = progRun;
    const [s] = await symbolizeStacks([[addrs.leaf_fn!, addrs.caller_fn!]], maps, { native, returnAddresses: false });
    expect(s![1]!.symbol).toBe('caller_fn');
    // With the adjustment, the byte before caller_fn belongs to another function (or padding).
    const [adjusted] = await symbolizeStacks([[addrs.leaf_fn!, addrs.caller_fn!]], maps, { native });
    expect(adjusted![1]!.symbol).not.toBe('caller_fn');
  });

  it('names JIT frames from a perf map, outside file mappings only', async () => {
    const { addrs, maps } = progRun;
    const anon: ProcMapping = { start: 0x5000_0000n, end: 0x5001_0000n, offset: 0n, perms: 'r-xp', dev: '00:00', inode: 0n, path: '', deleted: false };
    const perfMap = new PerfMap(parsePerfMap('50000100 40 LazyCompile:~leakyJs /app/x.js:3\n'));
    const [s] = await symbolizeStacks([[0x5000_0110n, 0x5000_0200n, addrs.caller_fn!, 0x6000_0000n]], [...maps, anon], {
      native,
      perfMap,
      returnAddresses: false,
    });
    expect(s![0]).toEqual({ address: '0x50000110', module: '[perf-map]', symbol: 'LazyCompile:~leakyJs /app/x.js:3' });
    expect(s![1]).toEqual({ address: '0x50000200' });
    expect(s![2]!.symbol).toBe('caller_fn');
    expect(s![3]).toEqual({ address: '0x60000000' });
  });

  it('uses debugDirs for modules in the stacks', async () => {
    // The build-id debug root made above serves the stripped copy; map it where prog is mapped.
    const stripped = join(dir, 'prog-stripped');
    const maps = progRun.maps.map((m) => (m.path === prog ? { ...m, path: stripped, hostPath: stripped } : m));
    const addr = progRun.addrs.static_fn!;
    const [withDirs] = await symbolizeStacks([[addr]], maps, { native, debugDirs: [join(dir, 'debugroot')] });
    expect(withDirs![0]).toMatchObject({ symbol: 'static_fn', module: stripped, buildId: buildIdOf(prog) });
  });
});

describe('live processes', () => {
  it('symbolizes a running process through /proc/PID/maps and /proc/PID/root (default addon)', async () => {
    const { child, addrs } = await spawnWaiting(prog);
    try {
      const maps = await readProcMaps(child.pid!);
      const m = findMapping(maps, addrs.caller_fn!)!;
      expect(m).toMatchObject({ path: prog, hostPath: `/proc/${child.pid}/root${prog}`, deleted: false });
      const [stack] = await symbolizeStacks([[addrs.leaf_fn!, addrs.ra_caller!]], maps);
      expect(stack).toHaveLength(2);
      expect(stack![0]).toMatchObject({ symbol: 'leaf_fn', module: prog, buildId: buildIdOf(prog) });
      expect(stack![1]).toMatchObject({ symbol: 'caller_fn', line: lineOf(progC, '@CALL_LEAF') });
    } finally {
      await stop(child);
    }
  });

  it.skipIf(process.getuid?.() !== 0)('reads a deleted executable through /proc/PID/map_files', async () => {
    const path = join(dir, 'prog-deleted');
    copyFileSync(prog, path);
    const { child, addrs } = await spawnWaiting(path);
    try {
      rmSync(path);
      const maps = await readProcMaps(child.pid!);
      const m = findMapping(maps, addrs.caller_fn!)!;
      expect(m.deleted).toBe(true);
      expect(m.path).toBe(path);
      expect(m.hostPath).toMatch(new RegExp(`^/proc/${child.pid}/map_files/[0-9a-f]+-[0-9a-f]+$`));
      const [stack] = await symbolizeStacks([[addrs.caller_fn!]], maps, { native });
      expect(stack![0]).toMatchObject({ symbol: 'caller_fn', module: path, buildId: buildIdOf(prog) });
    } finally {
      await stop(child);
    }
  });
});

describe('dwz alternate debug files', () => {
  const hasDwz = spawnSync('dwz', ['--version']).status === 0;
  it.skipIf(!hasDwz)('resolves DW_FORM_GNU_ref_alt through .gnu_debugaltlink, found by build ID', async () => {
    const sub = join(dir, 'dwz');
    mkdirSync(sub, { recursive: true });
    const p1 = join(sub, 'p1');
    const p2 = join(sub, 'p2');
    const ref = join(sub, 'p1.ref');
    sh('gcc', ['-g', '-O2', '-o', p1, join(dir, 'prog.c')], sub);
    sh('gcc', ['-g', '-O2', '-DOTHER=1', '-o', p2, join(dir, 'prog.c')], sub);
    copyFileSync(p1, ref);
    // The recorded path does not exist: the alternate file must be found by its build ID.
    sh('dwz', ['-m', join(sub, 'multi.debug'), '-M', '/nonexistent/.dwz/multi.debug', p1, p2], sub);
    expect(sh('readelf', ['-S', p1])).toMatch(/\.gnu_debugaltlink/);
    const altId = buildIdOf(join(sub, 'multi.debug'));
    const debugRoot = join(sub, 'debugroot');
    mkdirSync(join(debugRoot, '.build-id', altId.slice(0, 2)), { recursive: true });
    copyFileSync(join(sub, 'multi.debug'), join(debugRoot, '.build-id', altId.slice(0, 2), `${altId.slice(2)}.debug`));

    const text = /\.text\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(sh('readelf', ['-SW', p1]))!;
    const start = BigInt('0x' + text[1]!);
    const offsets = Array.from({ length: Number(BigInt('0x' + text[2]!)) }, (_, i) => start + BigInt(i));
    const expected = await addon.symbolize(ref, offsets);
    const withAlt = await addon.symbolize(p1, offsets, { debugDirs: [debugRoot] });
    const withoutAlt = await addon.symbolize(p1, offsets);
    expect(withAlt).toEqual(expected);
    // Names that moved to the alternate file are missing without it.
    expect(withoutAlt).not.toEqual(expected);
  });
});

describe('fuzzing', () => {
  it('survives 150 randomly damaged copies of the program: symbolizer, ELF reader and unwind-table builder (in a child process)', () => {
    const script = join(dir, 'fuzz.mjs');
    writeFileSync(
      script,
      `import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
const [addonPath, src, count, outDir, ehFrame] = process.argv.slice(2);
const [ehOff, ehSize] = ehFrame.split(':').map(Number);
const addon = createRequire(import.meta.url)(addonPath);
const orig = readFileSync(src);
let seed = 12345;
const rnd = () => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed / 4294967296; };
const offsets = Array.from({ length: 200 }, () => Math.floor(rnd() * 0x3000));
let results = 0;
for (let i = 0; i < Number(count); i++) {
  const buf = Buffer.from(orig);
  // Half of the copies damaged anywhere, half in the headers where the tables live.
  const span = i % 2 ? buf.length : Math.min(buf.length, 0x400);
  const edits = 1 + Math.floor(rnd() * 32);
  for (let k = 0; k < edits; k++) buf[Math.floor(rnd() * span)] = Math.floor(rnd() * 256);
  // And sometimes the section header table, which ValidateElf checks.
  if (i % 5 === 0) {
    const shoff = Number(buf.readBigUInt64LE(0x28) % BigInt(buf.length));
    for (let k = 0; k < 64; k++) buf[(shoff + Math.floor(rnd() * 64 * 30)) % buf.length] = Math.floor(rnd() * 256);
  }
  // And a third of them in .eh_frame, which the unwind-table builder parses.
  if (i % 3 === 0) {
    for (let k = 0; k < 16; k++) buf[ehOff + Math.floor(rnd() * ehSize)] = Math.floor(rnd() * 256);
  }
  const path = outDir + '/fuzz-' + i;
  writeFileSync(path, buf);
  results += (await addon.symbolize(path, offsets)).entries.length / 2; // 2 per offset
  addon.readBuildId(path);
  // These throw an Error for a file they cannot use; crashing or hanging is the failure.
  try { addon.unwindTable(path); } catch (e) { if (!(e instanceof Error)) throw e; }
  try { addon.readElf(path, ['main', 'malloc']); } catch (e) { if (!(e instanceof Error)) throw e; }
}
console.log('ok ' + results);
`,
    );
    const eh = /\.eh_frame\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(sh('readelf', ['-SW', prog]))!;
    const ehFrame = `${parseInt(eh[1]!, 16)}:${parseInt(eh[2]!, 16)}`;
    const r = spawnSync(process.execPath, [script, addonPath(), prog, '150', dir, ehFrame], { encoding: 'utf8', timeout: 110_000 });
    expect(r.signal).toBeNull();
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`ok ${150 * 200}`);
    expect(r.status).toBe(0);
  });
});

describe('timing', () => {
  it('symbolizes 10,000 distinct offsets (logged, not asserted)', async () => {
    const nfiles = 12;
    const perFile = 100;
    const srcs: string[] = [];
    for (let f = 0; f < nfiles; f++) {
      let s = '#include <stdlib.h>\n';
      for (let i = 0; i < perFile; i++) {
        s += `static inline __attribute__((always_inline)) long in_${f}_${i}(long x) { return x * ${i + 3} + (long)getenv("E${i}"); }\n`;
        s += `__attribute__((noinline)) long fn_${f}_${i}(long x) {\n  long a = in_${f}_${i}(x);\n  for (int k = 0; k < (int)x; k++) a += k * ${i + 1} ^ (a >> 3);\n  return a + (long)malloc(a & 255);\n}\n`;
      }
      const name = join(dir, `gen${f}.c`);
      writeFileSync(name, s);
      srcs.push(name);
    }
    const lib = join(dir, 'libgen.so');
    // Two compilers at a time (the machine has two cores), then one link.
    const objs = srcs.map((src) => src.replace(/\.c$/, '.o'));
    for (let i = 0; i < srcs.length; i += 2) {
      await Promise.all(
        srcs.slice(i, i + 2).map((src, k) => execFileAsync('gcc', ['-g', '-O2', '-fPIC', '-c', '-o', objs[i + k]!, src])),
      );
    }
    sh('gcc', ['-shared', '-o', lib, ...objs], dir);
    // .text range in file offsets.
    const sec = /\.text\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(sh('readelf', ['-SW', lib]))!;
    const textOff = BigInt('0x' + sec[2]!);
    const textSize = Number(BigInt('0x' + sec[3]!));
    expect(textSize).toBeGreaterThan(10_000);
    const n = 10_000;
    const offsets = new BigUint64Array(n);
    for (let i = 0; i < n; i++) offsets[i] = textOff + BigInt(Math.floor((i * textSize) / n));
    expect(new Set(offsets).size).toBe(n);

    // A library built just now: nothing of it is cached yet.
    let t = performance.now();
    const cold = await addon.symbolize(lib, offsets);
    const coldMs = performance.now() - t;
    t = performance.now();
    const warm = await addon.symbolize(lib, offsets);
    const warmMs = performance.now() - t;
    const named = cold.filter((r) => Array.isArray(r) && r.length > 0 && r[0]!.symbol !== undefined).length;
    const withLine = cold.filter((r) => Array.isArray(r) && r.length > 0 && r[0]!.line !== undefined).length;
    const frameCount = cold.reduce((acc, r) => acc + (Array.isArray(r) ? r.length : 0), 0);
    console.log(
      `symbolize: ${n} distinct offsets in a ${textSize}-byte .text (${nfiles * perFile} functions, ${frameCount} frames): ` +
        `cold ${coldMs.toFixed(1)} ms, cached ${warmMs.toFixed(1)} ms; ${named} named, ${withLine} with a line`,
    );
    expect(warm).toEqual(cold);
    expect(named).toBeGreaterThan(n * 0.8);
    // Spot-check one in ten against binutils addr2line.
    const sample = [...offsets].filter((_, i) => i % 10 === 0);
    const theirs = addr2line(lib, sample);
    let compared = 0;
    sample.forEach((off, k) => {
      const mine = comparable(cold[k * 10]!);
      if (mine.length === 0 || mine[0]!.symbol === undefined) return;
      expect({ off, frames: mine }).toEqual({ off, frames: theirs[k] });
      compared++;
    });
    expect(compared).toBeGreaterThan(sample.length * 0.8);
  }, 120_000);
});

describe('the maps of a live process', () => {
  it('reads this process\'s maps', async () => {
    const maps = await readProcMaps(process.pid);
    const exe = maps.find((m) => m.path === process.execPath || m.path.endsWith('/node'));
    expect(exe).toBeDefined();
    expect(exe!.hostPath).toBe(`/proc/${process.pid}/root${exe!.path}`);
    expect(maps.every((m) => m.perms[2] === 'x')).toBe(true);
    // And the native side can read a module through /proc/PID/root (openat2 RESOLVE_IN_ROOT).
    expect(addon.readBuildId(exe!.hostPath!)).toBe(addon.readBuildId(exe!.path));
  });
});

describe('perf map of a live process', () => {
  it('reads /tmp/perf-PID.map through /proc/PID/root', async () => {
    const path = `/tmp/perf-${process.pid}.map`;
    writeFileSync(path, '7f0000001000 20 JS:~run\n');
    try {
      const map = await readPerfMap(process.pid);
      expect(map?.lookup(0x7f0000001010n)?.symbol).toBe('JS:~run');
    } finally {
      rmSync(path, { force: true });
    }
  });
});
