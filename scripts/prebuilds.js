#!/usr/bin/env node
// Copies the portable builds of the addon, its launcher and (x86-64) its preload library into prebuilds/<platform>-<arch>/, where
// lib/native/addon.ts finds them in an installed package. Run by `npm pack` and `npm publish`
// (prepack), after `npm run build` (linux-x64, in build/) and `npm run build:arm64` (linux-arm64,
// cross-compiled into build-arm64/ with cmake/aarch64-linux-gnu.cmake); both link with
// EBPF_LEAK_STATIC (cmake/portable.cmake). docs/install.md.
//   node scripts/prebuilds.js               every platform
//   node scripts/prebuilds.js --arch arm64  one of them (x64, arm64)
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Per arch: the build directory, how it is made, the strip that reads its binaries, the ELF
 *  e_machine of what it makes. */
const targets = {
  x64: { build: 'build', command: 'npm run build', strip: 'strip', machine: 62 },
  arm64: { build: 'build-arm64', command: 'npm run build:arm64', strip: 'aarch64-linux-gnu-strip', machine: 183 },
};

function fail(message) {
  console.error(`prebuilds: ${message}`);
  process.exit(1);
}

const args = process.argv.slice(2);
const arches = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] !== '--arch' || !Object.hasOwn(targets, args[i + 1] ?? '')) {
    fail(`unknown argument ${args[i]} ${args[i + 1] ?? ''}; usage: prebuilds.js [--arch ${Object.keys(targets).join('|')}]...`);
  }
  arches.push(args[++i]);
}

for (const arch of arches.length ? arches : Object.keys(targets)) {
  const { build, command, strip, machine } = targets[arch];
  const dir = join(root, build);
  const cacheFile = join(dir, 'CMakeCache.txt');
  const cache = existsSync(cacheFile) ? readFileSync(cacheFile, 'utf8') : '';
  if (!/^EBPF_LEAK_STATIC:BOOL=ON$/m.test(cache) || !existsSync(join(dir, 'Release', 'ebpf_leak.node'))) {
    fail(`${build}/ is not a portable build for linux-${arch}; run \`${command}\` first (bash scripts/setup.sh installs what it needs)`);
  }
  const built = readFileSync(join(dir, 'Release', 'ebpf_leak.node')).readUInt16LE(18);
  if (built !== machine) fail(`${build}/ holds a build for ELF machine ${built}, not linux-${arch}'s ${machine}`);
  const out = join(root, 'prebuilds', `linux-${arch}`);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  // The preloaded entry points are built for x86-64 only (native/preload/preload.c).
  for (const file of ['ebpf_leak.node', 'ebpf-leak-exec', 'libebpf-leak-preload.so', 'libebpf-leak-preload-cxx.so'].filter((f) => existsSync(join(dir, 'Release', f)))) {
    copyFileSync(join(dir, 'Release', file), join(out, file));
    // The symbol tables only serve debugging ebpf-leak itself; they are most of the addon's size.
    execFileSync(strip, ['--strip-unneeded', join(out, file)]);
  }
  console.log(`prebuilds: ${out}`);
}
