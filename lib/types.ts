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
  // C++'s operators, each overload of new apart (a block's stack starts at the one that
  // allocated it); every overload of delete and of delete[] as one.
  'operator new',
  'operator new(nothrow)',
  'operator new(aligned)',
  'operator new(aligned, nothrow)',
  'operator new[]',
  'operator new[](nothrow)',
  'operator new[](aligned)',
  'operator new[](aligned, nothrow)',
  'operator delete',
  'operator delete[]',
  // jemalloc's own entry points.
  'mallocx',
  'rallocx',
  'sdallocx',
  'dallocx',
] as const;
export type AllocatorFunction = (typeof allocatorFunctions)[number];

/** Functions that only release a block. */
export const releaseFunctions = ['free', 'operator delete', 'operator delete[]', 'sdallocx', 'dallocx'] as const;
export type ReleaseFunction = (typeof releaseFunctions)[number];

/** What a heap error is (valgrind: "Invalid free() / delete / delete[] / realloc()" for the first
 *  two, "Mismatched free() / delete / delete []" for the third). */
export const heapErrorKinds = ['invalid-free', 'double-free', 'mismatched-free'] as const;
export type HeapErrorKind = (typeof heapErrorKinds)[number];

/** A release the allocator must not be given. Invalid and double frees are only known in `run`
 *  mode (every block was seen allocated); mismatched frees in both modes. */
export interface HeapError {
  kind: HeapErrorKind;
  /** The released address, hex. */
  address: string;
  /** The releasing function (free, operator delete, realloc, ...). */
  releasedBy: AllocatorFunction;
  tid: number;
  /** The releasing call's stack, innermost first, the releasing function on top. */
  stack: StackFrame[];
  /** The block, when known: mismatched frees, double frees, interior frees of a block still
   *  allocated at the end. */
  block?: {
    size: number;
    allocatedBy: AllocatorFunction;
    /** Bytes from the block's start to `address` (0 but for interior frees). */
    offset: number;
    /** Where it was allocated, as a leak's stack. */
    allocationStack: StackFrame[];
  };
  /** Double frees: the release that freed the block first. */
  firstFree?: {
    releasedBy: AllocatorFunction;
    stack: StackFrame[];
    /** false: releases kept no stack (keepStacktraces 'alloc'), so `stack` is empty. */
    stackKept?: false;
  };
}

/** Heap errors by kind, plus those not recorded (past the kernel's room for them). */
export interface HeapErrorCounts {
  'invalid-free': number;
  'double-free': number;
  'mismatched-free': number;
  /** Errors past the kernel's room for their records: counted, without stacks. */
  notRecorded: number;
}

/** Name a non-glibc allocator (jemalloc, tcmalloc, mimalloc, a static binary) explicitly. */
export interface AllocatorOptions {
  /** ELF file that defines the allocator functions (a shared library or the executable itself). */
  path: string;
  /** Symbol to probe for each function, when it differs from the function's name (e.g. `je_malloc`).
   *  Functions not listed are looked up by their own name and skipped when absent, except
   *  `malloc` and `free`, which are required. */
  symbols?: Partial<Record<AllocatorFunction, string>>;
}

/** Values of the keepStacktraces option (valgrind's --keep-stacktraces, those it can take). */
export const keepStacktracesValues = ['alloc-and-free', 'alloc'] as const;
export type KeepStacktraces = (typeof keepStacktracesValues)[number];

export interface CommonTraceOptions {
  /** Room for at least this many blocks outstanding at once, and for a quarter more before one is
   *  dropped (counted in droppedAllocations), however blocks come and go. The kernel's address
   *  table is allocated whole, ~50 bytes per block; blocks past its buckets' room take ~100 bytes
   *  each, only once there. Default 1,000,000. */
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
   *  ~10 µs less per call), and probes `preload`'s malloc and calloc once, after their call into
   *  glibc; 'entry' puts every probe on the function's first instruction, with a return probe
   *  where the function needs one. */
  probePlacement?: 'optimized' | 'entry';
  /** How stacks are walked: 'auto' (default; x86-64: with the modules' DWARF CFI, so code
   *  without frame pointers, like libstdc++'s operator new, keeps its callers), 'dwarf' (CFI
   *  only), or 'fp' (frame pointers only: the kernel's walk, cheapest to load). */
  unwind?: 'auto' | 'dwarf' | 'fp';
  /** Keep outstanding bytes and blocks per stack in the kernel (tracer.stackTotals()), so a
   *  summary need not walk every block. Default true; false saves ~20-60 ns per call. */
  stackTotals?: boolean;
  /** Which stacks are kept, as valgrind's --keep-stacktraces: 'alloc-and-free' (default) walks
   *  every release's stack too, for a later double free's report; 'alloc' walks it only for an
   *  error's own call, so a double free names the function that released the block first but not
   *  its callers. 'alloc' takes a third to a half off what stacks cost on a malloc-heavy C program
   *  (docs/performance.md). Releases in `pid` mode keep no stack either way. */
  keepStacktraces?: KeepStacktraces;
  /** Directories searched for separate debug files (`.build-id/xx/yyyy.debug`, `.gnu_debuglink`
   *  targets) before /usr/lib/debug. */
  debugDirs?: readonly string[];
  /** Trace every child and grandchild process too (fork, vfork, clone without CLONE_VM,
   *  posix_spawn), each with a report of its own in `report.processes`, as valgrind's
   *  --trace-children=yes. A child starts with the blocks it inherited from its parent. Default
   *  false: children run untraced and `report.untracedChildren` counts them. With a `pid`
   *  target, the children it starts from now on (a pre-fork server's workers). */
  followForks?: boolean;
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
  /** Run the program as this user rather than as this process (which needs root): its uid and
   *  gid, with the user's supplementary groups, and HOME, USER and LOGNAME set from the user
   *  database. The CLI passes the invoking user under sudo (SUDO_UID, SUDO_GID). */
  user?: { uid: number; gid: number };
  /** Start the program with ebpf-leak's allocator entry points in LD_PRELOAD (x86-64, a program
   *  allocating through glibc's shared libc): each is a 5-byte nop and a jump to glibc's own
   *  function; malloc and calloc call it, with a nop after the call where one probe sees the whole
   *  call. A kernel that optimizes uprobes on such nops (6.18 and later) then enters through a
   *  system call instead of a breakpoint trap, which takes a third to a half off what tracing a
   *  malloc-heavy program costs (docs/performance.md). The program sees one more LD_PRELOAD entry;
   *  its children inherit it. Default false. */
  preload?: boolean;
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
  /** Frees of addresses we never saw allocated (allocated before attach, or by another allocator).
   *  In `run` mode, only the allocator's own (glibc's tcache at thread exit): the program's are
   *  heap errors. */
  unknownFrees: number;
  /** Heap errors by kind: in final and stop() reports. */
  errors?: HeapErrorCounts;
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
  /** The C++ symbol `symbol` was demangled from (`_ZL3foov`): what valgrind's suppressions name. */
  mangled?: string;
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
  /** Which allocator that is: 'glibc', 'glibc (static)', 'jemalloc', 'tcmalloc', 'mimalloc', or
   *  'custom' (named with the allocator option). */
  allocatorName?: string;
  /** The command line of the image that exited (after any exec), when known. */
  commandLine?: string[];
  /** The process that started this one, for a followed child. */
  parentPid?: number;
}

/** An image a process ran before it exec'd another: its totals, apart from the report's. */
export interface PreviousImage {
  commandLine: string[];
  allocs: number;
  frees: number;
  bytesAllocated: number;
  /** What it still had allocated when it exec'd: gone with its address space, not leaks. */
  inUseBlocks: number;
  inUseBytes: number;
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
  /** Heap errors, in the order they happened (final and stop() reports). */
  errors?: HeapError[];
  /** Images the process ran before its last exec (a wrapper script, `env`, `nice`), oldest
   *  first. The report itself covers the image that exited, as valgrind's does. */
  previousImages?: PreviousImage[];
  /** Why the image that exited could not be traced (another C library, a stripped static
   *  binary); absent when it was. Its summary then shows nothing of its allocations. */
  untraced?: string;
  /** With followForks: one report per traced process, this process's first, then the others
   *  in the order they started. */
  processes?: LeakReport[];
  /** Child processes that ran untraced: started without followForks, or not followed for lack
   *  of room (more than 4,095 traced at once). */
  untracedChildren?: number;
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
  /** Outstanding allocations now, unordered. followForks: the first traced process's still
   *  running (the one traced first, while it runs). */
  allocations: OutstandingAllocation[];
  summary: HeapSummary;
  /** followForks: one view per traced process still running, in the order they started. */
  processes?: ProcessSnapshot[];
}

/** One process's part of a followForks snapshot. */
export interface ProcessSnapshot {
  pid: number;
  commandLine: string[];
  /** Its outstanding allocations, addresses as it sees them. */
  allocations: OutstandingAllocation[];
  /** Its own counters and what it has in use. */
  summary: HeapSummary;
}

export interface AllocEvent {
  function: Exclude<AllocatorFunction, ReleaseFunction>;
  address: bigint;
  size: number;
  tid: number;
  /** followForks: the process the thread belongs to (absent otherwise). */
  pid?: number;
  /** CLOCK_MONOTONIC nanoseconds. */
  timestampNs: bigint;
}

export interface FreeEvent {
  /** The releasing function: `free`, `operator delete`, ..., or `realloc`/`reallocarray`/`rallocx`
   *  when the block was released by a move or a resize to 0. */
  function: ReleaseFunction | 'realloc' | 'reallocarray' | 'rallocx';
  address: bigint;
  /** Size of the block when it was allocated. */
  size: number;
  tid: number;
  /** followForks: the process the thread belongs to (absent otherwise). */
  pid?: number;
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
