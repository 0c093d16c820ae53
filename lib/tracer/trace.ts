// trace(): validate, check the kernel, then three steps, each owning what it starts:
//   resolve: find the process (or start the program held before exec) and its allocator;
//   plan:    where each allocator function's probes go;
//   attach:  load the BPF program and attach the probes, then release the held program.
// A failure after the program was started kills it and waits until it is reaped.
import { pauseIfDue } from '../util/cooperative.js';
import { fromNativeError, TargetExitedError } from '../errors.js';
import { checkLayout, leakFunctions } from '../native/layout.js';
import { launcherPath, loadNative, type NativeAddon, type NativeMessageHandler, type NativeTracer } from '../native/addon.js';
import { defaults, resolveOptions, type ResolvedOptions } from './options.js';
import { planProbesSliced, type ProbePlan } from '../probes/plan.js';
import { checkSupport } from '../target/support.js';
import { environmentStrings, processAlive, processExists, resolveCommandTarget, resolvePidAllocator } from '../target/resolve.js';
import { TracedProcess } from './traced-process.js';
import { LeakTracer, type TracerParts } from './leak-tracer.js';
import type { AllocatorFunction, TraceOptions } from '../types.js';

/** Start the program held before exec: our launcher waits on its fd 3 until release(). */
function startHeld(native: NativeAddon, o: Extract<ResolvedOptions, { kind: 'command' }>, exe: string): Promise<TracedProcess> {
  const launcher = launcherPath();
  return TracedProcess.start(native, {
    file: launcher,
    argv: [launcher, exe, o.command, ...o.args],
    env: environmentStrings(o.env),
    ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
    stdio: o.stdio,
  });
}

/** EBPF_LEAK_ATTACH=uprobe: one classic uprobe per function even where the kernel has multi-uprobe
 *  links (kernels >= 6.6), to compare the two or to get around a kernel whose links misbehave. */
function classicUprobesWanted(): boolean {
  return process.env.EBPF_LEAK_ATTACH === 'uprobe';
}

/** What trace() traces: the pid, its allocator, and for a `command` the program held before exec
 *  (whoever holds a ResolvedTarget owns that process: it must be released or discarded). */
interface ResolvedTarget {
  pid: number;
  allocatorPath: string;
  glibc: boolean;
  held?: TracedProcess;
  /** The program's files and the libraries the loader will map (`ld.so --list`). */
  unwindFiles?: string[];
}

async function resolveTarget(native: NativeAddon, o: ResolvedOptions): Promise<ResolvedTarget> {
  if (o.kind === 'pid') {
    const allocator = resolvePidAllocator(o.pid, o.allocator);
    return { pid: o.pid, allocatorPath: allocator.path, glibc: allocator.glibc };
  }
  const target = await resolveCommandTarget(o.command, o.env, o.cwd, o.allocator);
  const held = await startHeld(native, o, target.exe);
  return { pid: held.pid, allocatorPath: target.allocator.path, glibc: target.allocator.glibc, held, unwindFiles: target.files };
}

/** A held program that will never run: killed, and waited for until it is reaped. */
async function discardHeld(held: TracedProcess): Promise<void> {
  held.kill('SIGKILL');
  await held.exited;
}

interface AttachContext {
  native: NativeAddon;
  o: ResolvedOptions;
  target: ResolvedTarget;
  plan: ProbePlan;
  btfPath: string | undefined;
  classicUprobes: boolean;
}

/** Loads the BPF program and attaches the probes; the native tracer is closed if that fails. */
async function attachProbes({ native, o, target, plan, btfPath, classicUprobes }: AttachContext): Promise<LeakTracer> {
  const { pid, allocatorPath } = target;
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
      ...(btfPath ? { btfPath } : {}),
      probes: plan.probes,
      unwind: o.unwind,
      stackTotals: o.stackTotals,
      sampleEveryBytes: o.sampleEveryBytes,
      unwindFiles: target.unwindFiles ?? [],
      unwindTableRows: defaults.unwindTableRows,
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
    },
    info: {
      allocator: allocatorPath,
      probes: plan.attached,
      missing: plan.missing,
      functionOffsets: Object.fromEntries(
        plan.probes.map((p) => [leakFunctions[p.fn]!, p.returnOffset]),
      ) as Partial<Record<AllocatorFunction, number>>,
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
    ...(target.held ? { child: target.held } : {}),
  };
  tracer = new LeakTracer(parts);
  for (const message of pending) tracer.handleNativeMessage(...message);
  return tracer;
}

export async function trace(options: TraceOptions): Promise<LeakTracer> {
  const classicUprobes = classicUprobesWanted();
  const o = resolveOptions(options);
  const support = checkSupport();
  // A fresh process's first trace() reads the kernel's facts, loads the addon and decodes the
  // allocator: a few ms each, with the event loop served between them (lib/util/cooperative.ts).
  await pauseIfDue();
  const native = loadNative();
  checkLayout(native.layout);
  await pauseIfDue();

  const target = await resolveTarget(native, o);
  let tracer: LeakTracer | undefined;
  try {
    const plan = await planProbesSliced(target.allocatorPath, target.glibc, o.allocator, o.probePlacement);
    tracer = await attachProbes({ native, o, target, plan, btfPath: support.btfPath, classicUprobes });
  } finally {
    if (tracer === undefined && target.held) await discardHeld(target.held);
  }
  target.held?.release();
  return tracer;
}
