// Exit statuses and the signals `run` passes on to the program (pure helpers, and /proc reads).
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

import type { LeakReport } from '../types.js';

/** Signals `run` passes on to the program and `attach` stops on. */
export const forwardedSignals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

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

export function readProcStat(pid: number | 'self'): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}
