// The binaries the package ships (prebuilds/linux-x64/, copied from the portable build in
// build/Release/ by scripts/prebuilds.js) load on glibc 2.28 and newer with nothing else installed:
// no glibc symbol version newer than GLIBC_2.28 (objdump -T, readelf -V), no shared library but
// glibc's and libgcc_s, and a static launcher. See cmake/portable.cmake.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { repoRoot } from './helpers/fixtures.js';

function out(file: string, args: readonly string[], input?: Buffer): string {
  const r = spawnSync(file, args, { cwd: repoRoot, encoding: 'utf8', maxBuffer: 256 << 20, ...(input ? { input } : {}) });
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** [major, minor, patch] of "2.3.4". */
function versionParts(v: string): number[] {
  return v.split('.').map(Number);
}

function newerThan(v: string, baseline: string): boolean {
  const a = versionParts(v);
  const b = versionParts(baseline);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return false;
}

const prebuilt = join(repoRoot, 'prebuilds', 'linux-x64');
const addons = [join(repoRoot, 'build', 'Release', 'ebpf_leak.node'), join(prebuilt, 'ebpf_leak.node')];
const launchers = [join(repoRoot, 'build', 'Release', 'ebpf-leak-exec'), join(prebuilt, 'ebpf-leak-exec')];

describe.runIf(process.arch === 'x64')('portable binaries for linux-x64', () => {
  beforeAll(() => {
    out('node', ['scripts/prebuilds.js']);
  });

  it.each(addons)('%s: no glibc symbol version newer than 2.28 (objdump -T)', (file) => {
    const symbols = out('objdump', ['-T', file]);
    const versions = [...symbols.matchAll(/\b(GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)\b/g)].map((m) => [m[1]!, m[2]!] as const);
    expect(versions.length).toBeGreaterThan(50);
    const tooNew = symbols.split('\n').filter((line) => {
      const m = /\bGLIBC_([0-9.]+)\b/.exec(line);
      return m && newerThan(m[1]!, '2.28');
    });
    expect(tooNew).toEqual([]);
    // libstdc++ is inside: no GLIBCXX/CXXABI versions to satisfy on the user's machine.
    expect(versions.filter(([lib]) => lib === 'GLIBCXX' || lib === 'CXXABI')).toEqual([]);
  });

  it.each(addons)('%s: needs only glibc and libgcc_s (readelf -d, readelf -V)', (file) => {
    const needed = [...out('readelf', ['-d', file]).matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]);
    expect(needed.sort()).toEqual(['ld-linux-x86-64.so.2', 'libc.so.6', 'libgcc_s.so.1']);
    // The version needs, per library: every one at most GLIBC_2.28.
    const section = out('readelf', ['-V', file]).split("Version needs section '.gnu.version_r'")[1] ?? '';
    const needs = [...section.matchAll(/Name: (GLIBC_[0-9.]+)/g)].map((m) => m[1]!.slice('GLIBC_'.length));
    expect(needs.length).toBeGreaterThan(5);
    expect(needs.filter((v) => newerThan(v, '2.28'))).toEqual([]);
  });

  it.each(launchers)('%s is static', (file) => {
    expect(out('readelf', ['-d', file])).toMatch(/There is no dynamic section/);
    expect(out('readelf', ['-l', file])).not.toMatch(/INTERP/);
  });

  // cmake/portable.cmake recompiles four files of elfutils position independent with a config.h of
  // its own: libdw_alloc.c reads `struct Dwarf`, whose layout depends on that configuration, so its
  // code (compiled the way Debian's is) must use the same field offsets as Debian's libdw.a.
  it("the recompiled libdw_alloc.c uses the same struct offsets as Debian's", () => {
    const src = join(repoRoot, 'build', 'third_party', 'elfutils_0.188.orig.tar.bz2.d', 'elfutils-0.188');
    expect(existsSync(src), 'run `npm run build` (EBPF_LEAK_STATIC) first').toBe(true);
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-elfutils-'));
    try {
      const includes = ['lib', 'libelf', 'libdw', 'libdwfl', 'libebl', 'libdwelf'].map((d) => `-I${join(src, d)}`);
      out('gcc', ['-std=gnu11', '-O2', '-w', '-DHAVE_CONFIG_H', `-I${join(repoRoot, 'build', 'third_party', 'elfutils-config')}`,
        `-I${src}`, ...includes, '-c', join(src, 'libdw', 'libdw_alloc.c'), '-o', join(dir, 'ours.o')]);
      const debian = spawnSync('ar', ['p', '/usr/lib/x86_64-linux-gnu/libdw.a', 'libdw_alloc.o']).stdout;
      writeFileSync(join(dir, 'debian.o'), debian);
      const offsets = (obj: string) =>
        [...new Set([...out('objdump', ['-d', join(dir, obj)]).matchAll(/\s(-?0x[0-9a-f]+)\(%r(?!ip)/g)].map((m) => m[1]))].sort();
      const theirs = offsets('debian.o');
      expect(theirs.length).toBeGreaterThan(5);
      expect(offsets('ours.o')).toEqual(theirs);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
