// Programs whose malloc is not glibc's shared one: refused by default (see errors.test.ts), traced
// when the allocator is named.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { trace, type LeakGroup } from '../lib/index.js';
import { fixturePath } from './helpers/fixtures.js';

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
