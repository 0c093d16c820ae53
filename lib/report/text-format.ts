// Human-readable output: the final report (worded like valgrind's memcheck, so it reads familiar)
// and the periodic "top stacks" view of `attach --interval` (worded like BCC's memleak).
// Pure functions of their arguments: no I/O, no clock unless the caller leaves `now` out.

import { optionWord } from '../option-words.js';
import { defaultShownKinds, kindSelected } from './leak-kinds.js';
import { stackUse, type StackUse } from './snapshot-stacks.js';
import type { BytesBlocks, HeapError, LeakGroup, LeakKind, LeakReport, Snapshot, StackFrame } from '../types.js';

export interface FormatReportOptions {
  /** Show only the N largest leak groups (by bytes); 0 or undefined shows all. */
  top?: number;
  /** ANSI colours (for a terminal). Default false. */
  color?: boolean;
  /** Also print each group's largest block and sample addresses. Default false. */
  verbose?: boolean;
  /** Whether the target exited, when the report cannot tell: a process traced by pid that exits
   *  has no exit status for us (it is not our child). Default: exited iff a status is known. */
  exited?: boolean;
  /** Leak kinds whose loss records are printed, when the report has kinds (valgrind's
   *  --show-leak-kinds). Default definite and possible, as valgrind. */
  showLeakKinds?: readonly LeakKind[];
}

/** valgrind's words for the kinds, in its LEAK SUMMARY order. */
const kindWords: Record<LeakKind, string> = {
  definite: 'definitely lost',
  indirect: 'indirectly lost',
  possible: 'possibly lost',
  reachable: 'still reachable',
};

/** Whether the report's blocks were sorted into leak kinds. */
export function hasLeakKinds(report: LeakReport): boolean {
  return report.summary.definitelyLost !== undefined;
}

/** The scan's pause and LEAK SUMMARY, for `attach --scan`'s periodic output; one per process
 *  with followForks. */
export function formatScanLines(report: LeakReport): string {
  if (report.processes) {
    return report.processes
      .map((p) => {
        const command = p.target.commandLine?.join(' ') ?? p.target.command ?? '';
        return `\tprocess ${p.target.pid}${command ? ` (${command})` : ''}:\n` + formatScanLines(p);
      })
      .join('');
  }
  const lines = [`\tLEAK SUMMARY (target stopped ${formatScanPause(report)}):`];
  for (const l of leakSummaryLines(report)) lines.push(`\t${l}`);
  return lines.join('\n') + '\n';
}

function formatScanPause(report: LeakReport): string {
  const scan = report.scan;
  return scan?.scanned ? `${scan.pauseMs} ms for the scan` : 'not scanned';
}

/** valgrind's LEAK SUMMARY lines for a report with kinds. */
export function leakSummaryLines(report: LeakReport): string[] {
  const s = report.summary;
  const zero: BytesBlocks = { bytes: 0, blocks: 0 };
  const line = (label: string, v: BytesBlocks = zero) =>
    `${label.padStart(18)}: ${formatCount(v.bytes)} bytes in ${formatCount(v.blocks)} blocks`;
  const lines = [
    line('definitely lost', s.definitelyLost),
    line('indirectly lost', s.indirectlyLost),
    line('possibly lost', s.possiblyLost),
    line('still reachable', s.stillReachable),
  ];
  const heuristics = Object.entries(s.reachableViaHeuristic ?? {});
  if (heuristics.length > 0) {
    lines.push('                      of which reachable via heuristic:');
    for (const [name, v] of heuristics) {
      lines.push(`                        ${name.padEnd(19)}: ${formatCount(v.bytes)} bytes in ${formatCount(v.blocks)} blocks`);
    }
  }
  return lines;
}

export interface FormatSnapshotOptions {
  /** Show the N stacks holding the most outstanding bytes; 0 shows all. */
  top: number;
  /** Time printed in the header; default now (local time). */
  now?: Date;
  /** Frames of a stack id, when the caller can symbolize them; printed under each stack. */
  frames?: (stackId: number) => readonly StackFrame[] | undefined;
  color?: boolean;
  /** The snapshot's bytes and blocks per stack id, when the caller summed them already
   *  (stackUseSliced(), without stalling the event loop); default: summed here. */
  byStack?: ReadonlyMap<number, StackUse>;
}

/** 1234567 -> "1,234,567", like valgrind. Locale-independent. */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const negative = n < 0;
  const [int = '0', frac] = Math.abs(n).toString().split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return (negative ? '-' : '') + grouped + (frac !== undefined ? `.${frac}` : '');
}

/** "1 ms", "950 ms", "1.25 s", "2 min 5 s". */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2).replace(/\.?0+$/, '')} s`;
  const totalS = Math.round(ms / 1000);
  const min = Math.floor(totalS / 60);
  const s = totalS % 60;
  return s === 0 ? `${min} min` : `${min} min ${s} s`;
}

const ansi = {
  bold: '\x1b[1m',
  red: '\x1b[31m',
  yellow: '\x1b[33m',
  dim: '\x1b[2m',
  reset: '\x1b[0m',
} as const;

type Paint = (style: keyof typeof ansi, text: string) => string;

function painter(color: boolean | undefined): Paint {
  return color ? (style, text) => `${ansi[style]}${text}${ansi.reset}` : (_style, text) => text;
}

/** One frame, valgrind style without the "at"/"by": `0x4011d6: main (seed.c:22) [/path/seed]`. */
export function formatFrame(frame: StackFrame): string {
  let text = `${frame.address}: ${frame.symbol ?? '???'}`;
  if (frame.file !== undefined) {
    text += frame.line !== undefined ? ` (${frame.file}:${frame.line})` : ` (${frame.file})`;
  }
  if (frame.module !== undefined) {
    // Without a symbol the module offset is what lets someone look the address up (addr2line).
    const offset = frame.symbol === undefined && frame.offset !== undefined ? `+${frame.offset}` : '';
    text += ` [${frame.module}${offset}]`;
  }
  return text;
}

/** Indented "at"/"by" lines for a stack; a placeholder line when it is empty. */
export function formatStack(stack: readonly StackFrame[]): string[] {
  if (stack.length === 0) return ['   (no stack: stacks not captured)'];
  return stack.map((frame, i) => `   ${i === 0 ? 'at' : 'by'} ${formatFrame(frame)}`);
}

/** An argument as a POSIX shell would need it: bare when safe, else in single quotes. */
export function shellQuote(arg: string): string {
  if (/^[\w@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

function describeTarget(report: LeakReport, exited: boolean): string[] {
  const t = report.target;
  const lines: string[] = [];
  const cmd = t.command !== undefined ? [t.command, ...(t.args ?? [])].map(shellQuote).join(' ') : undefined;
  lines.push(cmd !== undefined ? `pid ${t.pid}: ${cmd}` : `pid ${t.pid}`);
  const image = t.commandLine?.map(shellQuote).join(' ');
  if (report.previousImages && report.previousImages.length > 0 && image) lines.push(`exec'd: ${image}`);
  let end: string;
  if (t.signal !== null) end = `killed by ${t.signal}`;
  else if (t.exitCode !== null) end = `exited with status ${t.exitCode}`;
  else if (exited) end = 'exited';
  else end = 'still running (tracing stopped)';
  lines.push(`${end}; traced for ${formatDuration(report.durationMs)}; allocator ${t.allocator}`);
  return lines;
}

/** Allocations the report does not hold, so a leak among them could be missing. */
export function untrackedAllocations(report: LeakReport): number {
  return report.summary.droppedAllocations;
}

function warnings(report: LeakReport): string[] {
  const s = report.summary;
  const out: string[] = [];
  if (report.untraced !== undefined) {
    out.push(`warning: not traced: ${report.untraced}. The summary above is not a count of its allocations.`);
  }
  for (const image of report.previousImages ?? []) {
    out.push(
      `before exec: ${image.commandLine.map(shellQuote).join(' ') || '(unknown)'}: ${formatCount(image.allocs)} allocs, ` +
        `${formatCount(image.frees)} frees, ${formatCount(image.bytesAllocated)} bytes allocated; its ` +
        `${formatCount(image.inUseBytes)} bytes in ${formatCount(image.inUseBlocks)} blocks went with its address space (not leaks)`,
    );
  }
  if ((report.untracedChildren ?? 0) > 0 && !report.processes) {
    out.push(
      `note: ${formatCount(report.untracedChildren!)} child processes ran untraced; ` +
        `trace them with --follow-forks (the library's followForks: true).`,
    );
  }
  if (s.droppedAllocations > 0) {
    out.push(
      `warning: ${formatCount(s.droppedAllocations)} allocations were not tracked because the ` +
        `address map was full; leaks among them are missing from this report. ` +
        `Raise ${optionWord('maxAllocations')}.`,
    );
  }
  if (s.lostEvents > 0) {
    out.push(
      `warning: ${formatCount(s.lostEvents)} alloc/free events were lost because the event ring ` +
        `buffer was full, so the event stream is incomplete; the counts and leaks ` +
        `above are not affected. Use a larger ${optionWord('eventBuffer')}.`,
    );
  }
  out.push(...unknownFreesNote(report));
  return out;
}

/**
 * Frees of blocks the tracer never saw allocated. glibc makes some itself: a thread's exit returns
 * its tcache (the cache's own block, allocated inside malloc, and every block cached in it, each
 * freed by the program before), so any program that ends a thread has a few hundred at most per
 * thread, never more than the frees it made. A program started traced has no block from before
 * tracing; there, more unknown frees than known ones means allocations that bypass the probed
 * malloc: another allocator. Attached to a running process, frees of blocks allocated before
 * the attach are expected.
 */
function unknownFreesNote(report: LeakReport): string[] {
  const s = report.summary;
  if (s.unknownFrees === 0) return [];
  if (report.target.command !== undefined) {
    if (s.unknownFrees <= s.frees) return [];
    return [
      `warning: ${formatCount(s.unknownFrees)} frees were of blocks never seen allocated, more than the ` +
        `${formatCount(s.frees)} frees of blocks that were: the program seems to allocate through another ` +
        `allocator than ${report.target.allocator}. If it has its own, name it with ${optionWord('allocator')}.`,
    ];
  }
  return [
    `note: ${formatCount(s.unknownFrees)} frees were of blocks allocated before tracing started ` +
      `(or returned by glibc's per-thread caches when a thread exited); they were ignored.`,
  ];
}

/** valgrind's title for each kind. */
const errorTitles: Record<HeapError['kind'], string> = {
  'invalid-free': 'Invalid free() / delete / delete[] / realloc()',
  'double-free': 'Invalid free() / delete / delete[] / realloc()',
  'mismatched-free': 'Mismatched free() / delete / delete []',
};

/** One heap error as valgrind prints it: the title, the releasing stack, then what the address
 *  is, with the block's stacks. */
export function formatHeapError(e: HeapError): string[] {
  const lines = [errorTitles[e.kind], ...formatStack(e.stack)];
  const b = e.block;
  if (e.kind === 'double-free' && b) {
    lines.push(` Address ${e.address} is ${formatCount(b.offset)} bytes inside a block of size ${formatCount(b.size)} free'd`);
    lines.push(
      ...(e.firstFree?.stackKept === false
        ? ['   (stack not kept: --keep-stacktraces=alloc)']
        : formatStack(e.firstFree?.stack ?? [])),
    );
    lines.push(' Block was alloc\'d at', ...formatStack(b.allocationStack));
  } else if (b) {
    lines.push(` Address ${e.address} is ${formatCount(b.offset)} bytes inside a block of size ${formatCount(b.size)} alloc'd`);
    lines.push(...formatStack(b.allocationStack));
  } else {
    lines.push(` Address ${e.address} is not the start of a block the program was handed (tid ${e.tid})`);
  }
  return lines;
}

/** "ERROR SUMMARY: 3 errors (3 mismatched frees)". */
function errorSummary(report: LeakReport): string | undefined {
  const c = report.summary.errors;
  if (!c) return undefined;
  const parts: string[] = [];
  if (c['invalid-free']) parts.push(`${formatCount(c['invalid-free'])} invalid frees`);
  if (c['double-free']) parts.push(`${formatCount(c['double-free'])} double frees`);
  if (c['mismatched-free']) parts.push(`${formatCount(c['mismatched-free'])} mismatched frees`);
  if (c.notRecorded) parts.push(`${formatCount(c.notRecorded)} more not recorded`);
  const total = c['invalid-free'] + c['double-free'] + c['mismatched-free'] + c.notRecorded;
  return `ERROR SUMMARY: ${formatCount(total)} errors${parts.length > 0 ? ` (${parts.join(', ')})` : ''}`;
}

function sortGroups(groups: readonly LeakGroup[]): LeakGroup[] {
  // Array.prototype.sort is stable: ties keep the tracer's order.
  return [...groups].sort((a, b) => b.bytes - a.bytes || b.blocks - a.blocks);
}

/**
 * The final report, valgrind style:
 *
 * ```
 * pid 4242: ./seed
 * exited with status 0; traced for 12 ms; allocator /usr/lib/x86_64-linux-gnu/libc.so.6
 *
 * HEAP SUMMARY:
 *     in use at exit: 4,104 bytes in 2 blocks
 *   total heap usage: 11 allocs, 9 frees, 4,176 bytes allocated
 *
 * 8 bytes in 1 blocks are still allocated in loss record 2 of 2
 *    at 0x401136: main (seed.c:22) [/work/seed]
 *
 * LEAK SUMMARY: leaked: 4,104 bytes in 2 blocks in 2 groups
 * ```
 *
 * "in use at exit" becomes "in use at stop" when the target was still running (see `exited`).
 * Ends with a newline.
 */
export function formatReport(report: LeakReport, opts: FormatReportOptions = {}): string {
  const paint = painter(opts.color);
  const s = report.summary;
  const exited = report.target.exitCode !== null || report.target.signal !== null || opts.exited === true;
  const lines: string[] = [];

  lines.push(...describeTarget(report, exited));
  for (const e of report.errors ?? []) {
    lines.push('');
    const [title, ...rest] = formatHeapError(e);
    lines.push(paint('red', title!), ...rest);
  }
  lines.push('');
  lines.push(paint('bold', 'HEAP SUMMARY:'));
  lines.push(
    `    in use at ${exited ? 'exit' : 'stop'}: ${formatCount(s.inUseBytes)} bytes in ${formatCount(s.inUseBlocks)} blocks`,
  );
  lines.push(
    `  total heap usage: ${formatCount(s.allocs)} allocs, ${formatCount(s.frees)} frees, ` +
      `${formatCount(s.bytesAllocated)} bytes allocated`,
  );
  if (report.sampling) {
    lines.push(
      `  (sampled: one allocation per ${formatCount(report.sampling.everyBytes)} bytes on average; ` +
        'in-use figures and the groups below are estimates, the totals are exact)',
    );
  }

  const warn = warnings(report);
  if (warn.length > 0) {
    lines.push('');
    for (const w of warn) lines.push(paint('yellow', w));
  }

  const kinds = hasLeakKinds(report);
  const showKinds = opts.showLeakKinds ?? defaultShownKinds;
  const groups = sortGroups(kinds ? report.leaks.filter((g) => kindSelected(g.kind, showKinds)) : report.leaks);
  const top = opts.top !== undefined && opts.top > 0 ? opts.top : groups.length;
  const shown = groups.slice(0, top);
  shown.forEach((g, i) => {
    lines.push('');
    const what = g.kind !== undefined ? kindWords[g.kind] : 'still allocated';
    const size =
      g.indirectBytes !== undefined && g.indirectBytes > 0
        ? `${formatCount(g.bytes + g.indirectBytes)} (${formatCount(g.bytes)} direct, ${formatCount(g.indirectBytes)} indirect)`
        : formatCount(g.bytes);
    lines.push(
      paint(
        g.kind === 'reachable' || g.kind === 'indirect' ? 'yellow' : 'red',
        `${size} bytes in ${formatCount(g.blocks)} blocks are ${what} in loss record ${i + 1} of ${groups.length}`,
      ),
    );
    lines.push(...formatStack(g.stack));
    if (opts.verbose) {
      const samples = g.sampleAddresses.length > 0 ? `; e.g. at ${g.sampleAddresses.join(', ')}` : '';
      lines.push(paint('dim', `   (largest block ${formatCount(g.largestBlock)} bytes${samples})`));
    }
  });

  const omitted = groups.slice(shown.length);
  if (omitted.length > 0) {
    const bytes = omitted.reduce((sum, g) => sum + g.bytes, 0);
    const blocks = omitted.reduce((sum, g) => sum + g.blocks, 0);
    lines.push('');
    lines.push(
      `... ${formatCount(omitted.length)} more ${omitted.length === 1 ? 'group' : 'groups'} ` +
        `(${formatCount(bytes)} bytes in ${formatCount(blocks)} blocks) not shown; ` +
        `raise --top, or write all of them with --json FILE`,
    );
  }

  lines.push('');
  if (kinds) {
    lines.push(paint('bold', 'LEAK SUMMARY:'));
    lines.push(...leakSummaryLines(report));
    if (report.scan?.scanned) {
      const where = report.scan.atExit ? 'held at its exit' : 'stopped';
      lines.push(`(memory scanned for the leak kinds: target ${where} ${report.scan.pauseMs} ms, scan ${report.scan.scanMs} ms)`);
    }
    const reachable = report.summary.stillReachable?.blocks ?? 0;
    if (reachable > 0 && !showKinds.includes('reachable')) {
      lines.push('Reachable blocks (those to which a pointer was found) are not shown.');
      lines.push('To see them, rerun with: --show-leak-kinds=all');
    }
  } else if (groups.length === 0) {
    lines.push(paint('bold', `LEAK SUMMARY: ${noLeaksVerdict(report, exited)}`));
  } else {
    const bytes = groups.reduce((sum, g) => sum + g.bytes, 0);
    const blocks = groups.reduce((sum, g) => sum + g.blocks, 0);
    lines.push(
      paint(
        'bold',
        `LEAK SUMMARY: leaked: ${formatCount(bytes)} bytes in ${formatCount(blocks)} blocks ` +
          `in ${formatCount(groups.length)} groups`,
      ),
    );
  }
  const errors = errorSummary(report);
  if (errors !== undefined) lines.push(paint('bold', errors));
  if (report.scan && !report.scan.scanned) lines.push(`leak kinds: not scanned: ${report.scan.reason}`);
  return lines.join('\n') + '\n';
}

/** What an empty leak list means, in words that are true of this report. */
function noLeaksVerdict(report: LeakReport, exited: boolean): string {
  const s = report.summary;
  const untracked = untrackedAllocations(report);
  if (untracked > 0) {
    return `no leaks listed, but ${formatCount(untracked)} allocations were not tracked, so leaks may be missing (inconclusive)`;
  }
  if (s.inUseBlocks === 0) return exited ? 'no leaks: all heap blocks were freed' : 'no leaks: no heap blocks in use';
  return (
    `no leaks listed: the ${formatCount(s.inUseBytes)} bytes in ${formatCount(s.inUseBlocks)} blocks still in use ` +
    `are all suppressed (see below)`
  );
}

function pad2(n: number): string {
  return n.toString().padStart(2, '0');
}

/**
 * The periodic view of `attach --interval`, BCC memleak style:
 *
 * ```
 * [14:03:07] Top 10 stacks with outstanding allocations:
 * 	4,096 bytes in 128 allocations from stack
 * 		0x4011a6: make_node (server.c:12) [/usr/bin/server]
 * 		0x401230: main (server.c:40) [/usr/bin/server]
 * 	64 bytes in 2 allocations from stack
 * 		...
 * 	in use: 4,160 bytes in 130 blocks; 1,200 allocs, 1,070 frees since attach
 * ```
 *
 * Allocations are grouped by stack (-1: "from an uncaptured stack"), largest bytes first, each with
 * its frames from `opts.frames` (innermost first).
 * Ends with a newline.
 */
export function formatSnapshotTop(snapshot: Snapshot, opts: FormatSnapshotOptions): string {
  const paint = painter(opts.color);
  const now = opts.now ?? new Date();
  const stamp = `${pad2(now.getHours())}:${pad2(now.getMinutes())}:${pad2(now.getSeconds())}`;

  const byStack = opts.byStack ?? stackUse(snapshot.allocations);
  const stacks = [...byStack.entries()]
    .map(([stackId, v]) => ({ stackId, ...v }))
    .sort((a, b) => b.bytes - a.bytes || b.count - a.count || a.stackId - b.stackId);

  const all = !(opts.top > 0) || !Number.isFinite(opts.top);
  const shown = all ? stacks : stacks.slice(0, opts.top);
  const title = all ? 'Stacks' : `Top ${opts.top} stacks`;
  const lines = [paint('bold', `[${stamp}] ${title} with outstanding allocations:`)];
  if (stacks.length === 0) lines.push('\t(no outstanding allocations)');
  for (const st of shown) {
    // Stack ids mean nothing to a reader: the frames are the stack (BCC's memleak prints them too).
    const frames = st.stackId >= 0 ? (opts.frames?.(st.stackId) ?? []) : [];
    const from = st.stackId < 0 ? 'from an uncaptured stack' : frames.length > 0 ? 'from stack' : 'from a stack whose frames could not be read';
    lines.push(`\t${formatCount(st.bytes)} bytes in ${formatCount(st.count)} allocations ${from}`);
    for (const f of frames) lines.push(`\t\t${formatFrame(f)}`);
  }
  const rest = stacks.length - shown.length;
  if (rest > 0) lines.push(`\t... ${formatCount(rest)} more ${rest === 1 ? 'stack' : 'stacks'}`);
  const s = snapshot.summary;
  lines.push(
    `\tin use: ${formatCount(s.inUseBytes)} bytes in ${formatCount(s.inUseBlocks)} blocks; ` +
      `${formatCount(s.allocs)} allocs, ${formatCount(s.frees)} frees since attach`,
  );
  return lines.join('\n') + '\n';
}
