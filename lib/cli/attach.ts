// `ebpf-leak attach -p PID`: trace a running process, print its top stacks every --interval,
// report when it exits, on a signal or after --duration, and detach.
import { formatSnapshotTop } from '../report/text-format.js';
import { stackUseSliced } from '../report/snapshot-stacks.js';
import type { Snapshot } from '../types.js';
import type { AttachCommand } from './args.js';
import { traceOptions } from './options.js';
import { finish, useColor, watchTracer, type CliIo } from './output.js';
import { attachExitStatus, forwardedSignals, signalExitStatus } from './signals.js';

export async function attachCommand(cmd: AttachCommand, io: CliIo): Promise<number> {
  const { trace } = await import('../tracer/trace.js');
  const tracer = await trace({ pid: cmd.pid, ...traceOptions(cmd) });
  watchTracer(tracer, cmd, io);

  const color = useColor(io.stderr, io.env);
  let stopping = false;
  const stop = (): void => {
    stopping = true;
    // The outcome is awaited through `done` below.
    tracer.stop().catch(() => undefined);
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      // Second signal: the user wants out now.
      process.exit(signalExitStatus(signal));
    }
    stop();
  };
  for (const s of forwardedSignals) process.on(s, onSignal);

  let interval: NodeJS.Timeout | undefined;
  let busy = false;
  if (cmd.intervalS > 0) {
    interval = setInterval(() => {
      if (busy || stopping) return;
      busy = true;
      tracer
        .snapshot()
        .then(async (snap: Snapshot) => {
          const byStack = await stackUseSliced(snap);
          if (!stopping) io.stderr.write(formatSnapshotTop(snap, { top: cmd.top, color, byStack }) + '\n');
        })
        .catch((err: unknown) => {
          // The process exiting between ticks is not news: `done` reports it.
          const code = (err as { code?: unknown }).code;
          if (!stopping && code !== 'ELEAK_TARGET_EXITED') {
            io.stderr.write(`ebpf-leak: warning: snapshot failed: ${(err as Error).message}\n`);
          }
        })
        .finally(() => {
          busy = false;
        });
    }, cmd.intervalS * 1000);
  }
  const duration = cmd.durationS !== undefined ? setTimeout(stop, cmd.durationS * 1000) : undefined;

  const what = cmd.intervalS > 0 ? `; top stacks every ${cmd.intervalS} s` : '';
  const until = cmd.durationS !== undefined ? `for ${cmd.durationS} s, or ` : '';
  io.stderr.write(`ebpf-leak: tracing pid ${tracer.pid}${what}; report ${until}on exit or Ctrl-C\n`);

  try {
    const report = await tracer.done;
    // Without a stop from us, `done` means the process exited (its status is not ours to know).
    const exited = !stopping;
    stopping = true;
    clearInterval(interval);
    clearTimeout(duration);
    const checked = await finish(report, cmd, io, tracer, exited);
    return attachExitStatus(checked, cmd.errorExitcode);
  } finally {
    stopping = true;
    clearInterval(interval);
    clearTimeout(duration);
    for (const s of forwardedSignals) process.off(s, onSignal);
  }
}
