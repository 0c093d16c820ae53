#!/usr/bin/env node
// `npm run demo`: build the seed article's program and trace it with the CLI.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build', 'examples');
mkdirSync(out, { recursive: true });
const exe = join(out, 'seed-leak');
// -O0 -g -fno-omit-frame-pointer: keep every malloc/free and a walkable stack, as a debug build.
execFileSync('cc', ['-O0', '-g', '-fno-omit-frame-pointer', '-o', exe, join(root, 'examples/seed/leak.c')], {
  stdio: 'inherit',
});
const cli = join(root, 'dist', 'cli', 'main.js');
console.error(`$ ebpf-leak run -- ${exe}`);
const result = spawnSync(process.execPath, [cli, 'run', '--', exe], { stdio: 'inherit' });
process.exit(result.status ?? 1);
