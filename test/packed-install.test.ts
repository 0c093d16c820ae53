// The packed package installed as a user with only Node would: `npm pack`, a bare Debian 12 root
// (test/helpers/debian-root.ts: no compiler, no -dev package), this Node copied into it, the
// tarball installed into a fresh project there with nothing else to fetch (no runtime
// dependencies), then inside the root (chroot, /proc and /sys mounted) `npx ebpf-leak run --
// /bin/ls` and a script that calls trace(). Their heap numbers must equal valgrind's for the same ls
// (coreutils and glibc are the root's and the host's same Debian 12 packages, checked below) in a
// directory of the same contents, with the same environment, on the host.
//
// Needs what every tracing test needs (root, BTF, uprobes), `npm run build` done (the portable
// build: scripts/prebuilds.js copies it into prebuilds/), debootstrap, and the Debian mirror the
// first time the root is made.

import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ensureDebianRoot, inChroot, installNode } from './helpers/debian-root.js';
import { repoRoot } from './helpers/fixtures.js';
import { runAsync } from './helpers/run-async.js';
import { formatValgrindNumber, runValgrind, type ValgrindHeapSummary } from './helpers/valgrind.js';

/** One environment for ls under the tracer (inside the root) and under valgrind (on the host). */
const env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/root', LANG: 'C', TZ: 'UTC' };

async function sh(file: string, args: readonly string[]): Promise<string> {
  const r = await runAsync(file, args, { cwd: repoRoot, timeoutMs: 10 * 60_000 });
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A user's script: trace() of ls in lsdir/, its summary as JSON. */
const traceScript = [
  "import { trace } from 'ebpf-leak';",
  'const env = { PATH: process.env.PATH, HOME: process.env.HOME, LANG: process.env.LANG, TZ: process.env.TZ };',
  "const tracer = await trace({ command: '/bin/ls', cwd: new URL('lsdir', import.meta.url).pathname, env, stdio: 'ignore' });",
  'const report = await tracer.done;',
  'console.log(JSON.stringify(report.summary));',
].join('\n');

/** valgrind's two HEAP SUMMARY lines, which the CLI prints the same way. */
function heapLines(s: ValgrindHeapSummary): string[] {
  const f = formatValgrindNumber;
  return [
    `    in use at exit: ${f(s.inUseBytes)} bytes in ${f(s.inUseBlocks)} blocks`,
    `  total heap usage: ${f(s.allocs)} allocs, ${f(s.frees)} frees, ${f(s.bytesAllocated)} bytes allocated`,
  ];
}

describe('npm install of the packed tarball on a bare Debian 12 with only Node', () => {
  let root: string;
  /** The test's directory inside the root, and the same as seen from inside. */
  let work: string;
  let workInside: string;

  beforeAll(async () => {
    root = await ensureDebianRoot();
    installNode(root);
    work = mkdtempSync(join(root, 'tmp', 'ebpf-leak-install-'));
    workInside = work.slice(root.length);
    await sh('node', ['scripts/prebuilds.js']);
    // Scripts off: `npm run build` (prepack) has made everything already, and the other test files
    // use dist/ meanwhile.
    const packed = JSON.parse(await sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work])) as {
      filename: string;
    }[];
    const project = join(work, 'project');
    mkdirSync(join(project, 'lsdir'), { recursive: true });
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', version: '1.0.0', private: true }));
    for (const name of ['a', 'b.txt', 'c-d']) writeFileSync(join(project, 'lsdir', name), name);
    writeFileSync(join(project, 'trace-ls.mjs'), traceScript);
    const install = await inChroot(
      root,
      `cd ${workInside}/project && npm install --offline --no-audit --no-fund ${workInside}/${packed[0]!.filename}`,
      env,
      5 * 60_000,
    );
    expect(install.status, install.stdout + install.stderr).toBe(0);
  }, 30 * 60_000); // making the root the first time: 2.5 min here, more on a slow mirror

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('the root is bare: no compiler, no libelf/libdw/libbpf, the same ls and glibc as the host', async () => {
    for (const path of ['usr/bin/cc', 'usr/bin/gcc', 'usr/bin/clang', 'usr/bin/cmake', 'usr/include/libelf.h', 'usr/include/bpf']) {
      expect(existsSync(join(root, path)), path).toBe(false);
    }
    for (const lib of ['libelf.so.1', 'libdw.so.1', 'libbpf.so.1', 'libZydis.so.4.0']) {
      expect(existsSync(join(root, 'usr/lib/x86_64-linux-gnu', lib)), lib).toBe(false);
    }
    // The host's own architecture: it also has arm64's libc6 and others, for the cross build.
    const arch = (await sh('dpkg', ['--print-architecture'])).trim();
    const libs = ['libc6', 'libselinux1', 'libpcre2-8-0'].map((p) => `${p}:${arch}`);
    const query = ['-W', '-f=${Package} ${Version}\\n', 'coreutils', ...libs];
    expect(await sh('chroot', [root, 'dpkg-query', ...query])).toBe(await sh('dpkg-query', query));
  });

  it('installs ebpf-leak and nothing else, and runs no build', () => {
    const modules = readdirSync(join(work, 'project', 'node_modules')).sort();
    expect(modules).toEqual(['.bin', '.package-lock.json', 'ebpf-leak']);
    const pkg = join(work, 'project', 'node_modules', 'ebpf-leak');
    expect(existsSync(join(pkg, 'prebuilds', 'linux-x64', 'ebpf_leak.node'))).toBe(true);
    expect(existsSync(join(pkg, 'prebuilds', 'linux-x64', 'ebpf-leak-exec'))).toBe(true);
    expect(existsSync(join(pkg, 'prebuilds', 'linux-x64', 'libebpf-leak-preload.so'))).toBe(true);
    expect(existsSync(join(pkg, 'prebuilds', 'linux-x64', 'libebpf-leak-preload-cxx.so'))).toBe(true);
    // The cross-built linux-arm64 binaries travel in the same package (nothing here runs them).
    expect(readdirSync(join(pkg, 'prebuilds', 'linux-arm64')).sort()).toEqual(['ebpf-leak-exec', 'ebpf_leak.node']);
    expect(existsSync(join(pkg, 'build'))).toBe(false);
  });

  it('`npx ebpf-leak run -- /bin/ls`: the HEAP SUMMARY is valgrind\'s for the same ls', async () => {
    const r = await inChroot(root, `cd ${workInside}/project/lsdir && npx --offline ebpf-leak run -- /bin/ls`, env, 5 * 60_000);
    expect(r.stderr).not.toMatch(/internal error|warning/);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('a\nb.txt\nc-d\n');
    expect(r.stderr).toContain('HEAP SUMMARY:');

    const vg = await runValgrind('/bin/ls', [], { cwd: join(work, 'project', 'lsdir'), env, stdio: 'pipe' });
    expect(vg.stdout).toBe('a\nb.txt\nc-d\n');
    const report = r.stderr.split('\n');
    for (const line of heapLines(vg.summary)) expect(report, r.stderr).toContain(line);
  });

  it('a script calling trace(): the summary is valgrind\'s for the same ls', async () => {
    const r = await inChroot(root, `cd ${workInside}/project && node trace-ls.mjs`, env, 5 * 60_000);
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as Record<string, number>;
    const vg = await runValgrind('/bin/ls', [], { cwd: join(work, 'project', 'lsdir'), env, stdio: 'ignore' });
    expect({
      inUseBytes: summary.inUseBytes,
      inUseBlocks: summary.inUseBlocks,
      allocs: summary.allocs,
      frees: summary.frees,
      bytesAllocated: summary.bytesAllocated,
    }).toEqual(vg.summary);
  });
});

// Debian 11's glibc 2.31 predates the versions the build's glibc 2.36 would bind by default
// (pthread and dl functions in their own libraries, no fstat symbol, no __libc_single_threaded):
// the prebuilt addon must load and trace there too. Its ls and glibc differ from the host's, so
// valgrind on the host is no oracle here; the CLI's and trace()'s numbers must agree.
describe('the same tarball on a bare Debian 11 (glibc 2.31)', () => {
  let root: string;
  let work: string;
  let workInside: string;

  beforeAll(async () => {
    root = await ensureDebianRoot('bullseye');
    installNode(root);
    work = mkdtempSync(join(root, 'tmp', 'ebpf-leak-install-'));
    workInside = work.slice(root.length);
    await sh('node', ['scripts/prebuilds.js']);
    const packed = JSON.parse(await sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work])) as {
      filename: string;
    }[];
    const project = join(work, 'project');
    mkdirSync(join(project, 'lsdir'), { recursive: true });
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', version: '1.0.0', private: true }));
    for (const name of ['a', 'b.txt', 'c-d']) writeFileSync(join(project, 'lsdir', name), name);
    writeFileSync(join(project, 'trace-ls.mjs'), traceScript);
    const install = await inChroot(
      root,
      `cd ${workInside}/project && npm install --offline --no-audit --no-fund ${workInside}/${packed[0]!.filename}`,
      env,
      5 * 60_000,
    );
    expect(install.status, install.stdout + install.stderr).toBe(0);
  }, 30 * 60_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('`npx ebpf-leak run -- /bin/ls` and trace() report the same heap', async () => {
    expect(await sh('chroot', [root, 'dpkg-query', '-W', '-f=${Version}', 'libc6'])).toMatch(/^2\.31-/);
    const cli = await inChroot(root, `cd ${workInside}/project/lsdir && npx --offline ebpf-leak run -- /bin/ls`, env, 5 * 60_000);
    expect(cli.stderr).not.toMatch(/internal error|warning/);
    expect(cli.status, cli.stderr).toBe(0);
    expect(cli.stdout).toBe('a\nb.txt\nc-d\n');
    const lib = await inChroot(root, `cd ${workInside}/project && node trace-ls.mjs`, env, 5 * 60_000);
    expect(lib.status, lib.stderr).toBe(0);
    const s = JSON.parse(lib.stdout) as ValgrindHeapSummary;
    expect(s.allocs).toBeGreaterThan(5);
    // stdout is a pipe for the CLI's ls and /dev/null for trace()'s: the same buffer size on both.
    for (const line of heapLines(s)) expect(cli.stderr.split('\n'), cli.stderr).toContain(line);
  });
});
