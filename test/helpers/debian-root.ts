// A bare Debian 12 root (debootstrap --variant=minbase: no compiler, no -dev package, no Node) for
// the test that installs the packed package as a user with only Node would.
//
// The root is made once and kept in a cache directory outside the repository (CI runs on the same
// machine each time): $EBPF_LEAK_CACHE/debian-SUITE-minbase, by default under /var/cache/ebpf-leak.
// It is made again when absent or incomplete (the marker file is written last), under flock so two
// test runs never build it at once. debootstrap fetches from the Debian mirror apt uses here.
// Measured on the 2-vCPU machine: 2 min 24 s to make it, 206 MB.

import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { runAsync, type RunResult } from './run-async.js';

const cacheDir = process.env.EBPF_LEAK_CACHE ?? '/var/cache/ebpf-leak';
const completeMarker = '.ebpf-leak-root-complete';

/** The Debian mirror apt is configured with (deb822 `URIs:` or one-line `deb` entries). */
export function debianMirror(): string {
  const files = ['/etc/apt/sources.list'];
  if (existsSync('/etc/apt/sources.list.d')) {
    files.push(...readdirSync('/etc/apt/sources.list.d').map((f) => join('/etc/apt/sources.list.d', f)));
  }
  for (const file of files) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const m = /^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+\/debian)\/?\s*(?:$|\s)/.exec(line);
      if (m) return m[1]!;
    }
  }
  return 'http://deb.debian.org/debian';
}

async function run(file: string, args: readonly string[], timeoutMs: number): Promise<string> {
  const r = await runAsync(file, args, { timeoutMs });
  if (r.status !== 0) {
    throw new Error(`${file} ${args.join(' ')} exited with ${r.status}:\n${(r.stdout + r.stderr).slice(-4000)}`);
  }
  return r.stdout;
}

/** The cached root, made first when it is not there. */
export async function ensureDebianRoot(suite: 'bookworm' | 'bullseye' = 'bookworm'): Promise<string> {
  const debianRootDir = join(cacheDir, `debian-${suite}-minbase`);
  if (existsSync(join(debianRootDir, completeMarker))) return debianRootDir;
  mkdirSync(dirname(debianRootDir), { recursive: true });
  const partial = `${debianRootDir}.partial`;
  const script = [
    'set -e',
    `[ -e "${debianRootDir}/${completeMarker}" ] && exit 0`,
    `rm -rf "${partial}" "${debianRootDir}"`,
    `debootstrap --variant=minbase ${suite} "${partial}" "${debianMirror()}"`,
    `touch "${partial}/${completeMarker}"`,
    `mv "${partial}" "${debianRootDir}"`,
  ].join('\n');
  await run('flock', [`${debianRootDir}.lock`, 'sh', '-c', script], 20 * 60_000);
  return debianRootDir;
}

/** Copies this process's node and the npm beside it into the root's /usr/local. */
export function installNode(root: string): void {
  const prefix = dirname(dirname(process.execPath));
  const npm = join(prefix, 'lib', 'node_modules', 'npm');
  if (!existsSync(join(npm, 'bin', 'npm-cli.js'))) throw new Error(`npm not found at ${npm}`);
  const bin = join(root, 'usr/local/bin');
  mkdirSync(bin, { recursive: true });
  cpSync(process.execPath, join(bin, 'node'));
  const npmInRoot = join(root, 'usr/local/lib/node_modules/npm');
  rmSync(npmInRoot, { recursive: true, force: true });
  cpSync(npm, npmInRoot, { recursive: true, verbatimSymlinks: true });
  for (const [name, target] of [
    ['npm', '../lib/node_modules/npm/bin/npm-cli.js'],
    ['npx', '../lib/node_modules/npm/bin/npx-cli.js'],
  ] as const) {
    rmSync(join(bin, name), { force: true });
    symlinkSync(target, join(bin, name));
  }
}

/** Runs `sh -c script` inside the root with `env` only, with /proc and /sys mounted for the run;
 *  they are unmounted afterwards whatever happened. */
export async function inChroot(root: string, script: string, env: Record<string, string>, timeoutMs: number): Promise<RunResult> {
  const mounted: string[] = [];
  try {
    for (const [type, dir] of [
      ['proc', 'proc'],
      ['sysfs', 'sys'],
    ] as const) {
      const target = join(root, dir);
      await run('mount', ['-t', type, type, target], 30_000);
      mounted.push(target);
    }
    const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    return await runAsync('chroot', [root, '/usr/bin/env', '-i', ...envArgs, '/bin/sh', '-c', script], { timeoutMs });
  } finally {
    for (const target of mounted.reverse()) {
      const r = spawnSync('umount', [target]);
      if (r.status !== 0) spawnSync('umount', ['--lazy', target]);
    }
  }
}
