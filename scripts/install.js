#!/usr/bin/env node
// npm's install script. The package ships its addon prebuilt (prebuilds/, found by lib/native/addon.ts),
// so an install has nothing to do and needs no build tools; npm may not even run this script.
// Asked to, it builds the addon from the packaged sources into build/, which lib/native/addon.ts prefers
// (docs/install.md):
//   npm rebuild ebpf-leak --build-from-source
//   EBPF_LEAK_BUILD_FROM_SOURCE=1 npm rebuild ebpf-leak
//   node node_modules/ebpf-leak/scripts/install.js --build-from-source
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const asked =
  process.argv.includes('--build-from-source') ||
  ['1', 'true'].includes(process.env.EBPF_LEAK_BUILD_FROM_SOURCE ?? '') ||
  ['true', 'ebpf-leak'].includes(process.env.npm_config_build_from_source ?? '');
if (!asked) process.exit(0);

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const advice =
  'It needs cmake-js and node-addon-api in your project (npm install --save-dev cmake-js node-addon-api),\n' +
  'and clang, llvm, bpftool, cmake, g++, make, pkg-config and the development files of libbpf, libelf,\n' +
  'libdw, zlib and (x86-64) Zydis; on Debian: apt-get install clang llvm bpftool cmake g++ make\n' +
  'pkg-config libbpf-dev libelf-dev libdw-dev zlib1g-dev libzydis-dev.\n';
let cmakeJs;
try {
  // The user's project's cmake-js, as node resolves it from this package.
  cmakeJs = createRequire(join(packageRoot, 'package.json')).resolve('cmake-js/bin/cmake-js');
} catch {
  process.stderr.write(`ebpf-leak: building the addon from source: cmake-js not found.\n${advice}`);
  process.exit(1);
}
const result = spawnSync(process.execPath, [cmakeJs, 'compile', '--out', 'build'], { cwd: packageRoot, stdio: 'inherit' });
if (result.error || result.status !== 0) {
  const why = result.error ? result.error.message : `cmake-js exited with ${result.status ?? result.signal}`;
  process.stderr.write(`ebpf-leak: building the addon from source failed: ${why}.\n${advice}`);
  process.exit(1);
}
