// Exit statuses and the signals `run` passes on to the program (pure helpers, and /proc reads).
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

import { heapErrorTotal } from '../report/heap-errors.js';
import type { LeakReport } from '../types.js';

/** Signals `run` passes on to the program and `attach` stops on. */
export const forwardedSignals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** 128 + the signal's number, as a shell reports a child killed by a signal. */
export function signalExitStatus(signal: string): number {
  const n = (osConstants.signals as Record<string, number | undefined>)[signal];
  return 128 + (n ?? 0);
}

/** Exit status of a run whose data is incomplete (inconclusive), unless --allow-inconclusive. */
export const INCONCLUSIVE_EXIT_STATUS = 3;

type Verdict = LeakReport & { inconclusive?: readonly string[] };

/** Whether the report has anything --error-exitcode fails for: leaks or heap errors, of the
 *  process or, with --follow-forks, of any of its processes. */
function failsCheck(report: LeakReport): boolean {
  const failed = (r: LeakReport) => r.leaks.length > 0 || heapErrorTotal(r.summary.errors) > 0;
  return failed(report) || (report.processes ?? []).some(failed);
}

/** Exit status of `run`, first that applies: 128+N when signal N killed the program (a crash is
 *  reported, as valgrind does, whatever else was found), unless heap errors were seen and
 *  --error-exitcode is set; --error-exitcode when blocks were left or
 *  heap errors seen; 3 when the data is incomplete (unless allowInconclusive); the program's own
 *  status. */
export function runExitStatus(report: Verdict, errorExitcode?: number, allowInconclusive = false): number {
  if (report.target.signal !== null) {
    // glibc aborts on the bad free it detects, where valgrind's free reports it and goes on: that
    // death is the heap error's, which --error-exitcode is for.
    const heapErrorDeath = heapErrorTotal(report.summary.errors) > 0;
    if (errorExitcode !== undefined && heapErrorDeath) return errorExitcode;
    return signalExitStatus(report.target.signal);
  }
  if (errorExitcode !== undefined && failsCheck(report)) return errorExitcode;
  if (!allowInconclusive && (report.inconclusive?.length ?? 0) > 0) return INCONCLUSIVE_EXIT_STATUS;
  return report.target.exitCode ?? 0;
}

/** Exit status of `attach`: --error-exitcode when blocks were left or heap errors seen, 3 when
 *  the data is incomplete (unless allowInconclusive), else 0. */
export function attachExitStatus(report: Verdict, errorExitcode?: number, allowInconclusive = false): number {
  if (errorExitcode !== undefined && failsCheck(report)) return errorExitcode;
  if (!allowInconclusive && (report.inconclusive?.length ?? 0) > 0) return INCONCLUSIVE_EXIT_STATUS;
  return 0;
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

export function readProcStat(pid: number | 'self'): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}
