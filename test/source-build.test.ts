// The fallback: the addon built from the packaged sources alone. The packed tarball is installed
// into a fresh project, cmake-js and node-addon-api are added to it (here: linked from ours, as
// `npm install --save-dev cmake-js node-addon-api` would install them), and
// `npm rebuild ebpf-leak --build-from-source` builds into node_modules/ebpf-leak/build/, which the
// loader prefers to prebuilds/. A trace with that build must give valgrind's numbers.
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { fixturePath, repoRoot } from './helpers/fixtures.js';
import { runAsync } from './helpers/run-async.js';
import { runValgrind } from './helpers/valgrind.js';

const env = { PATH: '/usr/local/bin:/usr/bin:/bin', LANG: 'C', TZ: 'UTC', HOME: '/nonexistent' };

function run(file: string, args: readonly string[], cwd: string, timeoutMs = 60_000) {
  return runAsync(file, args, { cwd, timeoutMs });
}

describe('source build of the installed package', () => {
  let dir: string;
  let project: string;
  let pkg: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-source-build-'));
    project = join(dir, 'project');
    pkg = join(project, 'node_modules', 'ebpf-leak');
    const packed = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], repoRoot);
    expect(packed.status, packed.stderr).toBe(0);
    const tarball = join(dir, (JSON.parse(packed.stdout) as { filename: string }[])[0]!.filename);
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', version: '1.0.0', private: true }));
    const install = await run('npm', ['install', '--offline', '--no-audit', '--no-fund', tarball], project);
    expect(install.status, install.stderr).toBe(0);
    for (const dep of ['cmake-js', 'node-addon-api']) {
      symlinkSync(join(repoRoot, 'node_modules', dep), join(project, 'node_modules', dep));
    }
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('`npm rebuild ebpf-leak --build-from-source` builds the addon and the launcher', async () => {
    const r = await run('npm', ['rebuild', 'ebpf-leak', '--build-from-source'], project, 10 * 60_000);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(existsSync(join(pkg, 'build', 'Release', 'ebpf-leak-exec'))).toBe(true);
    // The system's shared libraries: this is the source build, not a copy of the prebuilt one.
    const needed = await run('readelf', ['-d', join(pkg, 'build', 'Release', 'ebpf_leak.node')], project);
    expect(needed.stdout).toContain('[libdw.so.1]');
  }, 15 * 60_000);

  it("a trace() with it gives valgrind's numbers", async () => {
    writeFileSync(
      join(project, 'trace.mjs'),
      [
        "import { trace } from 'ebpf-leak';",
        `const tracer = await trace({ command: ${JSON.stringify(fixturePath('seed'))}, env: ${JSON.stringify(env)}, stdio: 'ignore' });`,
        'console.log(JSON.stringify((await tracer.done).summary));',
      ].join('\n'),
    );
    const r = await run('node', ['trace.mjs'], project);
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as Record<string, number>;
    const vg = await runValgrind(fixturePath('seed'), [], { env, stdio: 'ignore' });
    expect({ inUseBytes: s.inUseBytes, inUseBlocks: s.inUseBlocks, allocs: s.allocs, frees: s.frees, bytesAllocated: s.bytesAllocated }).toEqual(
      vg.summary,
    );
  });
});
