// A finished report checked: suppressions applied, and the reasons (lost events, a full address
// map, stackless blocks) it cannot vouch for its answer. The CLI prints it and the test harness
// asserts on it.
import { defaultShownKinds, kindSelected } from './leak-kinds.js';
import { formatCount, formatReport, type FormatReportOptions } from './text-format.js';
import { asScoped } from './scope.js';
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

/** A LeakReport whose `leaks` are what no suppression covers, plus what was suppressed and
 *  whether the trace can vouch for the answer. `summary` stays the whole program's. */
export interface CheckedLeakReport extends LeakReport {
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
  report: LeakReport,
  rules: ReturnType<typeof resolveSuppressions>,
  options: CheckOptions = {},
): CheckedLeakReport {
  return checked(report, applySuppressions(report.leaks, rules, matchOptions(options)), options);
}

/** checkReport() with the suppressions matched in slices, the event loop served between them:
 *  thousands of deep stacks against the rules take most of a second. */
export async function checkReportSliced(
  report: LeakReport,
  rules: ReturnType<typeof resolveSuppressions>,
  options: CheckOptions = {},
): Promise<CheckedLeakReport> {
  return checked(report, await applySuppressionsSliced(report.leaks, rules, matchOptions(options)), options);
}

function matchOptions(options: CheckOptions): MatchOptions {
  return options.assumeLeakKinds ? { assumeLeakKinds: options.assumeLeakKinds } : {};
}

function checked(report: LeakReport, applied: AppliedSuppressions<LeakGroup>, options: CheckOptions): CheckedLeakReport {
  const { suppressed } = applied;
  // Blocks of the kinds that are not errors (still reachable, by default) are no leaks.
  const errorKinds = options.errorsForLeakKinds ?? defaultShownKinds;
  const kept = applied.kept.filter((g) => kindSelected(g.kind, errorKinds));
  const inconclusive: string[] = [];
  const s = report.summary;
  if (s.droppedAllocations > 0) {
    inconclusive.push(
      `${formatCount(s.droppedAllocations)} allocations were not tracked because the address map was full; raise maxAllocations`,
    );
  }
  if (s.lostEvents > 0) inconclusive.push(`${formatCount(s.lostEvents)} events were lost (event ring buffer full)`);
  if (options.stacks !== false) {
    const stackless = kept.filter((g) => g.stack.length === 0);
    if (stackless.length > 0) {
      const bytes = stackless.reduce((n, g) => n + g.bytes, 0);
      const blocks = stackless.reduce((n, g) => n + g.blocks, 0);
      let failures = '';
      try {
        failures = ` (${formatCount(asScoped(report).counters.stackFailures)} stack walks failed)`;
      } catch {
        // a report not made by a tracer: no counters
      }
      inconclusive.push(
        `${formatCount(bytes)} bytes in ${formatCount(blocks)} blocks have no stack${failures}, so they cannot be placed or suppressed`,
      );
    }
  }
  const out: CheckedLeakReport = {
    ...report,
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
        `(${h.source === 'default' ? 'default suppressions' : h.source})`,
    ),
  ];
}

/** The readable form of a checked report: valgrind-style loss records, then what was
 *  suppressed and why the result may be inconclusive. */
export function formatCheckedReport(report: CheckedLeakReport, options: FormatReportOptions = {}): string {
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
