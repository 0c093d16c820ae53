// The processes of one trace: the traced process's exec()s (each new image's allocator checked
// while the process waits at its exec) and, with followForks, its children, each reported on its
// own when it exits. Fed by the supervisor's messages (lib/process-messages.ts).
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import type { NativeTracer } from '../native/addon.js';
import type { ProbePlacement } from '../probes/placement.js';
import type { UnwindMode } from '../native/unwind.js';
import { UnsupportedAllocatorError } from '../errors.js';
import { fileIdentity, resolveImageAllocator } from '../target/image.js';
import { processAlive } from '../target/resolve.js';
import {
  decodeExec,
  decodeFork,
  decodeProcessExit,
  decodeWaitStatus,
  splitCommandLine,
  type ProcessExitMessage,
} from '../native/process-messages.js';
import { planProbesSliced, type ProbePlan } from '../probes/plan.js';
import { settleLostGraph } from '../report/lost-graph.js';
import { SharedStacks } from '../report/shared-stacks.js';
import type { LeakReport, PreviousImage } from '../types.js';

// The first name of each number: SIGABRT, not its alias SIGIOT.
const signalNames = new Map<number, string>();
for (const [name, n] of Object.entries(constants.signals)) if (!signalNames.has(n)) signalNames.set(n, name);

export function signalName(n: number): string | null {
  return signalNames.get(n) ?? null;
}

/** What is known of one traced process. */
export interface TracedProcessInfo {
  pid: number;
  parent: number | null;
  /** Its index in the kernel's tables (followForks), 0 when it has none. */
  index: number;
  commandLine: string[];
  previousImages: PreviousImage[];
  /** Why its current image cannot be traced. */
  untraced?: string;
  /** Why its current image may not have been traced, if its report shows no allocation. */
  unchecked?: string;
}

export interface ProcessTrackerOptions {
  native: NativeTracer;
  rootPid: number;
  rootCommandLine: string[];
  followForks: boolean;
  /** Stopped with ptrace at each exec until resumeProcess(); otherwise the new image runs on
   *  while its allocator is checked (an attached process without followForks). */
  supervised: boolean;
  probePlacement: ProbePlacement;
  unwind: UnwindMode;
  /** The tracer loaded the program of probes after a preloaded call (lib/probes/plan.ts). */
  afterCalls: boolean;
  /** The allocator files already probed. */
  allocators: readonly string[];
  countersBytes: number;
  blockBytes: number;
  /** Probes were added for an image's files (its `sites`: where C++'s operators are). */
  onProbes?: (plan: ProbePlan) => void;
  /** Builds the report of a followed process that exited. */
  buildReport: (exit: ProcessExitMessage, info: TracedProcessInfo) => Promise<LeakReport>;
  onError: (error: unknown) => void;
}

function readCommandLine(pid: number): string[] | null {
  try {
    return splitCommandLine(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return null;
  }
}

export class ProcessTracker {
  readonly #o: ProcessTrackerOptions;
  readonly #infos = new Map<number, TracedProcessInfo>();
  /** Start order: the reports' order. */
  readonly #order: number[] = [];
  readonly #live = new Set<number>();
  readonly #reports = new Map<number, Promise<LeakReport>>();
  readonly #allocators = new Set<string>();
  /** The stacks of the finished processes' reports, one copy each. */
  readonly #stacks = new SharedStacks();
  /** Exec checks under way: a report waits for them. */
  readonly #pending = new Set<Promise<void>>();
  /** The last exited process's report being built: the next one waits for it. */
  #building: Promise<void> = Promise.resolve();
  #resolveAllExited!: () => void;
  /** Resolves when every followed process has exited (followForks). */
  readonly allExited: Promise<void>;

  constructor(options: ProcessTrackerOptions) {
    this.#o = options;
    for (const path of options.allocators) {
      try {
        this.#allocators.add(fileIdentity(path));
      } catch {
        // gone: an exec'd image's allocator is then attached again, which is harmless
      }
    }
    this.allExited = new Promise((resolve) => (this.#resolveAllExited = resolve));
    this.#add({ pid: options.rootPid, parent: null, index: 1, commandLine: options.rootCommandLine, previousImages: [] });
  }

  #add(info: TracedProcessInfo): void {
    this.#infos.set(info.pid, info);
    this.#order.push(info.pid);
    this.#live.add(info.pid);
  }

  info(pid: number): TracedProcessInfo | undefined {
    return this.#infos.get(pid);
  }

  /** Processes still running, with their index (followForks). */
  live(): TracedProcessInfo[] {
    return [...this.#live].map((pid) => this.#infos.get(pid)!);
  }

  /** Handles a supervisor message; false when `type` is not one. */
  handle(type: string, data: ArrayBuffer): boolean {
    switch (type) {
      case 'exec':
        this.#track(this.#onExec(data));
        return true;
      case 'fork':
        this.#onFork(data);
        return true;
      case 'process':
        this.#onExit(data);
        return true;
      default:
        return false;
    }
  }

  #track(work: Promise<void>): void {
    this.#pending.add(work);
    void work.catch(this.#o.onError).finally(() => this.#pending.delete(work));
  }

  /** Waits for the exec checks under way. */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
  }

  /** The old image is gone (its totals kept, labelled); the new one's allocator is found and
   *  attached to when it is another file. The process runs on once this is done. */
  async #onExec(data: ArrayBuffer): Promise<void> {
    const m = decodeExec(data, this.#o.countersBytes);
    const info = this.#infos.get(m.pid) ?? { pid: m.pid, parent: null, index: 0, commandLine: [], previousImages: [] };
    info.previousImages.push({
      commandLine: info.commandLine,
      allocs: m.counters.allocs,
      frees: m.counters.frees,
      bytesAllocated: m.counters.bytesAllocated,
      inUseBlocks: m.inUseBlocks,
      inUseBytes: m.inUseBytes,
    });
    // Unstopped (attach), it may have exec'd again or exited since: the line the exec left first.
    info.commandLine = m.commandLine.length > 0 ? m.commandLine : (readCommandLine(m.pid) ?? []);
    delete info.untraced;
    delete info.unchecked;
    try {
      let allocator = await resolveImageAllocator(m.pid);
      // Before it runs on: its first allocations' stacks go through them.
      if (allocator.files !== undefined) await this.#o.native.loadUnwindFiles([...allocator.files]);
      const fresh = (path: string) => !this.#allocators.has(fileIdentity(path));
      // ebpf-leak's preloaded entry points, where an earlier image had libc probed: libc's probes
      // see every call the entry points hand on, and theirs would count each a second time.
      const over = allocator.handsOnTo;
      if (over !== undefined && !fresh(over.libc)) {
        // Unless the entry points are probed too, or the program is C++: its deletes reach libc's
        // free(), which libc's probes would take for a mismatched release of operator new's block.
        if (!fresh(allocator.path) || allocator.cxxRuntime !== undefined) {
          throw new UnsupportedAllocatorError(
            `it runs with ebpf-leak's preloaded entry points (${allocator.path}) in LD_PRELOAD, which hand every ` +
              `call on to ${over.libc}, whose probes an earlier image got: its calls are counted twice or as ` +
              `the wrong function. Trace it with preload from the start, or with the library out of LD_PRELOAD`,
          );
        }
        allocator = { path: over.libc, glibc: true, name: 'glibc', ...(allocator.cxxRuntime !== undefined ? { cxxRuntime: allocator.cxxRuntime } : {}) };
      }
      const newAllocator = fresh(allocator.path);
      // The files not probed yet: its allocator, and its C++ runtime (the operators new and delete).
      if (newAllocator || (allocator.cxxRuntime !== undefined && fresh(allocator.cxxRuntime))) {
        const plan = await planProbesSliced(allocator.path, allocator.glibc, undefined, this.#o.probePlacement, allocator.cxxRuntime, this.#o.unwind, this.#o.afterCalls);
        const probes = plan.probes.filter((p) => fresh(p.path));
        await this.#o.native.addProbes(probes);
        for (const p of probes) this.#allocators.add(fileIdentity(p.path));
        this.#o.onProbes?.(plan);
      }
      if (newAllocator) {
        if (!this.#o.supervised) {
          info.untraced =
            `${info.commandLine.join(' ') || `process ${m.pid}`} was traced only from a moment after its exec: its ` +
            `allocator (${allocator.path}) is another file, whose probes were attached while it ran, and its ` +
            `allocations before that are not seen. Attach with followForks (--follow-forks), which holds it at its exec.`;
        }
      }
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      const name = info.commandLine.join(' ') || `process ${m.pid}`;
      if (!this.#o.supervised && !processAlive(m.pid)) {
        // Gone before it could be looked at: it was traced if the probes saw it allocate.
        info.unchecked =
          `${name} exited before its allocator could be checked, and the probes saw no allocation of it: ` +
          `it may use another allocator. Attach with followForks (--follow-forks), which holds it at its exec.`;
      } else {
        info.untraced = `${name} cannot be traced: ${why}`;
      }
    } finally {
      this.#o.native.resumeProcess(m.pid);
    }
  }

  #onFork(data: ArrayBuffer): void {
    const m = decodeFork(data);
    const parent = this.#infos.get(m.parent);
    const index = new DataView(data).getUint32(8, true);
    this.#add({ pid: m.pid, parent: m.parent, index, commandLine: parent ? [...parent.commandLine] : [], previousImages: [] });
  }

  #onExit(data: ArrayBuffer): void {
    const m = decodeProcessExit(data, this.#o.countersBytes, this.#o.blockBytes);
    const info = this.#infos.get(m.pid);
    if (!info) return;
    if (m.commandLine.length > 0) info.commandLine = m.commandLine;
    // An exec check still under way finishes first: its verdict belongs in the report. Reports
    // are built one after another: many children exiting at once (a shell loop, make -j) would
    // otherwise each hold their blocks, stacks and symbolizer batches at the same time. A child's
    // report is kept as plain data: its scopes (since(), blocks(), ...) would keep its blocks'
    // buffer and stacks alive for as long as the trace runs; the first process's keeps them. Its
    // stacks are shared with the other reports' equal ones: children of one program leak at the
    // same call sites.
    const root = m.pid === this.#o.rootPid;
    const report = this.#building
      .then(() => this.settled())
      .then(() => this.#o.buildReport(m, info))
      .then((r) => (root ? r : plainReport(this.#stacks.share(r))));
    this.#building = report.then(
      () => {},
      () => {},
    );
    report.catch(() => {});
    this.#reports.set(m.pid, report);
    this.#live.delete(m.pid);
    if (this.#live.size === 0) this.#resolveAllExited();
  }

  /** The reports of the processes that exited, in start order, with `extra` for the others. */
  async reports(extra: Map<number, LeakReport>): Promise<LeakReport[]> {
    const out: LeakReport[] = [];
    for (const pid of this.#order) {
      const report = this.#reports.get(pid);
      if (report) out.push(await report);
      else if (extra.has(pid)) out.push(extra.get(pid)!);
    }
    return out;
  }
}

/** A report's fields without its scopes (non-enumerable methods over its blocks and stacks), nor
 *  the blocks its lost-block graph was to be built from. */
function plainReport(report: LeakReport): LeakReport {
  settleLostGraph(report.leaks);
  return { ...report, target: { ...report.target } };
}

/** exitCode and signal of a followed process's exit. */
export function exitStatus(waitStatus: number): { exitCode: number | null; signal: string | null } {
  return decodeWaitStatus(waitStatus, signalName);
}
