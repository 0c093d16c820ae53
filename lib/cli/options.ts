// The CLI's options, once: each row is parsed by lib/cli/args.ts, printed by lib/cli/help.ts (the
// help texts and docs/cli.md) and mapped to trace()'s options by lib/cli/trace-options.ts. Numbers
// are checked against the library's own limits (lib/tracer/options.ts): a bad value is a usage
// error naming the flag.
import { defaults, limits } from '../tracer/options.js';
import { parseLeakKindList } from '../report/leak-kinds.js';
import { allocatorFunctions, keepStacktracesValues, type AllocatorFunction } from '../types.js';
import type { CommonTraceOptions, KeepStacktraces, LeakKind } from '../types.js';

export const DEFAULT_TOP = 10;
export const DEFAULT_INTERVAL_S = 5;

/** A usage error: the message names the flag and what it takes. */
export class Usage extends Error {}

/** Flags shared by `run` and `attach`. Unset numbers mean "the library's default". */
export interface CommonFlags {
  json?: string;
  errorExitcode?: number;
  /** Groups/stacks shown; 0 shows all. */
  top: number;
  maxAllocations?: number;
  eventBufferBytes?: number;
  events: boolean;
  verbose: boolean;
  /** false with --no-stacks. */
  stacks: boolean;
  stackDepth?: number;
  keepStacktraces?: KeepStacktraces; // --keep-stacktraces alloc-and-free|alloc
  /** --allocator PATH and --allocator-symbol FN=SYMBOL. */
  allocator?: { path: string; symbols: Partial<Record<AllocatorFunction, string>> };
  /** --suppressions FILE, in order. */
  suppressions: string[];
  /** false with --no-default-suppressions. */
  defaultSuppressions: boolean;
  /** --gen-suppressions[=valgrind|lsan]. */
  genSuppressions?: 'valgrind' | 'lsan';
  /** --probe-placement optimized|entry. */
  probePlacement?: 'optimized' | 'entry';
  /** --debug-dir DIR, in order. */
  debugDirs: string[];
  /** --unwind auto|dwarf|fp. */
  unwind?: 'auto' | 'dwarf' | 'fp';
  /** --sample-every BYTES. */
  sampleEveryBytes?: number;
  /** --allow-inconclusive: an incomplete run does not fail. */
  allowInconclusive: boolean;
  /** --follow-forks. */
  followForks?: true;
  /** --as-root (run): under sudo, the program runs as root rather than as the invoking user. */
  asRoot?: boolean;
  /** --preload (run): ebpf-leak's allocator entry points in the program's LD_PRELOAD. */
  preload?: boolean;
  /** --show-leak-kinds: loss records printed (default definite,possible). */
  showLeakKinds?: LeakKind[];
  /** --errors-for-leak-kinds: kinds that count as leaks (default definite,possible). */
  errorsForLeakKinds?: LeakKind[];
  /** false with run's --no-leak-kinds, true with attach's --scan. */
  leakKinds?: boolean;
}

/** What `attach` adds. */
export interface AttachFlags {
  pid?: number;
  intervalS?: number;
  durationS?: number;
}

export type CliCommandName = 'run' | 'attach';
type Flags = CommonFlags & AttachFlags;

export interface CliOption {
  /** The long flag, without `--`. */
  name: string;
  short?: string;
  /** The value's name in the help (`N`, `BYTES`); absent for a flag without a value. */
  value?: string;
  /** A flag that may also take an inline value: `--gen-suppressions[=valgrind|lsan]`. */
  optionalValue?: string;
  /** May be given more than once; the values are kept in order. */
  multiple?: boolean;
  commands: readonly CliCommandName[];
  help: string;
  /** Printed after the help as "Default: X." */
  default?: string;
  /** Reads the flag's value (the string, `true` for a flag, or the list of a repeatable one). */
  apply?: (flags: Flags, value: string | true | string[]) => void;
  /** The trace() option it sets: the library's name for it (docs/cli.md's last column). */
  traceOption?: keyof CommonTraceOptions | 'preload';
}

const both = ['run', 'attach'] as const;

/** A decimal integer in [min, max]. */
export function parseIntegerOption(name: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw)) {
    throw new Usage(`option '--${name}' needs an integer from ${min} to ${max}, not '${raw}'`);
  }
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new Usage(`option '--${name}' needs an integer from ${min} to ${max}, not '${raw}'`);
  }
  return n;
}

/** Seconds, decimals allowed; > 0, or >= 0 with allowZero. */
export function parseSecondsOption(name: string, raw: string, allowZero: boolean): number {
  const ok = /^(\d+(\.\d*)?|\.\d+)$/.test(raw);
  const n = ok ? Number(raw) : NaN;
  // setTimeout's limit, about 24.8 days.
  if (!Number.isFinite(n) || n < 0 || (n === 0 && !allowZero) || n * 1000 > 2 ** 31 - 1) {
    const what = allowZero ? 'a number of seconds (0 or more)' : 'a number of seconds above 0';
    throw new Usage(`option '--${name}' needs ${what}, not '${raw}'`);
  }
  return n;
}

const units = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as const;

/** Bytes for a help text: 8388608 -> 8M. */
export function formatBytesOption(n: number): string {
  for (const [unit, size] of [['G', units.g], ['M', units.m], ['K', units.k]] as const) {
    if (n % size === 0) return `${n / size}${unit}`;
  }
  return String(n);
}

/** Bytes with an optional K/M/G suffix (x1024, "KiB"/"KB"/"K" all accepted); a power of two,
 *  within the library's limits for the event buffer. */
export function parseBufferSizeOption(name: string, raw: string): number {
  const m = /^(\d+)\s*(?:([kmg])(?:i?b)?|b)?$/i.exec(raw);
  let n = NaN;
  if (m?.[1] !== undefined) {
    const unit = m[2]?.toLowerCase() as keyof typeof units | undefined;
    n = Number(m[1]) * (unit !== undefined ? units[unit] : 1);
  }
  const { min, max } = limits.eventBufferBytes;
  if (!Number.isSafeInteger(n) || n < min || n > max || (n & (n - 1)) !== 0) {
    throw new Usage(
      `option '--${name}' needs a power of two from ${min} bytes to ${formatBytesOption(max)} (e.g. 65536, 64K, 8M), not '${raw}'`,
    );
  }
  return n;
}

function leakKindList(name: string, raw: string): LeakKind[] {
  try {
    return parseLeakKindList(raw, `option '--${name}'`);
  } catch (err) {
    throw new Usage((err as Error).message);
  }
}

function oneOf<T extends string>(name: string, raw: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(raw)) {
    const list = allowed.map((a) => `'${a}'`);
    const words = list.length === 2 ? list.join(' or ') : `${list.slice(0, -1).join(', ')} or ${list.at(-1)}`;
    throw new Usage(`option '--${name}' takes ${words} (got '${raw}')`);
  }
  return raw as T;
}

const text = (v: string | true | string[]): string => (typeof v === 'string' ? v : String(v));
const list = (v: string | true | string[]): string[] => (Array.isArray(v) ? v : []);

/** Every option, in the order the help lists them. */
export const cliOptions: readonly CliOption[] = [
  {
    name: 'pid',
    short: 'p',
    value: 'PID',
    commands: ['attach'],
    help: 'Process to trace. Required.',
    apply: (f, v) => (f.pid = parseIntegerOption('pid', text(v), limits.pid.min, limits.pid.max)),
  },
  {
    name: 'interval',
    value: 'S',
    commands: ['attach'],
    help: 'Seconds between top-stacks outputs (decimals allowed); 0 turns them off.',
    default: String(DEFAULT_INTERVAL_S),
    apply: (f, v) => (f.intervalS = parseSecondsOption('interval', text(v), true)),
  },
  {
    name: 'duration',
    value: 'S',
    commands: ['attach'],
    help: 'Stop tracing and report after S seconds.',
    default: 'until the process exits, or ebpf-leak gets SIGINT, SIGTERM or SIGHUP',
    apply: (f, v) => (f.durationS = parseSecondsOption('duration', text(v), false)),
  },
  {
    name: 'json',
    value: 'FILE',
    commands: both,
    help: "Also write the report as JSON to FILE ('-' for standard output), with every group.",
    default: 'none',
    apply: (f, v) => {
      if (text(v) === '') throw new Usage(`option '--json' needs a file name ('-' for standard output)`);
      f.json = text(v);
    },
  },
  {
    name: 'error-exitcode',
    value: 'N',
    commands: both,
    help: 'Exit with N (1-255) when blocks were still allocated at the end.',
    default: 'off',
    apply: (f, v) => (f.errorExitcode = parseIntegerOption('error-exitcode', text(v), 1, 255)),
  },
  {
    name: 'allow-inconclusive',
    commands: both,
    help: 'Do not fail when the data is incomplete (allocations not tracked, calls not followed, events lost, stacks missing).',
    default: 'such a run exits 3',
    apply: (f) => (f.allowInconclusive = true),
  },
  {
    name: 'as-root',
    commands: ['run'],
    help:
      'Under sudo, run COMMAND as root. Otherwise it runs as the user who ran sudo (SUDO_UID, SUDO_GID: ' +
      'their groups and HOME); the tracer itself stays root.',
    default: 'as the invoking user',
    apply: (f) => (f.asRoot = true),
  },
  {
    name: 'preload',
    commands: ['run'],
    help:
      "Start COMMAND with ebpf-leak's allocator entry points in LD_PRELOAD: 5-byte nops before a jump " +
      "to glibc's function (malloc and calloc: around a call to it), so that a kernel that optimizes uprobes " +
      'on such nops (6.18+, x86-64) enters through a system call rather than a breakpoint trap, once per ' +
      'call. A third to a half less overhead on malloc-heavy programs; the program sees one more ' +
      'LD_PRELOAD entry. For programs that allocate through glibc.',
    default: 'off',
    apply: (f) => (f.preload = true),
    traceOption: 'preload',
  },
  {
    name: 'follow-forks',
    commands: both,
    help:
      "Trace every child and grandchild process too, each with a report of its own (valgrind's " +
      '--trace-children=yes); with attach, the children the process starts from now on.',
    default: 'off (the report counts the children that ran untraced)',
    apply: (f) => (f.followForks = true),
    traceOption: 'followForks',
  },
  {
    name: 'top',
    value: 'N',
    commands: both,
    help: 'Print the N largest groups (and, with attach, stacks per periodic output); 0 prints all.',
    default: String(DEFAULT_TOP),
    apply: (f, v) => (f.top = parseIntegerOption('top', text(v), 0, Number.MAX_SAFE_INTEGER)),
  },
  {
    name: 'max-allocations',
    value: 'N',
    commands: both,
    help:
      'Room for at least N blocks at once (the kernel table takes ~50 bytes per block); ' +
      'allocations beyond it are counted as dropped and not reported.',
    default: String(defaults.maxAllocations),
    apply: (f, v) =>
      (f.maxAllocations = parseIntegerOption('max-allocations', text(v), limits.maxAllocations.min, limits.maxAllocations.max)),
    traceOption: 'maxAllocations',
  },
  {
    name: 'event-buffer',
    value: 'BYTES',
    commands: both,
    help:
      `Size of the alloc/free event ring buffer: a power of two from ${limits.eventBufferBytes.min} to ` +
      `${formatBytesOption(limits.eventBufferBytes.max)}; K, M, G suffixes (x1024) allowed.`,
    default: formatBytesOption(defaults.eventBufferBytes),
    apply: (f, v) => (f.eventBufferBytes = parseBufferSizeOption('event-buffer', text(v))),
    traceOption: 'eventBufferBytes',
  },
  {
    name: 'events',
    commands: both,
    help: 'Print every allocation and free as it happens, on stderr (slows the program down).',
    default: 'off',
    apply: (f) => (f.events = true),
    traceOption: 'events',
  },
  {
    name: 'verbose',
    commands: both,
    help: "Print tracing progress and lost-event notices, and each group's largest block and sample addresses.",
    default: 'off',
    apply: (f) => (f.verbose = true),
  },
  {
    name: 'no-stacks',
    commands: both,
    help: 'Do not record allocation stacks (lowest overhead; the blocks still allocated form one group).',
    apply: (f) => (f.stacks = false),
    traceOption: 'stacks',
  },
  {
    name: 'stack-depth',
    value: 'N',
    commands: both,
    help: `Frames recorded per stack, ${limits.stackDepth.min}-${limits.stackDepth.max}.`,
    default: String(defaults.stackDepth),
    apply: (f, v) => (f.stackDepth = parseIntegerOption('stack-depth', text(v), limits.stackDepth.min, limits.stackDepth.max)),
    traceOption: 'stackDepth',
  },
  {
    name: 'keep-stacktraces',
    value: 'WHICH',
    commands: both,
    help: "Stacks kept, as valgrind's option: 'alloc-and-free' (a double free shows where the block was first freed) or 'alloc' (faster).",
    default: defaults.keepStacktraces,
    apply: (f, v) => (f.keepStacktraces = oneOf('keep-stacktraces', text(v), keepStacktracesValues)),
    traceOption: 'keepStacktraces',
  },
  {
    name: 'sample-every',
    value: 'BYTES',
    commands: both,
    help:
      'Sampling mode: record one allocation per BYTES bytes on average (Poisson), much cheaper on ' +
      'busy programs; in-use figures become estimates.',
    default: 'off',
    apply: (f, v) =>
      (f.sampleEveryBytes = parseIntegerOption('sample-every', text(v), limits.sampleEveryBytes.min, limits.sampleEveryBytes.max)),
    traceOption: 'sampleEveryBytes',
  },
  {
    name: 'unwind',
    value: 'MODE',
    commands: both,
    help:
      "How stacks are walked: 'auto' (DWARF CFI, so code without frame pointers keeps its callers), " +
      "'dwarf' (CFI only) or 'fp' (frame pointers only).",
    default: defaults.unwind,
    apply: (f, v) => (f.unwind = oneOf('unwind', text(v), ['auto', 'dwarf', 'fp'] as const)),
    traceOption: 'unwind',
  },
  {
    name: 'allocator',
    value: 'PATH',
    commands: both,
    help:
      "Probe the allocator in PATH (a jemalloc/tcmalloc/mimalloc .so, or a static executable) instead of the program's glibc.",
    default: "glibc's libc.so.6",
    apply: (f, v) => (f.allocator = { path: text(v), symbols: f.allocator?.symbols ?? {} }),
    traceOption: 'allocator',
  },
  {
    name: 'allocator-symbol',
    value: 'FN=SYMBOL',
    multiple: true,
    commands: both,
    help:
      'With --allocator: the symbol for allocator function FN (malloc, free, calloc, realloc, ...), ' +
      'e.g. malloc=je_malloc. Repeatable.',
    apply: (f, v) => {
      const symbols: Partial<Record<AllocatorFunction, string>> = {};
      for (const entry of list(v)) {
        const [fn, symbol] = entry.split('=');
        if (!fn || !symbol || !(allocatorFunctions as readonly string[]).includes(fn)) {
          throw new Usage(
            `option '--allocator-symbol' takes FUNCTION=SYMBOL with FUNCTION one of ${allocatorFunctions.join(', ')} (got '${entry}')`,
          );
        }
        symbols[fn as AllocatorFunction] = symbol;
      }
      f.allocator = { path: f.allocator?.path ?? '', symbols };
    },
  },
  {
    name: 'probe-placement',
    value: 'MODE',
    commands: both,
    help:
      "'optimized' moves an entry probe past a function's first instruction to one the kernel emulates " +
      "when that sees every call (much cheaper), and probes --preload's malloc after its call; 'entry' keeps " +
      'every probe on the first instruction, with a return probe where the function needs one.',
    default: defaults.probePlacement,
    apply: (f, v) => (f.probePlacement = oneOf('probe-placement', text(v), ['optimized', 'entry'] as const)),
    traceOption: 'probePlacement',
  },
  {
    name: 'debug-dir',
    value: 'DIR',
    multiple: true,
    commands: both,
    help:
      'Also look for separate debug files (.build-id/xx/yyyy.debug, .gnu_debuglink targets) under DIR, ' +
      'before /usr/lib/debug. Repeatable.',
    apply: (f, v) => (f.debugDirs = list(v)),
    traceOption: 'debugDirs',
  },
  {
    name: 'show-leak-kinds',
    value: 'K',
    commands: both,
    help:
      "Leak kinds whose loss records are printed: a comma-separated list of definite, indirect, possible, " +
      "reachable, or all or none (valgrind's option).",
    default: 'definite,possible',
    apply: (f, v) => (f.showLeakKinds = leakKindList('show-leak-kinds', text(v))),
  },
  {
    name: 'errors-for-leak-kinds',
    value: 'K',
    commands: both,
    help:
      "Leak kinds that count as leaks (--error-exitcode, the JSON's \"leaks\"), as --show-leak-kinds. " +
      "Without a scan of the program's memory (run's --no-leak-kinds, attach without --scan) every block counts.",
    default: 'definite,possible',
    apply: (f, v) => (f.errorsForLeakKinds = leakKindList('errors-for-leak-kinds', text(v))),
  },
  {
    name: 'no-leak-kinds',
    commands: ['run'],
    help:
      'Do not scan the program\'s memory when it exits: every block still allocated then counts as leaked, ' +
      'without a kind.',
    apply: (f) => (f.leakKinds = false),
    traceOption: 'leakKinds',
  },
  {
    name: 'scan',
    commands: ['attach'],
    help:
      "At each --interval and when tracing stops, stop the process's threads briefly (the pause is printed) " +
      "and scan its memory, to split the blocks still allocated into valgrind's leak kinds; if it exits " +
      'while traced, hold it at its exit (ptrace) and scan it there.',
    default: 'off (every block still allocated counts)',
    apply: (f) => (f.leakKinds = true),
    traceOption: 'leakKinds',
  },
  {
    name: 'suppressions',
    value: 'FILE',
    multiple: true,
    commands: both,
    help:
      "Leave out of the leak list what the rules in FILE match: valgrind .supp or LSan 'leak:' files. " +
      'Repeatable. The HEAP SUMMARY still counts all.',
    apply: (f, v) => (f.suppressions = list(v)),
  },
  {
    name: 'no-default-suppressions',
    commands: both,
    help:
      'Also list the one-time allocations of glibc, the dynamic loader, libstdc++, libuv and V8 that ' +
      'are left out by default.',
    apply: (f) => (f.defaultSuppressions = false),
  },
  {
    name: 'gen-suppressions',
    optionalValue: 'valgrind|lsan',
    commands: both,
    help: "Print a suppression rule for each group listed, in valgrind's or LSan's format.",
    default: 'valgrind',
    apply: (f, v) => {
      if (v !== true && v !== 'valgrind' && v !== 'lsan') {
        throw new Usage(`option '--gen-suppressions' takes 'valgrind' or 'lsan' (got '${text(v)}')`);
      }
      f.genSuppressions = v === true ? 'valgrind' : v;
    },
  },
  {
    name: 'help',
    short: 'h',
    commands: both,
    help: 'Show this help and exit.',
  },
];

export function optionsOf(command: CliCommandName): CliOption[] {
  return cliOptions.filter((o) => o.commands.includes(command));
}
