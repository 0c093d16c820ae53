// One file by design: LeakTracer is one public class whose methods share one tracing session's private state; the parts without that state are beside it (event-queue, processes, options).
// LeakTracer: one traced process, as an EventEmitter. Owns the native tracer and, for `command`
// targets, the child process.
import { EventEmitter } from 'node:events';
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { allocationsView } from '../native/allocation-view.js';
import { forEachRange, mapSliced, ROWS_PER_STEP } from '../util/cooperative.js';
import { fromNativeError, ScanError, TracerClosedError } from '../errors.js';
import { EventQueue } from './event-queue.js';
import type { EventRecords } from '../native/event-records.js';
import { scanInfo, withKinds } from '../native/scan-records.js';
import { ListenerSnapshot, trackListenerChanges } from './listener-snapshot.js';
import {
  blockColumns,
  decodeCounters,
  decodeHeapErrors,
  decodeModules,
  snapshotColumns,
  type BlockColumns,
  type Counters,
} from '../native/layout.js';
import { loadNative, nativeBuildDir, type NativeMessageHandler, type NativeTracer } from '../native/addon.js';
import type { PlacementDecision } from '../probes/placement.js';
import { familyPair, type FunctionSite, type OverloadSite } from '../probes/plan.js';
import { heapErrorCounts, heapErrorsOf } from '../report/heap-errors.js';
import { resolveModules } from '../target/modules.js';
import { readPerfMap } from '../target/proc-maps.js';
import { hex, inUseSliced, summarize, tallyRowsSliced, type RawLeakGroup } from '../report/tally.js';
import {
  keptRowsSliced,
  rowFilter,
  scopedReportSliced,
  stackPassesThrough,
  type ReportSource,
  type ScopeFilter,
  type ScopedLeakReport,
} from '../report/scope.js';
import { symbolizeStacks } from '../report/symbolize.js';
import { decodeStackTotals, type StackTotal, type UnwindMode, type UnwindStats } from '../native/unwind.js';
import { processAlive, sameRootAsOurs } from '../target/resolve.js';
import { signalNames } from './traced-process.js';
import { exitStatus, ProcessTracker, type TracedProcessInfo } from './processes.js';
import { processRows, rowsColumns } from './process-views.js';
import type { ProcessExitMessage } from '../native/process-messages.js';
import type { ProbePlacement } from '../probes/placement.js';
import type { TracedProcess } from './traced-process.js';
import type {
  AllocEvent,
  AllocatorFunction,
  FreeEvent,
  KeepStacktraces,
  LeakReport,
  LeakTracerEvents,
  ScanInfo,
  ProcessSnapshot,
  Snapshot,
  StackFrame,
  TargetInfo,
} from '../types.js';

export const leakTracerEvents = ['alloc', 'free', 'leak', 'exit', 'lost', 'error'] as const satisfies readonly (keyof LeakTracerEvents)[];

/** What the tracer resolved and attached, for diagnostics (`--verbose`). */
export interface TracerInfo {
  allocator: string;
  /** The library of allocator entry points the command got in LD_PRELOAD (options.preload). */
  preload?: string;
  /** Function -> symbol probed. */
  probes: Partial<Record<AllocatorFunction, string>>;
  /** Optional functions absent from the allocator. */
  missing: AllocatorFunction[];
  /** Functions covered by another's probe because they share its address. */
  aliases: Partial<Record<AllocatorFunction, AllocatorFunction>>;
  /** Where each entry probe went, and why. */
  placements: PlacementDecision[];
  /** File offset of each probed function in `allocator`. */
  functionOffsets: Partial<Record<AllocatorFunction, number>>;
  /** Where each probed function is (C++'s operators are in the C++ runtime's file). */
  sites?: Partial<Record<AllocatorFunction, FunctionSite>>;
  /** Every symbol probed for each function, with its entry probe (ProbePlan.overloads). */
  overloads?: Partial<Record<AllocatorFunction, OverloadSite[]>>;
  /** Releases of addresses that are not outstanding blocks are heap errors (run mode). */
  heapErrors?: boolean;
  /** Family pairs a mismatch cannot be told in (ProbePlan.ambiguousPairs). */
  ambiguousPairs?: string[];
  maxAllocations: number;
  events: boolean;
  /** Allocation stacks are captured. */
  stacks: boolean;
  /** Whether releases keep their stacks for a later double free's report (keepStacktraces). */
  keepStacktraces: KeepStacktraces;
  /** Extra directories searched for separate debug files (build-id and .gnu_debuglink). */
  debugDirs: string[];
  /** The stack walker in use ('fp' with stacks off or off x86-64). */
  unwind: UnwindMode;
  /** Sampling mode: mean bytes between samples; 0 when every allocation is recorded. */
  sampleEveryBytes: number;
  /** One multi-uprobe link per file (kernel >= 6.6), or one classic uprobe per function. */
  attachMode: 'uprobe_multi' | 'uprobe';
  attachMs: number;
  /** The final report sorts blocks into leak kinds: a command held at its exit, a pid target
   *  stopped briefly when tracing stops. */
  leakKinds: boolean;
}

/** @internal: how trace() hands a freshly attached tracer over. */
export interface TracerParts {
  native: NativeTracer;
  pid: number;
  /** `pid` is this process (decided by trace()): the tracer's own allocations are left out. */
  ownProcess: boolean;
  target: Omit<TargetInfo, 'exitCode' | 'signal'>;
  info: TracerInfo;
  /** The started program, for `command` targets. */
  child?: TracedProcess;
  /** sizeof(struct leak_counters), from the addon's layout. */
  countersBytes?: number;
  /** The process is followed with ptrace: its execs, and its children with followForks. */
  supervision?: { followForks: boolean; supervised: boolean; probePlacement: ProbePlacement; unwind: UnwindMode; afterCalls: boolean; commandLine: string[] };
}

/** The buffer under each snapshot() result, for releaseSnapshot(). */
const snapshotBuffers = new WeakMap<Snapshot, ArrayBuffer>();

/** Frees a snapshot's buffer now, not when the collector finds it: for snapshots taken on a timer
 *  (`attach --interval`), whose megabytes would otherwise pile up between collections. Nothing may
 *  read the snapshot's allocations afterwards (its summary stays). Not part of the package's API. */
export function releaseSnapshot(snapshot: Snapshot): void {
  const buffer = snapshotBuffers.get(snapshot);
  if (buffer === undefined) return;
  snapshotBuffers.delete(snapshot);
  loadNative().releaseBuffer(buffer);
}

export class LeakTracer extends EventEmitter<LeakTracerEvents> {
  /** Process being traced. */
  readonly pid: number;
  /** Resolves with the final report when the target exits or stop() is called; `since(mark)`
   *  and the other scopes narrow it. */
  readonly done: Promise<ScopedLeakReport>;
  /** What was attached where. */
  readonly info: TracerInfo;
  /** The started program, for `command` targets (its stdio when stdio: 'pipe'). */
  readonly process: TracedProcess | undefined;

  #native: NativeTracer;
  #target: Omit<TargetInfo, 'exitCode' | 'signal'>;
  #startedAt = performance.now();
  #finishing: Promise<ScopedLeakReport> | undefined;
  #resolveDone!: (report: ScopedLeakReport) => void;
  #rejectDone!: (error: unknown) => void;
  #closed = false;
  #lostReported = { events: 0, allocations: 0 };
  #mark = 0;
  /** When the tracer traces its own process: its addon's file, whose stacks are the tracer's own
   *  allocations (N-API calls on the JS thread) and are left out of every report. Its other
   *  threads are kept out in the kernel (native/tracer/trace_session.h, ThreadIgnore). */
  #ownModule: string | undefined;
  #finalUnwindStats: UnwindStats | null = null;
  /** Execs and children (lib/processes.ts); undefined when the process is not followed. */
  #processes: ProcessTracker | undefined;
  #followForks = false;
  /** followForks: per pid, the heap errors (by position) already in one of its reports. */
  readonly #errorsTaken = new Map<number, number>();
  /** The event stream, delivered in slices. */
  readonly #events = new EventQueue(
    (batch, from, to) => this.#deliverEvents(batch, from, to),
    (error) => this.emit('error', error instanceof Error ? error : new Error(String(error))),
    (slot) => this.#native.eventsDelivered(slot),
  );
  /** The buffers events batches arrive in, by slot (native/tracer/event_slots.h). */
  readonly #eventSlots: ArrayBuffer[];
  /** Events go straight to the listeners (lib/tracer/listener-snapshot.ts), unless rejections of async
   *  listeners are to be captured, which emit() does. */
  readonly #directDispatch = !EventEmitter.captureRejections;
  readonly #allocListeners = new ListenerSnapshot<AllocEvent>(this, 'alloc');
  readonly #freeListeners = new ListenerSnapshot<FreeEvent>(this, 'free');

  /** @internal Use trace(). */
  constructor(parts: TracerParts) {
    super();
    this.pid = parts.pid;
    this.info = parts.info;
    this.process = parts.child;
    this.#native = parts.native;
    this.#eventSlots = parts.native.eventSlots();
    this.#target = parts.target;
    if (parts.supervision) {
      this.#followForks = parts.supervision.followForks;
      this.#processes = new ProcessTracker({
        native: parts.native,
        rootPid: parts.pid,
        rootCommandLine: parts.supervision.commandLine,
        followForks: parts.supervision.followForks,
        supervised: parts.supervision.supervised,
        probePlacement: parts.supervision.probePlacement,
        unwind: parts.supervision.unwind,
        afterCalls: parts.supervision.afterCalls,
        allocators: [parts.info.allocator, ...Object.values(parts.info.sites ?? {}).map((site) => site.path)],
        // A later image's C++ operators: their blocks' stacks start at the operator, as the first's.
        onProbes: (plan) => {
          this.info.sites ??= {};
          for (const [fn, site] of Object.entries(plan.sites)) {
            const key = fn as AllocatorFunction;
            if (site !== undefined && site.path !== plan.sites.malloc?.path && this.info.sites[key] === undefined) this.info.sites[key] = site;
          }
          this.info.probes = { ...plan.attached, ...this.info.probes };
        },
        countersBytes: parts.countersBytes ?? 88,
        blockBytes: 32,
        buildReport: (exit, info) => this.#processReport(exit, info),
        onError: (error) => this.emit('error', error instanceof Error ? error : new Error(String(error))),
      });
    }
    if (parts.ownProcess) {
      try {
        this.#ownModule = realpathSync(join(nativeBuildDir(), 'ebpf_leak.node'));
      } catch {
        this.#ownModule = undefined;
      }
    }
    this.done = new Promise<ScopedLeakReport>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    // A rejection of `done` nobody awaits must not crash the process: 'error' carries it too.
    this.done.catch(() => {});
    void parts.child?.exited.then(({ code, signal }) => this.#finish(code, signal));
  }

  /** @internal Messages from the native poll thread. */
  handleNativeMessage(...[type, data, length, slot]: Parameters<NativeMessageHandler>): void {
    try {
      if (type === 'events') this.#queueEvents(slot >= 0 ? this.#eventSlots[slot]! : data!, length, slot);
      else if (this.#processes && data && this.#processes.handle(type, data)) return;
      else if (type === 'counters') this.#checkLost(decodeCounters(data!));
      // A child of ours is finished by its 'exit' (which has the status); others by the pidfd.
      else if (type === 'exit' && !this.process) void this.#finish(...decodeWaitStatus(this.#native.exitStatus()));
    } catch (error) {
      this.emit('error', error instanceof Error ? error : new Error(String(error)));
    }
  }

  /** A batch nobody listens to is dropped at once; the others are delivered in slices. Either
   *  way the poll thread hears when it is done with (its backpressure, lib/tracer/event-queue.ts). */
  #queueEvents(buffer: ArrayBuffer, length: number, slot: number): void {
    if (this.listenerCount('alloc') > 0 || this.listenerCount('free') > 0) this.#events.push(buffer, length, slot);
    else this.#native.eventsDelivered(slot);
  }

  #deliverEvents(batch: EventRecords, from: number, to: number): void {
    if (!this.#directDispatch) return this.#emitEvents(batch, from, to);
    for (let i = from; i < to; i++) {
      if (batch.isAlloc(i)) {
        const listeners = this.#allocListeners.current();
        const event = listeners.length > 0 ? batch.allocEvent(i) : undefined;
        if (event) for (let j = 0; j < listeners.length; j++) listeners[j]!.call(this, event);
      } else {
        const listeners = this.#freeListeners.current();
        if (listeners.length === 0) continue;
        const event = batch.freeEvent(i);
        for (let j = 0; j < listeners.length; j++) listeners[j]!.call(this, event);
      }
    }
  }

  /** emit() itself, for when it must handle what listeners return (captureRejections). */
  #emitEvents(batch: EventRecords, from: number, to: number): void {
    for (let i = from; i < to; i++) {
      if (batch.isAlloc(i)) {
        const event = this.listenerCount('alloc') > 0 ? batch.allocEvent(i) : undefined;
        if (event) this.emit('alloc', event);
      } else if (this.listenerCount('free') > 0) {
        this.emit('free', batch.freeEvent(i));
      }
    }
  }

  #checkLost(counters: Counters): void {
    const events = counters.lostEvents - this.#lostReported.events;
    const allocations = counters.droppedAllocations - this.#lostReported.allocations;
    if (events <= 0 && allocations <= 0) return;
    this.#lostReported = { events: counters.lostEvents, allocations: counters.droppedAllocations };
    this.emit('lost', { events: Math.max(events, 0), allocations: Math.max(allocations, 0) });
  }

  /** Outstanding allocations now, with the running totals. `allocations` is a view of the
   *  snapshot's buffer: its elements are built when read (lib/native/allocation-view.ts). */
  async snapshot(): Promise<Snapshot> {
    if (this.#closed) throw new TracerClosedError('snapshot(): the tracer has stopped; use the report from stop() or done');
    const raw = await this.#native.snapshot(true);
    const columns = snapshotColumns(raw.entries, this.info.sampleEveryBytes);
    if (this.#followForks && this.#processes) {
      const processes: ProcessSnapshot[] = [];
      for (const info of this.#processes.live()) {
        const own = rowsColumns(columns, await processRows(columns, info.index));
        const counters = this.#native.processCounters(info.index);
        if (!counters) continue; // it exited meanwhile
        const summary = summarize(decodeCounters(counters), await inUseSliced(own));
        processes.push({ pid: info.pid, commandLine: info.commandLine, allocations: allocationsView(own, raw.nowNs), summary });
      }
      const first = processes.find((p) => p.pid === this.pid) ?? processes[0];
      const empty = summarize(decodeCounters(new ArrayBuffer(raw.counters.byteLength)), { blocks: 0, bytes: 0 });
      const snapshot = { allocations: first?.allocations ?? [], summary: first?.summary ?? empty, processes };
      snapshotBuffers.set(snapshot, raw.entries);
      return snapshot;
    }
    const summary = summarize(decodeCounters(raw.counters), await inUseSliced(columns));
    const snapshot = { allocations: allocationsView(columns, raw.nowNs), summary };
    snapshotBuffers.set(snapshot, raw.entries);
    return snapshot;
  }

  /** Symbolized frames of stack ids (the `stackId` of snapshot() allocations and stackTotals()),
   *  innermost first, one list per id; empty for -1 (no stack) and when stacks are off. */
  async stackFrames(stackIds: readonly number[]): Promise<StackFrame[][]> {
    if (this.#closed) throw new TracerClosedError('stackFrames(): the tracer has stopped');
    const ids = stackIds.filter((id) => id >= 0);
    const frames = await this.#stacks(ids.map((stackId) => ({ stackId }) as RawLeakGroup));
    const byId = new Map(ids.map((id, i) => [id, frames[i] ?? []]));
    return stackIds.map((id) => byId.get(id) ?? []);
  }

  /** The current mark: the value recorded in every block allocated from now on. Starts at 0. */
  get currentMark(): number {
    return this.#mark;
  }

  /** Starts a new window: every block allocated from now on records the returned mark (one more
   *  than the last), until the next call. Narrow a report to it with `report.since(mark)`. Marks
   *  are exact, not timestamps: the value is written into the BPF program and stored with each
   *  allocation, whichever thread makes it. Synchronous and cheap (one store to mapped memory). */
  mark(): number {
    if (this.#closed) throw new TracerClosedError('mark(): the tracer has stopped');
    this.#mark += 1;
    this.#native.setMark(this.#mark);
    return this.#mark;
  }

  /** The kernel-side counters now (summed over CPUs): the summary's totals plus stackFailures,
   *  inflightFailures and ignoredAllocations. Synchronous (one small map read). */
  counters(): Counters {
    if (this.#closed) throw new TracerClosedError('counters(): the tracer has stopped');
    const raw = this.#native.counters();
    if (!raw) throw new TracerClosedError('counters(): the tracer is not attached');
    return decodeCounters(raw);
  }

  /** Outstanding bytes and blocks per stack id (the `stackId` of snapshot() allocations; -1: no
   *  stack), from totals the kernel keeps as blocks come and go: no walk of the blocks.
   *  Synchronous (one map read). */
  stackTotals(): StackTotal[] {
    if (this.#closed) throw new TracerClosedError('stackTotals(): the tracer has stopped');
    const raw = this.#native.readStackTotals();
    if (!raw) throw new TracerClosedError('stackTotals(): the tracer is not attached');
    return decodeStackTotals(raw);
  }

  /** The stack walker's counters (walks, frames, incomplete or truncated walks, collisions,
   *  failures) and the unwind tables it has (lib/native/unwind.ts); once stopped, as they were at the
   *  end. Null when stacks are off. */
  unwindStats(): UnwindStats | null {
    return this.#closed ? this.#finalUnwindStats : this.#native.unwindStats();
  }

  /** Count of outstanding blocks and their bytes that pass `filter` (marks and threads only: no
   *  stacks are read), without symbolizing anything: cheap enough to poll. */
  async outstanding(filter: Omit<ScopeFilter, 'module' | 'excludeModule'> = {}): Promise<{ blocks: number; bytes: number }> {
    if (this.#closed) throw new TracerClosedError('outstanding(): the tracer has stopped');
    const raw = await this.#native.snapshot(false);
    const columns = blockColumns(raw.entries, this.info.sampleEveryBytes);
    const keep = rowFilter(columns, filter) ?? (() => true);
    let blocks = 0;
    let bytes = 0;
    await forEachRange(columns.count, ROWS_PER_STEP, (start, end) => {
      for (let i = start; i < end; i++) {
        if (!keep(i)) continue;
        blocks++;
        bytes += columns.size(i);
      }
    });
    return { blocks, bytes };
  }

  /** What is outstanding now, symbolized, without stopping. `filter` narrows before symbolizing
   *  (cheaper than narrowing the result, which stays possible). */
  async report(filter: ScopeFilter = {}): Promise<ScopedLeakReport> {
    if (this.#closed) throw new TracerClosedError('report(): the tracer has stopped; use the report from stop() or done');
    if (this.#followForks && this.#processes) return this.#followedReport(true, filter);
    const raw = await this.#native.snapshot(false);
    const columns = blockColumns(raw.entries, this.info.sampleEveryBytes);
    const counters = decodeCounters(raw.counters);
    this.#checkLost(counters);
    const { module, excludeModule, ...cheap } = filter;
    const keep = rowFilter(columns, cheap);
    const rows = keep === null ? null : await keptRowsSliced(columns, null, keep);
    return this.#scoped(columns, rows, counters, { exitCode: null, signal: null }, { module, excludeModule });
  }

  /** The heap errors recorded, as `errors` and `summary.errors`: all of them, or followForks, those
   *  of process `pid` not given to an earlier process of that pid (errors are appended in order).
   *  Errors past the kernel's record slots are counted as not recorded, in the first process's. */
  async #addHeapErrors(report: LeakReport, columns: BlockColumns, pid?: number): Promise<void> {
    const { errors: all, seen } = decodeHeapErrors(await this.#native.readHeapErrors());
    const from = pid === undefined ? 0 : (this.#errorsTaken.get(pid) ?? 0);
    const rawErrors = pid === undefined ? all : all.filter((e, i) => i >= from && e.pid === pid);
    if (pid !== undefined) this.#errorsTaken.set(pid, all.length);
    const ambiguous = new Set(this.info.ambiguousPairs ?? []);
    const told = rawErrors.filter(
      (e) => e.kind !== 'mismatched-free' || e.allocFn === undefined || !ambiguous.has(familyPair(e.allocFn, e.releaseFn)),
    );
    const releaseStacksKept = this.info.stacks && this.info.keepStacktraces === 'alloc-and-free';
    const errors = await heapErrorsOf(told, columns, (groups) => this.#stacks(groups), releaseStacksKept);
    report.errors = errors;
    const unrecorded = pid === undefined || pid === this.pid ? seen - all.length : 0;
    report.summary.errors = heapErrorCounts(errors, told.length + unrecorded);
  }

  /** The previous images and the verdict on the last one, when there is something to say. */
  #addProcessFields(report: LeakReport, info: TracedProcessInfo): void {
    if (info.previousImages.length > 0) report.previousImages = info.previousImages;
    if (info.untraced !== undefined) report.untraced = info.untraced;
    else if (info.unchecked !== undefined && report.summary.allocs === 0) report.untraced = info.unchecked;
  }

  #processTarget(info: TracedProcessInfo): Omit<TargetInfo, 'exitCode' | 'signal'> {
    if (info.pid === this.pid) return { ...this.#target, commandLine: info.commandLine };
    return {
      pid: info.pid,
      ...(info.commandLine.length > 0 ? { command: info.commandLine[0]!, args: info.commandLine.slice(1) } : {}),
      allocator: this.info.allocator,
      commandLine: info.commandLine,
      ...(info.parent !== null ? { parentPid: info.parent } : {}),
    };
  }

  /** A followed process's report, from what it had at its exit. */
  async #processReport(exit: ProcessExitMessage, info: TracedProcessInfo): Promise<LeakReport> {
    const plain = blockColumns(exit.blocks, this.info.sampleEveryBytes);
    const columns = exit.scan ? withKinds(plain, exit.scan) : plain;
    // Scanned in its exit stop, or why not (a scan was asked for, and it passed no exit stop).
    const scan: ScanInfo | undefined = exit.scan
      ? scanInfo(exit.scan)
      : this.info.leakKinds
        ? { scanned: false, reason: exit.stopped ? 'its memory could not be read at its exit' : 'it ended without an exit stop' }
        : undefined;
    const report = await this.#scoped(columns, null, exit.counters, exitStatus(exit.waitStatus), {}, this.#processTarget(info), scan);
    await this.#addHeapErrors(report, columns, info.pid);
    this.#addProcessFields(report, info);
    return report;
  }

  /** followForks: every process's report, the first process's at the top. Processes still
   *  running (stop()) are reported as they are now. */
  async #followedReport(stopped: boolean, filter: ScopeFilter = {}): Promise<ScopedLeakReport> {
    const tracker = this.#processes!;
    if (!stopped) await tracker.allExited;
    await tracker.settled();
    const extra = new Map<number, LeakReport>();
    const live = tracker.live();
    const { module, excludeModule, ...cheap } = filter;
    if (live.length > 0) {
      const raw = await this.#native.snapshot(false);
      const columns = blockColumns(raw.entries, this.info.sampleEveryBytes);
      for (const info of live) {
        const own = rowsColumns(columns, await processRows(columns, info.index));
        const keep = rowFilter(own, cheap);
        const rows = keep === null ? null : await keptRowsSliced(own, null, keep);
        const counterBytes = this.#native.processCounters(info.index);
        if (!counterBytes) continue; // it exited meanwhile: its report comes with its exit
        const report = await this.#scoped(own, rows, decodeCounters(counterBytes), { exitCode: null, signal: null }, { module, excludeModule }, this.#processTarget(info));
        if (stopped) await this.#addHeapErrors(report, own, info.pid);
        this.#addProcessFields(report, info);
        extra.set(info.pid, report);
      }
    }
    const all = await tracker.reports(extra);
    const found = (all.find((r) => r.target.pid === this.pid) ?? all[0]) as ScopedLeakReport | undefined;
    if (!found) throw new TracerClosedError('no process was traced');
    // Plain copies in `processes`: the first report holds the list, and must not hold itself; a
    // copy of the first, as a process's report is kept for later reports too.
    const stats = this.#native.processStats();
    const first = Object.defineProperties({}, Object.getOwnPropertyDescriptors(found)) as ScopedLeakReport;
    first.target = { ...found.target };
    first.processes = all.map((r) => ({ ...r, target: { ...r.target } }));
    first.untracedChildren = stats.lostChildren;
    return first;
  }

  /** Symbolizes the groups of `rows` (every row when null) and builds the report of the blocks
   *  whose stacks pass `stackFilter` and are not the tracer's own. Every loop over the blocks runs
   *  in slices (lib/util/cooperative.ts). */
  async #scoped(
    columns: BlockColumns,
    rows: Uint32Array | null,
    counters: Counters,
    status: Pick<TargetInfo, 'exitCode' | 'signal'>,
    stackFilter: Pick<ScopeFilter, 'module' | 'excludeModule'> = {},
    target: Omit<TargetInfo, 'exitCode' | 'signal'> = this.#target,
    scan?: ScanInfo,
  ): Promise<ScopedLeakReport> {
    let tally = await tallyRowsSliced(columns, rows);
    const frames = await this.#stacks(tally.groups);
    const stacks = new Map<number, StackFrame[]>();
    tally.groups.forEach((g, i) => stacks.set(g.stackId, frames[i] ?? []));
    let kept = rows;
    const dropped = new Set<number>();
    for (const [id, stack] of stacks) if (!this.#keepsStack(stack, stackFilter)) dropped.add(id);
    if (dropped.size > 0) {
      kept = await keptRowsSliced(columns, rows, (row) => !dropped.has(columns.stackId(row)));
      tally = await tallyRowsSliced(columns, kept);
    }
    const source: ReportSource = {
      base: {
        version: 1,
        target: { ...target, ...status },
        durationMs: Math.round(performance.now() - this.#startedAt),
        ...(this.info.sampleEveryBytes > 0 ? { sampling: { everyBytes: this.info.sampleEveryBytes } } : {}),
        ...(scan ? { scan } : {}),
      },
      summary: summarize(counters, tally.inUse),
      counters,
      columns,
      stacks,
    };
    return scopedReportSliced(source, kept, tally);
  }

  /** Whether a report keeps the blocks of `stack`: it passes the module filters, and it is not
   *  the tracer's own (self-tracing). */
  #keepsStack(stack: readonly StackFrame[], { module, excludeModule }: Pick<ScopeFilter, 'module' | 'excludeModule'>): boolean {
    if (this.#ownModule !== undefined && stackPassesThrough(stack, this.#ownModule)) return false;
    if (module !== undefined && !stackPassesThrough(stack, module)) return false;
    return excludeModule === undefined || !stackPassesThrough(stack, excludeModule);
  }

  /** Stops every thread of the target briefly, scans its memory, and reports what is
   *  outstanding now split into valgrind's leak kinds (`kind` of each group, the LEAK SUMMARY
   *  fields of the summary); `report.scan.pauseMs` is how long the target stood still. */
  async scan(filter: ScopeFilter = {}): Promise<ScopedLeakReport> {
    if (this.#closed) throw new TracerClosedError('scan(): the tracer has stopped');
    if (this.#followForks && this.#processes) return this.#scanFollowed(filter);
    let raw;
    try {
      raw = await this.#native.scan();
    } catch (error) {
      throw fromNativeError(error, `cannot scan process ${this.pid}`);
    }
    const counters = decodeCounters((await this.#native.snapshot(false)).counters);
    const columns = withKinds(blockColumns(raw.entries, this.info.sampleEveryBytes), raw);
    const { module, excludeModule, ...cheap } = filter;
    const keep = rowFilter(columns, cheap);
    const rows = keep === null ? null : await keptRowsSliced(columns, null, keep);
    return this.#scoped(columns, rows, counters, { exitCode: null, signal: null }, { module, excludeModule }, this.#target, scanInfo(raw));
  }

  /** followForks: every live traced process scanned in turn (each stopped alone, briefly), one
   *  report each in `processes`, the first process's (or the first live one's) at the top. A
   *  process that exits meanwhile is left out: its report comes with its exit. */
  async #scanFollowed(filter: ScopeFilter): Promise<ScopedLeakReport> {
    const { module, excludeModule, ...cheap } = filter;
    const reports: ScopedLeakReport[] = [];
    for (const info of this.#processes!.live()) {
      let raw;
      try {
        raw = await this.#native.scan(info.pid);
      } catch (error) {
        if (!this.#processes!.live().includes(info) || !processAlive(info.pid)) continue;
        throw fromNativeError(error, `cannot scan process ${info.pid}`);
      }
      const counterBytes = this.#native.processCounters(info.index);
      if (!counterBytes) continue; // it exited meanwhile
      const columns = withKinds(blockColumns(raw.entries, this.info.sampleEveryBytes), raw);
      const keep = rowFilter(columns, cheap);
      const rows = keep === null ? null : await keptRowsSliced(columns, null, keep);
      const status = { exitCode: null, signal: null };
      const report = await this.#scoped(columns, rows, decodeCounters(counterBytes), status, { module, excludeModule }, this.#processTarget(info), scanInfo(raw));
      this.#addProcessFields(report, info);
      reports.push(report);
    }
    const found = reports.find((r) => r.target.pid === this.pid) ?? reports[0];
    if (!found) throw new ScanError('scan(): no traced process is running; the report of each one that exited comes with `done`');
    const first = Object.defineProperties({}, Object.getOwnPropertyDescriptors(found)) as ScopedLeakReport;
    first.target = { ...found.target };
    first.processes = reports.map((r) => ({ ...r, target: { ...r.target } }));
    return first;
  }

  /** Stop tracing (the target keeps running) and report what is outstanding now. Idempotent:
   *  every call returns the same promise as `done`. */
  stop(): Promise<ScopedLeakReport> {
    void this.#finish(null, null, true);
    return this.done;
  }

  #fail(error: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
    this.#rejectDone(error);
    this.emit('error', error instanceof Error ? error : new Error(String(error)));
  }

  /** Symbolized stacks of the groups, innermost first, topped by the allocator function as
   *  valgrind shows it ("at malloc ... by main"). A failure to symbolize keeps raw addresses. */
  async #stacks(groups: readonly RawLeakGroup[]): Promise<StackFrame[][]> {
    if (!this.info.stacks || groups.length === 0) return groups.map(() => []);
    const ids = groups.map((g) => g.stackId);
    const raw = await this.#native.readStacks(ids);
    // The target's own root first (a container's files), unless it is ours: then the paths we
    // can open are the paths it sees, and reports show them without a /proc/PID/root prefix.
    const sameRoot = sameRootAsOurs(this.pid);
    const modules = resolveModules(decodeModules(await this.#native.readModules()), {
      extraRoots: processAlive(this.pid) && !sameRoot ? [`/proc/${this.pid}/root`] : [],
    });
    let frames: StackFrame[][];
    try {
      // Every frame is a return address, the innermost too: the stack is taken in the return
      // probe, where the allocator has returned into its caller. symbolizeStacks() looks up
      // `address - 1` (the call) for all frames but the first, so each stack gets a placeholder
      // first frame (address 0, in no mapping: one frame out), dropped after. Without it, the
      // caller's line is the line after the call whenever the compiler put other code there.
      const padded = await symbolizeStacks(
        await mapSliced(raw, 256, (stack) => (stack.length > 0 ? [0n, ...stack] : [])),
        modules,
        {
          perfMap: await readPerfMap(this.pid).catch(() => null),
          ...(this.info.debugDirs.length > 0 ? { debugDirs: this.info.debugDirs } : {}),
        },
      );
      frames = await mapSliced(padded, 256, (stack) => stack.slice(1));
    } catch {
      frames = await mapSliced(raw, 256, (stack) => Array.from(stack, (a) => ({ address: hex(a) })));
    }
    // trace() names the allocator of a pid target through /proc/PID/root; with the same root
    // that prefix is noise, and the modules above are resolved without it.
    const procRoot = `/proc/${this.pid}/root/`;
    const allocatorPath =
      sameRoot && this.info.allocator.startsWith(procRoot) ? this.info.allocator.slice(procRoot.length - 1) : this.info.allocator;
    const allocator = modules.find((m) => m.hostPath === allocatorPath || m.hostPath === this.info.allocator);
    return mapSliced(groups, 256, (g, i) => {
      const stack = frames[i] ?? [];
      const overload = this.#overload(g);
      const site = overload ?? this.info.sites?.[g.fn];
      if (site !== undefined && (overload !== undefined || site.path !== this.info.allocator)) {
        if (stack.length === 0) return stack;
        const file = modules.find((m) => m.hostPath === site.path);
        const top: StackFrame = {
          address: file ? hex(file.start - file.offset + BigInt(site.offset)) : hex(site.offset),
          module: file?.hostPath ?? site.path,
          offset: hex(site.offset),
          symbol: demangledName(site.symbol),
          ...(site.symbol.startsWith('_Z') ? { mangled: site.symbol } : {}),
        };
        return [top, ...stack];
      }
      const offset = this.info.functionOffsets[g.fn];
      if (offset === undefined || stack.length === 0) return stack;
      const top: StackFrame = {
        address: allocator ? hex(allocator.start - allocator.offset + BigInt(offset)) : hex(offset),
        module: allocatorPath,
        offset: hex(offset),
        symbol: demangledName(this.info.probes[g.fn] ?? g.fn),
      };
      if (top.symbol !== (this.info.probes[g.fn] ?? g.fn)) top.mangled = this.info.probes[g.fn];
      return [top, ...stack];
    });
  }

  /** The overload a release came through, by its entry probe's offset in the page (the kernel
   *  records it with heap errors); undefined for a function of one symbol, or when no single
   *  symbol of the function has it. */
  #overload(g: RawLeakGroup): FunctionSite | undefined {
    const overloads = this.info.overloads?.[g.fn] ?? [];
    if (g.entryPage === undefined || overloads.length < 2) return undefined;
    const matching = overloads.filter((o) => (o.entryOffset % 4096) + 1 === g.entryPage);
    return matching.length === 1 ? matching[0] : undefined;
  }

  #finish(exitCode: number | null, signal: NodeJS.Signals | null, stopped = false): Promise<ScopedLeakReport> {
    this.#finishing ??= this.#buildFinalReport(exitCode, signal, stopped).then(
      async (report) => {
        // Listeners see every alloc and free still queued before 'leak' and 'exit'.
        await this.#events.drained();
        for (const group of report.leaks) this.emit('leak', group);
        this.emit('exit', report);
        this.#resolveDone(report);
        return report;
      },
      (error: unknown) => {
        this.#fail(error);
        throw error;
      },
    );
    return this.#finishing;
  }

  async #buildFinalReport(exitCode: number | null, signal: NodeJS.Signals | null, stopped: boolean): Promise<ScopedLeakReport> {
    try {
      if (this.#processes && this.#followForks) return await this.#followedReport(stopped);
      await this.#processes?.settled();
      const raw = await this.#native.snapshot(false);
      let columns = blockColumns(raw.entries, this.info.sampleEveryBytes);
      const counters = decodeCounters(raw.counters);
      this.#checkLost(counters);
      let scan: ScanInfo | undefined;
      const running = exitCode === null && signal === null && processAlive(this.pid);
      if (this.info.leakKinds && running) {
        // Tracing stops while it runs: stopped for a scan now.
        try {
          const now = await this.#native.scan();
          columns = withKinds(blockColumns(now.entries, this.info.sampleEveryBytes), now);
          scan = scanInfo(now);
        } catch (error) {
          scan = { scanned: false, reason: (error as Error).message };
        }
      } else if (this.info.leakKinds) {
        // Held at its exit: the blocks the scan saw are the ones left (nothing runs after it).
        const exitScan = this.#native.takeExitScan();
        if ('notScanned' in exitScan) {
          // A signal that killed it is the reason, whichever of its parent and its tracer saw it.
          scan = { scanned: false, reason: signal ? `killed by signal ${signal}` : exitScan.notScanned };
        } else {
          columns = withKinds(blockColumns(exitScan.entries, this.info.sampleEveryBytes), exitScan);
          scan = scanInfo(exitScan);
        }
      }
      const report = await this.#scoped(columns, null, counters, { exitCode, signal }, {}, this.#target, scan);
      await this.#addHeapErrors(report, columns);
      const root = this.#processes?.info(this.pid);
      if (root) {
        Object.assign(report.target, { commandLine: root.commandLine });
        this.#addProcessFields(report, root);
        // Children are seen (and counted) only under ptrace.
        const stats = this.#native.processStats();
        if (stats.supervised) report.untracedChildren = stats.untracedChildren;
      }
      return report;
    } finally {
      this.#finalUnwindStats = this.#native.unwindStats();
      this.#closed = true;
      await this.#native.closeAsync();
    }
  }
}
// The event stream's listeners are looked up again only when they change (#deliverEvents).
trackListenerChanges(LeakTracer);

/** A wait status (exit code << 8, or the signal number, with 0x80 when it dumped core) as exit
 *  code and signal name; both null when unknown. */
export function decodeWaitStatus(status: number | null): [number | null, NodeJS.Signals | null] {
  if (status === null) return [null, null];
  const signal = status & 0x7f;
  if (signal === 0) return [(status >> 8) & 0xff, null];
  return [null, signalNames.get(signal) ?? null];
}

/** A C++ symbol as the stacks show it (`_Znam` -> `operator new[](unsigned long)`). */
function demangledName(symbol: string): string {
  if (!symbol.startsWith('_Z')) return symbol;
  try {
    return loadNative().Tracer.demangle(symbol) ?? symbol;
  } catch {
    return symbol;
  }
}

