// trace(): validate, check the kernel, find the allocator, start or find the process, attach.
import { readFileSync, statSync } from 'node:fs';
import { pauseIfDue } from '../util/cooperative.js';
import { splitCommandLine } from '../native/process-messages.js';
import { fromNativeError, PtraceError, TargetExitedError } from '../errors.js';
import { checkLayout, leakFunctions } from '../native/layout.js';
import { launcherPath, loadNative, type NativeAddon, type NativeMessageHandler, type NativeTracer } from '../native/addon.js';
import { defaults, resolveOptions, type ResolvedOptions } from './options.js';
import { planProbesSliced } from '../probes/plan.js';
import { checkSupport } from '../target/support.js';
import { environmentStrings, type ResolvedAllocator, processAlive, processExists, resolveCommandTarget, resolvePidAllocator } from '../target/resolve.js';
import { TracedProcess } from './traced-process.js';
import { LeakTracer, type TracerParts } from './leak-tracer.js';
import type { AllocatorFunction, TraceOptions } from '../types.js';

const launcherUserVariable = 'EBPF_LEAK_EXEC_USER';

function fileInode(path: string): number {
  try {
    return statSync(path).ino;
  } catch {
    return 0;
  }
}

/** Start the program held before exec: our launcher waits on its fd 3 until release(). */
function startHeld(native: NativeAddon, o: Extract<ResolvedOptions, { kind: 'command' }>, exe: string): Promise<TracedProcess> {
  const launcher = launcherPath();
  // The addon looks the user up and tells the launcher, which switches to it right before exec
  // (native/process/run_as_user.h, native/process/launcher.c); a variable of that name from elsewhere never does.
  const env = { ...o.env, [launcherUserVariable]: undefined };
  return TracedProcess.start(native, {
    file: launcher,
    argv: [launcher, exe, o.command, ...o.args],
    env: environmentStrings(env),
    ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
    stdio: o.stdio,
    ...(o.user ? { user: o.user } : {}),
  });
}

function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

function commandLineOf(pid: number): string[] {
  try {
    return splitCommandLine(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return [];
  }
}

/** EBPF_LEAK_ATTACH=uprobe: one classic uprobe per function even where the kernel has multi-uprobe
 *  links (kernels >= 6.6), to compare the two or to get around a kernel whose links misbehave. */
function classicUprobesWanted(): boolean {
  return process.env.EBPF_LEAK_ATTACH === 'uprobe';
}

export async function trace(options: TraceOptions): Promise<LeakTracer> {
  // Every way out but success ends the launcher this started: held, it would wait on its fd 3
  // until this process exits.
  let started: TracedProcess | undefined;
  try {
    return await traceOrThrow(options, (held) => (started = held));
  } catch (error) {
    started?.kill('SIGKILL');
    throw error;
  }
}

async function traceOrThrow(options: TraceOptions, onStarted: (held: TracedProcess) => void): Promise<LeakTracer> {
  const classicUprobes = classicUprobesWanted();
  const o = resolveOptions(options);
  const support = checkSupport();
  // A fresh process's first trace() reads the kernel's facts, loads the addon and decodes the
  // allocator: a few ms each, with the event loop served between them (lib/util/cooperative.ts).
  await pauseIfDue();
  const native = loadNative();
  checkLayout(native.layout);
  await pauseIfDue();

  let pid: number;
  let allocatorPath: string;
  let glibc: boolean;
  let resolved: ResolvedAllocator;
  let held: TracedProcess | undefined;
  let unwindFiles: string[] | undefined;
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
    pid = o.pid;
    allocatorPath = allocator.path;
    glibc = allocator.glibc;
    resolved = allocator;
  } else {
    const target = await resolveCommandTarget(o.command, o.env, o.cwd, o.allocator);
    allocatorPath = target.allocator.path;
    glibc = target.allocator.glibc;
    resolved = target.allocator;
    unwindFiles = target.files;
    held = await startHeld(native, o, target.exe);
    onStarted(held);
    pid = held.pid;
  }
  // A process tracing itself (the in-process harness) is Node.js, whose V8 calls operator new and
  // delete all the time: probing them would slow every measurement for no difference in what
  // grows (their blocks are counted through malloc, once, as before C++'s operators were probed).
  const selfTrace = o.kind === 'pid' && o.pid === process.pid;
  const plan = await planProbesSliced(allocatorPath, glibc, o.allocator, o.probePlacement, selfTrace ? undefined : resolved.cxxRuntime);
  // Run mode sees every allocation since exec: a release of anything else is a heap error. Not
  // so when sampling (most blocks are not recorded), nor across forks: the queue of released
  // blocks is keyed by address alone, which a fork's child shares with its parent.
  const heapErrors = o.kind === 'command' && o.sampleEveryBytes === 0 && o.followForks !== true;
  // A command is followed with ptrace through its execs (and children are counted); a running
  // process only when its children are to be traced (its execs are seen without ptrace).
  const supervised = o.kind === 'command' || o.followForks === true;

  // Tracing this very process (measure() in a test): the tracer's own threads and allocations are
  // kept out, in the kernel and in the reports. Decided here only.
  const ownProcess = pid === process.pid;
  let tracer: LeakTracer | undefined;
  const pending: Parameters<NativeMessageHandler>[] = [];
  const nativeTracer: NativeTracer = new native.Tracer(
    {
      pid,
      waitForExec: o.kind === 'command',
      classicUprobes,
      maxAllocations: o.maxAllocations,
      events: o.events,
      eventBufferBytes: o.eventBufferBytes,
      stacks: o.stacks,
      stackDepth: o.stackDepth,
      stackMapEntries: defaults.stackMapEntries,
      pageSize: defaults.pageSize,
      ignoreOwnThreads: ownProcess,
      ...(support.btfPath ? { btfPath: support.btfPath } : {}),
      probes: plan.probes,
      unwind: o.unwind,
      stackTotals: o.stackTotals,
      sampleEveryBytes: o.sampleEveryBytes,
      unwindFiles: unwindFiles ?? [],
      unwindTableRows: defaults.unwindTableRows,
      heapErrors,
      freedBlocks: defaults.freedBlocks,
      allocatorInode: fileInode(allocatorPath),
      supervise: supervised,
      followForks: o.followForks === true,
    },
    (...message) => {
      if (tracer) tracer.handleNativeMessage(...message);
      else pending.push(message);
    },
  );
  const attachStarted = performance.now();
  let attachMode: 'uprobe_multi' | 'uprobe';
  try {
    ({ mode: attachMode } = await nativeTracer.attach());
  } catch (error) {
    nativeTracer.close();
    held?.kill('SIGKILL');
    if (o.kind === 'pid' && !processExists(pid)) {
      throw new TargetExitedError(`process ${pid} exited before the probes were attached.`, { cause: error });
    }
    throw fromNativeError(error, `cannot trace ${o.kind === 'pid' ? `process ${pid}` : o.command}`);
  }
  if (o.kind === 'pid' && !processAlive(pid)) {
    nativeTracer.close();
    throw new TargetExitedError(`process ${pid} exited before the probes were attached: nothing left to trace.`);
  }
  const parts: TracerParts = {
    native: nativeTracer,
    pid,
    ownProcess,
    target: {
      pid,
      ...(o.kind === 'command' ? { command: o.command, args: o.args } : {}),
      allocator: allocatorPath,
      allocatorName: resolved.name,
    },
    info: {
      allocator: allocatorPath,
      probes: plan.attached,
      missing: plan.missing,
      functionOffsets: Object.fromEntries(
        plan.probes.map((p) => [leakFunctions[p.fn]!, p.returnOffset]),
      ) as Partial<Record<AllocatorFunction, number>>,
      sites: plan.sites,
      overloads: plan.overloads,
      ambiguousPairs: plan.ambiguousPairs,
      heapErrors,
      aliases: plan.aliases,
      placements: plan.placements,
      maxAllocations: o.maxAllocations,
      events: o.events,
      stacks: o.stacks,
      debugDirs: o.debugDirs,
      unwind: nativeTracer.unwindStats()?.mode ?? o.unwind,
      sampleEveryBytes: o.sampleEveryBytes,
      attachMode,
      attachMs: Math.round(performance.now() - attachStarted),
    },
    ...(held ? { child: held } : {}),
    countersBytes: native.layout.counters,
    // Every target but this process itself: a running one's execs are seen without ptrace.
    ...(!ownProcess
      ? {
          supervision: {
            followForks: o.followForks === true,
            supervised,
            probePlacement: o.probePlacement,
            commandLine: o.kind === 'command' ? [o.command, ...o.args] : commandLineOf(pid),
          },
        }
      : {}),
  };
  tracer = new LeakTracer(parts);
  for (const message of pending) tracer.handleNativeMessage(...message);
  held?.release();
  return tracer;
}
