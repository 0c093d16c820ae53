// `ebpf-leak attach -p PID`: trace a running process, print its top stacks every --interval,
// report when it exits, on a signal or after --duration, and detach.
import { formatScanLines, formatSnapshotTop } from '../report/text-format.js';
import { stackUseSliced } from '../report/snapshot-stacks.js';
import type { Snapshot, StackFrame } from '../types.js';
import type { AttachCommand } from './args.js';
import { traceOptions } from './trace-options.js';
import { checkJsonDestination, finish, useColor, watchTracer, type CliIo } from './output.js';

/** Frames per stack in the periodic output. */
const PERIODIC_FRAMES = 8;
import { attachExitStatus, forwardedSignals, signalExitStatus } from './signals.js';

export async function attachCommand(cmd: AttachCommand, io: CliIo): Promise<number> {
  checkJsonDestination(cmd);
  const { trace } = await import('../tracer/trace.js');
  const { releaseSnapshot } = await import('../tracer/leak-tracer.js');
  // Hours of a snapshot a second on worker threads: their arenas give back what they free.
  if (cmd.intervalS > 0) (await import('../native/addon.js')).loadNative().keepArenasTrimmed();
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
          // The frames of the stacks shown (a stack id means nothing to a reader).
          const shown = [...byStack.entries()]
            .filter(([id]) => id >= 0)
            .sort((a, b) => b[1].bytes - a[1].bytes || b[1].count - a[1].count || a[0] - b[0])
            .slice(0, cmd.top > 0 ? cmd.top : undefined)
            .map(([id]) => id);
          const frames = new Map<number, StackFrame[]>();
          const resolved = await tracer.stackFrames(shown).catch(() => shown.map(() => []));
          shown.forEach((id, i) => frames.set(id, (resolved[i] ?? []).slice(0, PERIODIC_FRAMES)));
          let text = formatSnapshotTop(snap, { top: cmd.top, color, byStack, frames: (id) => frames.get(id) });
          // Read in full by now: its buffer goes at once rather than a collection later.
          releaseSnapshot(snap);
          if (cmd.leakKinds === true) text += formatScanLines(await tracer.scan());
          if (!stopping) io.stderr.write(text + '\n');
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
    if (report.scan === undefined) {
      // Never a silent verdict: without a scan nothing here is known to be lost or reachable.
      io.stderr.write('leak kinds: not scanned (--scan stops the process briefly to scan its memory); every block still allocated is listed\n');
    }
    return attachExitStatus(checked, cmd.errorExitcode, cmd.allowInconclusive);
  } finally {
    stopping = true;
    clearInterval(interval);
    clearTimeout(duration);
    for (const s of forwardedSignals) process.off(s, onSignal);
  }
}
