// The oracle: run a program under valgrind's memcheck and parse what it says about the heap.
//
// runValgrind() runs
//   valgrind --run-libc-freeres=no --run-cxx-freeres=no --leak-check=full --show-leak-kinds=all
//            --errors-for-leak-kinds=none --log-file=<tmp>/vg.%p.log <file> <args...>
// so valgrind's report goes to its own file and the program's stdout/stderr stay the program's.
// The two *-freeres=no options matter: by default valgrind makes glibc and libstdc++ free their
// internal buffers at exit, frees that never happen in a normal run (so no tracer sees them).
//
// Valgrind's counting, which the tracer's HeapSummary mirrors:
//   - allocs: successful malloc, calloc, realloc, memalign, aligned_alloc, posix_memalign, valloc,
//     operator new/new[] (valgrind replaces those; libstdc++'s call malloc, same count);
//     a realloc of a live block to a non-zero size is one alloc *and* one free (moved or not);
//   - bytes allocated: the requested sizes (not malloc_usable_size);
//   - frees: free/delete of a block it allocated, realloc(p, 0), and the free half of a realloc;
//     free(NULL) and failed allocations count nothing.
//   - not intercepted in 3.19: reallocarray (glibc's is a tail call to realloc, which is counted),
//     pvalloc (valgrind aborts the program: "Program aborting because of call to pvalloc").
//
// On Debian /usr/bin/valgrind is a sh wrapper that exports LD_LIBRARY_PATH (adds /usr/lib/debug),
// GLIBCXX_FORCE_NEW=1 and GLIBCPP_FORCE_NEW=1 into the program's environment, then execs
// valgrind.bin. We run valgrind.bin directly when it is there, so the program sees the environment
// we pass (plus the LD_PRELOAD valgrind itself adds for its preload libraries), as it does under
// the tracer.

import { spawn, type StdioOptions } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export const valgrindArgs: readonly string[] = [
  '--run-libc-freeres=no',
  '--run-cxx-freeres=no',
  '--leak-check=full',
  '--show-leak-kinds=all',
  '--errors-for-leak-kinds=none',
];

/** valgrind's HEAP SUMMARY, field names as in lib/types.ts HeapSummary. */
export interface ValgrindHeapSummary {
  inUseBytes: number;
  inUseBlocks: number;
  allocs: number;
  frees: number;
  bytesAllocated: number;
}

export interface BytesBlocks {
  bytes: number;
  blocks: number;
}

export interface ValgrindLeakSummary {
  definitelyLost: BytesBlocks;
  indirectlyLost: BytesBlocks;
  possiblyLost: BytesBlocks;
  stillReachable: BytesBlocks;
  suppressed: BytesBlocks;
  /** "of which reachable via heuristic:" lines, by heuristic name; empty when none. */
  reachableViaHeuristic: Record<string, BytesBlocks>;
}

export type LeakKind = 'definitely lost' | 'indirectly lost' | 'possibly lost' | 'still reachable';

export interface ValgrindFrame {
  /** 'at' for the innermost frame, 'by' for its callers. */
  kind: 'at' | 'by';
  /** As printed, e.g. `0x48417B4`. */
  address: string;
  /** Function as printed (demangled C++ included), `???` when unknown. */
  function: string;
  /** Source file (valgrind prints the base name) and line, when it has debug info. */
  file?: string;
  line?: number;
  /** The object file, when valgrind printed `(in /path)` instead of a source location. */
  object?: string;
}

export interface ValgrindLossRecord {
  /** Total bytes of the record: direct + indirect. */
  bytes: number;
  /** Bytes of the blocks themselves (equal to `bytes` unless valgrind printed "(N direct, M indirect)"). */
  directBytes: number;
  /** Bytes of blocks only reachable through these ones. */
  indirectBytes: number;
  blocks: number;
  kind: LeakKind;
  /** "loss record <index> of <total>". */
  index: number;
  total: number;
  /** Innermost first. */
  frames: ValgrindFrame[];
}

export interface ValgrindErrorSummary {
  errors: number;
  contexts: number;
  suppressedErrors: number;
  suppressedContexts: number;
}

export interface ParsedValgrindLog {
  /** Pid valgrind printed (the traced process). */
  pid: number;
  summary: ValgrindHeapSummary;
  /** All zero when valgrind said "All heap blocks were freed -- no leaks are possible". */
  leakSummary: ValgrindLeakSummary;
  /** True for "All heap blocks were freed -- no leaks are possible". */
  allHeapBlocksFreed: boolean;
  lossRecords: ValgrindLossRecord[];
  errorSummary?: ValgrindErrorSummary;
  /** Lines valgrind printed between `**pid**` markers (e.g. "Program aborting because of call to pvalloc"). */
  fatal: string[];
}

export interface ValgrindResult extends ParsedValgrindLog {
  command: string;
  args: string[];
  /** The program's exit status (valgrind passes it through: --error-exitcode is not set). */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Valgrind's whole log. */
  log: string;
  /** The program's output, with stdio 'pipe'. */
  stdout: string;
  stderr: string;
}

export interface RunValgrindOptions {
  /** stdio of the program. Default 'ignore' (stdout is /dev/null, which glibc buffers like a pipe). */
  stdio?: 'ignore' | 'pipe' | 'inherit';
  /** Environment of the program. Default process.env. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** More valgrind options, placed after the standard ones (so they can override them). */
  valgrindOptions?: string[];
  /** Kill valgrind (SIGKILL) and reject after this long. Default 10 minutes. */
  timeoutMs?: number;
  /** Run /usr/bin/valgrind (Debian's wrapper script) even when valgrind.bin is there. */
  useWrapper?: boolean;
}

// --- parsing ----------------------------------------------------------------------------------

/** Parses "1,234" (valgrind groups thousands with commas). */
export function parseValgrindNumber(text: string): number {
  const clean = text.replace(/,/g, '');
  if (!/^\d+$/.test(clean)) throw new Error(`not a valgrind number: '${text}'`);
  const n = Number(clean);
  if (!Number.isSafeInteger(n)) throw new Error(`valgrind number too large: '${text}'`);
  return n;
}

const N = '([\\d,]+)';
const heapInUseRe = new RegExp(`^in use at exit: ${N} bytes in ${N} blocks$`);
const heapTotalRe = new RegExp(`^total heap usage: ${N} allocs, ${N} frees, ${N} bytes allocated$`);
const lossHeaderRe = new RegExp(
  `^${N}(?: \\(${N} direct, ${N} indirect\\))? bytes in ${N} blocks are (definitely lost|indirectly lost|possibly lost|still reachable) in loss record ${N} of ${N}$`,
);
const frameRe = /^(at|by) (0x[0-9A-Fa-f]+): (.*)$/;
const leakSummaryRe = new RegExp(
  `^(definitely lost|indirectly lost|possibly lost|still reachable|suppressed): ${N} bytes in ${N} blocks$`,
);
const heuristicRe = new RegExp(`^(stdstring|length64|newarray|multipleinheritance) *: ${N} bytes in ${N} blocks$`);
const errorSummaryRe = new RegExp(`^ERROR SUMMARY: ${N} errors from ${N} contexts \\(suppressed: ${N} from ${N}\\)$`);

const leakSummaryKeys: Record<string, Exclude<keyof ValgrindLeakSummary, 'reachableViaHeuristic'>> = {
  'definitely lost': 'definitelyLost',
  'indirectly lost': 'indirectlyLost',
  'possibly lost': 'possiblyLost',
  'still reachable': 'stillReachable',
  suppressed: 'suppressed',
};

/** Parses the text after "at 0x...: ". */
export function parseFrameText(kind: 'at' | 'by', address: string, text: string): ValgrindFrame {
  const frame: ValgrindFrame = { kind, address, function: text };
  // The location is the last parenthesised group, after a space: "main (seed.c:20)",
  // "operator new(unsigned long) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)".
  // A frame without one is a bare "???".
  const m = /^(.*) \(([^()]*)\)$/.exec(text);
  if (!m) return frame;
  frame.function = m[1]!;
  const location = m[2]!;
  if (location.startsWith('in ')) {
    frame.object = location.slice(3);
    return frame;
  }
  const fl = /^(.*):(\d+)$/.exec(location);
  if (fl) {
    frame.file = fl[1]!;
    frame.line = Number(fl[2]);
  } else {
    frame.file = location;
  }
  return frame;
}

function zeroLeakSummary(): ValgrindLeakSummary {
  const z = (): BytesBlocks => ({ bytes: 0, blocks: 0 });
  return {
    definitelyLost: z(),
    indirectlyLost: z(),
    possiblyLost: z(),
    stillReachable: z(),
    suppressed: z(),
    reachableViaHeuristic: {},
  };
}

/**
 * Parses a memcheck log (the `==PID==`-prefixed text valgrind writes to --log-file or stderr).
 * Only lines of the first pid in the log are read. Throws when there is no HEAP SUMMARY (valgrind
 * did not start, or the program was killed by SIGKILL).
 */
export function parseValgrindLog(text: string): ParsedValgrindLog {
  let pid: number | undefined;
  const lines: string[] = [];
  const fatal: string[] = [];
  for (const raw of text.split('\n')) {
    const m = /^(==|\*\*)(\d+)\1 ?(.*)$/.exec(raw);
    if (!m) continue;
    const linePid = Number(m[2]);
    pid ??= linePid;
    if (linePid !== pid) continue;
    if (m[1] === '**') fatal.push(m[3]!);
    else lines.push(m[3]!);
  }
  if (pid === undefined) throw new Error(`not a valgrind log (no ==PID== lines):\n${text.slice(0, 2000)}`);

  let summary: ValgrindHeapSummary | undefined;
  let inUse: [number, number] | undefined;
  const leakSummary = zeroLeakSummary();
  let allHeapBlocksFreed = false;
  const lossRecords: ValgrindLossRecord[] = [];
  let errorSummary: ValgrindErrorSummary | undefined;
  let record: ValgrindLossRecord | undefined;

  for (const line of lines) {
    const t = line.trim();
    if (t === '') {
      record = undefined;
      continue;
    }
    let m: RegExpExecArray | null;
    if (record && (m = frameRe.exec(t))) {
      record.frames.push(parseFrameText(m[1] as 'at' | 'by', m[2]!, m[3]!));
      continue;
    }
    record = undefined;
    if ((m = heapInUseRe.exec(t))) {
      inUse = [parseValgrindNumber(m[1]!), parseValgrindNumber(m[2]!)];
    } else if ((m = heapTotalRe.exec(t))) {
      if (!inUse) throw new Error(`valgrind log: 'total heap usage' without 'in use at exit': ${t}`);
      summary = {
        inUseBytes: inUse[0],
        inUseBlocks: inUse[1],
        allocs: parseValgrindNumber(m[1]!),
        frees: parseValgrindNumber(m[2]!),
        bytesAllocated: parseValgrindNumber(m[3]!),
      };
    } else if ((m = lossHeaderRe.exec(t))) {
      const bytes = parseValgrindNumber(m[1]!);
      const direct = m[2] !== undefined ? parseValgrindNumber(m[2]) : bytes;
      const indirect = m[3] !== undefined ? parseValgrindNumber(m[3]) : 0;
      record = {
        bytes,
        directBytes: direct,
        indirectBytes: indirect,
        blocks: parseValgrindNumber(m[4]!),
        kind: m[5] as LeakKind,
        index: parseValgrindNumber(m[6]!),
        total: parseValgrindNumber(m[7]!),
        frames: [],
      };
      lossRecords.push(record);
    } else if ((m = leakSummaryRe.exec(t))) {
      leakSummary[leakSummaryKeys[m[1]!]! as Exclude<keyof ValgrindLeakSummary, 'reachableViaHeuristic'>] = {
        bytes: parseValgrindNumber(m[2]!),
        blocks: parseValgrindNumber(m[3]!),
      };
    } else if ((m = heuristicRe.exec(t))) {
      leakSummary.reachableViaHeuristic[m[1]!] = {
        bytes: parseValgrindNumber(m[2]!),
        blocks: parseValgrindNumber(m[3]!),
      };
    } else if (t === 'All heap blocks were freed -- no leaks are possible') {
      allHeapBlocksFreed = true;
    } else if ((m = errorSummaryRe.exec(t))) {
      errorSummary = {
        errors: parseValgrindNumber(m[1]!),
        contexts: parseValgrindNumber(m[2]!),
        suppressedErrors: parseValgrindNumber(m[3]!),
        suppressedContexts: parseValgrindNumber(m[4]!),
      };
    }
  }
  if (!summary) {
    throw new Error(`valgrind log of pid ${pid} has no HEAP SUMMARY:\n${text.slice(0, 4000)}`);
  }
  return {
    pid,
    summary,
    leakSummary,
    allHeapBlocksFreed,
    lossRecords,
    ...(errorSummary ? { errorSummary } : {}),
    fatal,
  };
}

// --- running ----------------------------------------------------------------------------------

/** What valgrind adds to a program's environment (Debian's wrapper script: LD_LIBRARY_PATH and
 *  the two *_FORCE_NEW; valgrind itself: LD_PRELOAD of its preload libraries). `base` plus the
 *  wrapper's three is for valgrind.bin; plus all four for the same program under the tracer, so
 *  that a program that copies its environment allocates the same. */
export function valgrindEnvironment(base: NodeJS.ProcessEnv): { forValgrind: NodeJS.ProcessEnv; forTracer: NodeJS.ProcessEnv } {
  const forValgrind = {
    ...base,
    LD_LIBRARY_PATH: base.LD_LIBRARY_PATH ? `${base.LD_LIBRARY_PATH}:/usr/lib/debug` : '/usr/lib/debug',
    GLIBCPP_FORCE_NEW: '1',
    GLIBCXX_FORCE_NEW: '1',
  };
  const preload = ['vgpreload_core-amd64-linux.so', 'vgpreload_memcheck-amd64-linux.so']
    .map((f) => `/usr/libexec/valgrind/${f}`)
    .join(':');
  return { forValgrind, forTracer: { ...forValgrind, LD_PRELOAD: preload } };
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The valgrind executable to run: valgrind.bin (Debian's real launcher) when found, else valgrind. */
export function valgrindExecutable(options: { useWrapper?: boolean } = {}): string {
  const dirs = (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter(Boolean);
  const names = options.useWrapper ? ['valgrind'] : ['valgrind.bin', 'valgrind'];
  for (const name of names) {
    for (const dir of dirs) {
      const p = join(dir, name);
      if (isExecutable(p)) return p;
    }
  }
  throw new Error(`valgrind not found in PATH (${dirs.join(delimiter)}); apt-get install valgrind`);
}

/** Runs `file args` under memcheck (see the top of this file) and parses its report. */
export async function runValgrind(
  file: string,
  args: readonly string[] = [],
  opts: RunValgrindOptions = {},
): Promise<ValgrindResult> {
  const bin = valgrindExecutable({ useWrapper: opts.useWrapper ?? false });
  const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-valgrind-'));
  const stdioMode = opts.stdio ?? 'ignore';
  const stdio: StdioOptions = ['ignore', stdioMode, stdioMode];
  const vgArgs = [...valgrindArgs, `--log-file=${join(dir, 'vg.%p.log')}`, ...(opts.valgrindOptions ?? [])];
  const timeoutMs = opts.timeoutMs ?? 600_000;
  try {
    const child = spawn(bin, [...vgArgs, file, ...args], {
      env: opts.env ?? process.env,
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      stdio,
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
      (resolve, reject) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`valgrind ${file} ${args.join(' ')}: no exit after ${timeoutMs} ms, killed`));
        }, timeoutMs);
        child.once('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        child.once('close', (c, s) => {
          clearTimeout(timer);
          resolve({ code: c, signal: s });
        });
      },
    );
    // valgrind runs the program in its own process (same pid), so its log is vg.<child.pid>.log;
    // a program that forks leaves one log per process: take ours.
    const own = join(dir, `vg.${child.pid}.log`);
    const logFile = existsSync(own) ? own : readdirSync(dir).map((f) => join(dir, f))[0];
    if (!logFile) {
      throw new Error(
        `valgrind ${file} ${args.join(' ')} wrote no log (exit ${code ?? signal}); stderr:\n${stderr.slice(0, 4000)}`,
      );
    }
    const log = readFileSync(logFile, 'utf8');
    const parsed = parseValgrindLog(log);
    return {
      ...parsed,
      command: file,
      args: [...args],
      exitCode: code,
      signal,
      log,
      stdout,
      stderr,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** "1,234" as valgrind writes numbers. */
export function formatValgrindNumber(n: number): string {
  return n.toLocaleString('en-US');
}

/** The two lines of valgrind's HEAP SUMMARY, for messages. */
export function formatHeapSummary(s: ValgrindHeapSummary): string {
  const f = formatValgrindNumber;
  return (
    `in use at exit: ${f(s.inUseBytes)} bytes in ${f(s.inUseBlocks)} blocks; ` +
    `total heap usage: ${f(s.allocs)} allocs, ${f(s.frees)} frees, ${f(s.bytesAllocated)} bytes allocated`
  );
}

/** valgrind's four leak kinds, as `kinds()` (test/helpers/attached-target.ts) gives a report's. */
export function valgrindKinds(vg: ParsedValgrindLog): Record<'definitelyLost' | 'indirectlyLost' | 'possiblyLost' | 'stillReachable', BytesBlocks> {
  const { definitelyLost, indirectlyLost, possiblyLost, stillReachable } = vg.leakSummary;
  return { definitelyLost, indirectlyLost, possiblyLost, stillReachable };
}
