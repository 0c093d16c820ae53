// trace()'s first stage: the process to trace and the allocator it uses. A command is started here,
// held before exec until the probes are attached; a running process is found and checked.
import { readFileSync, realpathSync } from 'node:fs';
import { InvalidOptionError, PtraceError } from '../errors.js';
import { launcherPath, type NativeAddon } from '../native/addon.js';
import { preloadLibrary } from './preload.js';
import { environmentStrings, type ResolvedAllocator, resolveCommandTarget, resolvePidAllocator } from '../target/resolve.js';
import type { ResolvedOptions } from './options.js';
import { TracedProcess } from './traced-process.js';

const launcherUserVariable = 'EBPF_LEAK_EXEC_USER';

/** What trace() traces: the process, its allocator and, for a command, the held program. */
export interface TraceTarget {
  pid: number;
  allocatorPath: string;
  glibc: boolean;
  resolved: ResolvedAllocator;
  /** A command's program, held before exec until release(). */
  held?: TracedProcess;
  /** A command's files whose unwind tables are loaded before it runs. */
  unwindFiles?: string[];
  /** The library of entry points a `preload` command got in LD_PRELOAD. */
  preload?: string;
}

/** Start the program held before exec: our launcher waits on its fd 3 until release(). */
function startHeld(
  native: NativeAddon,
  o: Extract<ResolvedOptions, { kind: 'command' }>,
  exe: string,
  programEnv: NodeJS.ProcessEnv,
): Promise<TracedProcess> {
  const launcher = launcherPath();
  // The addon looks the user up and tells the launcher, which switches to it right before exec
  // (native/process/run_as_user.h, native/process/launcher.c); a variable of that name from elsewhere never does.
  const env = { ...programEnv, [launcherUserVariable]: undefined };
  return TracedProcess.start(native, {
    file: launcher,
    argv: [launcher, exe, o.command, ...o.args],
    env: environmentStrings(env),
    ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
    stdio: o.stdio,
    ...(o.user ? { user: o.user } : {}),
  });
}

export function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

/** The target of `o`. A command's program is handed to `onStarted` as soon as it exists, so that
 *  a later failure can end it. */
export async function resolveTarget(
  native: NativeAddon,
  o: ResolvedOptions,
  onStarted: (held: TracedProcess) => void,
): Promise<TraceTarget> {
  if (o.kind === 'pid') {
    if (o.followForks && parentOf(o.pid) === process.pid) {
      // Its stops under ptrace would be reported to this process's own waitpid() for it (libuv's,
      // child_process's), which takes them: the process would stay stopped.
      throw new PtraceError(
        `cannot follow the forks of process ${o.pid}: it is a child of this process, whose child_process ` +
          `handling waits for it. Start it through another process (e.g. \`setsid -f PROGRAM\`), or ` +
          `trace it as a command: trace({ command, followForks: true }).`,
      );
    }
    const allocator = resolvePidAllocator(o.pid, o.allocator);
    return { pid: o.pid, allocatorPath: allocator.path, glibc: allocator.glibc, resolved: allocator };
  }
  let target = await resolveCommandTarget(o.command, o.env, o.cwd, o.allocator);
  let env = o.env;
  let preload: string | undefined;
  if (o.preload) {
    preload = preloadLibrary(o, target);
    env = { ...o.env, LD_PRELOAD: o.env.LD_PRELOAD ? `${preload}:${o.env.LD_PRELOAD}` : preload };
    target = await resolveCommandTarget(o.command, env, o.cwd, undefined);
    if (target.allocator.path !== realpathSync(preload)) {
      throw new InvalidOptionError(
        `options.preload: ${o.command} would not allocate through ${preload} with it in LD_PRELOAD ` +
          `(the loader binds malloc to ${target.allocator.path}). Leave preload off for this program.`,
      );
    }
  }
  const held = await startHeld(native, o, target.exe, env);
  onStarted(held);
  return {
    pid: held.pid,
    allocatorPath: target.allocator.path,
    glibc: target.allocator.glibc,
    resolved: target.allocator,
    held,
    unwindFiles: target.files,
    ...(preload !== undefined ? { preload } : {}),
  };
}
