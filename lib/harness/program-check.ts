// Leak checks of a program run under the tracer, for test suites: checkLeaks() reports,
// assertNoLeaks() throws a LeakError whose message is the readable report.
import { defaultSuppressions } from '../suppressions/defaults.js';
import { definedProperties } from '../util/defined.js';
import { formatCheckedReport, checkReportSliced, type CheckedLeakReport } from '../report/checked.js';
import { leakKindsOption } from '../report/leak-kinds.js';
import { formatCount } from '../report/text-format.js';
import { HeapErrorsError, LeakError, LeakInconclusiveError } from './leak-errors.js';
import { heapErrorTotal } from '../report/heap-errors.js';
import { resolveSuppressions, type LeakKind, type SuppressionInput } from '../suppressions/rules.js';
import { trace } from '../tracer/trace.js';
import type { CommandTraceOptions, LeakReport } from '../types.js';

export interface CheckLeaksOptions extends Omit<CommandTraceOptions, 'command'> {
  /** Suppression files (valgrind .supp or LSan), text, or parsed rules. */
  suppressions?: SuppressionInput | readonly SuppressionInput[];
  /** Apply the shipped rules for one-time glibc/libstdc++/libuv/V8 allocations. Default true. */
  defaultSuppressions?: boolean;
  /** See lib/suppressions/rules.ts (match-leak-kinds). */
  assumeLeakKinds?: readonly LeakKind[];
  /** The leak kinds that count as leaks (valgrind's --errors-for-leak-kinds): a list, or
   *  valgrind's text ('definite,possible', 'all', 'none'). Default definite and possible.
   *  Without a scan (leakKinds: false, or a program that ended without its exit stop) every
   *  block counts. */
  errorsForLeakKinds?: readonly LeakKind[] | string;
  /** Kill the program (SIGKILL) if it runs longer than this, milliseconds. Default: no limit. */
  timeoutMs?: number;
}

export interface AssertNoLeaksOptions extends CheckLeaksOptions {
  /** Bytes that may leak without failing (after suppressions). Default 0. */
  maxBytes?: number;
  /** Do not fail when the result is inconclusive (see CheckedLeakReport.inconclusive). */
  allowInconclusive?: boolean;
  /** Do not fail on heap errors (invalid, double and mismatched frees: report.errors); only
   *  leaks then fail. */
  allowHeapErrors?: boolean;
  /** Loss records printed in the error message. Default 10. */
  top?: number;
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

type AssertOptions = Pick<AssertNoLeaksOptions, 'maxBytes' | 'allowInconclusive' | 'allowHeapErrors' | 'top'>;

/** Throws HeapErrorsError when the program freed wrongly, LeakInconclusiveError, or LeakError
 *  when more than `maxBytes` leaked; returns the checked report otherwise. With several processes
 *  (followForks), when any of them does. Heap errors come first: they are facts whatever else
 *  the trace missed, and valgrind fails a run on them too. */
export function assertReport(report: CheckedLeakReport, options: AssertOptions = {}): CheckedLeakReport {
  if (!options.allowHeapErrors) assertNoHeapErrors(report, options);
  if (report.processes && report.processes.length > 0) return assertProcesses(report, report.processes, options);
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

/** Every process's check: the error names each process that leaked. */
function assertProcesses(
  report: CheckedLeakReport,
  processes: readonly CheckedLeakReport[],
  options: AssertOptions,
): CheckedLeakReport {
  const maxBytes = options.maxBytes ?? 0;
  const inconclusive = processes.flatMap((p) => p.inconclusive.map((r) => `process ${p.target.pid}: ${r}`));
  if (inconclusive.length > 0 && !options.allowInconclusive) {
    throw new LeakInconclusiveError(inconclusive, report, `the leak check of ${describe(report)}`);
  }
  const leaking = processes.filter((p) => p.leakedBytes > maxBytes);
  if (leaking.length === 0) return report;
  const names = leaking.map(
    (p) => `   process ${p.target.pid} (${describe(p)}): ${formatCount(p.leakedBytes)} bytes in ${formatCount(p.leakedBlocks)} blocks`,
  );
  const head =
    `ebpf-leak: ${leaking.length} of ${processes.length} processes of ${describe(report)} leaked` +
    (maxBytes > 0 ? ` more than ${formatCount(maxBytes)} bytes` : '') +
    ':\n' +
    names.join('\n') +
    '\n\n';
  throw new LeakError(head + formatCheckedReport(report, options.top !== undefined ? { top: options.top } : {}), report);
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${formatCount(n)} ${n === 1 ? one : many}`;
}

function assertNoHeapErrors(report: CheckedLeakReport, options: AssertOptions): void {
  const withErrors = [report, ...(report.processes ?? [])].filter((r) => heapErrorTotal(r.summary.errors) > 0);
  if (withErrors.length === 0) return;
  const total = withErrors.reduce((n, r) => n + heapErrorTotal(r.summary.errors), 0);
  const kinds: string[] = [];
  const sum = (k: 'invalid-free' | 'double-free' | 'mismatched-free' | 'notRecorded') =>
    withErrors.reduce((n, r) => n + (r.summary.errors?.[k] ?? 0), 0);
  if (sum('invalid-free')) kinds.push(plural(sum('invalid-free'), 'invalid free'));
  if (sum('double-free')) kinds.push(plural(sum('double-free'), 'double free'));
  if (sum('mismatched-free')) kinds.push(plural(sum('mismatched-free'), 'mismatched free'));
  if (sum('notRecorded')) kinds.push(`${formatCount(sum('notRecorded'))} more not recorded`);
  const head = `ebpf-leak: ${describe(report)} made ${plural(total, 'heap error')} (${kinds.join(', ')})\n\n`;
  const tail = '\nPass allowHeapErrors: true to fail on leaks only.\n';
  const top = options.top !== undefined ? { top: options.top } : {};
  const body = withErrors.map((r) => formatCheckedReport(r, top)).join('\n');
  throw new HeapErrorsError(head + body + tail, report);
}

function describe(report: LeakReport): string {
  const t = report.target;
  if (t.commandLine && t.commandLine.length > 0) return t.commandLine.join(' ');
  return t.command !== undefined ? [t.command, ...(t.args ?? [])].join(' ') : `process ${t.pid}`;
}

/** checkLeaks(), then assertReport(): throws a LeakError whose message is the readable report. */
export async function assertNoLeaks(command: string, options: AssertNoLeaksOptions = {}): Promise<CheckedLeakReport> {
  const { maxBytes, allowInconclusive, allowHeapErrors, top, ...check } = options;
  const report = await checkLeaks(command, check);
  return assertReport(report, definedProperties({ maxBytes, allowInconclusive, allowHeapErrors, top }));
}
