// What the CLI prints besides the report's own text: events, lost-data notices, what was probed,
// the stack walker's shortfalls; and the report after suppressions, printed and written.
import { readFileSync } from 'node:fs';

import { writeJsonReport } from '../report/json-format.js';
import { formatCount } from '../report/text-format.js';
import type { CheckedLeakReport } from '../report/checked.js';
import type { ScopedLeakReport } from '../report/scope.js';
import type { UnwindStats } from '../native/unwind.js';
import type { LeakTracer, TracerInfo } from '../tracer/leak-tracer.js';
import type { AllocEvent, FreeEvent, LostInfo } from '../types.js';
import type { CommonFlags } from './options.js';
import { jsonDestinationProblem } from './preflight.js';

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}


export const defaultIo = (): CliIo => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

export function useColor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv): boolean {
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

/** Listeners every command puts on the tracer. 'error' must have one or EventEmitter throws. */
export function watchTracer(tracer: LeakTracer, cmd: CommonFlags, io: CliIo): void {
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
export async function finish(
  report: ScopedLeakReport,
  cmd: CommonFlags,
  io: CliIo,
  tracer: LeakTracer,
  exited?: boolean,
): Promise<CheckedLeakReport> {
  const stacks = tracer.info.stacks;
  const { checkReportSliced, formatCheckedReport } = await import('../report/checked.js');
  const { defaultSuppressions } = await import('../suppressions/defaults.js');
  const { defaultShownKinds } = await import('../report/leak-kinds.js');
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
  if (stacks) io.stderr.write(formatStackProblems(tracer.unwindStats(), report.counters.stackFailures));
  if (cmd.genSuppressions) {
    io.stderr.write(generateSuppressions(checked, { format: cmd.genSuppressions }));
  }
  if (checked.inconclusive.length > 0 && !cmd.allowInconclusive) {
    io.stderr.write('ebpf-leak: the data is incomplete, so the run fails as inconclusive; --allow-inconclusive accepts it\n');
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
export class CliFailure extends Error {}

/** The --json destination can be written, checked before the program runs (its status would
 *  otherwise be lost to a late failure). */
export function checkJsonDestination(cmd: CommonFlags): void {
  const problem = cmd.json === undefined ? undefined : jsonDestinationProblem(cmd.json);
  if (problem !== undefined) throw new CliFailure(`cannot write the JSON report to ${cmd.json}: ${problem}`);
}
