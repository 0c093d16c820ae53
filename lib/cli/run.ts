// `ebpf-leak run`: start the program held, trace it to its end, report. Signals sent to us are
// passed on to it (see shouldForwardSignal).
import type { LeakTracer } from '../tracer/leak-tracer.js';
import { shellQuote } from '../report/text-format.js';
import type { RunCommand } from './args.js';
import { traceOptions } from './trace-options.js';
import { checkJsonDestination, finish, watchTracer, type CliIo } from './output.js';
import { invokingUser } from './preflight.js';
import { forwardedSignals, readProcStat, runExitStatus, shouldForwardSignal } from './signals.js';

export async function runCommand(cmd: RunCommand, io: CliIo): Promise<number> {
  let tracer: LeakTracer | undefined;
  let pending: NodeJS.Signals | undefined;

  const forward = (signal: NodeJS.Signals): void => {
    if (tracer === undefined) {
      pending = signal; // passed on once the program exists
      return;
    }
    const childPgrp = readProcStat(tracer.pid)?.pgrp;
    if (!shouldForwardSignal(signal, readProcStat('self'), childPgrp)) return;
    // Through the pidfd: a pid already reaped (`done` is about to resolve) may name another process.
    tracer.process?.kill(signal);
  };
  for (const s of forwardedSignals) process.on(s, forward);
  try {
    checkJsonDestination(cmd);
    const { trace } = await import('../tracer/trace.js');
    // Under sudo the program runs as the one who typed the command, unless --as-root.
    const user = cmd.asRoot ? undefined : invokingUser(io.env, process.getuid?.());
    tracer = await trace({
      command: cmd.command,
      args: cmd.args,
      stdio: 'inherit',
      ...(user ? { user } : {}),
      ...traceOptions(cmd),
    });
    watchTracer(tracer, cmd, io);
    if (cmd.verbose) {
      io.stderr.write(`ebpf-leak: tracing pid ${tracer.pid}: ${[cmd.command, ...cmd.args].map(shellQuote).join(' ')}\n`);
    }
    if (pending !== undefined) forward(pending);
    const report = await tracer.done;
    for (const s of forwardedSignals) process.off(s, forward);
    const checked = await finish(report, cmd, io, tracer);
    return runExitStatus(checked, cmd.errorExitcode, cmd.allowInconclusive);
  } finally {
    for (const s of forwardedSignals) process.off(s, forward);
  }
}

