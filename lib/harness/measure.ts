// Native leaks of a function, measured inside this very process: trace ourselves, run the function
// many times in numbered windows, collect garbage until nothing changes, and look at what is still
// allocated from those windows, call site by call site.
//
// Scoping (what counts as "made by the function"):
// - Windows: before each iteration the tracer's mark is advanced (`tracer.mark()`), and the BPF
//   program stores the current mark in every block it records. A block belongs to iteration i iff
//   its mark is the i-th iteration's: exact, no timestamps involved. Warm-up runs and everything
//   after the last iteration (garbage collection, the report itself) have other marks.
// - Threads: by default only blocks allocated by the thread that calls measure() (the JS thread)
//   count; others (libuv workers, threads of other libraries, V8's helpers) are counted apart as
//   `excluded.otherThreads`. `threads: 'all'` takes every thread, e.g. for an addon that allocates
//   in an AsyncWorker.
// - Modules: `module: /my_addon\.node$/` keeps only blocks whose stack passes through that file.
// - The tracer's own allocations are never recorded (see native/tracer/trace_session.h, ThreadIgnore) or, on the
//   JS thread, dropped by module (lib/tracer/leak-tracer.ts).
//
// Growth, not noise: a one-time cache or a lazily grown buffer leaves blocks in one or two
// iterations; a leak leaves them all along. The iterations are cut into B = min(10, N) equal
// buckets; a call site is "growing" when blocks it left fall in at least half the buckets,
// including one in the first half and one in the second. Only growing sites are leaks;
// `bytesPerIteration` is the site's bytes from the measured iterations divided by N.
//
// V8's global handles: V8 allocates the storage for global handles (v8::Global, Persistent,
// napi_ref) in blocks of 256, reuses freed handles and never frees a block. A correct addon that
// makes short-lived handles leaves blocks from whichever iterations the pool grew in, and they look
// like growth. A site whose native part is that pool is a leak only when the live global handles
// (v8.getHeapStatistics().used_global_handles_size) grew over the iterations by at least one
// handle per four iterations, which a handle leaked per call exceeds and a pool reused does not;
// otherwise it is reported with the one-time sites, with the reason. Live handles that grew that
// much without any block allocated (they fit in free handles) are a leak site of their own, with
// no stack.
//
// Call sites: stacks are grouped by their native part, up to the first frame that runs
// JavaScript (JIT code, or V8's `Builtins_*` trampolines): the same C++ call reached from
// interpreted and from optimized JavaScript is one site, not two with half the blocks each.
import { readlinkSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { collectGarbage, getGc } from './gc.js';
import { defaultSuppressions } from '../suppressions/defaults.js';
import type { Counters } from '../native/layout.js';
import { stackPassesThrough, type LeakBlock, type ModuleFilter, type ScopedLeakReport, type ThreadFilter } from '../report/scope.js';
import {
  applySuppressions,
  resolveSuppressions,
  type LeakKind,
  type SuppressionHit,
  type SuppressionInput,
  type SuppressionRule,
} from '../suppressions/rules.js';
import { trace } from '../tracer/trace.js';
import type { LeakTracer } from '../tracer/leak-tracer.js';
import type { StackFrame } from '../types.js';
import { InvalidOptionError, StateError } from '../errors.js';
import { inconclusiveReasons } from '../report/checked.js';

export interface MeasureOptions {
  /** Measured runs of the function. Default 100. Growth needs a few (10 or more). */
  iterations?: number;
  /** Runs before measuring, so one-time initialisation happens outside the windows. Default
   *  min(10, iterations). */
  warmup?: number;
  /** Whose allocations count: the calling thread (default), every thread, or tids / a
   *  predicate. */
  threads?: 'current' | 'all' | ThreadFilter;
  /** Only blocks whose stack passes through a matching module (file path), e.g. /my_addon\.node$/. */
  module?: ModuleFilter;
  /** Suppression files (valgrind .supp or LSan), text, or parsed rules. */
  suppressions?: SuppressionInput | readonly SuppressionInput[];
  /** Apply the shipped rules for one-time glibc/libstdc++/libuv/V8 allocations. Default true. */
  defaultSuppressions?: boolean;
  /** See lib/suppressions/rules.ts (match-leak-kinds). */
  assumeLeakKinds?: readonly LeakKind[];
  /** Most garbage-collection rounds before giving up on a stable outstanding set. Default 10. */
  maxSettleRounds?: number;
  /** An attached tracer of this process to use (it is left running); default: attach one for
   *  this measurement and stop it after. */
  tracer?: LeakTracer;
  /** Frames per stack when this call attaches the tracer. Default 32. */
  stackDepth?: number;
  /** Address-map size when this call attaches the tracer. Default 1,000,000. */
  maxAllocations?: number;
}

export interface Amount {
  bytes: number;
  blocks: number;
}

/** One native call site that still holds blocks from the measured iterations. */
export interface LeakSite {
  /** The site's outstanding bytes from the measured iterations, divided by their number. */
  bytesPerIteration: number;
  blocksPerIteration: number;
  bytes: number;
  blocks: number;
  largestBlock: number;
  /** Iterations that left at least one block here. */
  iterationsWithBlocks: number;
  /** Grows with the iteration count (see the top of lib/harness/measure.ts): a leak. */
  growing: boolean;
  /** The site's largest stack, innermost first (the allocation function on top). */
  stack: StackFrame[];
  /** Distinct full stacks merged into the site (e.g. from interpreted and optimized callers). */
  stacks: number;
  /** Why a site that grew is not counted as a leak (V8's global-handle blocks, see the top of
   *  lib/measure.ts). */
  reason?: string;
}

export interface NativeLeakReport {
  version: 1;
  iterations: number;
  warmup: number;
  /** Sum of the leaks' bytesPerIteration. */
  bytesPerIteration: number;
  /** Growing sites, most bytes per iteration first. */
  leaks: LeakSite[];
  /** Sites that hold blocks from the iterations but did not grow (caches, lazy initialisation):
   *  reported, never a failure. */
  oneTime: LeakSite[];
  /** What suppression rules removed, per rule. */
  suppressed: SuppressionHit[];
  /** Blocks from the iterations that were left out by the thread and module filters. */
  excluded: { otherThreads: Amount; otherModules: Amount };
  /** Why the answer cannot be trusted; empty when it can. */
  inconclusive: string[];
  /** Bytes of live V8 global handles after the iterations minus before (after garbage
   *  collection both times): what decides whether global-handle blocks are a leak. */
  globalHandlesGrowth: number;
  settle: { rounds: number; stable: boolean };
  /** Marks of the first iteration and of the end of the last (see tracer.mark()). */
  marks: { first: number; end: number };
  durationMs: number;
}

export type MeasuredFunction = (iteration: number) => unknown;

/** Tracers inside a measure() call. */
const measuring = new WeakSet<LeakTracer>();

/** This thread's kernel tid (the main thread's is the pid; a worker's is not). */
export function currentThreadId(): number {
  try {
    return Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return process.pid;
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

function threadFilterOf(option: MeasureOptions['threads']): ThreadFilter | undefined {
  if (option === undefined || option === 'current') return [currentThreadId()];
  if (option === 'all') return undefined;
  return option;
}

function positiveInteger(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new InvalidOptionError(`ebpf-leak: options.${name} must be an integer >= ${min} (got ${String(value)})`);
  }
  return value;
}

/** The frames of a stack up to the first one that runs JavaScript. */
function nativePart(stack: readonly StackFrame[]): readonly StackFrame[] {
  const end = stack.findIndex(
    (f) => f.module === undefined || f.module === '[perf-map]' || (f.symbol !== undefined && f.symbol.startsWith('Builtins_')),
  );
  return end === -1 ? stack : stack.slice(0, end);
}

function siteKey(stack: readonly StackFrame[]): string {
  return nativePart(stack)
    .map((f) => `${f.module ?? ''}+${f.offset ?? f.address}${f.inlined ? `:${f.symbol ?? ''}` : ''}`)
    .join('|');
}

/** V8's allocation of global-handle blocks: the pool of v8::Global / Persistent / napi_ref
 *  storage, reused and never freed. */
const globalHandlePool = /^v8::internal::(GlobalHandles|TracedHandles|EternalHandles)::|^v8::internal::GlobalHandles::NodeSpace|^v8::internal::NodeSpace</;

function isGlobalHandlePool(stack: readonly StackFrame[]): boolean {
  return nativePart(stack).some((f) => f.symbol !== undefined && globalHandlePool.test(f.symbol));
}

/** Bytes of one global handle in V8's pool: its accounting moves by this much per handle. */
export const globalHandleBytes = 32;

/** Whether live global handles grew enough over `iterations` to make the pool's growth a leak:
 *  one handle per four iterations (see the top of this file). */
export function globalHandlesLeak(growthBytes: number, iterations: number): boolean {
  return growthBytes >= Math.max(1, iterations / 4) * globalHandleBytes;
}

/** A leak of global handles that allocated nothing: the handles fit in V8's free ones. */
function globalHandlesSite(growthBytes: number, iterations: number): LeakSite {
  const handles = Math.round(growthBytes / globalHandleBytes);
  return {
    bytesPerIteration: growthBytes / iterations,
    blocksPerIteration: 0,
    bytes: growthBytes,
    blocks: 0,
    largestBlock: 0,
    iterationsWithBlocks: iterations,
    growing: true,
    stack: [],
    stacks: 0,
    reason:
      `V8's live global handles grew by ${handles} (${growthBytes} bytes) over ${iterations} iterations, in handle ` +
      `storage V8 already had, so no allocation stack shows them: something makes a v8::Global, Persistent or ` +
      `napi_ref (an ObjectWrap, a callback kept) per call and never resets or deletes it`,
  };
}

/** The growth rule (see the top of this file), on the iterations that left blocks. */
export function isGrowing(iterationsWithBlocks: ReadonlySet<number>, iterations: number): boolean {
  if (iterationsWithBlocks.size === 0) return false;
  if (iterations < 2) return true; // nothing to compare: anything left counts
  const buckets = Math.min(10, iterations);
  const present = new Set<number>();
  for (const i of iterationsWithBlocks) present.add(Math.min(buckets - 1, Math.floor((i * buckets) / iterations)));
  const half = buckets / 2;
  const first = [...present].some((b) => b < half);
  const second = [...present].some((b) => b >= half);
  return first && second && present.size >= Math.max(2, Math.ceil(half));
}

interface Analysis {
  leaks: LeakSite[];
  oneTime: LeakSite[];
  suppressed: SuppressionHit[];
  excluded: NativeLeakReport['excluded'];
  noStack: Amount;
}

/** Sites, growth and suppressions of the window report `report`, whose iteration i has mark
 *  `first + i`. Exported for tests. */
export function analyzeWindow(
  report: ScopedLeakReport,
  first: number,
  iterations: number,
  filters: {
    threads?: ThreadFilter;
    module?: ModuleFilter;
    rules: readonly SuppressionRule[];
    assumeLeakKinds?: readonly LeakKind[];
    /** Live global-handle bytes after minus before; undefined: unknown, every site by growth. */
    globalHandlesGrowth?: number;
  },
): Analysis {
  const keepThread =
    filters.threads === undefined
      ? () => true
      : typeof filters.threads === 'function'
        ? filters.threads
        : ((set) => (tid: number) => set.has(tid))(new Set(filters.threads));
  const excluded = { otherThreads: { bytes: 0, blocks: 0 }, otherModules: { bytes: 0, blocks: 0 } };
  const noStack = { bytes: 0, blocks: 0 };
  const byStack = new Map<number, LeakBlock[]>();
  const moduleHit = new Map<number, boolean>();
  for (const b of report.blocks()) {
    const iteration = b.mark - first;
    if (iteration < 0 || iteration >= iterations) continue;
    if (!keepThread(b.tid)) {
      excluded.otherThreads.bytes += b.size;
      excluded.otherThreads.blocks++;
      continue;
    }
    if (b.stackId < 0) {
      noStack.bytes += b.size;
      noStack.blocks++;
      continue;
    }
    if (filters.module !== undefined) {
      let hit = moduleHit.get(b.stackId);
      if (hit === undefined) moduleHit.set(b.stackId, (hit = stackPassesThrough(report.stackOf(b.stackId), filters.module)));
      if (!hit) {
        excluded.otherModules.bytes += b.size;
        excluded.otherModules.blocks++;
        continue;
      }
    }
    let list = byStack.get(b.stackId);
    if (!list) byStack.set(b.stackId, (list = []));
    list.push(b);
  }

  // Suppressions per stack, then sites from what is left.
  const groups = [...byStack].map(([stackId, blocks]) => ({
    stackId,
    blocks: blocks.length,
    bytes: blocks.reduce((n, b) => n + b.size, 0),
    stack: report.stackOf(stackId),
    list: blocks,
  }));
  const { kept, suppressed } = applySuppressions(
    groups,
    filters.rules,
    filters.assumeLeakKinds ? { assumeLeakKinds: filters.assumeLeakKinds } : {},
  );

  interface SiteAcc {
    bytes: number;
    blocks: number;
    largest: number;
    iterations: Set<number>;
    best: { bytes: number; stack: StackFrame[] };
    stacks: number;
  }
  const sites = new Map<string, SiteAcc>();
  for (const g of kept) {
    const key = siteKey(g.stack);
    let s = sites.get(key);
    if (!s) sites.set(key, (s = { bytes: 0, blocks: 0, largest: 0, iterations: new Set(), best: { bytes: -1, stack: [] }, stacks: 0 }));
    s.bytes += g.bytes;
    s.blocks += g.blocks;
    s.stacks += 1;
    for (const b of g.list) {
      s.iterations.add(b.mark - first);
      if (b.size > s.largest) s.largest = b.size;
    }
    if (g.bytes > s.best.bytes) s.best = { bytes: g.bytes, stack: g.stack };
  }
  const growth = filters.globalHandlesGrowth;
  const handlesLeak = growth === undefined || globalHandlesLeak(growth, iterations);
  const all: LeakSite[] = [...sites.values()].map((s) => {
    const site: LeakSite = {
      bytesPerIteration: s.bytes / iterations,
      blocksPerIteration: s.blocks / iterations,
      bytes: s.bytes,
      blocks: s.blocks,
      largestBlock: s.largest,
      iterationsWithBlocks: s.iterations.size,
      growing: isGrowing(s.iterations, iterations),
      stack: s.best.stack,
      stacks: s.stacks,
    };
    if (site.growing && !handlesLeak && isGlobalHandlePool(site.stack)) {
      site.growing = false;
      site.reason =
        `V8's global-handle blocks, allocated as more handles were alive at once and reused after: the live global ` +
        `handles grew by ${growth} bytes over ${iterations} iterations (a leak of one handle per call grows them by ` +
        `${globalHandleBytes} bytes per iteration)`;
    }
    return site;
  });
  all.sort((a, b) => b.bytes - a.bytes || b.blocks - a.blocks);
  return {
    leaks: all.filter((s) => s.growing),
    oneTime: all.filter((s) => !s.growing),
    suppressed,
    excluded,
    noStack,
  };
}

function delta(after: Counters, before: Counters, field: keyof Counters): number {
  return after[field] - before[field];
}

/**
 * Runs `fn` `warmup` times, then `iterations` times in numbered windows, settles garbage
 * collection, and reports which native call sites still hold memory from those iterations and
 * whether it grows with the iteration count. Never throws for a leak (see leakCheck); throws when
 * this process cannot trace (PermissionError names the capabilities) or when `fn` throws.
 */
export async function measure(fn: MeasuredFunction, options: MeasureOptions = {}): Promise<NativeLeakReport> {
  if (typeof fn !== 'function') throw new InvalidOptionError('ebpf-leak: measure(fn): fn must be a function');
  const iterations = positiveInteger('iterations', options.iterations ?? 100, 1);
  const warmup = positiveInteger('warmup', options.warmup ?? Math.min(10, iterations), 0);
  const maxRounds = positiveInteger('maxSettleRounds', options.maxSettleRounds ?? 10, 1);
  const threads = threadFilterOf(options.threads);
  const rules = [
    ...(options.defaultSuppressions === false ? [] : defaultSuppressions()),
    ...resolveSuppressions(options.suppressions),
  ];
  const started = performance.now();
  getGc(); // fail early, before attaching, if there is no way to collect

  const own = options.tracer === undefined;
  if (options.tracer && options.tracer.pid !== process.pid) {
    throw new InvalidOptionError(`ebpf-leak: measure(): options.tracer traces process ${options.tracer.pid}, not this one (${process.pid})`);
  }
  if (options.tracer && measuring.has(options.tracer)) {
    // Its marks number the iterations: two measurements at once would interleave them.
    throw new StateError('ebpf-leak: measure(): options.tracer is already measuring; run measurements on one tracer one after another');
  }
  const tracer =
    options.tracer ??
    (await trace({
      pid: process.pid,
      ...(options.stackDepth !== undefined ? { stackDepth: options.stackDepth } : {}),
      ...(options.maxAllocations !== undefined ? { maxAllocations: options.maxAllocations } : {}),
    }));
  measuring.add(tracer);
  try {
    tracer.mark(); // warm-up window
    for (let i = 0; i < warmup; i++) {
      const r = fn(i);
      if (isThenable(r)) await r;
    }
    await collectGarbage();

    const before = tracer.counters();
    const handlesBefore = getHeapStatistics().used_global_handles_size;
    const first = tracer.mark();
    for (let i = 0; i < iterations; i++) {
      if (i > 0) tracer.mark();
      const r = fn(i);
      if (isThenable(r)) await r;
    }
    const end = tracer.mark();

    // Collect until the window's outstanding set stops changing.
    const window = { since: first, until: end, ...(threads !== undefined ? { threads } : {}) };
    let previous: { blocks: number; bytes: number } | undefined;
    let rounds = 0;
    let stable = false;
    while (rounds < maxRounds) {
      await collectGarbage();
      rounds++;
      const now = await tracer.outstanding(window);
      if (previous && now.blocks === previous.blocks && now.bytes === previous.bytes) {
        stable = true;
        break;
      }
      previous = now;
    }

    const globalHandlesGrowth = getHeapStatistics().used_global_handles_size - handlesBefore;
    const report = await tracer.report({ since: first, until: end });
    const after = report.counters;
    const analysis = analyzeWindow(report, first, iterations, {
      ...(threads !== undefined ? { threads } : {}),
      ...(options.module !== undefined ? { module: options.module } : {}),
      rules,
      ...(options.assumeLeakKinds ? { assumeLeakKinds: options.assumeLeakKinds } : {}),
      globalHandlesGrowth,
    });

    const inconclusive: string[] = [];
    const dropped = delta(after, before, 'droppedAllocations');
    if (dropped > 0) {
      inconclusive.push(inconclusiveReasons.dropped(dropped));
    }
    const lost = delta(after, before, 'lostEvents');
    if (lost > 0) inconclusive.push(inconclusiveReasons.lost(lost));
    const inflight = delta(after, before, 'inflightFailures');
    if (inflight > 0) inconclusive.push(inconclusiveReasons.inflight(inflight));
    if (analysis.noStack.blocks > 0) {
      inconclusive.push(
        inconclusiveReasons.noStack(analysis.noStack.bytes, analysis.noStack.blocks, delta(after, before, 'stackFailures')),
      );
    }
    if (!stable) {
      inconclusive.push(
        `the outstanding allocations were still changing after ${rounds} garbage collections; ` +
          `raise maxSettleRounds, or make sure fn's asynchronous work has finished when it returns`,
      );
    }

    // Handles made in blocks V8 already had leave no allocation behind: the growth of live
    // handles is then the only trace of them.
    if (globalHandlesLeak(globalHandlesGrowth, iterations) && !analysis.leaks.some((s) => isGlobalHandlePool(s.stack))) {
      analysis.leaks.push(globalHandlesSite(globalHandlesGrowth, iterations));
    }

    return {
      version: 1,
      iterations,
      warmup,
      bytesPerIteration: analysis.leaks.reduce((n, s) => n + s.bytesPerIteration, 0),
      leaks: analysis.leaks.sort((a, b) => b.bytesPerIteration - a.bytesPerIteration),
      oneTime: analysis.oneTime,
      suppressed: analysis.suppressed,
      excluded: analysis.excluded,
      inconclusive,
      globalHandlesGrowth,
      settle: { rounds, stable },
      marks: { first, end },
      durationMs: Math.round(performance.now() - started),
    };
  } finally {
    measuring.delete(tracer);
    if (own) await tracer.stop().catch(() => undefined);
  }
}
