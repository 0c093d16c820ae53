// An installed package without a usable addon for the platform: an EbpfLeakError with code
// ELEAK_ADDON saying which platforms have binaries and how to build from source, from the library
// and from the CLI (its message, no stack trace, exit 2), never "internal error".
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { repoRoot } from './helpers/fixtures.js';

describe('no addon for this platform', () => {
  let pkg: string;

  beforeAll(() => {
    // The built package as installed, without build/ and prebuilds/.
    pkg = join(mkdtempSync(join(tmpdir(), 'ebpf-leak-noaddon-')), 'ebpf-leak');
    cpSync(join(repoRoot, 'dist'), join(pkg, 'dist'), { recursive: true });
    cpSync(join(repoRoot, 'package.json'), join(pkg, 'package.json'));
    writeFileSync(join(pkg, 'as-riscv64.mjs'), "Object.defineProperty(process, 'arch', { value: 'riscv64' });\n");
    writeFileSync(join(pkg, 'as-arm64.mjs'), "Object.defineProperty(process, 'arch', { value: 'arm64' });\n");
    writeFileSync(
      join(pkg, 'trace-true.mjs'),
      "import { trace } from './dist/index.js';\n" +
        "try { await trace({ command: '/bin/true' }); console.log('traced'); }\n" +
        'catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }\n',
    );
  });

  afterAll(() => {
    if (pkg) rmSync(join(pkg, '..'), { recursive: true, force: true });
  });

  function node(args: string[]) {
    return spawnSync('node', args, { cwd: pkg, encoding: 'utf8', timeout: 60_000 });
  }

  it('trace() rejects with ELEAK_ADDON naming the platforms with binaries and the source build', () => {
    const r = node(['--import', './as-riscv64.mjs', 'trace-true.mjs']);
    expect(r.status, r.stderr).toBe(0);
    const e = JSON.parse(r.stdout) as { name: string; code: string; message: string };
    expect(e.name).toBe('AddonError');
    expect(e.code).toBe('ELEAK_ADDON');
    expect(e.message).toMatch(
      /^no native addon for linux-riscv64: ebpf-leak has prebuilt binaries for linux-x64, linux-arm64 \(glibc 2\.28 or newer\)\. /,
    );
    expect(e.message).toContain('npm rebuild ebpf-leak --build-from-source');
  });

  it('the CLI prints that message, no stack trace, and exits 2', () => {
    const r = node(['--import', './as-riscv64.mjs', 'dist/cli/main.js', 'run', '--', '/bin/true']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^ebpf-leak: no native addon for linux-riscv64: /);
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  // The cross-built arm64 addon cannot load on this machine: that it is the file tried shows that
  // an arm64 machine is given prebuilds/linux-arm64/.
  it('on arm64, the loader takes prebuilds/linux-arm64/', () => {
    const prebuilt = join(pkg, 'prebuilds', 'linux-arm64');
    const built = spawnSync('node', ['scripts/prebuilds.js', '--arch', 'arm64'], { cwd: repoRoot, encoding: 'utf8' });
    expect(built.status, built.stderr).toBe(0);
    cpSync(join(repoRoot, 'prebuilds', 'linux-arm64'), prebuilt, { recursive: true });
    try {
      const r = node(['--import', './as-arm64.mjs', 'trace-true.mjs']);
      const e = JSON.parse(r.stdout) as { code: string; message: string };
      expect(e.code).toBe('ELEAK_ADDON');
      expect(e.message).toContain(`the native addon ${join(prebuilt, 'ebpf_leak.node')} does not load: `);
    } finally {
      rmSync(join(pkg, 'prebuilds'), { recursive: true, force: true });
    }
  });

  it('linux-x64 with its prebuilds/ gone: says to reinstall', () => {
    const r = node(['trace-true.mjs']);
    const e = JSON.parse(r.stdout) as { code: string; message: string };
    expect(e.code).toBe('ELEAK_ADDON');
    expect(e.message).toMatch(/^the prebuilt native addon for linux-x64 is missing from .*prebuilds\/linux-x64: reinstall ebpf-leak\. /);
  });
});
