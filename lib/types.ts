// Public types of ebpf-leak. Everything a user can touch is declared here, so the API has one
// place to read and the type tests have one place to pin.

/** Allocator entry points we probe. `free` has no return probe; the others do. */
export const allocatorFunctions = [
  'malloc',
  'calloc',
  'realloc',
  'reallocarray',
  'free',
  'posix_memalign',
  'aligned_alloc',
  'memalign',
  'valloc',
  'pvalloc',
] as const;
export type AllocatorFunction = (typeof allocatorFunctions)[number];

/** Name a non-glibc allocator (jemalloc, tcmalloc, mimalloc, a static binary) explicitly. */
export interface AllocatorOptions {
  /** ELF file that defines the allocator functions (a shared library or the executable itself). */
  path: string;
  /** Symbol to probe for each function, when it differs from the function's name (e.g. `je_malloc`).
   *  Functions not listed are looked up by their own name and skipped when absent, except
   *  `malloc` and `free`, which are required. */
  symbols?: Partial<Record<AllocatorFunction, string>>;
}

export interface CommonTraceOptions {
  /** Room for at least this many blocks outstanding at once, in the kernel's address table (which
   *  is allocated whole: ~50 bytes per block; it takes up to a quarter more before one is dropped).
   *  Default 1,000,000. */
  maxAllocations?: number;
  /** Stream every alloc/free as an event (costs per call). Default false. */
  events?: boolean;
  /** Ring buffer size for the event stream, bytes, a power of two. Default 8 MiB. */
  eventBufferBytes?: number;
  /** Probe this allocator instead of the target's glibc. */
  allocator?: AllocatorOptions;
  /** Record the allocation stack of every block. Default true; false is the lowest overhead
   *  (the blocks still allocated then form one group, without frames). */
  stacks?: boolean;
  /** Frames recorded per stack, 1 to 127. Default 32. */
  stackDepth?: number;
  /** Sampling mode: record an allocation only when it crosses a sampling point, the points on
   *  average this many bytes apart (Poisson, as tcmalloc's heap profiler). Much cheaper on
   *  allocation-heavy programs; in-use figures and leaks become estimates (report.sampling).
   *  Default: off, every allocation is recorded. */
  sampleEveryBytes?: number;
  /** Where entry probes go: 'optimized' (default) moves a probe past the function's first
   *  instruction to one the kernel emulates, when that provably sees every call (glibc's free:
   *  ~10 µs less per call); 'entry' puts every probe on the function's first instruction. */
  probePlacement?: 'optimized' | 'entry';
  /** How stacks are walked: 'auto' (default; x86-64: with the modules' DWARF CFI, so code
   *  without frame pointers, like libstdc++'s operator new, keeps its callers), 'dwarf' (CFI
   *  only), or 'fp' (frame pointers only: the kernel's walk, cheapest to load). */
  unwind?: 'auto' | 'dwarf' | 'fp';
  /** Keep outstanding bytes and blocks per stack in the kernel (tracer.stackTotals()), so a
   *  summary need not walk every block. Default true; false saves ~20-60 ns per call. */
  stackTotals?: boolean;
  /** Directories searched for separate debug files (`.build-id/xx/yyyy.debug`, `.gnu_debuglink`
   *  targets) before /usr/lib/debug. */
  debugDirs?: readonly string[];
  /** Scan the target's memory to split what is still allocated into valgrind's leak kinds
   *  (LeakGroup.kind, HeapSummary.definitelyLost...). A `command` is held when it exits (after
   *  atexit handlers and static destructors) for the scan: default true. A `pid` target is
   *  stopped briefly for a scan when tracing stops while it still runs: default false. */
  leakKinds?: boolean;
}

/** Attach to a running process. */
export interface PidTraceOptions extends CommonTraceOptions {
  pid: number;
}

/** Start a program, held before `exec` until the probes are attached. */
export interface CommandTraceOptions extends CommonTraceOptions {
  /** Program to run: a path, or a name looked up in PATH. */
  command: string;
  args?: readonly string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** stdio of the program, as for child_process.spawn. Default 'inherit'. */
  stdio?: 'inherit' | 'pipe' | 'ignore';
}

export type TraceOptions = PidTraceOptions | CommandTraceOptions;

/** valgrind's leak kinds (its --show-leak-kinds vocabulary): `definite`: nothing points at the
 *  block; `indirect`: only lost blocks do; `possible`: only pointers into its middle do;
 *  `reachable`: a global, a stack, a register or thread-local storage still does. */
export type LeakKind = 'definite' | 'indirect' | 'possible' | 'reachable';
export const leakKinds = ['definite', 'indirect', 'possible', 'reachable'] as const satisfies readonly LeakKind[];

/** memcheck's --leak-check-heuristics: interior pointers taken as reaching a block. */
export type LeakHeuristic = 'stdstring' | 'length64' | 'newarray' | 'multipleinheritance';

export interface BytesBlocks {
  bytes: number;
  blocks: number;
}

/** Totals with valgrind's HEAP SUMMARY meaning (the first five), plus what we could not see. */
export interface HeapSummary {
  /** Successful allocations (a realloc of a live block counts as one free plus one alloc). */
  allocs: number;
  /** Frees of blocks we saw allocated. */
  frees: number;
  /** Sum of requested sizes of all allocations. */
  bytesAllocated: number;
  /** Blocks still allocated ("in use at exit" at the end). */
  inUseBlocks: number;
  inUseBytes: number;
  /** Events dropped because the event ring buffer was full. */
  lostEvents: number;
  /** Allocations not tracked because the address table was full (raise maxAllocations). */
  droppedAllocations: number;
  /** Frees of addresses we never saw allocated (allocated before attach, or by another allocator). */
  unknownFrees: number;
  /** valgrind's LEAK SUMMARY, when the target's memory was scanned (LeakReport.scan): the
   *  blocks still allocated, by kind. Absent when it was not. */
  definitelyLost?: BytesBlocks;
  indirectlyLost?: BytesBlocks;
  possiblyLost?: BytesBlocks;
  stillReachable?: BytesBlocks;
  /** Blocks reached only through an interior pointer that a heuristic explained ("of which
   *  reachable via heuristic"), by heuristic; absent when none. */
  reachableViaHeuristic?: Partial<Record<LeakHeuristic, BytesBlocks>>;
}

/** Whether the report's blocks were sorted into leak kinds by a scan of the target's memory. */
export type ScanInfo =
  | {
      scanned: true;
      /** Held at its exit (otherwise: stopped briefly while it ran). */
      atExit: boolean;
      /** How long every thread of the target stood still, and how long the scan took, ms. */
      pauseMs: number;
      scanMs: number;
      /** Of the scan: copying the target's memory, and the walk over its blocks, ms. */
      readMs: number;
      markMs: number;
      /** Bytes of roots (globals, stacks, thread-local storage) and of blocks read. */
      rootBytes: number;
      heapBytes: number;
      threads: number;
    }
  | { scanned: false; reason: string };

export interface StackFrame {
  /** Instruction address in the target, hex string (`0x...`). */
  address: string;
  module?: string;
  buildId?: string;
  /** Offset of the address in `module`'s file, hex string. */
  offset?: string;
  symbol?: string;
  file?: string;
  line?: number;
  inlined?: boolean;
}

/** Blocks still allocated that share one allocation stack. */
export interface LeakGroup {
  bytes: number;
  blocks: number;
  /** Frames, innermost first. Empty when stacks are not captured. */
  stack: StackFrame[];
  /** Largest single block in the group, bytes. */
  largestBlock: number;
  /** A few of the group's addresses, hex, for a debugger. */
  sampleAddresses: string[];
  /** The blocks' leak kind, when the target's memory was scanned: a group is one stack and one
   *  kind, as valgrind's loss records. */
  kind?: LeakKind;
  /** Definitely lost groups: bytes of the blocks lost only through these ones ("N (M direct,
   *  K indirect) bytes"). */
  indirectBytes?: number;
}

export interface TargetInfo {
  pid: number;
  /** Set for `command` targets. */
  command?: string;
  args?: string[];
  /** Exit status, when the target exited while traced. */
  exitCode: number | null;
  /** Signal name that ended the target, when it was killed by one. */
  signal: string | null;
  /** The allocator file whose functions were probed. */
  allocator: string;
}

export interface LeakReport {
  version: 1;
  target: TargetInfo;
  summary: HeapSummary;
  /** Sorted by bytes, largest first. */
  leaks: LeakGroup[];
  /** Milliseconds from attach to the report. */
  durationMs: number;
  /** Whether the blocks were sorted into leak kinds, or why not (a program that did not pass the
   *  exit hold: killed by a signal). Absent when no scan was asked for. */
  scan?: ScanInfo;
  /** Present in sampling mode: the in-use figures and leak groups are then estimates, scaled
   *  from the sampled blocks; allocs, frees and bytesAllocated stay exact. */
  sampling?: { everyBytes: number };
}

export interface OutstandingAllocation {
  address: bigint;
  size: number;
  /** Milliseconds since the allocation. */
  ageMs: number;
  tid: number;
  /** Index into the stack-trace map, -1 when not captured. */
  stackId: number;
}

export interface Snapshot {
  /** Outstanding allocations now, unordered. */
  allocations: OutstandingAllocation[];
  summary: HeapSummary;
}

export interface AllocEvent {
  function: Exclude<AllocatorFunction, 'free'>;
  address: bigint;
  size: number;
  tid: number;
  /** CLOCK_MONOTONIC nanoseconds. */
  timestampNs: bigint;
}

export interface FreeEvent {
  /** `free`, or `realloc`/`reallocarray` when the block was released by a move or a resize to 0. */
  function: 'free' | 'realloc' | 'reallocarray';
  address: bigint;
  /** Size of the block when it was allocated. */
  size: number;
  tid: number;
  timestampNs: bigint;
}

export interface LostInfo {
  /** Events dropped since the last `lost` event. */
  events: number;
  /** Allocations not tracked since the last `lost` event because the address map was full. */
  allocations: number;
}

export interface LeakTracerEvents {
  alloc: [AllocEvent];
  free: [FreeEvent];
  /** One per leak group, when the target exits or `stop()` is called, before `exit`. */
  leak: [LeakGroup];
  /** Tracing ended (target exited, or `stop()`); carries the final report. */
  exit: [LeakReport];
  lost: [LostInfo];
  error: [Error];
}
