// The binaries the package ships (prebuilds/linux-x64/ and prebuilds/linux-arm64/, copied from the
// portable builds in build/Release/ and build-arm64/Release/ by scripts/prebuilds.js) load on
// glibc 2.28 and newer with nothing else installed: no glibc symbol version newer than GLIBC_2.28
// (objdump -T, readelf -V), no shared library but glibc's and libgcc_s, and a static launcher. See
// cmake/portable.cmake. The arm64 ones are cross-built (cmake/aarch64-linux-gnu.cmake) and read with
// the cross binutils; nothing here can run them.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

/** Dynamic symbols that carry a version newer than GLIBC_2.28, and every version seen. */
function symbolVersions(objdump: string, file: string) {
  const symbols = out(objdump, ['-T', file]);
  const versions = [...symbols.matchAll(/\b(GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)\b/g)].map((m) => [m[1]!, m[2]!] as const);
  const tooNew = symbols.split('\n').filter((line) => {
    const m = /\bGLIBC_([0-9.]+)\b/.exec(line);
    return m && newerThan(m[1]!, '2.28');
  });
  return { versions, tooNew };
}

/** The shared libraries a file needs, and the GLIBC versions it needs of them. */
function needs(readelf: string, file: string) {
  const needed = [...out(readelf, ['-d', file]).matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]!);
  const section = out(readelf, ['-V', file]).split("Version needs section '.gnu.version_r'")[1] ?? '';
  const glibc = [...section.matchAll(/Name: (GLIBC_[0-9.]+)/g)].map((m) => m[1]!.slice('GLIBC_'.length));
  return { needed: needed.sort(), glibc };
}

/** Displacements of the memory operands in `objdump -d` output that `operand` matches (group 1). */
function displacements(objdump: string, obj: string, operand: RegExp): string[] {
  return [...new Set([...out(objdump, ['-d', obj]).matchAll(operand)].map((m) => m[1]!))].sort();
}

/** Our recompiled elfutils file next to Debian's object of it, both compiled by `gcc`. */
function elfutilsObjects(build: string, gcc: string, libdw: string, dir: string): void {
  const src = join(repoRoot, build, 'third_party', 'elfutils_0.188.orig.tar.bz2.d', 'elfutils-0.188');
  expect(existsSync(src), `the portable build in ${build}/ is missing`).toBe(true);
  const includes = ['lib', 'libelf', 'libdw', 'libdwfl', 'libebl', 'libdwelf'].map((d) => `-I${join(src, d)}`);
  out(gcc, ['-std=gnu11', '-O2', '-w', '-DHAVE_CONFIG_H', `-I${join(repoRoot, build, 'third_party', 'elfutils-config')}`,
    `-I${src}`, ...includes, '-c', join(src, 'libdw', 'libdw_alloc.c'), '-o', join(dir, 'ours.o')]);
  writeFileSync(join(dir, 'debian.o'), spawnSync('ar', ['p', libdw, 'libdw_alloc.o']).stdout);
}

const prebuilt = join(repoRoot, 'prebuilds', 'linux-x64');
const addons = [join(repoRoot, 'build', 'Release', 'ebpf_leak.node'), join(prebuilt, 'ebpf_leak.node')];
const launchers = [join(repoRoot, 'build', 'Release', 'ebpf-leak-exec'), join(prebuilt, 'ebpf-leak-exec')];

describe.runIf(process.arch === 'x64')('portable binaries for linux-x64', () => {
  beforeAll(() => {
    out('node', ['scripts/prebuilds.js', '--arch', 'x64']);
  });

  it.each(addons)('%s: no glibc symbol version newer than 2.28 (objdump -T)', (file) => {
    const { versions, tooNew } = symbolVersions('objdump', file);
    expect(versions.length).toBeGreaterThan(50);
    expect(tooNew).toEqual([]);
    // libstdc++ is inside: no GLIBCXX/CXXABI versions to satisfy on the user's machine.
    expect(versions.filter(([lib]) => lib === 'GLIBCXX' || lib === 'CXXABI')).toEqual([]);
  });

  it.each(addons)('%s: needs only glibc and libgcc_s (readelf -d, readelf -V)', (file) => {
    const { needed, glibc } = needs('readelf', file);
    expect(needed).toEqual(['ld-linux-x86-64.so.2', 'libc.so.6', 'libgcc_s.so.1']);
    // The version needs, per library: every one at most GLIBC_2.28.
    expect(glibc.length).toBeGreaterThan(5);
    expect(glibc.filter((v) => newerThan(v, '2.28'))).toEqual([]);
  });

  // Loaded into the traced program, whatever its glibc: dlsym bound to its first version.
  it.each(
    ['libebpf-leak-preload.so', 'libebpf-leak-preload-cxx.so'].flatMap((f) => [join(repoRoot, 'build', 'Release', f), join(prebuilt, f)]),
  )(
    '%s: needs only glibc, at GLIBC_2.2.5 (readelf -d, objdump -T)',
    (file) => {
      const { needed } = needs('readelf', file);
      expect(needed).toEqual(['libc.so.6', 'libdl.so.2']);
      const { versions, tooNew } = symbolVersions('objdump', file);
      expect(tooNew).toEqual([]);
      expect(new Set(versions.map(([lib, v]) => `${lib}_${v}`))).toEqual(new Set(['GLIBC_2.2.5']));
    },
  );

  it.each(launchers)('%s is static', (file) => {
    expect(out('readelf', ['-d', file])).toMatch(/There is no dynamic section/);
    expect(out('readelf', ['-l', file])).not.toMatch(/INTERP/);
  });

  // cmake/portable.cmake recompiles four files of elfutils position independent with a config.h of
  // its own: libdw_alloc.c reads `struct Dwarf`, whose layout depends on that configuration, so its
  // code (compiled the way Debian's is) must use the same field offsets as Debian's libdw.a.
  it("the recompiled libdw_alloc.c uses the same struct offsets as Debian's", () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-elfutils-'));
    try {
      elfutilsObjects('build', 'gcc', '/usr/lib/x86_64-linux-gnu/libdw.a', dir);
      const offsets = (obj: string) => displacements('objdump', join(dir, obj), /\s(-?0x[0-9a-f]+)\(%r(?!ip)/g);
      const theirs = offsets('debian.o');
      expect(theirs.length).toBeGreaterThan(5);
      expect(offsets('ours.o')).toEqual(theirs);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Built by `npm run build:arm64` (scripts/setup.sh runs it); read on any build machine with the cross
// binutils (binutils-aarch64-linux-gnu).
const arm64Build = join(repoRoot, 'build-arm64', 'Release');
const arm64Prebuilt = join(repoRoot, 'prebuilds', 'linux-arm64');
const arm64Addons = [join(arm64Build, 'ebpf_leak.node'), join(arm64Prebuilt, 'ebpf_leak.node')];
const arm64Launchers = [join(arm64Build, 'ebpf-leak-exec'), join(arm64Prebuilt, 'ebpf-leak-exec')];

describe('portable binaries for linux-arm64 (cross-built: read here, never run)', () => {
  beforeAll(() => {
    out('node', ['scripts/prebuilds.js', '--arch', 'arm64']);
  });

  it.each([...arm64Addons, ...arm64Launchers])('%s is for AArch64', (file) => {
    expect(out('aarch64-linux-gnu-readelf', ['-h', file])).toMatch(/Machine:\s+AArch64\n/);
  });

  it.each(arm64Addons)('%s: no glibc symbol version newer than 2.28 (objdump -T)', (file) => {
    const { versions, tooNew } = symbolVersions('aarch64-linux-gnu-objdump', file);
    expect(versions.length).toBeGreaterThan(50);
    expect(tooNew).toEqual([]);
    expect(versions.filter(([lib]) => lib === 'GLIBCXX' || lib === 'CXXABI')).toEqual([]);
  });

  it.each(arm64Addons)('%s: needs only glibc and libgcc_s (readelf -d, readelf -V)', (file) => {
    const { needed, glibc } = needs('aarch64-linux-gnu-readelf', file);
    expect(needed).toEqual(['ld-linux-aarch64.so.1', 'libc.so.6', 'libgcc_s.so.1']);
    expect(glibc.length).toBeGreaterThan(5);
    expect(glibc.filter((v) => newerThan(v, '2.28'))).toEqual([]);
    // arm64's first glibc was 2.17: nothing older can be asked for either.
    expect(glibc.filter((v) => newerThan('2.17', v))).toEqual([]);
  });

  it.each(arm64Launchers)('%s is static', (file) => {
    expect(out('aarch64-linux-gnu-readelf', ['-d', file])).toMatch(/There is no dynamic section/);
    expect(out('aarch64-linux-gnu-readelf', ['-l', file])).not.toMatch(/INTERP/);
  });

  // The BPF program inside reads arm64 registers (struct user_pt_regs, bpf/cross/), and no x86 decoder
  // is linked.
  it('embeds the BPF object built for arm64, and no Zydis', () => {
    const object = readFileSync(join(repoRoot, 'build-arm64', 'bpf', 'leak.bpf.o'));
    const types = out('bpftool', ['btf', 'dump', 'file', join(repoRoot, 'build-arm64', 'bpf', 'leak.bpf.o')]);
    expect(types).toMatch(/STRUCT 'user_pt_regs'/);
    expect(readFileSync(arm64Addons[0]!).includes(object)).toBe(true);
    const x64Object = readFileSync(join(repoRoot, 'build', 'bpf', 'leak.bpf.o'));
    expect(x64Object.equals(object)).toBe(false);
    for (const file of arm64Addons) expect(out('aarch64-linux-gnu-nm', ['-D', '--defined-only', file])).not.toMatch(/Zydis/);
    expect(out('aarch64-linux-gnu-nm', [arm64Addons[0]!])).not.toMatch(/Zydis/);
  });

  it("the recompiled libdw_alloc.c uses the same struct offsets as Debian's arm64 libdw.a", () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-elfutils-'));
    try {
      elfutilsObjects('build-arm64', 'aarch64-linux-gnu-gcc', '/usr/lib/aarch64-linux-gnu/libdw.a', dir);
      const offsets = (obj: string) => displacements('aarch64-linux-gnu-objdump', join(dir, obj), /\[x\d+, #(-?\d+)\]/g);
      const theirs = offsets('debian.o');
      expect(theirs.length).toBeGreaterThan(3);
      expect(offsets('ours.o')).toEqual(theirs);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
