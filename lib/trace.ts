// trace(): validate, check the kernel, find the allocator, start or find the process, attach.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import { fromNativeError, TargetExitedError } from './errors.js';
import { checkLayout, leakFunctions } from './native-layout.js';
import { launcherPath, loadNative, type NativeMessageType, type NativeTracer } from './native.js';
import { resolveOptions, type ResolvedOptions } from './options.js';
import { planProbes } from './probes.js';
import { checkSupport } from './support.js';
import { processAlive, processExists, resolveCommandTarget, resolvePidAllocator } from './target.js';
import { LeakTracer, type TracerParts } from './tracer.js';
import type { AllocatorFunction, TraceOptions } from './types.js';

type ChildExit = { code: number | null; signal: NodeJS.Signals | null };

/** Start the program held before exec: our launcher waits on fd 3 until we say go. */
function spawnHeld(o: Extract<ResolvedOptions, { kind: 'command' }>, exe: string) {
  const child = spawn(launcherPath(), [exe, o.command, ...o.args], {
    cwd: o.cwd,
    env: o.env,
    stdio: [o.stdio, o.stdio, o.stdio, 'pipe'],
  });
  const exit = new Promise<ChildExit>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  return { child, exit, spawned };
}

function release(child: ChildProcess): void {
  const go = child.stdio[3] as Writable | null;
  go?.end('g');
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
  const native = loadNative();
  checkLayout(native.layout);

  let pid: number;
  let allocatorPath: string;
  let glibc: boolean;
  let held: ReturnType<typeof spawnHeld> | undefined;
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
    held = spawnHeld(o, target.exe);
    await held.spawned;
    pid = held.child.pid!;
  }
  const plan = planProbes(allocatorPath, glibc, o.allocator, o.probePlacement);

  let tracer: LeakTracer | undefined;
  const pending: Array<[NativeMessageType, ArrayBuffer]> = [];
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
    },
    (type, data) => {
      if (tracer) tracer.handleNativeMessage(type, data);
      else pending.push([type, data]);
    },
  );
  const attachStarted = performance.now();
  let attachMode: 'uprobe_multi' | 'uprobe';
  try {
    ({ mode: attachMode } = await nativeTracer.attach());
  } catch (error) {
    nativeTracer.close();
    held?.child.kill('SIGKILL');
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
    },
    ...(held ? { child: held.child, childExit: held.exit } : {}),
  };
  tracer = new LeakTracer(parts);
  for (const [type, data] of pending) tracer.handleNativeMessage(type, data);
  if (held) release(held.child);
  return tracer;
}
