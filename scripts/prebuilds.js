#!/usr/bin/env node
// Copies the portable build of the addon and its launcher (`npm run build`, which links with
// EBPF_LEAK_STATIC: cmake/portable.cmake) into prebuilds/<platform>-<arch>/, where lib/native/addon.ts
// finds them in an installed package. Run by `npm pack` and `npm publish` (prepack).
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const build = join(root, 'build');
const cache = existsSync(join(build, 'CMakeCache.txt')) ? readFileSync(join(build, 'CMakeCache.txt'), 'utf8') : '';
if (!/^EBPF_LEAK_STATIC:BOOL=ON$/m.test(cache)) {
  console.error('prebuilds: build/ is not a portable build; run `npm run build` (EBPF_LEAK_STATIC=ON) first');
  process.exit(1);
}
const out = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const file of ['ebpf_leak.node', 'ebpf-leak-exec']) {
  copyFileSync(join(build, 'Release', file), join(out, file));
  // The symbol tables only serve debugging ebpf-leak itself; they are most of the addon's size.
  execFileSync('strip', ['--strip-unneeded', join(out, file)]);
}
console.log(`prebuilds: ${out}`);
