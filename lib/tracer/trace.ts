// trace(): validate, check the kernel, find the allocator, start or find the process, attach.
import { pauseIfDue } from '../util/cooperative.js';
import { fromNativeError, TargetExitedError } from '../errors.js';
import { checkLayout, leakFunctions } from '../native/layout.js';
import { launcherPath, loadNative, type NativeAddon, type NativeMessageHandler, type NativeTracer } from '../native/addon.js';
import { resolveOptions, type ResolvedOptions } from './options.js';
import { planProbesSliced } from '../probes/plan.js';
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

  let pid: number;
  let allocatorPath: string;
  let glibc: boolean;
  let held: TracedProcess | undefined;
  let unwindFiles: string[] | undefined;
  if (o.kind === 'pid') {
    const allocator = resolvePidAllocator(o.pid, o.allocator);
    pid = o.pid;
    allocatorPath = allocator.path;
    glibc = allocator.glibc;
  } else {
    const target = await resolveCommandTarget(o.command, o.env, o.cwd, o.allocator);
    allocatorPath = target.allocator.path;
    glibc = target.allocator.glibc;
    unwindFiles = target.files;
    held = await startHeld(native, o, target.exe);
    pid = held.pid;
  }
  const plan = await planProbesSliced(allocatorPath, glibc, o.allocator, o.probePlacement);

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
      stackMapEntries: 65536,
      pageSize: 4096,
      ...(support.btfPath ? { btfPath: support.btfPath } : {}),
      probes: plan.probes,
      unwind: o.unwind,
      stackTotals: o.stackTotals,
      sampleEveryBytes: o.sampleEveryBytes,
      ...(unwindFiles ? { unwindFiles } : {}),
      scanAtExit: o.kind === 'command' && o.leakKinds,
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
  const parts: TracerParts = {
    native: nativeTracer,
    pid,
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
      leakKinds: o.leakKinds,
    },
    ...(held ? { child: held } : {}),
  };
  tracer = new LeakTracer(parts);
  for (const message of pending) tracer.handleNativeMessage(...message);
  held?.release();
  return tracer;
}
