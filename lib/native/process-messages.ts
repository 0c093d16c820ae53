// The supervisor's messages about processes (native/tracer/tracer_processes.cc): an exec, a followed
// fork, a followed process's exit with its blocks.
import { decodeCounters, type Counters } from './layout.js';

export interface ExecMessage {
  pid: number;
  /** The image that exec'd: its totals, and what it still had allocated. */
  counters: Counters;
  inUseBlocks: number;
  inUseBytes: number;
  /** The new image's command line as the exec left it (maybe cut short), when the process was not
   *  stopped at its exec; empty otherwise. */
  commandLine: string[];
}

export interface ForkMessage {
  pid: number;
  parent: number;
}

export interface ProcessExitMessage {
  pid: number;
  /** As waitpid() reports it. */
  waitStatus: number;
  /** Seen at its exit stop (false: it vanished, killed, without one). */
  stopped: boolean;
  commandLine: string[];
  counters: Counters;
  /** leak_block records, addresses as the process saw them. */
  blocks: ArrayBuffer;
}

export function decodeExec(buffer: ArrayBuffer, countersBytes: number): ExecMessage {
  const view = new DataView(buffer);
  const counters = decodeCounters(buffer.slice(8, 8 + countersBytes));
  return {
    pid: view.getUint32(0, true),
    counters,
    inUseBlocks: Number(view.getBigUint64(8 + countersBytes, true)),
    inUseBytes: Number(view.getBigUint64(16 + countersBytes, true)),
    commandLine: splitCommandLine(Buffer.from(buffer, 32 + countersBytes, view.getUint32(24 + countersBytes, true)).toString('utf8')),
  };
}

export function decodeFork(buffer: ArrayBuffer): ForkMessage {
  const view = new DataView(buffer);
  return { pid: view.getUint32(0, true), parent: view.getUint32(4, true) };
}

export function decodeProcessExit(buffer: ArrayBuffer, countersBytes: number, blockBytes: number): ProcessExitMessage {
  const view = new DataView(buffer);
  const commandBytes = view.getUint32(12, true);
  const counters = decodeCounters(buffer.slice(16, 16 + countersBytes));
  const blockCount = Number(view.getBigUint64(16 + countersBytes, true));
  const commandStart = 24 + countersBytes;
  const blocksStart = Math.ceil((commandStart + commandBytes) / 8) * 8;
  return {
    pid: view.getUint32(0, true),
    waitStatus: view.getInt32(4, true),
    stopped: view.getUint32(8, true) !== 0,
    commandLine: splitCommandLine(Buffer.from(buffer, commandStart, commandBytes).toString('utf8')),
    counters,
    blocks: buffer.slice(blocksStart, blocksStart + blockCount * blockBytes),
  };
}

/** /proc/PID/cmdline's NUL-separated arguments. */
export function splitCommandLine(text: string): string[] {
  const args = text.split('\0');
  if (args.length > 0 && args[args.length - 1] === '') args.pop();
  return args;
}

/** exitCode and signal of a waitpid() status. */
export function decodeWaitStatus(status: number, signalName: (n: number) => string | null): {
  exitCode: number | null;
  signal: string | null;
} {
  const signal = status & 0x7f;
  if (signal === 0) return { exitCode: (status >> 8) & 0xff, signal: null };
  return { exitCode: null, signal: signalName(signal) };
}
