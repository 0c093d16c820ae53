// A traced process controls its own filesystem, and ebpf-leak reads files it names as root. A
// fixture root directory stands in for a hostile container: a process is chrooted into it (so
// /proc/PID/root is that directory), and the files there are what a hostile target could plant
// at its library paths: a symlink to a host file, a FIFO, a device, a truncated ELF and a huge
// (sparse) ELF. Every reader of target files must refuse or skip each with a clear message,
// never read outside the root, and never hang (a hang fails the test by its timeout).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { constants, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../lib/native/addon.js';
import { readPerfMapFile } from '../lib/target/proc-maps.js';
import { loadNativeSymbolizer } from '../lib/report/symbolize.js';
import { expandBatch } from '../lib/native/symbolized-batch.js';
import { locateMappedFile } from '../lib/target/resolve.js';
import { kernelDev } from '../lib/target/modules.js';

const hostLibc = '/usr/lib/x86_64-linux-gnu/libc.so.6';
const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-hostile-'));
const root = join(dir, 'root');
let sleeper: ChildProcess;
let viaProc: (path: string) => string;

beforeAll(async () => {
  mkdirSync(join(root, 'lib'), { recursive: true });
  writeFileSync(join(dir, 'sleeper.c'), '#include <unistd.h>\nint main(void) { for (;;) pause(); }\n');
  execFileSync('gcc', ['-static', '-O1', '-o', join(root, 'sleeper'), join(dir, 'sleeper.c')]);
  // The container's libc path leads to the host's libc, if followed from the host.
  symlinkSync(hostLibc, join(root, 'lib', 'libc.so.6'));
  // ... and one that climbs out with `..`.
  symlinkSync('../../../../../../../../..' + hostLibc, join(root, 'lib', 'libclimb.so'));
  execFileSync('mkfifo', [join(root, 'lib', 'fifo.so')]);
  execFileSync('mknod', [join(root, 'lib', 'zero.so'), 'c', '1', '5']);
  const elf = readFileSync(hostLibc);
  writeFileSync(join(root, 'lib', 'truncated.so'), elf.subarray(0, 200));
  // A real ELF header and section table, then sparse space to 3 GiB.
  copyFileSync(hostLibc, join(root, 'lib', 'huge.so'));
  truncateSync(join(root, 'lib', 'huge.so'), 3 * 2 ** 30);
  writeFileSync(join(root, 'tmp-perf.map'), '1000 10 secret\n');
  sleeper = spawn('chroot', [root, '/sleeper'], { stdio: 'ignore' });
  // Wait until the chroot has happened: /proc/PID/root is the fixture root.
  const rootIno = statSync(root).ino;
  for (let i = 0; i < 500; i++) {
    try {
      if (statSync(`/proc/${sleeper.pid}/root`).ino === rootIno) break;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  expect(statSync(`/proc/${sleeper.pid}/root`).ino).toBe(rootIno);
  viaProc = (path) => `/proc/${sleeper.pid}/root${path}`;
});

afterAll(() => {
  sleeper?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function thrown(fn: () => unknown): { code?: string; message: string } {
  try {
    fn();
  } catch (error) {
    return error as { code?: string; message: string };
  }
  throw new Error('expected an error');
}

describe('a symlink out of the root', () => {
  it('is resolved inside the root, so the host file is not read', () => {
    // Followed from the host, the path is the host's libc, with malloc in it...
    expect(loadNative().readElf(join(root, 'lib', 'libc.so.6'), ['malloc']).symbols.malloc).toBeDefined();
    // ...but inside the root the link names a file that does not exist there.
    for (const name of ['libc.so.6', 'libclimb.so']) {
      const e = thrown(() => loadNative().readElf(viaProc(`/lib/${name}`), ['malloc']));
      expect(e.code).toBe('ELEAK_LIB_NOT_FOUND');
      expect(e.message).toMatch(/No such file or directory \(inside the process's root: symbolic links are resolved there/);
    }
  });

  it('is not taken for the mapped file, by the allocator lookup of a pid target', () => {
    const host = statSync(hostLibc, { bigint: true });
    // As if /proc/PID/maps named /lib/libc.so.6 with some other file's identity.
    const located = locateMappedFile(sleeper.pid!, { path: '/lib/libc.so.6', executable: true, dev: kernelDev(Number(host.dev)), inode: host.ino + 1n });
    expect('error' in located && located.error.message).toMatch(/No such file or directory/);
  });

  it('gives no symbols and no unwind table', async () => {
    const batch = expandBatch(await loadNativeSymbolizer().symbolize(viaProc('/lib/libc.so.6'), [0x1000]));
    expect(batch[0]).toMatchObject({ error: expect.stringMatching(/No such file or directory/) });
    expect(thrown(() => loadNative().unwindTable(viaProc('/lib/libc.so.6'))).code).toBe('ELEAK_LIB_NOT_FOUND');
  });
});

describe('a FIFO, a device', () => {
  it.each([
    ['fifo.so', /is a FIFO, not a regular file: not opened/],
    ['zero.so', /is a character device, not a regular file: not opened/],
  ])('%s is refused without being opened', async (name, message) => {
    const path = viaProc(`/lib/${name}`);
    for (const read of [
      () => loadNative().readElf(path, ['malloc']),
      () => loadNative().unwindTable(path),
      () => loadNative().openTargetFile(path),
    ]) {
      const e = thrown(read);
      expect(e.code).toBe('ELEAK_UNSAFE_FILE');
      expect(e.message).toMatch(message);
    }
    const batch = expandBatch(await loadNativeSymbolizer().symbolize(path, [0x1000]));
    expect(batch[0]).toMatchObject({ error: expect.stringMatching(message) });
    expect(await readPerfMapFile(path)).toBeNull();
  });

  it('a FIFO still has no reader after the attempts: it was never opened', () => {
    // A non-blocking open for writing fails with ENXIO exactly when nobody has it open for reading.
    const e = thrown(() => openSync(join(root, 'lib', 'fifo.so'), constants.O_WRONLY | constants.O_NONBLOCK));
    expect((e as { code?: string }).code).toBe('ENXIO');
  });
});

describe('a truncated ELF, a huge ELF', () => {
  it('a truncated ELF is named unusable', async () => {
    const path = viaProc('/lib/truncated.so');
    const e = thrown(() => loadNative().readElf(path, ['malloc']));
    expect(e.code).toBe('ELEAK_LIB_NOT_FOUND');
    expect(e.message).toMatch(/truncated\.so is not a usable ELF file/);
    expect(loadNative().unwindTable(path).fdes).toBe(0);
    const batch = expandBatch(await loadNativeSymbolizer().symbolize(path, [0x1000]));
    expect(batch[0]).toMatchObject({ error: expect.any(String) });
  });

  it('a file over the cap is not read, with the cap in the message', async () => {
    const path = viaProc('/lib/huge.so');
    for (const read of [() => loadNative().readElf(path, ['malloc']), () => loadNative().unwindTable(path)]) {
      const e = thrown(read);
      expect(e.code).toBe('ELEAK_UNSAFE_FILE');
      expect(e.message).toMatch(/huge\.so is 3221225472 bytes, more than the 2147483648 read from one file: not read/);
    }
    const batch = expandBatch(await loadNativeSymbolizer().symbolize(path, [0x1000]));
    // The symbolizer's own cap is for debug files (4 GiB); it reads the headers it needs with
    // pread and finds this file's sections past its end or valid: either way no crash, no hang.
    expect(batch).toHaveLength(1);
  });
});

describe('perf maps', () => {
  it('a perf map inside the root is read; a symlink to a host perf map is not followed out', async () => {
    expect((await readPerfMapFile(viaProc('/tmp-perf.map')))?.size).toBe(1);
    const hostMap = join(dir, 'host-perf.map');
    writeFileSync(hostMap, '2000 10 host-secret\n');
    symlinkSync(hostMap, join(root, 'link-perf.map'));
    expect(await readPerfMapFile(viaProc('/link-perf.map'))).toBeNull();
  });
});
