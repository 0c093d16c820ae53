// Which file holds the target's malloc: glibc found in /proc/PID/maps for a running process, or
// through the dynamic loader's own search for a command we are about to start. Programs whose
// malloc is not glibc's shared one are refused here, before they could produce an empty report.
import { accessSync, constants, existsSync, openSync, readFileSync, readSync, closeSync, realpathSync, statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import {
  CommandNotFoundError,
  InvalidOptionError,
  LibraryNotFoundError,
  NoSuchProcessError,
  UnsupportedAllocatorError,
} from '../errors.js';
import { loadNative, type NativeElfInfo } from '../native/addon.js';
import type { AllocatorOptions } from '../types.js';

const GLIBC_NAME = /^libc(\.so\.6|-2\.\d+\.so)$/;
const LOADER_NAME = /^ld-linux.*\.so(\.\d+)*$|^ld64\.so/;

export interface ResolvedAllocator {
  /** Path as the tracer (in our mount namespace) opens it. */
  path: string;
  /** True when it is glibc's libc, found by us; false when named by the user. */
  glibc: boolean;
}

function readElfOrNull(path: string, symbols: readonly string[]): NativeElfInfo | null {
  try {
    return loadNative().readElf(path, symbols);
  } catch {
    return null;
  }
}

/** The module defines malloc itself, so calls bind to it and not to glibc (jemalloc, tcmalloc, ...). */
function definesMalloc(path: string): boolean {
  const info = readElfOrNull(path, ['malloc']);
  return info !== null && info.symbols.malloc !== undefined;
}

function interposerError(who: string, module: string): UnsupportedAllocatorError {
  return new UnsupportedAllocatorError(
    `${who} allocates through ${module}, which defines its own malloc, so glibc's malloc is not ` +
      `called and tracing it would report nothing. Name that allocator explicitly: ` +
      `trace({ ..., allocator: { path: '${module}' } }) or \`ebpf-leak ... --allocator ${module}\` ` +
      `(add symbols: { malloc: 'je_malloc', ... } if its functions have other names).`,
  );
}

function staticError(who: string, exe: string): UnsupportedAllocatorError {
  return new UnsupportedAllocatorError(
    `${who} is statically linked (${exe} has no dynamic loader), so its malloc is inside the ` +
      `executable rather than in glibc's shared libc. If the executable keeps its symbol table, ` +
      `trace it with allocator: { path: '${exe}' } (CLI: --allocator ${exe}).`,
  );
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
  return { path, glibc: false };
}

// ---- running processes

export interface MappedFile {
  path: string;
  executable: boolean;
}

/** File mappings of /proc/PID/maps, executable or not, in address order, without duplicates. */
export function parseMappedFiles(maps: string): MappedFile[] {
  const seen = new Map<string, MappedFile>();
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode path
    const m = /^\S+\s+(\S+)\s+\S+\s+\S+\s+(\d+)\s+(\/.*)$/.exec(line);
    if (!m || m[2] === '0') continue;
    const path = m[3]!.replace(/ \(deleted\)$/, '');
    const entry = seen.get(path) ?? { path, executable: false };
    if (m[1]!.includes('x')) entry.executable = true;
    seen.set(path, entry);
  }
  return [...seen.values()];
}

export function processExists(pid: number): boolean {
  return existsSync(`/proc/${pid}/stat`);
}

/** Running, as opposed to gone or a zombie (exited, not yet reaped by its parent). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
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
    throw error;
  }
  // Paths in maps are in the target's mount namespace: reach them through its root.
  const root = `/proc/${pid}/root`;
  const viaRoot = (p: string) => `${root}${p}`;
  if (allocator) return userAllocator(allocator, root);
  const modules = parseMappedFiles(maps).filter((m) => m.executable);
  const libc = modules.find((m) => GLIBC_NAME.test(basename(m.path)));
  if (!libc) {
    const exe = modules[0]?.path ?? `/proc/${pid}/exe`;
    const info = readElfOrNull(`/proc/${pid}/exe`, []);
    if (info && info.interpreter === null) throw staticError(`process ${pid}`, exe);
    throw new UnsupportedAllocatorError(
      `process ${pid} has no glibc libc.so.6 mapped, so there is no glibc malloc to trace. ` +
        `If it uses another C library or allocator, name it with allocator: { path } (CLI: --allocator PATH).`,
    );
  }
  for (const m of modules) {
    if (m === libc || LOADER_NAME.test(basename(m.path))) continue;
    if (definesMalloc(viaRoot(m.path))) throw interposerError(`process ${pid}`, m.path);
  }
  return { path: viaRoot(libc.path), glibc: true };
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
      existsSync(p)
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
        `Check that the program runs, or name the allocator with allocator: { path }.`,
      cause === undefined ? undefined : { cause },
    );
  try {
    // Not child_process: it forks this whole process on the JS thread (see native/run_program.h).
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
    return { exe, allocator: userAllocator(allocator, '/'), files };
  }
  if (info.interpreter === null) throw staticError(command, program);
  const libs = await loaderLibraries(info.interpreter, program, env);
  const libcPath = [...libs.entries()].find(([name, path]) => GLIBC_NAME.test(name) || GLIBC_NAME.test(basename(path)))?.[1];
  if (!libcPath) {
    throw new UnsupportedAllocatorError(
      `${command} does not link glibc's libc.so.6, so there is no glibc malloc to trace. ` +
        `If it uses another C library or allocator, name it with allocator: { path } (CLI: --allocator PATH).`,
    );
  }
  if (definesMalloc(program)) throw interposerError(command, program);
  for (const [name, path] of libs) {
    if (path === libcPath || LOADER_NAME.test(basename(name)) || LOADER_NAME.test(basename(path))) continue;
    if (definesMalloc(path)) throw interposerError(command, path);
  }
  return {
    exe,
    allocator: { path: realpathSync(libcPath), glibc: true },
    files: [program, info.interpreter, ...libs.values()],
  };
}

/** An environment as the NAME=value strings exec takes. */
export function environmentStrings(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
}
