// The loader's library list runs through the addon's posix_spawn() on a worker thread
// (native/process/run_program.h), not child_process, whose fork of this process stalls the event loop.
import { describe, expect, it } from 'vitest';
import { LibraryNotFoundError } from '../lib/errors.js';
import { loadNative } from '../lib/native/addon.js';
import { loaderLibraries } from '../lib/target/resolve.js';

const loader = '/lib64/ld-linux-x86-64.so.2';

describe('runProgram (native)', () => {
  it('returns the exit status and both outputs, with the given environment', async () => {
    const r = await loadNative().runProgram('/bin/sh', ['sh', '-c', 'echo "out $X"; echo err >&2; exit 3'], ['X=42'], 10_000);
    expect(r).toEqual({ status: 3, signal: null, stdout: 'out 42\n', stderr: 'err\n' });
  });

  it('kills a program that outlives its timeout', async () => {
    const started = Date.now();
    const r = await loadNative().runProgram('/bin/sleep', ['sleep', '10'], [], 200);
    expect(r.signal).toBe(9);
    expect(r.status).toBeNull();
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('rejects with the reason when the program cannot be started', async () => {
    await expect(loadNative().runProgram('/nonexistent/program', ['x'], [], 1_000)).rejects.toThrow(
      /cannot run \/nonexistent\/program: posix_spawn: No such file or directory/,
    );
  });
});

describe('loaderLibraries', () => {
  it("lists what ld.so would map, libc among them", async () => {
    const libs = await loaderLibraries(loader, '/bin/ls', process.env);
    expect(libs.get('libc.so.6')).toMatch(/\/libc\.so\.6$/);
  });

  it("turns the loader's failure into ELEAK_LIB_NOT_FOUND with its message", async () => {
    const error = await loaderLibraries(loader, '/etc/hostname', process.env).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LibraryNotFoundError);
    expect((error as LibraryNotFoundError).code).toBe('ELEAK_LIB_NOT_FOUND');
    expect((error as Error).message).toMatch(/cannot list the libraries of \/etc\/hostname with its loader .*: .+\. Check that the program runs/);
  });
});
