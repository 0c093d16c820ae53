#!/usr/bin/env node
// The ebpf-leak command line: `run`, `attach`, `help`, `--version`.
//
// Argument parsing is pure (parseCliArgs: argv in, a typed command or a usage error out) so it is
// unit tested without a kernel. The tracer modules are imported lazily, when a command actually
// traces, so `--help` works (and this file can be imported by tests) without the native addon.

import { readFileSync, realpathSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { formatCount, formatScanLines, formatSnapshotTop, shellQuote } from '../report/text-format.js';
import { defaultShownKinds, parseLeakKindList } from '../report/leak-kinds.js';
import { writeJsonReport } from '../report/json-format.js';
import { stackUseSliced } from '../report/snapshot-stacks.js';
import { defaults, limits } from '../tracer/options.js';
import type { CheckedLeakReport } from '../report/checked.js';
import type { LeakTracer, TracerInfo } from '../tracer/leak-tracer.js';
import type { UnwindStats } from '../native/unwind.js';
import { allocatorFunctions, type AllocatorFunction, type AllocEvent, type CommonTraceOptions, type FreeEvent, type LeakKind, type LeakReport, type LostInfo, type Snapshot } from '../types.js';

// ---------------------------------------------------------------------------------------------
// Commands

export const DEFAULT_TOP = 10;
export const DEFAULT_INTERVAL_S = 5;
// The library's limits (lib/tracer/options.ts), checked here too so a bad value is a usage error that
// names the flag rather than the library option.
const MAX_ALLOCATIONS_LIMIT = limits.maxAllocations.max;
const EVENT_BUFFER_LIMIT = 1024 ** 3;
const PID_LIMIT = 2 ** 22;
const DEFAULT_MAX_ALLOCATIONS = String(defaults.maxAllocations);
const DEFAULT_EVENT_BUFFER = `${defaults.eventBufferBytes / 1024 ** 2}M`;

/** Help for the flags `run` and `attach` share, written once. */
const TRACING_OPTIONS_HELP = `  --max-allocations N    Room for at least N blocks at once (the kernel table
                         takes ~50 bytes per block); allocations beyond it
                         are counted as dropped and not reported.
                         Default: ${DEFAULT_MAX_ALLOCATIONS}.
  --event-buffer BYTES   Size of the alloc/free event ring buffer: a power of
                         two from 4096 to 1G; K, M, G suffixes (x1024) allowed.
                         Default: ${DEFAULT_EVENT_BUFFER}.
  --events               Print every allocation and free as it happens, on
                         stderr (slows the program down). Default: off.
  --verbose              Print tracing progress and lost-event notices, and
                         each group's largest block and sample addresses.
                         Default: off.
  --no-stacks            Do not record allocation stacks (lowest overhead;
                         the blocks still allocated form one group).
  --stack-depth N        Frames recorded per stack, 1-127. Default: 32.
  --sample-every BYTES   Sampling mode: record one allocation per BYTES bytes
                         on average (Poisson), much cheaper on busy programs;
                         in-use figures become estimates. Default: off.
  --unwind MODE          How stacks are walked: 'auto' (DWARF CFI, so code
                         without frame pointers keeps its callers), 'dwarf'
                         (CFI only) or 'fp' (frame pointers only).
                         Default: auto.
  --allocator PATH       Probe the allocator in PATH (a jemalloc/tcmalloc/
                         mimalloc .so, or a static executable) instead of
                         the program's glibc. Default: glibc's libc.so.6.
  --allocator-symbol FN=SYMBOL
                         With --allocator: the symbol for allocator function
                         FN (malloc, free, calloc, realloc, ...), e.g.
                         malloc=je_malloc. Repeatable.
  --probe-placement MODE 'optimized' moves an entry probe past a function's
                         first instruction to one the kernel emulates when
                         that sees every call (much cheaper); 'entry' keeps
                         every probe on the first instruction.
                         Default: optimized.
  --debug-dir DIR        Also look for separate debug files (.build-id/xx/
                         yyyy.debug, .gnu_debuglink targets) under DIR, before
                         /usr/lib/debug. Repeatable.
  --show-leak-kinds=K    Leak kinds whose loss records are printed: a list of
                         definite, indirect, possible, reachable, or all or
                         none (valgrind's option). Default: definite,possible.
  --errors-for-leak-kinds=K
                         Leak kinds that count as leaks (--error-exitcode,
                         the JSON's "leaks"). Default: definite,possible.
                         Without a scan of the program's memory (see run's
                         --no-leak-kinds, attach's --scan) every block counts.
  --suppressions FILE    Leave out of the leak list what the rules in FILE
                         match: valgrind .supp or LSan 'leak:' files.
                         Repeatable. The HEAP SUMMARY still counts all.
  --no-default-suppressions
                         Also list the one-time allocations of glibc, the
                         dynamic loader, libstdc++, libuv and V8 that are
                         left out by default.
  --gen-suppressions[=valgrind|lsan]
                         Print a suppression rule for each group listed.
                         Default format: valgrind.
  -h, --help             Show this help and exit.`;

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
  /** --show-leak-kinds: loss records printed (default definite,possible). */
  showLeakKinds?: LeakKind[];
  /** --errors-for-leak-kinds: kinds that count as leaks (default definite,possible). */
  errorsForLeakKinds?: LeakKind[];
  /** false with --no-leak-kinds (run: no exit hold, no scan). */
  leakKinds: boolean;
}

export interface RunCommand extends CommonFlags {
  kind: 'run';
  command: string;
  args: string[];
}

export interface AttachCommand extends CommonFlags {
  kind: 'attach';
  pid: number;
  /** Seconds between periodic top-stacks outputs; 0 turns them off. */
  intervalS: number;
  /** Stop after this many seconds; undefined: until exit or a signal. */
  durationS?: number;
  /** --scan: stop the process briefly at each interval and at the end, and sort its blocks
   *  into leak kinds. */
  scan: boolean;
}

export type HelpTopic = 'main' | 'run' | 'attach';

export interface HelpCommand {
  kind: 'help';
  topic: HelpTopic;
}

export interface VersionCommand {
  kind: 'version';
}

export type CliCommand = RunCommand | AttachCommand | HelpCommand | VersionCommand;

export interface UsageError {
  kind: 'usage-error';
  /** One line, without the "ebpf-leak: " prefix. */
  message: string;
  /** Which help to point at. */
  topic: HelpTopic;
}

// ---------------------------------------------------------------------------------------------
// Help texts

export const MAIN_USAGE =
  'usage: ebpf-leak run [OPTIONS] -- COMMAND [ARGS...]\n       ebpf-leak attach -p PID [OPTIONS]';
export const RUN_USAGE = 'usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]';
export const ATTACH_USAGE = 'usage: ebpf-leak attach -p PID [OPTIONS]';

export const MAIN_HELP = `ebpf-leak - find native memory leaks by tracing malloc/free with eBPF uprobes

Usage:
  ebpf-leak run [OPTIONS] -- COMMAND [ARGS...]
  ebpf-leak attach -p PID [OPTIONS]
  ebpf-leak help [run | attach]
  ebpf-leak --help | --version

Commands:
  run       Start COMMAND and trace it from its first instruction; when it
            exits, report the heap blocks still allocated, grouped by stack.
  attach    Trace a running process: print the top allocation stacks every few
            seconds, and a report when it exits, on Ctrl-C, or after --duration.
  help      Show the help of a command (same as 'ebpf-leak COMMAND --help').

Options:
  -h, --help    Show this help and exit.
  --version     Print the version and exit.

No recompiling, no LD_PRELOAD: uprobes on the target's allocator (glibc's
malloc, free, calloc, realloc, ...) count allocations in the kernel while the
program runs at nearly full speed. Needs Linux with BTF and uprobes, and root
(or the CAP_BPF and CAP_PERFMON capabilities).

The human-readable output goes to standard error; standard output is left to the
traced program (and to '--json -').

Exit status:
  run       the program's exit status, 128+N if signal N killed it, or the
            --error-exitcode value when blocks were still allocated at exit
  attach    0, or the --error-exitcode value when blocks were still allocated
  2         usage error, or tracing failed (the message says why and what to do)

Examples:
  ebpf-leak run -- ./myprog --input data.txt
  ebpf-leak run --error-exitcode 7 --json leaks.json -- ./unit-tests
  ebpf-leak attach -p 1234 --interval 10
  ebpf-leak help run
`;

export const RUN_HELP = `Usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]

Start COMMAND (a path, or a name looked up in PATH) held before exec, attach
the probes, then let it run, so every allocation from its first instruction is
seen. When it exits, print a valgrind-style report: the HEAP SUMMARY, the
blocks still allocated grouped by allocation stack (largest first), and the
LEAK SUMMARY. The program keeps ebpf-leak's stdin, stdout and stderr; the
report goes to stderr.

Options are read up to COMMAND; everything after COMMAND is passed to it. Put
'--' before COMMAND when it starts with '-' (or simply always).

Options:
  --json FILE            Also write the report as JSON to FILE ('-' for
                         standard output), with every group. Default: none.
  --error-exitcode N     Exit with N (1-255) instead of the program's status
                         when blocks were still allocated at exit.
                         Default: off.
  --top N                Print the N largest groups; 0 prints all.
                         Default: ${DEFAULT_TOP}.
${TRACING_OPTIONS_HELP}

Signals: SIGINT, SIGTERM and SIGHUP sent to ebpf-leak are passed on to the
program (a Ctrl-C in the terminal reaches both already, so it is not sent
twice); the report is printed when the program exits.

The program is held when it exits (after atexit handlers and static
destructors, before its memory goes), and its memory is scanned for pointers
to the blocks still allocated, which splits them into valgrind's leak kinds:
definitely lost (nothing points at it), indirectly lost (only lost blocks do),
possibly lost (only pointers into its middle do) and still reachable (a
global, a stack or thread-local storage does: glibc's stdout buffer, a static
cache). Only the definitely and possibly lost count as leaks by default
(--errors-for-leak-kinds). A program killed by a signal is not held: then
every block still allocated counts, and the report says why.

  --no-leak-kinds        Do not hold the program at exit nor scan it: every
                         block still allocated counts as leaked.

Exit status:
  the program's exit status, or 128+N when signal N killed it (like a shell);
  N, with --error-exitcode N, when blocks were still allocated at exit;
  2 on a usage error, or when tracing failed (not permitted, no BTF, command
  not found, ...; the message says what to do).

Examples:
  ebpf-leak run -- ./myprog input.txt
  ebpf-leak run --top 3 --json leaks.json -- ./myprog
  ebpf-leak run --error-exitcode 7 -- ./unit-tests   # CI: fail on leaks
  ebpf-leak run --top 0 --verbose -- ./myprog   # every group, with addresses
`;

export const ATTACH_HELP = `Usage: ebpf-leak attach -p PID [OPTIONS]

Attach to the running process PID and trace its allocations from now on.
Every --interval seconds print the stacks holding the most outstanding bytes
(like BCC's memleak). When the process exits, on Ctrl-C (SIGINT), SIGTERM or
SIGHUP, or after --duration, print the report of the blocks allocated while
tracing that are still allocated, and detach; the process keeps running.
Blocks allocated before the attach are not seen; their frees are counted as
unknown frees.

Options:
  -p, --pid PID          Process to trace. Required.
  --interval S           Seconds between top-stacks outputs (decimals
                         allowed); 0 turns them off. Default: ${DEFAULT_INTERVAL_S}.
  --duration S           Stop tracing and report after S seconds.
                         Default: until the process exits, or ebpf-leak gets
                         SIGINT, SIGTERM or SIGHUP.
  --top N                Stacks per periodic output and groups in the report;
                         0 shows all. Default: ${DEFAULT_TOP}.
  --json FILE            Also write the final report as JSON to FILE ('-' for
                         standard output), with every group. Default: none.
  --error-exitcode N     Exit with N (1-255) when blocks were still allocated
                         when tracing stopped. Default: off.
  --scan                 At each --interval and when tracing stops, stop the
                         process's threads briefly (the pause is printed) and
                         scan its memory, to split the blocks still allocated
                         into valgrind's leak kinds (definitely lost, ...).
                         Default: off (every block still allocated counts).
${TRACING_OPTIONS_HELP}

The periodic output and the report go to stderr. A second SIGINT, SIGTERM or
SIGHUP while the report is being made ends ebpf-leak at once.

Exit status:
  0 when tracing ended (the process's own status is in the report);
  N, with --error-exitcode N, when blocks were still allocated;
  128+N when a second signal N ended ebpf-leak before the report;
  2 on a usage error, or when tracing failed (not permitted, no such process,
  ...; the message says what to do).

Examples:
  ebpf-leak attach -p 1234
  ebpf-leak attach -p "$(pidof myserver)" --interval 30 --top 5
  ebpf-leak attach -p 1234 --interval 0 --duration 60 --json leaks.json
`;

export function helpText(topic: HelpTopic): string {
  return topic === 'run' ? RUN_HELP : topic === 'attach' ? ATTACH_HELP : MAIN_HELP;
}

export function usageLine(topic: HelpTopic): string {
  return topic === 'run' ? RUN_USAGE : topic === 'attach' ? ATTACH_USAGE : MAIN_USAGE;
}

/** What a usage error prints on stderr (before exiting 2). */
export function formatUsageError(err: UsageError): string {
  const help = err.topic === 'main' ? 'ebpf-leak --help' : `ebpf-leak ${err.topic} --help`;
  return `ebpf-leak: ${err.message}\n${usageLine(err.topic)}\ntry '${help}'\n`;
}

// ---------------------------------------------------------------------------------------------
// Parsing

interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** A boolean that may also take an inline value: --flag or --flag=VALUE. */
  optionalValue?: boolean;
}

const commonOptions = {
  json: { type: 'string' },
  'error-exitcode': { type: 'string' },
  top: { type: 'string' },
  'max-allocations': { type: 'string' },
  'event-buffer': { type: 'string' },
  events: { type: 'boolean' },
  verbose: { type: 'boolean' },
  'no-stacks': { type: 'boolean' },
  'stack-depth': { type: 'string' },
  allocator: { type: 'string' },
  'allocator-symbol': { type: 'string', multiple: true },
  suppressions: { type: 'string', multiple: true },
  'no-default-suppressions': { type: 'boolean' },
  'gen-suppressions': { type: 'boolean', optionalValue: true },
  'probe-placement': { type: 'string' },
  'debug-dir': { type: 'string', multiple: true },
  unwind: { type: 'string' },
  'sample-every': { type: 'string' },
  'show-leak-kinds': { type: 'string' },
  'errors-for-leak-kinds': { type: 'string' },
  'no-leak-kinds': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Record<string, OptionSpec>;

const runOptions = commonOptions;

const attachOptions = {
  ...commonOptions,
  pid: { type: 'string', short: 'p' },
  interval: { type: 'string' },
  duration: { type: 'string' },
  scan: { type: 'boolean' },
} as const satisfies Record<string, OptionSpec>;

type Values = Map<string, string | true | string[]>;

class Usage extends Error {}

function usage(message: string, topic: HelpTopic): UsageError {
  return { kind: 'usage-error', message, topic };
}

/**
 * Reads options from `argv` until the first positional argument (or `--`). Returns the option
 * values (last one wins) and the arguments from the first positional on (`--` dropped).
 * Throws Usage for unknown options, missing values and values given to flags.
 */
function readOptions(
  argv: readonly string[],
  spec: Record<string, OptionSpec>,
): { values: Values; rest: string[] } {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, s] of Object.entries(spec)) options[name] = { ...s };
  const { tokens } = parseArgs({
    args: [...argv],
    options,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  const values: Values = new Map();
  for (const token of tokens) {
    if (token.kind === 'option-terminator') return { values, rest: argv.slice(token.index + 1) };
    if (token.kind === 'positional') return { values, rest: argv.slice(token.index) };
    const s = spec[token.name];
    if (s === undefined) {
      throw new Usage(`unknown option '${token.rawName}'`);
    }
    if (s.type === 'boolean') {
      if (token.value !== undefined && !s.optionalValue) throw new Usage(`option '${token.rawName}' takes no value`);
      values.set(token.name, token.value ?? true);
      continue;
    }
    const value = token.value;
    // parseArgs (non-strict) takes the next argument even when it looks like an option.
    if (value === undefined || (!token.inlineValue && value.startsWith('-') && value !== '-')) {
      throw new Usage(`option '${token.rawName}' needs a value`);
    }
    if (s.multiple) {
      const list = values.get(token.name);
      values.set(token.name, Array.isArray(list) ? [...list, value] : [value]);
    } else {
      values.set(token.name, value);
    }
  }
  return { values, rest: [] };
}

function str(values: Values, name: string): string | undefined {
  const v = values.get(name);
  return typeof v === 'string' ? v : undefined;
}

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

/** Bytes with an optional K/M/G suffix (x1024, "KiB"/"KB"/"K" all accepted); a power of two, 4K-1G. */
export function parseBufferSizeOption(name: string, raw: string): number {
  const m = /^(\d+)\s*(?:([kmg])(?:i?b)?|b)?$/i.exec(raw);
  const multiplier = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as const;
  let n = NaN;
  if (m?.[1] !== undefined) {
    const unit = m[2]?.toLowerCase() as keyof typeof multiplier | undefined;
    n = Number(m[1]) * (unit !== undefined ? multiplier[unit] : 1);
  }
  if (!Number.isSafeInteger(n) || n < 4096 || n > EVENT_BUFFER_LIMIT || (n & (n - 1)) !== 0) {
    throw new Usage(
      `option '--${name}' needs a power of two from 4096 bytes to 1G (e.g. 65536, 64K, 8M), not '${raw}'`,
    );
  }
  return n;
}

function commonFlags(values: Values): CommonFlags {
  const flags: CommonFlags = {
    top: DEFAULT_TOP,
    events: values.get('events') === true,
    verbose: values.get('verbose') === true,
    stacks: values.get('no-stacks') !== true,
    suppressions: (() => {
      const v = values.get('suppressions');
      return Array.isArray(v) ? v : [];
    })(),
    defaultSuppressions: values.get('no-default-suppressions') !== true,
    leakKinds: values.get('no-leak-kinds') !== true,
    debugDirs: (() => {
      const v = values.get('debug-dir');
      return Array.isArray(v) ? v : [];
    })(),
  };
  const placement = str(values, 'probe-placement');
  if (placement !== undefined) {
    if (placement !== 'optimized' && placement !== 'entry') {
      throw new Usage(`option '--probe-placement' takes 'optimized' or 'entry' (got '${placement}')`);
    }
    flags.probePlacement = placement;
  }
  const sampleEvery = str(values, 'sample-every');
  if (sampleEvery !== undefined) flags.sampleEveryBytes = parseIntegerOption('sample-every', sampleEvery, 1, 2 ** 40);
  const unwind = str(values, 'unwind');
  if (unwind !== undefined) {
    if (unwind !== 'auto' && unwind !== 'dwarf' && unwind !== 'fp') {
      throw new Usage(`option '--unwind' takes 'auto', 'dwarf' or 'fp' (got '${unwind}')`);
    }
    flags.unwind = unwind;
  }
  const gen = values.get('gen-suppressions');
  if (gen !== undefined) {
    if (gen !== true && gen !== 'valgrind' && gen !== 'lsan') {
      throw new Usage(`option '--gen-suppressions' takes 'valgrind' or 'lsan' (got '${String(gen)}')`);
    }
    flags.genSuppressions = gen === true ? 'valgrind' : gen;
  }
  const stackDepth = str(values, 'stack-depth');
  if (stackDepth !== undefined) flags.stackDepth = parseIntegerOption('stack-depth', stackDepth, 1, 127);
  const allocator = str(values, 'allocator');
  const symbolFlags = values.get('allocator-symbol');
  const symbolList = Array.isArray(symbolFlags) ? symbolFlags.map(String) : [];
  if (allocator !== undefined || symbolList.length > 0) {
    if (allocator === undefined || allocator === '') {
      throw new Usage(`option '--allocator-symbol' needs '--allocator PATH' (the file that defines the symbols)`);
    }
    const symbols: Partial<Record<AllocatorFunction, string>> = {};
    for (const entry of symbolList) {
      const [fn, symbol] = entry.split('=');
      if (!fn || !symbol || !(allocatorFunctions as readonly string[]).includes(fn)) {
        throw new Usage(
          `option '--allocator-symbol' takes FUNCTION=SYMBOL with FUNCTION one of ${allocatorFunctions.join(', ')} (got '${entry}')`,
        );
      }
      symbols[fn as AllocatorFunction] = symbol;
    }
    flags.allocator = { path: allocator, symbols };
  }
  for (const [option, key] of [
    ['show-leak-kinds', 'showLeakKinds'],
    ['errors-for-leak-kinds', 'errorsForLeakKinds'],
  ] as const) {
    const raw = str(values, option);
    if (raw === undefined) continue;
    try {
      flags[key] = parseLeakKindList(raw, `option '--${option}'`);
    } catch (err) {
      throw new Usage((err as Error).message);
    }
  }
  const json = str(values, 'json');
  if (json !== undefined) {
    if (json === '') throw new Usage(`option '--json' needs a file name ('-' for standard output)`);
    flags.json = json;
  }
  const errorExitcode = str(values, 'error-exitcode');
  if (errorExitcode !== undefined) {
    flags.errorExitcode = parseIntegerOption('error-exitcode', errorExitcode, 1, 255);
  }
  const top = str(values, 'top');
  if (top !== undefined) flags.top = parseIntegerOption('top', top, 0, Number.MAX_SAFE_INTEGER);
  const maxAllocations = str(values, 'max-allocations');
  if (maxAllocations !== undefined) {
    flags.maxAllocations = parseIntegerOption('max-allocations', maxAllocations, 1, MAX_ALLOCATIONS_LIMIT);
  }
  const eventBuffer = str(values, 'event-buffer');
  if (eventBuffer !== undefined) flags.eventBufferBytes = parseBufferSizeOption('event-buffer', eventBuffer);
  return flags;
}

function parseRun(argv: readonly string[]): RunCommand | HelpCommand {
  const { values, rest } = readOptions(argv, runOptions);
  if (values.get('help') === true) return { kind: 'help', topic: 'run' };
  const flags = commonFlags(values);
  const [command, ...args] = rest;
  if (command === undefined) throw new Usage('missing the command to run (put it after --)');
  if (command === '') throw new Usage('the command to run is an empty string');
  return { kind: 'run', ...flags, command, args };
}

function parseAttach(argv: readonly string[]): AttachCommand | HelpCommand {
  const { values, rest } = readOptions(argv, attachOptions);
  if (values.get('help') === true) return { kind: 'help', topic: 'attach' };
  if (rest.length > 0) {
    throw new Usage(`unexpected argument '${rest[0]}' (give the process with -p PID)`);
  }
  const flags = commonFlags(values);
  const pidRaw = str(values, 'pid');
  if (pidRaw === undefined) throw new Usage('missing the process to trace: -p PID');
  const pid = parseIntegerOption('pid', pidRaw, 1, PID_LIMIT);
  const intervalRaw = str(values, 'interval');
  const intervalS = intervalRaw === undefined ? DEFAULT_INTERVAL_S : parseSecondsOption('interval', intervalRaw, true);
  const cmd: AttachCommand = { kind: 'attach', ...flags, pid, intervalS, scan: values.get('scan') === true };
  const durationRaw = str(values, 'duration');
  if (durationRaw !== undefined) cmd.durationS = parseSecondsOption('duration', durationRaw, false);
  return cmd;
}

/**
 * Parses the arguments after `ebpf-leak` (i.e. `process.argv.slice(2)`). Never throws, never does
 * I/O: the result is a command to carry out, or a usage error to print (exit status 2).
 */
export function parseCliArgs(argv: readonly string[]): CliCommand | UsageError {
  const [first, ...rest] = argv;
  let topic: HelpTopic = 'main';
  try {
    switch (first) {
      case undefined:
        return usage('missing command: run or attach', 'main');
      case 'run':
        topic = 'run';
        return parseRun(rest);
      case 'attach':
        topic = 'attach';
        return parseAttach(rest);
      case 'help': {
        const [what, extra] = rest;
        if (extra !== undefined) return usage(`unexpected argument '${extra}'`, 'main');
        if (what === undefined) return { kind: 'help', topic: 'main' };
        if (what === 'run' || what === 'attach') return { kind: 'help', topic: what };
        return usage(`no help for '${what}': the commands are run and attach`, 'main');
      }
      case '-h':
      case '--help':
        return { kind: 'help', topic: 'main' };
      case '--version':
        return { kind: 'version' };
      default:
        if (first.startsWith('-')) return usage(`unknown option '${first}'`, 'main');
        return usage(`unknown command '${first}': the commands are run and attach`, 'main');
    }
  } catch (err) {
    if (err instanceof Usage) return usage(err.message, topic);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Exit statuses and signals (pure helpers)

/** 128 + the signal's number, as a shell reports a child killed by a signal. */
export function signalExitStatus(signal: string): number {
  const n = (osConstants.signals as Record<string, number | undefined>)[signal];
  return 128 + (n ?? 0);
}

/** Exit status of `run`: --error-exitcode when blocks were left, else the program's own. */
export function runExitStatus(report: LeakReport, errorExitcode?: number): number {
  if (errorExitcode !== undefined && report.leaks.length > 0) return errorExitcode;
  if (report.target.signal !== null) return signalExitStatus(report.target.signal);
  return report.target.exitCode ?? 0;
}

/** Exit status of `attach`: --error-exitcode when blocks were left, else 0. */
export function attachExitStatus(report: LeakReport, errorExitcode?: number): number {
  return errorExitcode !== undefined && report.leaks.length > 0 ? errorExitcode : 0;
}

export interface ProcStat {
  pgrp: number;
  /** Foreground process group of the controlling terminal; -1 without one. */
  tpgid: number;
}

/** Fields of /proc/PID/stat we need. The command name (field 2) may hold spaces and ')'. */
export function parseProcStat(text: string): ProcStat | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  // After "pid (comm) ": state ppid pgrp session tty_nr tpgid ...
  const fields = text.slice(close + 2).split(' ');
  const pgrp = Number(fields[2]);
  const tpgid = Number(fields[5]);
  if (!Number.isInteger(pgrp) || !Number.isInteger(tpgid)) return undefined;
  return { pgrp, tpgid };
}

/** Signals a terminal sends to its whole foreground process group (Ctrl-C, hangup, Ctrl-\). */
const terminalSignals: ReadonlySet<string> = new Set(['SIGINT', 'SIGHUP', 'SIGQUIT']);

/**
 * Whether `run` should pass a signal it received on to the program. A terminal's Ctrl-C goes
 * to every process of the foreground group, so when we and the program are in that group it
 * already got it: sending it again would look like a second Ctrl-C. Anything else (kill(1),
 * a supervisor's SIGTERM, a background job) reached only us.
 */
export function shouldForwardSignal(
  signal: string,
  self: ProcStat | undefined,
  childPgrp: number | undefined,
): boolean {
  if (!terminalSignals.has(signal)) return true;
  if (self === undefined || childPgrp === undefined) return true;
  const foreground = self.tpgid > 0 && self.tpgid === self.pgrp;
  return !(foreground && childPgrp === self.pgrp);
}

function readProcStat(pid: number | 'self'): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Carrying out commands

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

const defaultIo = (): CliIo => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

function useColor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '' && env.FORCE_COLOR !== '0') return true;
  return stream.isTTY === true && env.TERM !== 'dumb';
}

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version?: unknown;
  };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

/** One line per --events event: `[  0.000123] + malloc 24 bytes at 0x55... (tid 42)`. */
export function formatAllocEvent(e: AllocEvent, originNs: bigint): string {
  return `[${eventTime(e.timestampNs, originNs)}] + ${e.function} ${formatCount(e.size)} bytes at 0x${e.address.toString(16)} (tid ${e.tid})`;
}

export function formatFreeEvent(e: FreeEvent, originNs: bigint): string {
  return `[${eventTime(e.timestampNs, originNs)}] - ${e.function} ${formatCount(e.size)} bytes at 0x${e.address.toString(16)} (tid ${e.tid})`;
}

function eventTime(ns: bigint, originNs: bigint): string {
  const us = (ns - originNs) / 1000n;
  const sign = us < 0n ? '-' : '';
  const abs = us < 0n ? -us : us;
  const s = `${sign}${abs / 1_000_000n}.${(abs % 1_000_000n).toString().padStart(6, '0')}`;
  return s.padStart(11);
}

function formatLost(info: LostInfo): string {
  const parts: string[] = [];
  if (info.events > 0) parts.push(`${formatCount(info.events)} events lost (raise --event-buffer)`);
  if (info.allocations > 0) {
    parts.push(`${formatCount(info.allocations)} allocations not tracked (raise --max-allocations)`);
  }
  return `ebpf-leak: ${parts.join('; ')}\n`;
}

/** Listeners every command puts on the tracer. 'error' must have one or EventEmitter throws. */
/** --verbose: what was probed, where and how. */
export function formatTracerInfo(info: TracerInfo): string {
  const probed = Object.entries(info.probes)
    .map(([fn, symbol]) => (fn === symbol ? fn : `${fn}=${symbol}`))
    .join(', ');
  const lines = [
    `ebpf-leak: probes on ${info.allocator} (${info.attachMode === 'uprobe_multi' ? 'multi-uprobe links' : 'one uprobe each'}, attached in ${info.attachMs} ms): ${probed}`,
  ];
  const aliases = Object.entries(info.aliases).map(([fn, twin]) => `${fn} (same address as ${twin})`);
  if (aliases.length) lines.push(`ebpf-leak: covered by another probe: ${aliases.join(', ')}`);
  if (info.missing.length) lines.push(`ebpf-leak: not in the allocator (skipped): ${info.missing.join(', ')}`);
  for (const p of info.placements) {
    const where = p.entryOffset === p.functionOffset ? 'entry' : `+0x${(p.entryOffset - p.functionOffset).toString(16)}`;
    const how = p.emulated === null ? '' : p.emulated ? ', emulated' : ', single-stepped';
    lines.push(`ebpf-leak: ${p.function} probe at ${where}: ${p.instruction || '?'}${how} (${p.reason})`);
  }
  lines.push(
    `ebpf-leak: stacks ${info.stacks ? `on (${info.unwind === 'fp' ? 'frame pointers' : 'DWARF CFI'})` : 'off'}, events ${info.events ? 'on' : 'off'}, up to ${formatCount(info.maxAllocations)} blocks tracked`,
  );
  return lines.join('\n') + '\n';
}

function watchTracer(tracer: LeakTracer, cmd: CommonFlags, io: CliIo): void {
  if (cmd.verbose) io.stderr.write(formatTracerInfo(tracer.info));
  tracer.on('error', (err: Error) => {
    io.stderr.write(`ebpf-leak: warning: ${err.message}\n`);
  });
  tracer.on('lost', (info: LostInfo) => {
    if (cmd.verbose) io.stderr.write(formatLost(info));
  });
  if (cmd.events) {
    let origin: bigint | undefined;
    tracer.on('alloc', (e: AllocEvent) => {
      origin ??= e.timestampNs;
      io.stderr.write(formatAllocEvent(e, origin) + '\n');
    });
    tracer.on('free', (e: FreeEvent) => {
      origin ??= e.timestampNs;
      io.stderr.write(formatFreeEvent(e, origin) + '\n');
    });
  }
}

/** The stack walker's shortfalls, as a warning line; '' when every stack is whole. */
export function formatStackProblems(stats: UnwindStats | null, stackFailures: number): string {
  const parts: string[] = [];
  const failures = stackFailures + (stats?.collisions ?? 0) + (stats?.failures ?? 0);
  if (stats && stats.incomplete > 0) {
    parts.push(
      `${formatCount(stats.incomplete)} of ${formatCount(stats.walks)} stacks went through code whose unwind table was not loaded yet (mapped after the start), so they may miss frames`,
    );
  }
  if (stats && stats.truncated > 0) parts.push(`${formatCount(stats.truncated)} stacks stop before their outermost frame`);
  if (failures > 0) parts.push(`${formatCount(failures)} allocations have no stack (the walk failed, or another stack had the same id)`);
  return parts.length === 0 ? '' : `warning: ${parts.join('; ')}.\n`;
}

/** Prints (and writes) the report after suppressions; returns it for the exit status. */
async function finish(
  report: LeakReport,
  cmd: CommonFlags,
  io: CliIo,
  tracer: LeakTracer,
  exited?: boolean,
): Promise<CheckedLeakReport> {
  const stacks = tracer.info.stacks;
  const { checkReportSliced, formatCheckedReport } = await import('../report/checked.js');
  const { defaultSuppressions } = await import('../suppressions/defaults.js');
  const { resolveSuppressions, generateSuppressions } = await import('../suppressions/rules.js');
  let rules;
  try {
    rules = [...(cmd.defaultSuppressions ? defaultSuppressions() : []), ...resolveSuppressions(cmd.suppressions)];
  } catch (err) {
    throw new CliFailure(`cannot read the suppressions: ${(err as Error).message}`);
  }
  const checked = await checkReportSliced(report, rules, {
    stacks,
    ...(cmd.errorsForLeakKinds ? { errorsForLeakKinds: cmd.errorsForLeakKinds } : {}),
  });
  const color = useColor(io.stderr, io.env);
  io.stderr.write(
    formatCheckedReport(checked, {
      top: cmd.top,
      color,
      verbose: cmd.verbose,
      ...(exited !== undefined ? { exited } : {}),
      showLeakKinds: cmd.showLeakKinds ?? defaultShownKinds,
    }),
  );
  if (stacks) {
    const { asScoped } = await import('../report/scope.js');
    let failures = 0;
    try {
      failures = asScoped(report).counters.stackFailures;
    } catch {
      // a report without per-block data: only the walker's own counts
    }
    io.stderr.write(formatStackProblems(tracer.unwindStats(), failures));
  }
  if (cmd.genSuppressions) {
    io.stderr.write(generateSuppressions(checked, { format: cmd.genSuppressions }));
  }
  if (cmd.json !== undefined) {
    try {
      await writeJsonReport(cmd.json, checked);
    } catch (err) {
      throw new CliFailure(`cannot write the JSON report to ${cmd.json}: ${(err as Error).message}`);
    }
  }
  return checked;
}

/** A failure of the CLI itself (not the tracer) with a message for the user; exits 2. */
class CliFailure extends Error {}

const forwardedSignals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

async function runCommand(cmd: RunCommand, io: CliIo): Promise<number> {
  let tracer: LeakTracer | undefined;
  let pending: NodeJS.Signals | undefined;

  const forward = (signal: NodeJS.Signals): void => {
    if (tracer === undefined) {
      pending = signal; // passed on once the program exists
      return;
    }
    const childPgrp = readProcStat(tracer.pid)?.pgrp;
    if (!shouldForwardSignal(signal, readProcStat('self'), childPgrp)) return;
    // Through the pidfd: a pid already reaped (`done` is about to resolve) may name another process.
    tracer.process?.kill(signal);
  };
  for (const s of forwardedSignals) process.on(s, forward);
  try {
    const { trace } = await import('../tracer/trace.js');
    tracer = await trace({ command: cmd.command, args: cmd.args, stdio: 'inherit', ...traceOptions(cmd) });
    watchTracer(tracer, cmd, io);
    if (cmd.verbose) {
      io.stderr.write(`ebpf-leak: tracing pid ${tracer.pid}: ${[cmd.command, ...cmd.args].map(shellQuote).join(' ')}\n`);
    }
    if (pending !== undefined) forward(pending);
    const report = await tracer.done;
    for (const s of forwardedSignals) process.off(s, forward);
    const checked = await finish(report, cmd, io, tracer);
    return runExitStatus(checked, cmd.errorExitcode);
  } finally {
    for (const s of forwardedSignals) process.off(s, forward);
  }
}

/** The library options both commands take from the common flags. */
export function traceOptions(cmd: CommonFlags): CommonTraceOptions {
  return {
    events: cmd.events,
    stacks: cmd.stacks,
    ...(cmd.maxAllocations !== undefined ? { maxAllocations: cmd.maxAllocations } : {}),
    ...(cmd.eventBufferBytes !== undefined ? { eventBufferBytes: cmd.eventBufferBytes } : {}),
    ...(cmd.stackDepth !== undefined ? { stackDepth: cmd.stackDepth } : {}),
    ...(cmd.allocator ? { allocator: cmd.allocator } : {}),
    ...(cmd.probePlacement ? { probePlacement: cmd.probePlacement } : {}),
    ...(cmd.debugDirs.length > 0 ? { debugDirs: cmd.debugDirs } : {}),
    ...(cmd.unwind ? { unwind: cmd.unwind } : {}),
    ...(cmd.sampleEveryBytes !== undefined ? { sampleEveryBytes: cmd.sampleEveryBytes } : {}),
    ...(cmd.leakKinds ? {} : { leakKinds: false }),
  };
}

async function attachCommand(cmd: AttachCommand, io: CliIo): Promise<number> {
  const { trace } = await import('../tracer/trace.js');
  const tracer = await trace({ pid: cmd.pid, ...traceOptions(cmd), leakKinds: cmd.scan });
  watchTracer(tracer, cmd, io);

  const color = useColor(io.stderr, io.env);
  let stopping = false;
  const stop = (): void => {
    stopping = true;
    // The outcome is awaited through `done` below.
    tracer.stop().catch(() => undefined);
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      // Second signal: the user wants out now.
      process.exit(signalExitStatus(signal));
    }
    stop();
  };
  for (const s of forwardedSignals) process.on(s, onSignal);

  let interval: NodeJS.Timeout | undefined;
  let busy = false;
  if (cmd.intervalS > 0) {
    interval = setInterval(() => {
      if (busy || stopping) return;
      busy = true;
      tracer
        .snapshot()
        .then(async (snap: Snapshot) => {
          const byStack = await stackUseSliced(snap);
          let text = formatSnapshotTop(snap, { top: cmd.top, color, byStack });
          if (cmd.scan) text += formatScanLines(await tracer.scan());
          if (!stopping) io.stderr.write(text + '\n');
        })
        .catch((err: unknown) => {
          // The process exiting between ticks is not news: `done` reports it.
          const code = (err as { code?: unknown }).code;
          if (!stopping && code !== 'ELEAK_TARGET_EXITED') {
            io.stderr.write(`ebpf-leak: warning: snapshot failed: ${(err as Error).message}\n`);
          }
        })
        .finally(() => {
          busy = false;
        });
    }, cmd.intervalS * 1000);
  }
  const duration = cmd.durationS !== undefined ? setTimeout(stop, cmd.durationS * 1000) : undefined;

  const what = cmd.intervalS > 0 ? `; top stacks every ${cmd.intervalS} s` : '';
  const until = cmd.durationS !== undefined ? `for ${cmd.durationS} s, or ` : '';
  io.stderr.write(`ebpf-leak: tracing pid ${tracer.pid}${what}; report ${until}on exit or Ctrl-C\n`);

  try {
    const report = await tracer.done;
    // Without a stop from us, `done` means the process exited (its status is not ours to know).
    const exited = !stopping;
    stopping = true;
    clearInterval(interval);
    clearTimeout(duration);
    const checked = await finish(report, cmd, io, tracer, exited);
    return attachExitStatus(checked, cmd.errorExitcode);
  } finally {
    stopping = true;
    clearInterval(interval);
    clearTimeout(duration);
    for (const s of forwardedSignals) process.off(s, onSignal);
  }
}

async function isEbpfLeakError(err: unknown): Promise<boolean> {
  try {
    const { EbpfLeakError } = await import('../errors.js');
    return err instanceof EbpfLeakError;
  } catch {
    const code = (err as { code?: unknown } | null)?.code;
    return err instanceof Error && typeof code === 'string' && code.startsWith('ELEAK_');
  }
}

/** Runs the CLI; resolves to the exit status. Never rejects. */
export async function main(argv: readonly string[], io: CliIo = defaultIo()): Promise<number> {
  const cmd = parseCliArgs(argv);
  try {
    switch (cmd.kind) {
      case 'usage-error':
        io.stderr.write(formatUsageError(cmd));
        return 2;
      case 'help':
        io.stdout.write(helpText(cmd.topic));
        return 0;
      case 'version':
        io.stdout.write(`ebpf-leak ${packageVersion()}\n`);
        return 0;
      case 'run':
        return await runCommand(cmd, io);
      case 'attach':
        return await attachCommand(cmd, io);
    }
  } catch (err) {
    if (err instanceof CliFailure || (await isEbpfLeakError(err))) {
      io.stderr.write(`ebpf-leak: ${(err as Error).message}\n`);
    } else {
      const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
      io.stderr.write(`ebpf-leak: internal error (please report it): ${text}\n`);
    }
    return 2;
  }
}

function invokedDirectly(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    () => process.exit(2),
  );
}
