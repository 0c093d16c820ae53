// Programs whose malloc is not glibc's shared one: refused by default (see errors.test.ts), traced
// when the allocator is named.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { realpathSync } from 'node:fs';
import { checkReport } from '../lib/report/checked.js';
import { defaultSuppressions } from '../lib/suppressions/defaults.js';
import { trace, type LeakGroup, type LeakReport, type LeakTracer } from '../lib/index.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind } from './helpers/valgrind.js';

const work = mkdtempSync(join(tmpdir(), 'ebpf-leak-allocators-'));
const jemalloc = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2';

const symbols = (g: LeakGroup) => g.stack.map((f) => f.symbol);

describe('allocators other than glibc shared malloc', () => {
  it('traces a static binary through the malloc inside the executable', async () => {
    const src = join(work, 'static.c');
    writeFileSync(
      src,
      '#include <stdlib.h>\n' +
        'void *keep;\n' +
        'int main(void) {\n' +
        '  void *a = malloc(100);\n' +
        '  void *b = calloc(3, 10);\n' +
        '  free(a);\n' +
        '  keep = realloc(b, 200);\n' +
        '  return 0;\n' +
        '}\n',
    );
    const exe = join(work, 'static');
    execFileSync('gcc', ['-static', '-O0', '-g', '-fno-builtin', '-o', exe, src]);
    const tracer = await trace({ command: exe, allocator: { path: exe }, stdio: 'ignore' });
    expect(tracer.info.allocator).toBe(exe);
    const report = await tracer.done;
    // Our three calls (100, 30, then realloc to 200: one free and one alloc) are all there,
    // plus whatever static glibc allocates for itself.
    const leak = report.leaks.find((g) => g.bytes === 200 && g.blocks === 1);
    expect(leak, JSON.stringify(report.leaks, null, 1)).toBeDefined();
    expect(symbols(leak!)).toEqual(expect.arrayContaining(['realloc', 'main']));
    expect(report.summary.allocs).toBeGreaterThanOrEqual(3);
    expect(report.summary.frees).toBeGreaterThanOrEqual(2);
  });

  it('traces jemalloc when it is named, with its leaks symbolized', async () => {
    const tracer = await trace({
      command: fixturePath('seed'),
      env: { ...process.env, LD_PRELOAD: jemalloc },
      allocator: { path: jemalloc },
      stdio: 'ignore',
    });
    expect(tracer.info.probes.malloc).toBe('malloc');
    expect(tracer.info.missing).toContain('pvalloc'); // jemalloc has none: optional, skipped
    const report = await tracer.done;
    // The seed's 10 x 8 bytes, 9 freed, go through jemalloc now.
    const eight = report.leaks.find((g) => g.bytes === 8);
    expect(eight).toBeDefined();
    expect(eight!.stack[0]).toMatchObject({ symbol: 'malloc', module: jemalloc });
    expect(symbols(eight!)).toContain('main');
    expect(report.summary.frees).toBe(9);
    expect(report.summary.unknownFrees).toBe(0);
  });

  it('maps functions to other symbol names', async () => {
    // Debian's jemalloc exports plain names only, so glibc's own aliases stand in for an
    // allocator with prefixed names (je_malloc, ...): the named symbols are what gets probed.
    const libc = '/lib/x86_64-linux-gnu/libc.so.6';
    const tracer = await trace({
      command: fixturePath('seed'),
      allocator: { path: libc, symbols: { malloc: '__libc_malloc', free: '__libc_free', memalign: '__libc_memalign' } },
      stdio: 'ignore',
    });
    expect(tracer.info.probes).toMatchObject({ malloc: '__libc_malloc', free: '__libc_free' });
    const report = await tracer.done;
    expect(report.summary).toMatchObject({ allocs: 11, frees: 9, inUseBlocks: 2, inUseBytes: 4104 });
  });
});

/** The fixture's own count of what it left allocated ("BYTES BLOCKS"), and the report. */
async function countedRun(fixture: string, preload?: string): Promise<{ own: { bytes: number; blocks: number }; report: LeakReport; tracer: LeakTracer }> {
  const tracer = await trace({
    command: fixturePath(fixture),
    env: { PATH: '/usr/bin:/bin', ...(preload ? { LD_PRELOAD: preload } : {}) },
    stdio: 'pipe',
  });
  let out = '';
  tracer.process!.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const report = await tracer.done;
  const [bytes, blocks] = out.trim().split(' ').map(Number);
  return { own: { bytes: bytes!, blocks: blocks! }, report, tracer };
}

/** The blocks the fixture's allocate_all() left, as the report has them. */
function programsOwn(report: LeakReport): { bytes: number; blocks: number } {
  const mine = report.leaks.filter((g) => g.stack.some((f) => f.symbol === 'allocate_all()'));
  return { bytes: mine.reduce((n, g) => n + g.bytes, 0), blocks: mine.reduce((n, g) => n + g.blocks, 0) };
}

const libs = '/usr/lib/x86_64-linux-gnu';

/** Whether the program, run with this preload, loads libstdc++ (ld.so's own list of what it maps). */
function mapsLibstdcxx(fixture: string, preload: string | undefined): boolean {
  const out = execFileSync('ldd', [fixturePath(fixture)], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin', ...(preload ? { LD_PRELOAD: preload } : {}) } });
  return /libstdc\+\+\.so/.test(out);
}

describe('allocators found without flags', () => {
  it.each([
    ['jemalloc', 'alloc_count_jemalloc', `${libs}/libjemalloc.so.2`],
    ['tcmalloc', 'alloc_count_tcmalloc', `${libs}/libtcmalloc_minimal.so.4`],
    ['mimalloc', 'alloc_count_mimalloc', `${libs}/libmimalloc.so.2`],
  ] as const)('%s, linked and preloaded: in-use numbers equal the program\'s own count, the heap summary valgrind\'s, no errors', async (name, linked, library) => {
    for (const [fixture, preload] of [
      [linked, undefined],
      ['alloc_count', library],
    ] as const) {
      const { own, report, tracer } = await countedRun(fixture, preload);
      expect(own).toEqual({ bytes: 1085, blocks: 10 });
      // valgrind replaces this allocator's functions when told its soname: its HEAP SUMMARY is the
      // oracle. Linked, mimalloc (which defines C++'s operators itself) leaves libstdc++ out of the
      // process, and with it libstdc++'s start-up pool: one block fewer than preloaded.
      const vg = await runValgrind(fixturePath(fixture), [], {
        env: { PATH: '/usr/bin:/bin', ...(preload ? { LD_PRELOAD: preload } : {}) },
        valgrindOptions: [`--soname-synonyms=somalloc=${basename(library)}`],
      });
      const { allocs, frees, bytesAllocated, inUseBytes, inUseBlocks } = report.summary;
      expect({ allocs, frees, bytesAllocated, inUseBytes, inUseBlocks }, `${fixture} ${preload ?? ''}`).toEqual(vg.summary);
      const pool = report.leaks.filter((g) => g.bytes === 72704 && g.stack.some((f) => f.symbol === 'call_init'));
      expect(pool.length, `${fixture} ${preload ?? ''}: libstdc++'s pool`).toBe(mapsLibstdcxx(fixture, preload) ? 1 : 0);
      expect(report.target.allocatorName).toBe(name);
      expect(report.target.allocator).toBe(realpathSync(library));
      expect(programsOwn(report)).toEqual(own);
      expect(report.errors).toEqual([]);
      // The allocator's own entry points and the C++ operators are probed.
      expect(tracer.info.probes.malloc).toBeDefined();
      expect(tracer.info.probes['operator new']).toBeDefined();
      if (name === 'jemalloc') expect(tracer.info.probes).toMatchObject({ mallocx: 'mallocx', rallocx: 'rallocx', sdallocx: 'sdallocx', dallocx: 'dallocx' });
      expect(report.summary.unknownFrees).toBe(0);
    }
  });

  it('glibc, shared: the same numbers, and the summary names it', async () => {
    const { own, report } = await countedRun('alloc_count');
    expect(report.target.allocatorName).toBe('glibc');
    expect(programsOwn(report)).toEqual(own);
    // allocate_all()'s 18 allocations and 8 releases, and libstdc++'s start-up pool.
    expect(report.summary).toMatchObject({ allocs: 19, frees: 8, unknownFrees: 0 });
  });

  it('a static glibc executable: its start-up blocks are suppressed like the shared libc\'s', async () => {
    const { own, report } = await countedRun('alloc_count_static');
    expect(report.target.allocatorName).toBe('glibc (static)');
    expect(report.target.allocator).toBe(fixturePath('alloc_count_static'));
    expect(programsOwn(report)).toEqual(own);
    // Only the program's blocks are leaks: static glibc's start-up blocks are suppressed, and
    // libstdc++'s pool is still reachable (no rule); without a scan its rule covers it.
    const checked = checkReport(report, [...defaultSuppressions()]);
    expect(checked.leaks.every((g) => g.stack.some((f) => f.symbol === 'allocate_all()'))).toBe(true);
    expect(checked.suppressed.map((h) => h.rule)).toEqual(['glibc-static-startup']);
    const unscanned = checkReport({ ...report, leaks: report.leaks.map(({ kind: _kind, ...g }) => g) }, [...defaultSuppressions()]);
    expect(unscanned.suppressed.map((h) => h.rule).sort()).toEqual(['glibc-static-startup', 'libstdc++-emergency-exception-pool-static']);
    expect(report.errors).toEqual([]);
  });

  it('refuses an allocator it does not know, naming the file and --allocator', async () => {
    const src = join(work, 'bump.c');
    writeFileSync(
      src,
      '#include <stddef.h>\nstatic char heap[1<<20]; static size_t used;\n' +
        'void *malloc(size_t n){ void *p = heap + used; used += (n + 15) & ~15UL; return p; }\n' +
        'void free(void *p){ (void)p; }\n',
    );
    const lib = join(work, 'libbump.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', lib, src]);
    await expect(trace({ command: 'true', env: { ...process.env, LD_PRELOAD: lib }, stdio: 'ignore' })).rejects.toMatchObject({
      code: 'ELEAK_ALLOCATOR',
      message: expect.stringContaining(`allocates through ${lib}, which defines its own malloc and is not an allocator ebpf-leak knows`),
    });
  });
});
