#!/usr/bin/env node
// npm's install script. The package ships its addon prebuilt (prebuilds/, found by lib/native.ts),
// so an install has nothing to do and needs no build tools; npm may not even run this script.
// `npm rebuild ebpf-leak --build-from-source` builds the addon from the packaged sources instead,
// into build/, which lib/native.ts prefers (docs/install.md).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const fromSource = ['true', '1', 'ebpf-leak'].includes(process.env.npm_config_build_from_source ?? '');
if (!fromSource) process.exit(0);

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const result = spawnSync('cmake-js', ['compile', '--out', 'build'], { cwd: packageRoot, stdio: 'inherit' });
if (result.error || result.status !== 0) {
  const why = result.error ? `cmake-js could not run (${result.error.message})` : `cmake-js exited with ${result.status}`;
  process.stderr.write(
    `ebpf-leak: building the addon from source failed: ${why}.\n` +
      'It needs cmake-js and node-addon-api in your project (npm install --save-dev cmake-js node-addon-api),\n' +
      'and clang, llvm, bpftool, cmake, g++, make, pkg-config and the development files of libbpf, libelf, libdw,\n' +
      "zlib and (x86-64) Zydis: on Debian, apt-get install clang llvm bpftool cmake g++ make pkg-config libbpf-dev libelf-dev libdw-dev zlib1g-dev libzydis-dev.\n",
  );
  process.exit(1);
}
