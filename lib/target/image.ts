// The allocator of an image a traced process has just exec'd, found while it is stopped before
// its first instruction: its libraries are not mapped yet, so they are found as the dynamic loader
// will find them (`ld.so --list` with the process's own environment), or, for a process in
// another root (chroot), in that root's library directories.
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { UnsupportedAllocatorError } from '../errors.js';
import { loadNative, type NativeElfInfo } from '../native/addon.js';
import { operatorsAllLibstdcxx } from './cxx-operators.js';
import { allocatorName, firstDefining, loaderLibraries, LOADER_NAME, preloadMarker, sameRootAsOurs, type ResolvedAllocator } from './resolve.js';

const GLIBC_NAME = /^libc(\.so\.6|-2\.\d+\.so)$/;
/** Where a root's glibc is looked for when the loader cannot be asked (another root). */
const LIBRARY_DIRS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/lib64', '/usr/lib64', '/lib', '/usr/lib'];

function readElf(path: string, symbols: readonly string[]): NativeElfInfo | null {
  try {
    return loadNative().readElf(path, symbols);
  } catch {
    return null;
  }
}

function definesMalloc(path: string): boolean {
  return readElf(path, ['malloc'])?.symbols.malloc !== undefined;
}

function environment(pid: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const entry of readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/** AT_SECURE of the image: a set-user-ID or set-group-ID program run by another user, for which
 *  the dynamic loader ignores LD_PRELOAD paths and LD_LIBRARY_PATH. */
function secureExec(pid: number): boolean {
  try {
    const auxv = readFileSync(`/proc/${pid}/auxv`);
    for (let i = 0; i + 16 <= auxv.length; i += 16) {
      const type = auxv.readBigUInt64LE(i);
      if (type === 0n) break;
      if (type === 23n) return auxv.readBigUInt64LE(i + 8) !== 0n; // AT_SECURE
    }
  } catch {
    // unreadable: as the loader does for a program that is not set-ID
  }
  return false;
}

function withoutLoaderVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { LD_PRELOAD: _preload, LD_LIBRARY_PATH: _path, ...rest } = env;
  return rest;
}

/** An image that inherited ebpf-leak's C++ entry points (LD_PRELOAD from a `preload` command) but
 *  has operators of its own: the preloaded operator delete overloads, which free() the pointer they
 *  get, stand in for those it does not replace, so that its deletes may not reach its own. Its run
 *  is not the one it would have without them: it is reported as not traced. */
function refuseOperatorStandIns(exe: string, interposer: string, files: readonly string[]): void {
  const info = readElf(interposer, [preloadMarker, '_ZdlPv']);
  if (info?.symbols[preloadMarker] === undefined || info.symbols._ZdlPv === undefined) return;
  if (operatorsAllLibstdcxx(files.filter((f) => f !== interposer && !LOADER_NAME.test(basename(f))))) return;
  throw new UnsupportedAllocatorError(
    `${exe} inherited ebpf-leak's C++ entry points in LD_PRELOAD (${interposer}) from a command run with ` +
      `preload, and defines C++ operators of its own, which the preloaded operator delete overloads would ` +
      `bypass. Trace it without preload.`,
  );
}

/** A file's identity, to tell whether an allocator is one already probed. */
export function fileIdentity(path: string): string {
  const s = statSync(path);
  return `${s.dev}:${s.ino}`;
}

const cache = new Map<string, ResolvedAllocator>();

/** The allocator of the image process `pid` exec'd (stopped at its exec), as a path we can
 *  attach to. Throws UnsupportedAllocatorError, saying why, when there is none to trace. */
export async function resolveImageAllocator(pid: number): Promise<ResolvedAllocator> {
  const exe = realpathSync(`/proc/${pid}/exe`);
  const env = secureExec(pid) ? withoutLoaderVariables(environment(pid)) : environment(pid);
  const root = sameRootAsOurs(pid) ? '/' : realpathSync(`/proc/${pid}/root`);
  const exeStat = statSync(exe);
  const key = [exe, exeStat.ino, exeStat.mtimeMs, root, env.LD_PRELOAD ?? '', env.LD_LIBRARY_PATH ?? ''].join('\0');
  const known = cache.get(key);
  if (known) return known;
  const info = readElf(exe, ['malloc', 'free']);
  if (!info) throw new UnsupportedAllocatorError(`${exe} is not an ELF program this tracer can read.`);
  let found: ResolvedAllocator;
  if (info.interpreter === null) {
    if (info.symbols.malloc === undefined || info.symbols.free === undefined) {
      throw new UnsupportedAllocatorError(
        `${exe} is statically linked without a symbol table (stripped): its malloc cannot be found, ` +
          `so its allocations cannot be traced. Build it with symbols, or link it dynamically.`,
      );
    }
    found = { path: exe, glibc: true, name: 'glibc (static)', files: [exe] };
  } else if (root === '/') {
    const libs = await loaderLibraries(info.interpreter, exe, env);
    const libc = [...libs.entries()].find(([name, path]) => GLIBC_NAME.test(name) || GLIBC_NAME.test(basename(path)))?.[1];
    const files = [exe, info.interpreter, ...libs.values()];
    // An allocator preloaded or linked ahead of libc takes every call: it is the one to probe.
    const interposer = [exe, ...libs.values()].find(
      (p) => p !== libc && !LOADER_NAME.test(basename(p)) && definesMalloc(p),
    );
    // Its own C++ runtime, if any: each image's operators are probed, whatever the first one used.
    const cxx = firstDefining([exe, ...[...libs.values()].filter((p) => !LOADER_NAME.test(basename(p)))], '_Znwm');
    const cxxRuntime = cxx !== undefined ? { cxxRuntime: realpathSync(cxx) } : {};
    if (interposer) {
      refuseOperatorStandIns(exe, interposer, [exe, ...libs.values()]);
      const name = allocatorName(interposer) ?? 'custom';
      const handsOnTo =
        libc !== undefined && readElf(interposer, [preloadMarker])?.symbols[preloadMarker] !== undefined
          ? { handsOnTo: { libc: realpathSync(libc) } }
          : {};
      found = { path: realpathSync(interposer), glibc: name === 'glibc', name, ...cxxRuntime, ...handsOnTo, files };
    } else if (libc) found = { path: realpathSync(libc), glibc: true, name: 'glibc', ...cxxRuntime, files };
    else {
      throw new UnsupportedAllocatorError(
        `${exe} does not link glibc's libc.so.6 and no library of it defines malloc: nothing to trace.`,
      );
    }
  } else {
    const libc = LIBRARY_DIRS.map((dir) => join(root, dir, 'libc.so.6')).find((p) => {
      try {
        return statSync(p).isFile();
      } catch {
        return false;
      }
    });
    if (!libc || !definesMalloc(libc)) {
      throw new UnsupportedAllocatorError(
        `${exe} runs in another root (${root}) whose libc.so.6 was not found in its library ` +
          `directories (${LIBRARY_DIRS.join(', ')}): its allocations cannot be traced.`,
      );
    }
    found = { path: realpathSync(libc), glibc: true, name: 'glibc' };
  }
  cache.set(key, found);
  return found;
}
