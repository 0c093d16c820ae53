// A finished report checked: suppressions applied, and the reasons (lost events, a full address
// map, stackless blocks) it cannot vouch for its answer. The CLI prints it and the test harness
// asserts on it.
import { defaultShownKinds, kindSelected } from './leak-kinds.js';
import { hiddenThroughOwners, lostGraphOf } from './lost-graph.js';
import { formatCount, formatReport, type FormatReportOptions } from './text-format.js';
import type { Counters } from '../native/layout.js';
import {
  applySuppressions,
  applySuppressionsSliced,
  resolveSuppressions,
  type AppliedSuppressions,
  type LeakKind,
  type MatchOptions,
  type SuppressionHit,
} from '../suppressions/rules.js';
import type { LeakGroup, LeakReport } from '../types.js';

/** A report to check: a tracer's report carries the tracer's counters (stack walks that failed
 *  are then counted in the verdict); one read back from JSON has none. */
export type ReportInput = LeakReport & { counters?: Counters };

/** A LeakReport whose `leaks` are what no suppression covers, plus what was suppressed and
 *  whether the trace can vouch for the answer. `summary` stays the whole program's. */
export interface CheckedLeakReport extends LeakReport {
  /** followForks: each process's checked report, the first process's first. */
  processes?: CheckedLeakReport[];
  /** Per rule: how much it suppressed. */
  suppressed: SuppressionHit[];
  /** Why the answer cannot be trusted (events lost, map full, stacks missing); empty if it can. */
  inconclusive: string[];
  /** Every group no suppression covers, whatever its kind (`leaks` has the error kinds only). */
  unsuppressed: LeakGroup[];
  /** Sum over `leaks`. */
  leakedBytes: number;
  leakedBlocks: number;
}

/** `stacks`: whether the tracer captured stacks (stackless groups are then inconclusive). */
export type CheckOptions = { stacks?: boolean; assumeLeakKinds?: readonly LeakKind[]; errorsForLeakKinds?: readonly LeakKind[] };

/** Suppressions and the inconclusive check applied to a finished report (exported for reports
 *  obtained with trace() directly). */
export function checkReport(
  report: ReportInput,
  rules: ReturnType<typeof resolveSuppressions>,
  options: CheckOptions = {},
): CheckedLeakReport {
  const out = checked(report, applySuppressions(report.leaks, rules, matchOptions(options)), options);
  if (report.processes) {
    out.processes = report.processes.map((p) => checked(p, applySuppressions(p.leaks, rules, matchOptions(options)), options));
  }
  return out;
}

/** checkReport() with the suppressions matched in slices, the event loop served between them:
 *  thousands of deep stacks against the rules take most of a second. */
export async function checkReportSliced(
  report: ReportInput,
  rules: ReturnType<typeof resolveSuppressions>,
  options: CheckOptions = {},
): Promise<CheckedLeakReport> {
  const out = checked(report, await applySuppressionsSliced(report.leaks, rules, matchOptions(options)), options);
  if (report.processes) {
    const processes: CheckedLeakReport[] = [];
    for (const p of report.processes) {
      processes.push(checked(p, await applySuppressionsSliced(p.leaks, rules, matchOptions(options)), options));
    }
    out.processes = processes;
  }
  return out;
}

function matchOptions(options: CheckOptions): MatchOptions {
  return options.assumeLeakKinds ? { assumeLeakKinds: options.assumeLeakKinds } : {};
}

/** Why a result cannot be trusted, in the words of every verdict (the checked report's and
 *  measure()'s). */
export const inconclusiveReasons = {
  dropped: (allocations: number): string =>
    `${formatCount(allocations)} allocations were not tracked because the address map was full; raise maxAllocations`,
  lost: (events: number): string => `${formatCount(events)} events were lost (event ring buffer full)`,
  inflight: (calls: number): string =>
    `${formatCount(calls)} allocator calls could not be followed (their per-thread state could not be stored, ` +
    `a longjmp left the allocator, or the code of an operator new's call could not be read)`,
  noStack: (bytes: number, blocks: number, stackFailures?: number): string =>
    `${formatCount(bytes)} bytes in ${formatCount(blocks)} blocks have no stack` +
    (stackFailures !== undefined ? ` (${formatCount(stackFailures)} stack walks failed)` : '') +
    ', so they cannot be placed or suppressed',
};

/** The suppressions with what is lost only through the blocks they cover hidden too: left out
 *  of the kept groups, counted to the rule that covers the nearest of its owners. */
function withOwned(leaks: readonly LeakGroup[], applied: AppliedSuppressions<LeakGroup>): AppliedSuppressions<LeakGroup> {
  const lostCovered = [...applied.matched.keys()].some((g) => g.kind === 'definite' || g.kind === 'indirect');
  const graph = lostCovered ? lostGraphOf(leaks) : null;
  if (!graph) return applied;
  const hitOf = new Map<number, SuppressionHit>();
  const index = new Map<LeakGroup, number>();
  leaks.forEach((g, i) => {
    index.set(g, i);
    const hit = applied.matched.get(g);
    if (hit) hitOf.set(i, hit);
  });
  const owned = hiddenThroughOwners(leaks, graph, (g) => hitOf.get(g));
  if (owned.hits.size === 0) return applied;
  const kept: LeakGroup[] = [];
  for (const g of applied.kept) {
    const i = index.get(g);
    const changed = i === undefined ? undefined : owned.groups.get(i);
    if (changed === undefined) kept.push(g);
    else if (changed !== null) kept.push(changed);
  }
  const copies = new Map<SuppressionHit, SuppressionHit>();
  const suppressed = applied.suppressed.map((h) => {
    const more = owned.hits.get(h);
    const copy = more ? { ...h, bytes: h.bytes + more.bytes, blocks: h.blocks + more.blocks, owned: more } : h;
    copies.set(h, copy);
    return copy;
  });
  suppressed.sort((a, b) => b.bytes - a.bytes);
  const matched = new Map([...applied.matched].map(([g, h]) => [g, copies.get(h) ?? h]));
  return { kept, suppressed, matched };
}

function checked(report: ReportInput, found: AppliedSuppressions<LeakGroup>, options: CheckOptions): CheckedLeakReport {
  const applied = withOwned(report.leaks, found);
  const { suppressed } = applied;
  // Blocks of the kinds that are not errors (still reachable, by default) are no leaks.
  const errorKinds = options.errorsForLeakKinds ?? defaultShownKinds;
  const kept = applied.kept.filter((g) => kindSelected(g.kind, errorKinds));
  const inconclusive: string[] = [];
  const s = report.summary;
  if (s.droppedAllocations > 0) {
    inconclusive.push(inconclusiveReasons.dropped(s.droppedAllocations));
  }
  if (s.lostEvents > 0) inconclusive.push(inconclusiveReasons.lost(s.lostEvents));
  const inflight = report.counters?.inflightFailures ?? 0;
  if (inflight > 0) inconclusive.push(inconclusiveReasons.inflight(inflight));
  if (report.untraced !== undefined) inconclusive.push(report.untraced);
  if (options.stacks !== false) {
    const stackless = kept.filter((g) => g.stack.length === 0);
    if (stackless.length > 0) {
      const bytes = stackless.reduce((n, g) => n + g.bytes, 0);
      const blocks = stackless.reduce((n, g) => n + g.blocks, 0);
      inconclusive.push(inconclusiveReasons.noStack(bytes, blocks, report.counters?.stackFailures));
    }
  }
  const { processes: _processes, ...rest } = report;
  const out: CheckedLeakReport = {
    ...rest,
    leaks: kept,
    unsuppressed: applied.kept,
    suppressed,
    inconclusive,
    leakedBytes: kept.reduce((n, g) => n + g.bytes, 0),
    leakedBlocks: kept.reduce((n, g) => n + g.blocks, 0),
  };
  return out;
}

function suppressedLines(hits: readonly SuppressionHit[]): string[] {
  if (hits.length === 0) return [];
  const bytes = hits.reduce((n, h) => n + h.bytes, 0);
  const blocks = hits.reduce((n, h) => n + h.blocks, 0);
  return [
    `suppressed: ${formatCount(bytes)} bytes in ${formatCount(blocks)} blocks`,
    ...hits.map(
      (h) =>
        `   ${formatCount(h.bytes)} bytes in ${formatCount(h.blocks)} blocks by ${h.rule} ` +
        `(${h.source === 'default' ? 'default suppressions' : h.source})` +
        (h.owned ? `, of which ${formatCount(h.owned.bytes)} bytes in ${formatCount(h.owned.blocks)} blocks lost only through them` : ''),
    ),
  ];
}

/** The readable form of a checked report: valgrind-style loss records, then what was
 *  suppressed and why the result may be inconclusive. */
export function formatCheckedReport(report: CheckedLeakReport, options: FormatReportOptions = {}): string {
  if (report.processes && report.processes.length > 0) {
    const sections = report.processes.map(
      (p) => `${processHeading(p)}\n` + formatCheckedReport(p, options),
    );
    return sections.join('\n') + processFooter(report);
  }
  // Without showLeakKinds: its leaks, the error kinds; with it, the groups of those kinds.
  const shown =
    options.showLeakKinds !== undefined && report.unsuppressed !== undefined
      ? { ...report, leaks: report.unsuppressed }
      : report;
  let text = formatReport(shown, { showLeakKinds: ['definite', 'indirect', 'possible', 'reachable'], ...options, top: options.top ?? 10 });
  const extra = [...suppressedLines(report.suppressed)];
  if (report.inconclusive.length > 0) extra.push('inconclusive:', ...report.inconclusive.map((r) => `   ${r}`));
  if (extra.length > 0) text += extra.join('\n') + '\n';
  return text;
}

/** "== process 1234: ./prog arg (exit status 0) ==". */
function processHeading(report: LeakReport): string {
  const t = report.target;
  const line = t.commandLine ?? (t.command !== undefined ? [t.command, ...(t.args ?? [])] : []);
  const status = t.signal !== null ? `killed by ${t.signal}` : t.exitCode !== null ? `exit status ${t.exitCode}` : 'still running';
  const parent = t.parentPid !== undefined ? `, child of ${t.parentPid}` : '';
  return `== process ${t.pid}: ${line.join(' ') || '(command line unknown)'} (${status}${parent}) ==`;
}

function processFooter(report: LeakReport): string {
  const n = report.untracedChildren ?? 0;
  return n > 0 ? `${formatCount(n)} child processes could not be followed (more than 4,095 traced at once)\n` : '';
}
