// trace(): validate the options, check the kernel and load the addon, then four stages, each
// owning what it starts until the next takes it over: resolve the target (a command is started,
// held before exec), plan the probes, attach them, and run (the LeakTracer, then the program).
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { pauseIfDue } from '../util/cooperative.js';
import { splitCommandLine } from '../native/process-messages.js';
import { fromNativeError, TargetExitedError } from '../errors.js';
import { checkLayout, leakFunctions } from '../native/layout.js';
import { loadNative, type NativeAddon, type NativeMessageHandler, type NativeTracer } from '../native/addon.js';
import { defaults, resolveOptions, type ResolvedOptions } from './options.js';
import { loaderProbe } from '../probes/loader.js';
import { planProbesSliced, type ProbePlan } from '../probes/plan.js';
import { checkSupport } from '../target/support.js';
import { warmSymbols } from '../report/symbolize.js';
import { processAlive, processExists } from '../target/resolve.js';
import type { TracedProcess } from './traced-process.js';
import { LeakTracer, type TracerParts } from './leak-tracer.js';
import { parentOf, resolveTarget, type TraceTarget } from './target.js';
import type { AllocatorFunction, TraceOptions } from '../types.js';

function fileInode(path: string): number {
  try {
    return statSync(path).ino;
  } catch {
    return 0;
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

  const target = await resolveTarget(native, o, onStarted);
  const planned = await planTrace(o, target);
  // A command's stacks run through its program, allocator and C++ runtime: their debug files are
  // read while the probes load (one CPU verifies, another is free), not while the report waits.
  if (o.kind === 'command') void warmSymbols(symbolFiles(target), o.debugDirs, native);
  const attached = await attachProbes(native, support, o, target, planned, classicUprobes);
  return run(native, o, target, planned, attached);
}

/** The files of a command's stacks, by the real paths its mappings will show. */
function symbolFiles(target: TraceTarget): string[] {
  const files = [target.unwindFiles?.[0], target.allocatorPath, target.resolved.cxxRuntime];
  return files.flatMap((f) => {
    try {
      return f ? [realpathSync(f)] : [];
    } catch {
      return [];
    }
  });
}

/** What the probes are and what the kernel side is asked to do. */
interface TracePlan {
  plan: ProbePlan;
  heapErrors: boolean;
  supervised: boolean;
}

async function planTrace(o: ResolvedOptions, target: TraceTarget): Promise<TracePlan> {
  const { allocatorPath, glibc, resolved } = target;
  // A process tracing itself (the in-process harness) is Node.js, whose V8 calls operator new and
  // delete all the time: probing them would slow every measurement for no difference in what
  // grows (their blocks are counted through malloc, once, as before C++'s operators were probed).
  const selfTrace = o.kind === 'pid' && o.pid === process.pid;
  const plan = await planProbesSliced(allocatorPath, glibc, o.allocator, o.probePlacement, selfTrace ? undefined : resolved.cxxRuntime, o.unwind);
  // Run mode sees every allocation since exec: a release of anything else is a heap error. Not
  // so when sampling (most blocks are not recorded). Following forks, a child that runs in its
  // parent's address space (vfork, posix_spawn) allocates and frees as its parent until it execs
  // (native/tracer/trace_session_processes.cc), so the parent's later frees of those blocks are known.
  const heapErrors = o.kind === 'command' && o.sampleEveryBytes === 0;
  // A command is followed with ptrace through its execs (and children are counted); a running
  // process only when its children are to be traced (its execs are seen without ptrace).
  const supervised = o.kind === 'command' || o.followForks === true;
  return { plan, heapErrors, supervised };
}

/** The attached native tracer, and the messages it sent before run() had a LeakTracer for them. */
interface Attached {
  nativeTracer: NativeTracer;
  attachMode: 'uprobe_multi' | 'uprobe';
  attachStarted: number;
  ownProcess: boolean;
  /** Hands the tracer's messages to `tracer`, those sent so far first. */
  deliverTo(tracer: LeakTracer): void;
}

/** The loader's probe of a supervised trace (lib/probes/loader.ts), as the addon's config. */
function loaderConfig(supervised: boolean, files: readonly string[], pid: number): { loaderPath?: string; loaderOffset?: number } {
  const probe = supervised ? loaderProbe(files, pid) : undefined;
  return probe ? { loaderPath: probe.path, loaderOffset: probe.offset } : {};
}

async function attachProbes(
  native: NativeAddon,
  support: ReturnType<typeof checkSupport>,
  o: ResolvedOptions,
  target: TraceTarget,
  planned: TracePlan,
  classicUprobes: boolean,
): Promise<Attached> {
  const { pid, allocatorPath, held, unwindFiles, glibc } = target;
  const { plan, heapErrors, supervised } = planned;
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
      releaseStacks: o.keepStacktraces === 'alloc-and-free',
      freedBlocks: defaults.freedBlocks,
      allocatorInode: fileInode(allocatorPath),
      supervise: supervised,
      ...loaderConfig(supervised, unwindFiles ?? [], pid),
      followForks: o.followForks === true,
      // The scan runs in a ptrace stop at a process's exit: a command's, each traced process's
      // following forks, and an attached one's (held by ptrace for that alone, when it can be).
      scanAtExit: o.leakKinds && !ownProcess,
      // A child of this process: its ptrace stops would be taken by this process's own waitpid()
      // for it (libuv's), and the process left stopped.
      ...(o.kind === 'pid' && !supervised && parentOf(pid) === process.pid
        ? {
            holdRefused:
              'it is a child of this process, whose child_process handling waits for it: start it through another ' +
              'process (e.g. `setsid -f PROGRAM`), or trace it as a command',
          }
        : {}),
      glibc,
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
  return {
    nativeTracer,
    attachMode,
    attachStarted,
    ownProcess,
    deliverTo(t) {
      tracer = t;
      for (const message of pending) t.handleNativeMessage(...message);
    },
  };
}

/** The LeakTracer over the attached probes; then a command's program runs. */
function run(native: NativeAddon, o: ResolvedOptions, target: TraceTarget, planned: TracePlan, attached: Attached): LeakTracer {
  const { pid, allocatorPath, resolved, held } = target;
  const { plan, heapErrors, supervised } = planned;
  const { nativeTracer, attachMode, attachStarted, ownProcess } = attached;
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
      ...(target.preload !== undefined ? { preload: target.preload } : {}),
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
      keepStacktraces: o.keepStacktraces,
      debugDirs: o.debugDirs,
      unwind: nativeTracer.unwindStats()?.mode ?? o.unwind,
      sampleEveryBytes: o.sampleEveryBytes,
      attachMode,
      attachMs: Math.round(performance.now() - attachStarted),
      leakKinds: o.leakKinds,
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
            unwind: o.unwind,
            // The addon loads that program only for a first plan that has such probes.
            afterCalls: plan.probes.some((p) => p.afterCall === true),
            commandLine: o.kind === 'command' ? [o.command, ...o.args] : commandLineOf(pid),
          },
        }
      : {}),
  };
  const tracer = new LeakTracer(parts);
  attached.deliverTo(tracer);
  held?.release();
  return tracer;
}
