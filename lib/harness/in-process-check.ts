// leakCheck(): measure() plus the verdict, for in-process checks of native code; and the readable
// form of a NativeLeakReport that the errors carry.
import { definedProperties } from '../util/defined.js';
import { formatCount, formatStack } from '../report/text-format.js';
import { LeakError, LeakInconclusiveError } from './leak-errors.js';
import { measure, type LeakSite, type MeasuredFunction, type MeasureOptions, type NativeLeakReport } from './measure.js';
import type { StackFrame } from '../types.js';

export interface LeakCheckOptions extends MeasureOptions {
  /** Bytes per iteration the growing sites may leak together without failing. Default 0. */
  maxBytesPerIteration?: number;
  /** Do not fail when the result is inconclusive (NativeLeakReport.inconclusive). */
  allowInconclusive?: boolean;
  /** Call sites printed in the error message. Default 5. */
  top?: number;
}

export interface FormatNativeOptions {
  /** Sites shown. Default 5. */
  top?: number;
  /** Frames shown per stack (JavaScript frames after the native ones are cut). Default 16. */
  frames?: number;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${formatCount(n)} ${n === 1 ? one : many}`;
}

function perIteration(bytes: number): string {
  const rounded = Math.round(bytes * 100) / 100;
  return `${formatCount(rounded)} ${rounded === 1 ? 'byte' : 'bytes'} per iteration`;
}

/** Frames worth reading: native frames, then at most one line for the JavaScript below them. */
function shownFrames(stack: readonly StackFrame[], max: number): StackFrame[] {
  const out: StackFrame[] = [];
  for (const f of stack) {
    if (out.length >= max) break;
    out.push(f);
    if (f.module === undefined || f.module === '[perf-map]') break;
  }
  return out;
}

function siteLines(site: LeakSite, iterations: number, frames: number): string[] {
  return [
    `${perIteration(site.bytesPerIteration)}: ${plural(site.bytes, 'byte')} in ${plural(site.blocks, 'block')}, ` +
      `left by ${formatCount(site.iterationsWithBlocks)} of ${formatCount(iterations)} iterations` +
      (site.stacks > 1 ? ` (${site.stacks} stacks)` : ''),
    ...formatStack(shownFrames(site.stack, frames)),
  ];
}

/** The readable form of a NativeLeakReport: the growing sites with their stacks, then one-time
 *  allocations, suppressions and exclusions in a line each. Ends with a newline. */
export function formatNativeLeakReport(report: NativeLeakReport, options: FormatNativeOptions = {}): string {
  const top = options.top ?? 5;
  const frames = options.frames ?? 16;
  const lines: string[] = [];
  const runs = `${formatCount(report.iterations)} iterations (after ${formatCount(report.warmup)} warm-up)`;
  if (report.leaks.length === 0) {
    lines.push(`ebpf-leak: no native memory growth over ${runs}`);
  } else {
    lines.push(
      `ebpf-leak: native memory grew by ${perIteration(report.bytesPerIteration)} over ${runs}, ` +
        `at ${plural(report.leaks.length, 'call site')}:`,
    );
    for (const site of report.leaks.slice(0, top)) {
      lines.push('', ...siteLines(site, report.iterations, frames));
    }
    const rest = report.leaks.slice(top);
    if (rest.length > 0) {
      lines.push('', `... ${plural(rest.length, 'more growing site')} (${perIteration(rest.reduce((n, s) => n + s.bytesPerIteration, 0))})`);
    }
  }
  const notes: string[] = [];
  if (report.oneTime.length > 0) {
    const bytes = report.oneTime.reduce((n, s) => n + s.bytes, 0);
    const blocks = report.oneTime.reduce((n, s) => n + s.blocks, 0);
    notes.push(
      `not growing (one-time allocations, not counted): ${plural(bytes, 'byte')} in ${plural(blocks, 'block')} ` +
        `at ${plural(report.oneTime.length, 'call site')}`,
    );
  }
  for (const h of report.suppressed) {
    notes.push(
      `suppressed: ${plural(h.bytes, 'byte')} in ${plural(h.blocks, 'block')} by ${h.rule} ` +
        `(${h.source === 'default' ? 'default suppressions' : h.source})`,
    );
  }
  const { otherThreads, otherModules } = report.excluded;
  if (otherThreads.blocks > 0) {
    notes.push(
      `excluded: ${plural(otherThreads.bytes, 'byte')} in ${plural(otherThreads.blocks, 'block')} allocated by other ` +
        `threads during the iterations (threads: 'all' counts them)`,
    );
  }
  if (otherModules.blocks > 0) {
    notes.push(
      `excluded: ${plural(otherModules.bytes, 'byte')} in ${plural(otherModules.blocks, 'block')} whose stacks do not ` +
        `pass through the module filter`,
    );
  }
  for (const r of report.inconclusive) notes.push(`inconclusive: ${r}`);
  if (notes.length > 0) lines.push('', ...notes);
  return lines.join('\n') + '\n';
}

/** Throws LeakInconclusiveError, or LeakError when the growing sites leak more than
 *  `maxBytesPerIteration` per iteration together; returns the report otherwise. */
export function assertNativeReport(
  report: NativeLeakReport,
  options: Pick<LeakCheckOptions, 'maxBytesPerIteration' | 'allowInconclusive' | 'top'> = {},
): NativeLeakReport {
  if (report.inconclusive.length > 0 && !options.allowInconclusive) {
    throw new LeakInconclusiveError(report.inconclusive, report, 'the native leak check');
  }
  const max = options.maxBytesPerIteration ?? 0;
  if (report.leaks.length > 0 && report.bytesPerIteration > max) {
    const text = formatNativeLeakReport(report, options.top !== undefined ? { top: options.top } : {});
    const message = max > 0 ? text.replace(/:\n/, ` (at most ${perIteration(max)} allowed):\n`) : text;
    throw new LeakError(message, report);
  }
  return report;
}

/** measure(), then assertNativeReport(): resolves with the report when `fn` does not leak. */
export async function leakCheck(fn: MeasuredFunction, options: LeakCheckOptions = {}): Promise<NativeLeakReport> {
  const { maxBytesPerIteration, allowInconclusive, top, ...measureOptions } = options;
  const report = await measure(fn, measureOptions);
  return assertNativeReport(report, definedProperties({ maxBytesPerIteration, allowInconclusive, top }));
}
