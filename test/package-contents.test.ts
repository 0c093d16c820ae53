// What `npm pack` puts in the package: the built library without source maps (they would point at
// lib/, which is not shipped), the prebuilt binaries, everything a source build needs (bpf/,
// native/, cmake/, CMakeLists.txt) and nothing else: no tests, fixtures, bench or examples.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { repoRoot } from './helpers/fixtures.js';

interface PackedFile {
  path: string;
  mode: number;
}

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [relative(repoRoot, join(dir, e.name))],
  );
}

/** Files of git's index under `dir`: what a clone has. */
function tracked(dir: string): string[] {
  const r = spawnSync('git', ['ls-files', dir], { cwd: repoRoot, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.split('\n').filter(Boolean);
}

describe('npm pack', () => {
  let files: PackedFile[];
  let paths: string[];

  beforeAll(() => {
    const prebuilds = spawnSync('node', ['scripts/prebuilds.js'], { cwd: repoRoot, encoding: 'utf8' });
    expect(prebuilds.status, prebuilds.stderr).toBe(0);
    // Scripts off: prepack's `npm run build` has been done by the set-up, and rebuilding dist/
    // would pull it from under the other test files.
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    files = (JSON.parse(r.stdout) as { files: PackedFile[] }[])[0]!.files;
    paths = files.map((f) => f.path).sort();
  });

  it('has exactly these files outside dist/, bpf/ and native/', () => {
    expect(paths.filter((p) => !/^(dist|bpf|native)\//.test(p))).toEqual([
      'CMakeLists.txt',
      'LICENSE',
      'README.md',
      'cmake/aarch64-linux-gnu.cmake',
      'cmake/portable.cmake',
      'docs/install.md',
      'package.json',
      'prebuilds/linux-arm64/ebpf-leak-exec',
      'prebuilds/linux-arm64/ebpf_leak.node',
      'prebuilds/linux-x64/ebpf-leak-exec',
      'prebuilds/linux-x64/ebpf_leak.node',
      'prebuilds/linux-x64/libebpf-leak-preload-cxx.so',
      'prebuilds/linux-x64/libebpf-leak-preload.so',
      'scripts/install.js',
    ]);
  });

  it('dist/ is the compiled lib/: one .js and one .d.ts per module, no source maps', () => {
    const modules = walk(join(repoRoot, 'lib'))
      .filter((p) => p.endsWith('.ts'))
      .map((p) => p.replace(/^lib\//, 'dist/').replace(/\.ts$/, ''));
    const expected = modules.flatMap((m) => [`${m}.d.ts`, `${m}.js`]).sort();
    expect(paths.filter((p) => p.startsWith('dist/'))).toEqual(expected);
  });

  it('bpf/ and native/ are complete for a source build', () => {
    expect(paths.filter((p) => /^(bpf|native)\//.test(p))).toEqual([...tracked('bpf'), ...tracked('native')].sort());
  });

  it('the binaries are executable', () => {
    for (const f of files.filter((f) => f.path.startsWith('prebuilds/'))) expect(f.mode & 0o111, f.path).toBe(0o111);
  });

  it('package.json: no runtime dependencies, engines/os/cpu set, MIT as the LICENSE file says', () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(pkg.dependencies ?? {}).toEqual({});
    expect(pkg.engines).toEqual({ node: '>=20' });
    expect(pkg.os).toEqual(['linux']);
    expect(pkg.cpu).toEqual(['x64', 'arm64']);
    expect(pkg.license).toBe('MIT');
    expect(readFileSync(join(repoRoot, 'LICENSE'), 'utf8')).toMatch(/^MIT License\n/);
  });
});
