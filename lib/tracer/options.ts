// Validation of trace() options, with exact messages, and the documented defaults.
import { InvalidOptionError } from '../errors.js';
import { probePlacements, type ProbePlacement } from '../probes/placement.js';
import { isUnwindMode, type UnwindMode } from '../native/unwind.js';
import {
  allocatorFunctions,
  keepStacktracesValues,
  type AllocatorOptions,
  type CommandTraceOptions,
  type KeepStacktraces,
  type PidTraceOptions,
  type TraceOptions,
} from '../types.js';

export const defaults = {
  maxAllocations: 1_000_000,
  events: false,
  eventBufferBytes: 8 * 1024 * 1024,
  stacks: true,
  stackDepth: 32,
  probePlacement: 'optimized',
  unwind: 'auto',
  stackTotals: true,
  keepStacktraces: 'alloc-and-free',
  stdio: 'inherit',
  /** Distinct stacks the kernel's stack map holds. */
  stackMapEntries: 65_536,
  /** The targets' page size: x86-64 and the arm64 kernels Debian ships use 4 KiB pages. */
  pageSize: 4096,
  /** Rows of the stack walker's unwind table (8 bytes each): the tables loaded at attach plus
   *  room for modules mapped later (a C++ program's modules have ~75,000 rows, node's ~400,000). */
  unwindTableRows: 1 << 22,
  /** Recently released blocks remembered to tell a double free from an invalid free (run mode),
   *  as valgrind's --freelist-vol bounds its queue: the ways of a table of sets of 8, each set
   *  keeping its 8 latest (bpf/heap_errors.bpf.h). */
  freedBlocks: 65_536,
} as const;

export const limits = {
  // The kernel's table of outstanding blocks is allocated whole: ~50 bytes per block of room.
  maxAllocations: { min: 1, max: 20_000_000 },
  eventBufferBytes: { min: 4096, max: 1024 * 1024 * 1024 },
  stackDepth: { min: 1, max: 127 },
  sampleEveryBytes: { min: 1, max: 2 ** 40 },
  /** The kernel's PID_MAX_LIMIT. */
  pid: { min: 1, max: 2 ** 22 },
};

export interface ResolvedCommon {
  maxAllocations: number;
  events: boolean;
  eventBufferBytes: number;
  allocator: AllocatorOptions | undefined;
  stacks: boolean;
  stackDepth: number;
  probePlacement: ProbePlacement;
  unwind: UnwindMode;
  stackTotals: boolean;
  keepStacktraces: KeepStacktraces;
  /** 0: off. */
  sampleEveryBytes: number;
  debugDirs: string[];
  followForks: boolean;
  leakKinds: boolean;
}
export type ResolvedOptions =
  | (ResolvedCommon & { kind: 'pid'; pid: number })
  | (ResolvedCommon & {
      kind: 'command';
      command: string;
      args: string[];
      cwd: string | undefined;
      env: NodeJS.ProcessEnv;
      stdio: 'inherit' | 'pipe' | 'ignore';
      user: { uid: number; gid: number } | undefined;
      preload: boolean;
    });

function fail(message: string): never {
  throw new InvalidOptionError(message);
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? 'an array' : 'an object';
}

function integerIn(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(`options.${name} must be an integer from ${min} to ${max} (got ${describe(value)})`);
  }
  return value;
}

function allocatorOption(value: unknown): AllocatorOptions | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    fail(`options.allocator must be an object { path, symbols? } (got ${describe(value)})`);
  }
  const { path, symbols } = value as Record<string, unknown>;
  if (typeof path !== 'string' || path === '') {
    fail(`options.allocator.path must be the path of the ELF file that defines the allocator (got ${describe(path)})`);
  }
  if (symbols === undefined) return { path };
  if (typeof symbols !== 'object' || symbols === null || Array.isArray(symbols)) {
    fail(`options.allocator.symbols must be an object mapping function to symbol name (got ${describe(symbols)})`);
  }
  const out: Record<string, string> = {};
  for (const [fn, symbol] of Object.entries(symbols)) {
    if (!(allocatorFunctions as readonly string[]).includes(fn)) {
      fail(`options.allocator.symbols.${fn} is not an allocator function; use one of ${allocatorFunctions.join(', ')}`);
    }
    if (typeof symbol !== 'string' || symbol === '') {
      fail(`options.allocator.symbols.${fn} must be a symbol name (got ${describe(symbol)})`);
    }
    out[fn] = symbol;
  }
  return { path, symbols: out };
}

export function resolveOptions(options: TraceOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) {
    fail(`trace() takes an options object with either pid or command (got ${describe(options)})`);
  }
  const o = options as Partial<PidTraceOptions & CommandTraceOptions>;
  const hasPid = o.pid !== undefined;
  const hasCommand = o.command !== undefined;
  if (hasPid === hasCommand) {
    fail('options must have exactly one of pid (attach to a running process) or command (start one)');
  }
  const eventBufferBytes =
    o.eventBufferBytes === undefined
      ? defaults.eventBufferBytes
      : integerIn('eventBufferBytes', o.eventBufferBytes, limits.eventBufferBytes.min, limits.eventBufferBytes.max);
  if ((eventBufferBytes & (eventBufferBytes - 1)) !== 0) {
    fail(`options.eventBufferBytes must be a power of two (got ${eventBufferBytes})`);
  }
  if (o.probePlacement !== undefined && !probePlacements.includes(o.probePlacement)) {
    fail(`options.probePlacement must be 'optimized' or 'entry' (got ${describe(o.probePlacement)})`);
  }
  if (o.unwind !== undefined && !isUnwindMode(o.unwind)) {
    fail(`options.unwind must be 'auto', 'dwarf' or 'fp' (got ${describe(o.unwind)})`);
  }
  if (o.keepStacktraces !== undefined && !keepStacktracesValues.includes(o.keepStacktraces)) {
    fail(`options.keepStacktraces must be 'alloc-and-free' or 'alloc' (got ${describe(o.keepStacktraces)})`);
  }
  if (o.debugDirs !== undefined && (!Array.isArray(o.debugDirs) || o.debugDirs.some((d) => typeof d !== 'string' || d === ''))) {
    fail(`options.debugDirs must be an array of directory paths (got ${describe(o.debugDirs)})`);
  }
  for (const flag of ['events', 'stacks', 'stackTotals', 'followForks', 'leakKinds'] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== 'boolean') {
      fail(`options.${flag} must be a boolean (got ${describe(o[flag])})`);
    }
  }
  const common: ResolvedCommon = {
    maxAllocations:
      o.maxAllocations === undefined
        ? defaults.maxAllocations
        : integerIn('maxAllocations', o.maxAllocations, limits.maxAllocations.min, limits.maxAllocations.max),
    events: o.events ?? defaults.events,
    eventBufferBytes,
    allocator: allocatorOption(o.allocator),
    stacks: o.stacks ?? defaults.stacks,
    probePlacement: o.probePlacement ?? defaults.probePlacement,
    unwind: o.unwind ?? defaults.unwind,
    stackTotals: o.stackTotals ?? defaults.stackTotals,
    keepStacktraces: o.keepStacktraces ?? defaults.keepStacktraces,
    sampleEveryBytes:
      o.sampleEveryBytes === undefined
        ? 0
        : integerIn('sampleEveryBytes', o.sampleEveryBytes, limits.sampleEveryBytes.min, limits.sampleEveryBytes.max),
    debugDirs: [...(o.debugDirs ?? [])],
    followForks: o.followForks ?? false,
    // A scan needs every block recorded.
    leakKinds: o.leakKinds ?? (hasCommand && o.sampleEveryBytes === undefined),
    stackDepth:
      o.stackDepth === undefined
        ? defaults.stackDepth
        : integerIn('stackDepth', o.stackDepth, limits.stackDepth.min, limits.stackDepth.max),
  };
  if (common.leakKinds && common.sampleEveryBytes > 0) {
    fail('options.leakKinds needs every block recorded: it cannot be used with sampleEveryBytes');
  }
  if (o.preload !== undefined && typeof o.preload !== 'boolean') {
    fail(`options.preload must be a boolean (got ${describe(o.preload)})`);
  }
  if (o.preload && o.followForks) {
    fail(
      'options.preload cannot be used with followForks: the kernel does not carry the optimized probes of the ' +
        "preloaded entry points into a forked child's copy of the program, so a child's calls would go unseen. " +
        'Leave one of them off.',
    );
  }
  if (hasPid) {
    if (o.preload) fail('options.preload is for a command trace() starts: a running process cannot be given a library to preload');
    return { ...common, kind: 'pid', pid: integerIn('pid', o.pid, limits.pid.min, limits.pid.max) };
  }
  if (typeof o.command !== 'string' || o.command === '') {
    fail(`options.command must be a non-empty string: the program to run (got ${describe(o.command)})`);
  }
  const args = o.args ?? [];
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) {
    fail(`options.args must be an array of strings (got ${describe(o.args)})`);
  }
  if (o.cwd !== undefined && typeof o.cwd !== 'string') {
    fail(`options.cwd must be a string (got ${describe(o.cwd)})`);
  }
  if (o.env !== undefined && (typeof o.env !== 'object' || o.env === null)) {
    fail(`options.env must be an object of environment variables (got ${describe(o.env)})`);
  }
  const stdio = o.stdio ?? defaults.stdio;
  if (stdio !== 'inherit' && stdio !== 'pipe' && stdio !== 'ignore') {
    fail(`options.stdio must be 'inherit', 'pipe' or 'ignore' (got ${describe(stdio)})`);
  }
  let user: { uid: number; gid: number } | undefined;
  if (o.user !== undefined) {
    if (typeof o.user !== 'object' || o.user === null) {
      fail(`options.user must be an object { uid, gid } (got ${describe(o.user)})`);
    }
    user = { uid: integerIn('user.uid', o.user.uid, 0, 2 ** 32 - 2), gid: integerIn('user.gid', o.user.gid, 0, 2 ** 32 - 2) };
  }
  return {
    ...common,
    kind: 'command',
    user,
    command: o.command,
    args: [...args],
    cwd: o.cwd,
    env: o.env ?? process.env,
    stdio,
    preload: o.preload ?? false,
  };
}
