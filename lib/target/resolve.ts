// Which file holds the target's malloc: glibc found in /proc/PID/maps for a running process, or
// through the dynamic loader's own search for a command we are about to start. Programs whose
// malloc is not glibc's shared one are refused here, before they could produce an empty report.
import { accessSync, constants, existsSync, fstatSync, openSync, readFileSync, readSync, closeSync, realpathSync, statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import {
  CommandNotFoundError,
  EbpfLeakError,
  fromNativeError,
  InvalidOptionError,
  LibraryNotFoundError,
  NoSuchProcessError,
  PermissionError,
  TargetExitedError,
  UnsupportedAllocatorError,
} from '../errors.js';
import { kernelDev } from './modules.js';
import { optionWord } from '../option-words.js';
import { loadNative, type NativeElfInfo } from '../native/addon.js';
import type { AllocatorOptions } from '../types.js';

const GLIBC_NAME = /^libc(\.so\.6|-2\.\d+\.so)$/;
/** The dynamic loader's file name. */
export const LOADER_NAME = /^ld-linux.*\.so(\.\d+)*$|^ld64\.so/;

export interface ResolvedAllocator {
  /** Path as the tracer (in our mount namespace) opens it. */
  path: string;
  /** True when it is glibc's malloc (shared or in a static executable), found by us. */
  glibc: boolean;
  /** Which allocator: 'glibc', 'glibc (static)', 'jemalloc', 'tcmalloc', 'mimalloc', 'custom'. */
  name: string;
  /** The file whose C++ operator new the program calls, when it has one. */
  cxxRuntime?: string;
  /** `path` is ebpf-leak's preloaded entry points (native/preload/), which hand every call on to
   *  `libc`. */
  handsOnTo?: { libc: string };
  /** An exec'd image's files the loader maps before it runs (the program, the loader, the
   *  libraries), for their unwind tables; empty where they are not known. */
  files?: readonly string[];
}

/** Allocators traced without being named, told apart by their own entry points. */
const knownAllocators: ReadonlyArray<{ name: string; symbol: string }> = [
  { name: 'jemalloc', symbol: 'mallocx' },
  { name: 'tcmalloc', symbol: 'tc_malloc' },
  { name: 'mimalloc', symbol: 'mi_malloc' },
];

/** The symbol of ebpf-leak's preloaded entry points (native/preload/preload.c), which are glibc's
 *  functions behind a 5-byte nop each. */
export const preloadMarker = 'ebpf_leak_preload';

/** Which allocator `path` (which defines malloc) is; null when none we know. */
export function allocatorName(path: string): string | null {
  if (GLIBC_NAME.test(basename(path))) return 'glibc';
  const info = readElfOrNull(path, ['__libc_malloc', '__libc_start_main', preloadMarker, ...knownAllocators.map((a) => a.symbol)]);
  if (!info) return null;
  if (info.symbols[preloadMarker] !== undefined) return 'glibc';
  // Checked first: tcmalloc and mimalloc define __libc_malloc too, for programs that call it.
  const known = knownAllocators.find((a) => info.symbols[a.symbol] !== undefined);
  if (known) return known.name;
  return info.symbols.__libc_malloc && info.symbols.__libc_start_main ? 'glibc' : null;
}

function realPath(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** The first of `files` (in the dynamic loader's lookup order) that defines `symbol`. */
export function firstDefining(files: readonly string[], symbol: string): string | undefined {
  return files.find((f) => {
    const info = readElfOrNull(f, [symbol]);
    return info !== null && info.symbols[symbol] !== undefined;
  });
}

/** The allocator of a program whose objects, in lookup order, are `files`: the first that
 *  defines malloc, as the dynamic loader binds it. */
function allocatorOf(who: string, files: readonly string[], staticExe: boolean): ResolvedAllocator {
  const path = firstDefining(files, 'malloc');
  if (path === undefined) {
    throw new UnsupportedAllocatorError(
      `${who} has no malloc in ${staticExe ? `${files[0]} (a static executable without its symbol table)` : 'any object it loads'}, ` +
        `so there is no allocator to trace. Name it with ${optionWord('allocatorSymbols')}.`,
    );
  }
  const name = allocatorName(path);
  if (name === null) {
    throw new UnsupportedAllocatorError(
      `${who} allocates through ${path}, which defines its own malloc and is not an allocator ebpf-leak ` +
        `knows (glibc, jemalloc, tcmalloc, mimalloc). Name it explicitly: ${optionWord('allocator', path)} ` +
        `(with ${optionWord('allocatorSymbols')} if its functions have other names).`,
    );
  }
  const cxxRuntime = realPath(firstDefining(files, '_Znwm'));
  return {
    path,
    glibc: name === 'glibc',
    name: name === 'glibc' && staticExe ? 'glibc (static)' : name,
    ...(cxxRuntime !== undefined ? { cxxRuntime } : {}),
  };
}

function readElfOrNull(path: string, symbols: readonly string[]): NativeElfInfo | null {
  try {
    return loadNative().readElf(path, symbols);
  } catch {
    return null;
  }
}

function userAllocator(allocator: AllocatorOptions, root: string): ResolvedAllocator {
  const candidates = [allocator.path];
  if (root !== '/' && isAbsolute(allocator.path)) candidates.push(join(root, allocator.path));
  const path = candidates.find((p) => existsSync(p));
  if (!path) {
    throw new LibraryNotFoundError(
      `allocator library ${allocator.path} does not exist. Give the path of the ELF file that ` +
        `defines the allocator (a .so from the target's /proc/PID/maps, or the executable).`,
    );
  }
  return { path, glibc: false, name: 'custom' };
}

// ---- running processes

export interface MappedFile {
  path: string;
  executable: boolean;
  /** The file's device (the kernel's encoding, major << 20 | minor) and inode, from the maps line. */
  dev: number;
  inode: bigint;
}

/** File mappings of /proc/PID/maps, executable or not, in address order, without duplicates. */
export function parseMappedFiles(maps: string): MappedFile[] {
  const seen = new Map<string, MappedFile>();
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode path
    const m = /^\S+\s+(\S+)\s+\S+\s+([0-9a-fA-F]+):([0-9a-fA-F]+)\s+(\d+)\s+(\/.*)$/.exec(line);
    if (!m || m[4] === '0') continue;
    const path = m[5]!.replace(/ \(deleted\)$/, '');
    const entry = seen.get(path) ?? {
      path,
      executable: false,
      dev: parseInt(m[2]!, 16) * 2 ** 20 + parseInt(m[3]!, 16),
      inode: BigInt(m[4]!),
    };
    if (m[1]!.includes('x')) entry.executable = true;
    seen.set(path, entry);
  }
  return [...seen.values()];
}

export function processExists(pid: number): boolean {
  return existsSync(`/proc/${pid}/stat`);
}

/** Fields of /proc/PID/stat after the command name: state is [0], flags [6]. */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Running, as opposed to gone or a zombie (exited, not yet reaped by its parent). */
export function processAlive(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z' && state !== 'X';
}

const PF_KTHREAD = 0x00200000;

function processName(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

/** Why a process with no user-space mappings cannot be traced, or null when it has some. */
function nothingMappedError(pid: number): EbpfLeakError | null {
  const fields = statFields(pid);
  if (fields === null) return new NoSuchProcessError(`no process with pid ${pid}. Check the pid (e.g. with \`pgrep -a NAME\`).`);
  if (fields[0] === 'Z' || fields[0] === 'X') {
    return new TargetExitedError(
      `process ${pid} (${processName(pid)}) has exited: it is a zombie, waiting for its parent to reap it, ` +
        `and has no memory left to trace. Trace a live process.`,
    );
  }
  if ((Number(fields[6]) & PF_KTHREAD) !== 0) {
    return new InvalidOptionError(
      `process ${pid} (${processName(pid)}) is a kernel thread: it has no user-space memory or malloc to trace. ` +
        `Give the pid of a user-space program.`,
    );
  }
  return null;
}

function mapsPermissionError(pid: number, error: unknown): PermissionError {
  let owner = '';
  try {
    owner = ` runs as uid ${statSync(`/proc/${pid}`).uid};`;
  } catch {
    // gone meanwhile: the sentence below still holds
  }
  return new PermissionError(
    `cannot read /proc/${pid}/maps: permission denied. Process ${pid}${owner} reading the memory map of another ` +
      `user's process can need CAP_SYS_PTRACE, and this process (uid ${process.getuid?.() ?? '?'}) does not have ` +
      `it. Run as root (sudo), or give node CAP_SYS_PTRACE as ` +
      `well as CAP_BPF and CAP_PERFMON: \`sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep "$(command -v node)"\`.`,
    { cause: error },
  );
}

/** The process's root directory is ours (same file), so its paths are valid here as they are. */
export function sameRootAsOurs(pid: number): boolean {
  try {
    const theirs = statSync(`/proc/${pid}/root`);
    const ours = statSync('/');
    return theirs.dev === ours.dev && theirs.ino === ours.ino;
  } catch {
    return false;
  }
}

/** Where this process can read the file a mapping of process `pid` maps, or why not.
 *
 *  /proc/PID/maps shows a path as seen from OUR root: inside a container (another mount
 *  namespace) that is the path in the container's root, which we reach through /proc/PID/root;
 *  for a process in a plain chroot it is already a path of ours, and prefixing it with
 *  /proc/PID/root would name a file that does not exist. Both are tried, and a candidate counts
 *  only when the file opened is the mapped one (device and inode), so a name the process changed
 *  since, or a symlink it planted, is never taken for it. Files are opened by the addon, which
 *  resolves /proc/PID/root paths inside that root and refuses anything but a regular file. */
export function locateMappedFile(pid: number, file: MappedFile): { path: string } | { error: EbpfLeakError } {
  const inRoot = `/proc/${pid}/root${file.path}`;
  const candidates = sameRootAsOurs(pid) ? [inRoot] : [inRoot, file.path];
  let first: EbpfLeakError | undefined;
  for (const path of candidates) {
    let fd: number;
    try {
      fd = loadNative().openTargetFile(path);
    } catch (error) {
      const typed = fromNativeError(error, `process ${pid} maps ${file.path}`);
      first ??= typed instanceof EbpfLeakError ? typed : new LibraryNotFoundError(String(error), { cause: error });
      continue;
    }
    try {
      const st = fstatSync(fd, { bigint: true });
      if (st.ino === file.inode && kernelDev(Number(st.dev)) === file.dev) return { path };
    } finally {
      closeSync(fd);
    }
    first ??= new LibraryNotFoundError(
      `process ${pid} maps ${file.path}, but ${path} is another file now (the mapped one was replaced or is not reachable from here)`,
    );
  }
  return { error: first ?? new LibraryNotFoundError(`process ${pid} maps ${file.path}, which cannot be found from here`) };
}

export function resolvePidAllocator(pid: number, allocator: AllocatorOptions | undefined): ResolvedAllocator {
  let maps: string;
  try {
    maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch (error) {
    if (!processExists(pid)) {
      throw new NoSuchProcessError(`no process with pid ${pid}. Check the pid (e.g. with \`pgrep -a NAME\`).`, {
        cause: error,
      });
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') throw mapsPermissionError(pid, error);
    throw error;
  }
  if (allocator) return userAllocator(allocator, `/proc/${pid}/root`);
  const modules = parseMappedFiles(maps).filter((m) => m.executable && !LOADER_NAME.test(basename(m.path)));
  if (modules.length === 0) {
    const why = nothingMappedError(pid);
    if (why) throw why;
  }
  const exe = readElfOrNull(`/proc/${pid}/exe`, []);
  // Lookup order: the executable, then LD_PRELOAD's libraries, then the others (in address order,
  // which puts libc, everyone's dependency, after the libraries that need it in practice).
  const preload = preloadedNames(pid);
  const rank = (path: string) => {
    if (path === modules[0]?.path) return -1;
    const i = preload.findIndex((p) => p === path || basename(p) === basename(path));
    return i >= 0 ? i : preload.length + (GLIBC_NAME.test(basename(path)) ? 1 : 0);
  };
  const ordered = modules.map((m, i) => ({ m, i })).sort((a, b) => rank(a.m.path) - rank(b.m.path) || a.i - b.i);
  // Each file is opened safely inside the target's root; one that cannot be is left out of the
  // lookup, and named when no other file defines malloc.
  const located = ordered.map(({ m }) => locateMappedFile(pid, m));
  const files = located.flatMap((l) => ('path' in l ? [l.path] : []));
  try {
    return allocatorOf(`process ${pid}`, files, exe !== null && exe.interpreter === null);
  } catch (error) {
    const failed = located.find((l): l is { error: EbpfLeakError } => 'error' in l);
    throw failed ? failed.error : error;
  }
}

/** The LD_PRELOAD entries of a running process. */
function preloadedNames(pid: number): string[] {
  try {
    const env = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
    const value = env.find((e) => e.startsWith('LD_PRELOAD='))?.slice('LD_PRELOAD='.length) ?? '';
    return value.split(/[\s:]+/).filter(Boolean);
  } catch {
    return [];
  }
}

// ---- commands we start

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The executable `command` names, searched in PATH like execvp does. */
export function resolveCommand(command: string, env: NodeJS.ProcessEnv, cwd: string | undefined): string {
  const isExecutableFile = (p: string) => {
    try {
      accessSync(p, constants.X_OK);
      return statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (cwd !== undefined && !isDirectory(cwd)) {
    throw new InvalidOptionError(`options.cwd: ${cwd} is not a directory, so ${command} cannot run there. Create it or pass another.`);
  }
  if (command.includes('/')) {
    const p = resolve(cwd ?? process.cwd(), command);
    if (isExecutableFile(p)) return p;
    throw new CommandNotFoundError(
      isDirectory(p)
        ? `cannot run ${command}: it is a directory. Give the program inside it.`
        : existsSync(p)
          ? `cannot run ${command}: it is not an executable file (check its permissions: chmod +x).`
          : `cannot run ${command}: no such file.`,
    );
  }
  const dirs = (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter);
  for (const dir of dirs) {
    const p = resolve(cwd ?? process.cwd(), dir || '.', command);
    if (isExecutableFile(p)) return p;
  }
  throw new CommandNotFoundError(`cannot run ${command}: not found in PATH (${env.PATH ?? ''}).`);
}

/** For a `#!interpreter` script, the interpreter and its argument; null for anything else. */
export function readShebang(path: string): { interpreter: string; arg: string | undefined } | null {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(256);
    const n = readSync(fd, buf, 0, buf.length, 0);
    const head = buf.subarray(0, n).toString('latin1');
    if (!head.startsWith('#!')) return null;
    const line = head.slice(2).split('\n')[0]!.trim();
    const [interpreter, ...rest] = line.split(/\s+/);
    return interpreter ? { interpreter, arg: rest.length ? rest.join(' ') : undefined } : null;
  } finally {
    closeSync(fd);
  }
}

/** Libraries the dynamic loader would map for `exe` with this environment: `ld.so --list`. */
export async function loaderLibraries(
  interpreter: string,
  exe: string,
  env: NodeJS.ProcessEnv,
): Promise<Map<string, string>> {
  let out: string;
  const cannot = (why: string, cause?: unknown) =>
    new LibraryNotFoundError(
      `cannot list the libraries of ${exe} with its loader ${interpreter}: ${why}. ` +
        `Check that the program runs, or name the allocator with ${optionWord('allocator')}.`,
      cause === undefined ? undefined : { cause },
    );
  try {
    // Not child_process: it forks this whole process on the JS thread (see native/process/run_program.h).
    const result = await loadNative().runProgram(interpreter, [interpreter, '--list', exe], environmentStrings(env), 10_000);
    if (result.status !== 0) {
      const how = result.signal !== null ? `killed by signal ${result.signal}` : `exit status ${result.status}`;
      throw cannot(result.stderr.trim() || how);
    }
    out = result.stdout;
  } catch (error) {
    if (error instanceof LibraryNotFoundError) throw error;
    throw cannot(String(error), error);
  }
  const libs = new Map<string, string>();
  for (const line of out.split('\n')) {
    const arrow = /^\s*(\S+) => (\/\S+) \(0x[0-9a-f]+\)/.exec(line);
    if (arrow) libs.set(arrow[1]!, arrow[2]!);
    const missing = /^\s*(\S+) => not found/.exec(line);
    if (missing) {
      throw new LibraryNotFoundError(
        `${exe} needs ${missing[1]}, which the dynamic loader cannot find: the program would not start. ` +
          `Set LD_LIBRARY_PATH in the command's environment or install the library.`,
      );
    }
    const direct = /^\s*(\/\S+) \(0x[0-9a-f]+\)/.exec(line);
    if (direct) libs.set(direct[1]!, direct[1]!);
  }
  return libs;
}

export interface ResolvedCommand {
  /** Absolute path of the file to exec. */
  exe: string;
  allocator: ResolvedAllocator;
  /** The files the program will map before it runs: the program (or a script's interpreter),
   *  its dynamic loader and libraries. Their unwind tables are loaded before it starts. */
  files: string[];
}

export async function resolveCommandTarget(
  command: string,
  env: NodeJS.ProcessEnv,
  cwd: string | undefined,
  allocator: AllocatorOptions | undefined,
): Promise<ResolvedCommand> {
  const exe = resolveCommand(command, env, cwd);
  // A script runs its interpreter: that is the program whose malloc we trace.
  let program = exe;
  const shebang = readShebang(exe);
  if (shebang) {
    program = resolveCommand(shebang.interpreter, env, cwd);
    // `#!/usr/bin/env python3` runs python3 from PATH
    if (basename(program) === 'env' && shebang.arg && !shebang.arg.startsWith('-')) {
      program = resolveCommand(shebang.arg.split(/\s+/)[0]!, env, cwd);
    }
  }
  const info = readElfOrNull(program, []);
  if (!info) {
    throw new CommandNotFoundError(`cannot run ${command}: ${program} is neither an ELF executable nor a #! script.`);
  }
  if (allocator) {
    // The named allocator decides; the libraries are only wanted for their unwind tables.
    let files = [program];
    try {
      if (info.interpreter !== null) {
        files = [program, info.interpreter, ...(await loaderLibraries(info.interpreter, program, env)).values()];
      }
    } catch {
      // a program the loader cannot list still runs traced; its tables load when it maps them
    }
    const cxxRuntime = realPath(firstDefining(files.filter((f) => !LOADER_NAME.test(basename(f))), '_Znwm'));
    return { exe, allocator: { ...userAllocator(allocator, '/'), ...(cxxRuntime !== undefined ? { cxxRuntime } : {}) }, files };
  }
  if (info.interpreter === null) {
    return { exe, allocator: allocatorOf(command, [program], true), files: [program] };
  }
  const libs = await loaderLibraries(info.interpreter, program, env);
  // ld.so --list prints the objects in load order: preloaded libraries first, then the needed
  // ones breadth-first, which is the order symbols are looked up in after the executable.
  const objects = [...libs.entries()]
    .filter(([name, path]) => !LOADER_NAME.test(basename(name)) && !LOADER_NAME.test(basename(path)))
    .map(([, path]) => path);
  const found = allocatorOf(command, [program, ...objects], false);
  return {
    exe,
    allocator: { ...found, path: found.path !== program ? realpathSync(found.path) : found.path },
    files: [program, info.interpreter, ...libs.values()],
  };
}

/** An environment as the NAME=value strings exec takes. */
export function environmentStrings(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
}
