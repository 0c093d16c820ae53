// Leak checks of a program run under the tracer, for test suites: checkLeaks() reports,
// assertNoLeaks() throws a LeakError whose message is the readable report.
import { defaultSuppressions } from './default-suppressions.js';
import { definedProperties } from './defined.js';
import { formatCount, formatReport, type FormatReportOptions } from './format.js';
import { LeakError, LeakInconclusiveError } from './leak-errors.js';
import { defaultShownKinds, kindSelected, leakKindsOption } from './leak-kinds.js';
import { asScoped } from './scope.js';
import {
  applySuppressions,
  applySuppressionsSliced,
  resolveSuppressions,
  type AppliedSuppressions,
  type LeakKind,
  type MatchOptions,
  type SuppressionHit,
  type SuppressionInput,
} from './suppressions.js';
import { trace } from './trace.js';
import type { CommandTraceOptions, LeakGroup, LeakReport } from './types.js';

export interface CheckLeaksOptions extends Omit<CommandTraceOptions, 'command'> {
  /** Suppression files (valgrind .supp or LSan), text, or parsed rules. */
  suppressions?: SuppressionInput | readonly SuppressionInput[];
  /** Apply the shipped rules for one-time glibc/libstdc++/libuv/V8 allocations. Default true. */
  defaultSuppressions?: boolean;
  /** See lib/suppressions.ts (match-leak-kinds). */
  assumeLeakKinds?: readonly LeakKind[];
  /** The leak kinds that count as leaks (valgrind's --errors-for-leak-kinds): a list, or
   *  valgrind's text ('definite,possible', 'all', 'none'). Default definite and possible.
   *  Without a scan (leakKinds: false, or a program killed by a signal) every block counts. */
  errorsForLeakKinds?: readonly LeakKind[] | string;
  /** Kill the program (SIGKILL) if it runs longer than this, milliseconds. Default: no limit. */
  timeoutMs?: number;
}

export interface AssertNoLeaksOptions extends CheckLeaksOptions {
  /** Bytes that may leak without failing (after suppressions). Default 0. */
  maxBytes?: number;
  /** Do not fail when the result is inconclusive (see CheckedLeakReport.inconclusive). */
  allowInconclusive?: boolean;
  /** Loss records printed in the error message. Default 10. */
  top?: number;
}

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

/** Runs `command` under the tracer until it exits, and reports what it left allocated. */
export async function checkLeaks(command: string, options: CheckLeaksOptions = {}): Promise<CheckedLeakReport> {
  const { suppressions, defaultSuppressions: useDefaults, assumeLeakKinds, errorsForLeakKinds, timeoutMs, ...traceOptions } =
    options;
  const errorKinds = leakKindsOption(errorsForLeakKinds, 'errorsForLeakKinds');
  const rules = [...(useDefaults === false ? [] : defaultSuppressions()), ...resolveSuppressions(suppressions)];
  const tracer = await trace({ ...traceOptions, command });
  let timer: NodeJS.Timeout | undefined;
  if (timeoutMs !== undefined) timer = setTimeout(() => tracer.process?.kill('SIGKILL'), timeoutMs);
  let report: LeakReport;
  try {
    report = await tracer.done;
  } finally {
    if (timer) clearTimeout(timer);
  }
  return checkReportSliced(report, rules, {
    stacks: tracer.info.stacks,
    ...(assumeLeakKinds ? { assumeLeakKinds } : {}),
    ...(errorKinds ? { errorsForLeakKinds: errorKinds } : {}),
  });
}

/** `stacks`: whether the tracer captured stacks (stackless groups are then inconclusive).
 *  `errorsForLeakKinds`: the kinds that count as leaks (default definite and possible). */
type CheckOptions = { stacks?: boolean; assumeLeakKinds?: readonly LeakKind[]; errorsForLeakKinds?: readonly LeakKind[] };

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

/** Throws LeakInconclusiveError, or LeakError when more than `maxBytes` leaked; returns the
 *  checked report otherwise. */
export function assertReport(report: CheckedLeakReport, options: Pick<AssertNoLeaksOptions, 'maxBytes' | 'allowInconclusive' | 'top'> = {}): CheckedLeakReport {
  if (report.inconclusive.length > 0 && !options.allowInconclusive) {
    throw new LeakInconclusiveError(report.inconclusive, report, `the leak check of ${describe(report)}`);
  }
  const maxBytes = options.maxBytes ?? 0;
  if (report.leakedBytes > maxBytes) {
    const head =
      `ebpf-leak: ${describe(report)} leaked ${formatCount(report.leakedBytes)} bytes in ` +
      `${formatCount(report.leakedBlocks)} blocks` +
      (maxBytes > 0 ? ` (at most ${formatCount(maxBytes)} allowed)` : '') +
      '\n\n';
    throw new LeakError(head + formatCheckedReport(report, options.top !== undefined ? { top: options.top } : {}), report);
  }
  return report;
}

function describe(report: LeakReport): string {
  const t = report.target;
  return t.command !== undefined ? [t.command, ...(t.args ?? [])].join(' ') : `process ${t.pid}`;
}

/** checkLeaks(), then assertReport(): throws a LeakError whose message is the readable report. */
export async function assertNoLeaks(command: string, options: AssertNoLeaksOptions = {}): Promise<CheckedLeakReport> {
  const { maxBytes, allowInconclusive, top, ...check } = options;
  const report = await checkLeaks(command, check);
  return assertReport(report, definedProperties({ maxBytes, allowInconclusive, top }));
}
