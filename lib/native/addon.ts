// Loads the addon and describes its (deliberately thin) interface. Everything here mirrors
// native/*.cc; validation and policy live in the other lib/ files.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AddonError } from '../errors.js';
import type { NativeExitScan, NativeScan } from './scan-records.js';
import type { NativeUnwindTable, UnwindMode, UnwindStats } from './unwind.js';
import type { SymbolizedBatch } from './symbolized-batch.js';

export interface NativeProbe {
  /** enum leak_fn */
  fn: number;
  path: string;
  entryOffset: number;
  returnOffset: number;
  /** No return probe: the function's work is done at its entry (lib/probes/operators.ts). */
  entryOnly?: boolean;
  /** A preloaded malloc or calloc: `entryOffset` is the nop after its call into glibc, where one
   *  probe sees the whole call; no entry or return probe (lib/probes/plan.ts). */
  afterCall?: boolean;
  /** An entry-only operator new: where the allocation call it makes returns, less entryOffset
   *  (0: it tail-calls another operator new, whose probe says). */
  callReturnDelta?: number;
  /** An entry-only operator new that malloc's return knows by its code: it gets no probe unless
   *  another operator's site takes its offset within a page (bpf/abi/leak.h). */
  site?: { code: Uint8Array; returnAt: number; spDelta: number; zeroAsOne: boolean; instructionStarts: number[] };
}

export interface NativeTracerConfig {
  pid: number;
  waitForExec: boolean;
  /** Never multi-uprobe links: one classic uprobe per function. */
  classicUprobes: boolean;
  maxAllocations: number;
  events: boolean;
  eventBufferBytes: number;
  stacks: boolean;
  stackDepth: number;
  stackMapEntries: number;
  pageSize: number;
  /** Sampling mode: mean bytes between samples; 0 records every allocation. */
  sampleEveryBytes: number;
  btfPath?: string;
  probes: NativeProbe[];
  /** Keep the tracer's own threads (poll thread; workers inside its native calls) out of the
   *  results, in the kernel: `pid` is this process. */
  ignoreOwnThreads: boolean;
  /** Stack walker (lib/native/unwind.ts). */
  unwind: UnwindMode;
  /** Files whose unwind tables are loaded before a `command` target runs (its program and the
   *  libraries it links, from `ld.so --list`); empty for pid targets. */
  unwindFiles: string[];
  /** Most unwind table rows (8 bytes each). */
  unwindTableRows: number;
  /** The dynamic loader's `_dl_debug_state()` (lib/probes/loader.ts), probed when supervised. */
  loaderPath?: string;
  loaderOffset?: number;
  /** Keep outstanding bytes and blocks per stack in the kernel (readStackTotals). */
  stackTotals: boolean;
  /** Run mode: releases of addresses that are not outstanding blocks are heap errors. */
  heapErrors?: boolean;
  /** Walk a release's stack and keep it for a later double free's report (keepStacktraces). */
  releaseStacks: boolean;
  /** Recently released blocks remembered to tell a double free (default 65,536). */
  freedBlocks?: number;
  /** Inode of the allocator's file: frees it makes itself are not the program's errors. */
  allocatorInode?: number;
  /** Follow the process with ptrace (native/process/): exec()s start a new image, children are
   *  counted ('exec' messages wait for resumeProcess()). */
  supervise?: boolean;
  /** With `supervise`: trace every child process too, each with its own blocks. */
  followForks?: boolean;
  /** Scan the target's memory for the leak kinds at its exit stop (native/scan/); a pid target
   *  without `supervise` is seized with ptrace for that hold alone, and traced on without it when
   *  ptrace is refused (takeExitScan() then says why). */
  scanAtExit?: boolean;
  /** Why a pid target is not to be held at its exit (takeExitScan() says it). */
  holdRefused?: string;
  /** The probed allocator is glibc's: its arenas are told apart from the program's memory. */
  glibc?: boolean;
}

export type NativeMessageType = 'events' | 'counters' | 'exit' | 'exec' | 'fork' | 'process';

/** A message from the poll thread: `data` holds `length` bytes, or for an events batch written
 *  into an event slot (`slot` >= 0; see eventSlots()), `data` is null. */
export type NativeMessageHandler = (type: NativeMessageType, data: ArrayBuffer | null, length: number, slot: number) => void;

export interface NativeSnapshot {
  /** leak_block records, or leak_timed_block records when asked for timestamps */
  entries: ArrayBuffer;
  /** struct leak_counters, summed over CPUs */
  counters: ArrayBuffer;
  /** CLOCK_MONOTONIC when the walk finished */
  nowNs: bigint;
}

export interface NativeTracer {
  /** Resolves with how the probes were attached: one multi-uprobe link, or one uprobe each. */
  attach(): Promise<{ mode: 'uprobe_multi' | 'uprobe' }>;
  /** The outstanding blocks; with `timestamps`, each one's allocation time too (8 more bytes a
   *  block: only Snapshot.allocations shows it). */
  snapshot(timestamps: boolean): Promise<NativeSnapshot>;
  /** Stops every thread of the target (followForks: of the traced process `pid`; its blocks'
   *  addresses without their process's index), scans its memory for the leak kinds, resumes it. */
  scan(pid?: number): Promise<NativeScan>;
  /** Once the target is gone: the scan made at its exit, or why there is none. */
  takeExitScan(): NativeExitScan;
  readStacks(ids: number[]): Promise<BigUint64Array[]>;
  /** struct leak_module records, each after its 8-byte key */
  readModules(): Promise<ArrayBuffer>;
  /** The count of heap errors seen (u64), then the struct leak_heap_error records kept. */
  readHeapErrors(): Promise<ArrayBuffer>;
  /** Outstanding bytes and blocks per stack id, kept in the kernel: {s64 stack id, s64 bytes,
   *  s64 blocks} records (lib/native/unwind.ts decodeStackTotals). Null once closed. */
  readStackTotals(): ArrayBuffer | null;
  /** The stack walker's counters and tables; null once closed. */
  unwindStats(): UnwindStats | null;
  counters(): ArrayBuffer | null;
  setMark(mark: number): void;
  /** A pid target's wait status, recorded in the kernel as its last thread exited; null before,
   *  or for a command target (its status comes from waitid()). */
  exitStatus(): number | null;
  /** The events batch in `slot` has been delivered to the listeners (or dropped): the poll thread
   *  may write the slot again (native/tracer/event_slots.h). A no-op for -1. */
  eventsDelivered(slot: number): void;
  /** The ArrayBuffers events batches are written into, by slot (none with events off). */
  eventSlots(): ArrayBuffer[];
  /** A process stopped at its exec ('exec' message) may run on. */
  resumeProcess(pid: number): void;
  /** Attaches probes on another allocator file (an exec'd image's). */
  addProbes(probes: NativeProbe[]): Promise<void>;
  /** The unwind tables of files a new image will map, loaded before it runs on (a worker thread). */
  loadUnwindFiles(paths: string[]): Promise<void>;
  processStats(): { untracedChildren: number; lostChildren: number; supervised: boolean };
  /** struct leak_counters of the traced process with this index (followForks); null if none. */
  processCounters(index: number): ArrayBuffer | null;
  close(): void;
  /** close() on the threadpool: detaching waits for other CPUs to leave the probes. */
  closeAsync(): Promise<void>;
}

export interface NativeElfSymbol {
  /** st_value */
  address: number;
  /** file offset, what a uprobe takes */
  offset: number;
  size: number;
}

export interface NativeElfInfo {
  type: 'exec' | 'dyn' | 'other';
  interpreter: string | null;
  soname: string | null;
  needed: string[];
  symbols: Record<string, NativeElfSymbol>;
  /** Of the `imports` asked for, those the file calls through its GOT: name -> the address of the
   *  GOT slot (x86-64 files only). */
  imports: Record<string, number>;
}

export interface NativeLayout {
  block: number;
  timedBlock: number;
  counters: number;
  event: number;
  module: number;
  heapError: number;
}

export interface NativeTracerClass {
  new (config: NativeTracerConfig, onMessage: NativeMessageHandler): NativeTracer;
  /** C++ (Itanium ABI) demangling; null when `name` is not a mangled name. */
  demangle(name: string): string | null;
}

/** A program started held before exec (native/process/held_process.h). */
export interface NativeHeldProcess {
  /** Spawns the launcher (posix_spawn, on a worker thread). `stdio`: the parent's pipe ends for the
   *  program's fds 0-2 with stdio 'pipe', else -1. */
  start(): Promise<{ pid: number; stdio: [number, number, number] }>;
  /** The launcher execs the program; false when it is gone already. */
  release(): boolean;
  /** pidfd_send_signal(); false once the process has exited. */
  kill(signal: number): boolean;
  ref(): void;
  unref(): void;
  /** Idempotent. Ends the exit watch; a launcher not yet released exits without running anything. */
  close(): void;
}

export interface NativeHeldProcessConfig {
  /** The launcher. */
  file: string;
  /** argv[0] included. */
  argv: readonly string[];
  /** NAME=value strings. */
  env: readonly string[];
  cwd?: string;
  stdio: 'inherit' | 'pipe' | 'ignore';
  /** Run the program as this user, with its groups and HOME, USER, LOGNAME. */
  user?: { uid: number; gid: number };
}

export interface NativeHeldProcessClass {
  /** `onExit` runs once, with the exit status or the number of the signal that killed it. */
  new (config: NativeHeldProcessConfig, onExit: (code: number | null, signal: number | null) => void): NativeHeldProcess;
}

export interface NativeSymbolizeOptions {
  /** Extra roots searched for `.build-id/xx/yyyy.debug` and `.gnu_debuglink` files, before
   *  `/proc/PID/root/usr/lib/debug` (for modules under a /proc/PID/root) and `/usr/lib/debug`. */
  debugDirs?: string[];
}

/** The addon's symbolizer (native/symbols/symbolizer.cc), what lib/report/symbolize.ts uses. */
export interface NativeSymbolizer {
  /** File offsets in `modulePath` -> frames, one entry per offset, compact
   *  (lib/native/symbolized-batch.ts). Runs off the JS thread. */
  symbolize(
    modulePath: string,
    offsets: BigUint64Array | Array<number | bigint>,
    options?: NativeSymbolizeOptions,
  ): Promise<SymbolizedBatch>;
  readBuildId(path: string): string | null;
}

export interface NativeAddon extends NativeSymbolizer {
  Tracer: NativeTracerClass;
  HeldProcess: NativeHeldProcessClass;
  readElf(path: string, symbols: readonly string[], imports?: readonly string[]): NativeElfInfo;
  /** A file a traced process names, opened for reading (native/target/target_file.h): regular files
   *  only, at most `maxBytes` (default 2 GiB), resolved inside /proc/PID/root when under it. The
   *  caller closes the fd. Throws with code ELEAK_UNSAFE_FILE when refused. */
  openTargetFile(path: string, maxBytes?: number): number;
  /** The stack walker's unwind table of a file (native/unwind/unwinder.cc). */
  unwindTable(path: string): NativeUnwindTable;
  /** Runs a short-lived program with posix_spawn() on a worker thread (native/process/run_program.h):
   *  child_process would fork this whole process on the JS thread. `argv[0]` included; `env` as
   *  NAME=value strings. A timeout kills the program with SIGKILL. */
  runProgram(file: string, argv: readonly string[], env: readonly string[], timeoutMs: number): Promise<ProgramResult>;
  /** Frees a buffer the addon returned now rather than when collected (native/addon/release_buffer.h);
   *  it reads as empty afterwards. False when V8 would not detach it (it is then collected as usual). */
  releaseBuffer(buffer: ArrayBuffer): boolean;
  /** Fixed glibc malloc thresholds, so that the arenas of worker threads give back their free tops
   *  (native/addon/malloc_policy.h). Process-wide: the CLI's process only. False if glibc refused. */
  keepArenasTrimmed(): boolean;
  /** x86-64 instructions of `code`, which starts at `address` (native/x86/x86_decoder.h): every one
   *  that starts in the first `detailBytes`, then only those that do not fall through. Absent
   *  from builds for other architectures. */
  decodeX86?(code: Uint8Array, address: number, detailBytes: number): NativeX86Instruction[];
  layout: NativeLayout;
}

/** How an instruction leaves: 'next' falls through to the following one. */
export type X86Flow =
  | 'next'
  | 'jump'
  | 'conditional-jump'
  | 'indirect-jump'
  | 'call'
  | 'indirect-call'
  | 'return'
  | 'interrupt'
  | 'exception'
  | 'other';

export interface NativeX86Instruction {
  /** `address` plus its offset in `code`. */
  offset: number;
  length: number;
  /** AT&T syntax; '(bad)' when invalid. */
  text: string;
  flow: X86Flow;
  /** A direct branch's or call's target. */
  target?: number;
  /** Does not decode (only reported in the detailed part, where decoding stops). */
  invalid: boolean;
  /** 64-bit names of the registers it writes, implicitly or conditionally included. */
  writes: string[];
  /** `test %rdi,%rdi` or `cmp $0,%rdi`: ZF set exactly when the first argument is NULL. */
  testsFirstArgForNull: boolean;
  /** je/jz. */
  jumpsIfZero: boolean;
}

export interface ProgramResult {
  status: number | null;
  signal: number | null;
  stdout: string;
  stderr: string;
}

const here = dirname(fileURLToPath(import.meta.url));
/** The package root, two up from lib/native/ (from source, in tests) or dist/native/ (installed). */
const packageRoot = join(here, '..', '..');
/** A source build first (`npm run build`, or `npm rebuild ebpf-leak --build-from-source`), then the
 *  binaries the package ships for this platform (docs/install.md). */
const buildDirs = ['build/Release', 'build/Debug'].map((d) => join(packageRoot, d));
/** Platforms with binaries in prebuilds/ (scripts/prebuilds.js); glibc only (musl has other symbols). */
export const prebuiltPlatforms = ['linux-x64', 'linux-arm64'] as const;

let addon: NativeAddon | undefined;

function platformName(): string {
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime;
  return `${process.platform}-${process.arch}${process.platform === 'linux' && !glibc ? ' (not glibc)' : ''}`;
}

const buildAdvice =
  "To build it from source (clang, bpftool, cmake, g++ and libbpf, libelf, libdw, zlib development files; see the package's docs/install.md): " +
  '`npm install --save-dev cmake-js node-addon-api && npm rebuild ebpf-leak --build-from-source`.';

let addonDir: string | undefined;

export function nativeBuildDir(): string {
  addonDir ??= findAddonDir();
  return addonDir;
}

function findAddonDir(): string {
  const built = buildDirs.find((d) => existsSync(join(d, 'ebpf_leak.node')));
  if (built) return built;
  const platform = platformName();
  const prebuilt = join(packageRoot, 'prebuilds', platform);
  if (existsSync(join(prebuilt, 'ebpf_leak.node'))) return prebuilt;
  const known = (prebuiltPlatforms as readonly string[]).includes(platform);
  throw new AddonError(
    (known
      ? `the prebuilt native addon for ${platform} is missing from ${prebuilt}: reinstall ebpf-leak. `
      : `no native addon for ${platform}: ebpf-leak has prebuilt binaries for ${prebuiltPlatforms.join(', ')} (glibc 2.28 or newer). `) +
      buildAdvice,
  );
}

export function loadNative(): NativeAddon {
  if (!addon) {
    const file = join(nativeBuildDir(), 'ebpf_leak.node');
    const require = createRequire(import.meta.url);
    try {
      addon = require(file) as NativeAddon;
    } catch (err) {
      throw new AddonError(`the native addon ${file} does not load: ${(err as Error).message}. ${buildAdvice}`, {
        cause: err,
      });
    }
  }
  return addon;
}

/** The allocator entry points a `preload` command gets in LD_PRELOAD (native/preload/preload.c),
 *  built beside the addon on x86-64 only: the C functions, or those and C++'s operator delete
 *  (`cxx`). null where there is none. */
export function preloadLibraryPath(variant: 'c' | 'cxx' = 'c'): string | null {
  const file = join(nativeBuildDir(), variant === 'cxx' ? 'libebpf-leak-preload-cxx.so' : 'libebpf-leak-preload.so');
  return existsSync(file) ? file : null;
}

/** The held-before-exec launcher built beside the addon (native/process/launcher.c). */
export function launcherPath(): string {
  return join(nativeBuildDir(), 'ebpf-leak-exec');
}
