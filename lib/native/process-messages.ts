// The supervisor's messages about processes (native/tracer/trace_session_processes.cc): an exec, a followed
// fork, a followed process's exit with its blocks.
import { decodeCounters, type Counters } from './layout.js';
import type { NativeScan } from './scan-records.js';

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
  /** The leak-kind scan made in its exit stop, when one was. */
  scan?: NativeScan;
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
  const flags = view.getUint32(8, true);
  const blocksEnd = blocksStart + blockCount * blockBytes;
  const blocks = buffer.slice(blocksStart, blocksEnd);
  return {
    pid: view.getUint32(0, true),
    waitStatus: view.getInt32(4, true),
    stopped: (flags & 1) !== 0,
    commandLine: splitCommandLine(Buffer.from(buffer, commandStart, commandBytes).toString('utf8')),
    counters,
    blocks,
    ...((flags & 2) !== 0 ? { scan: decodeExitScan(view, blocksEnd, blockCount, blocks) } : {}),
  };
}

/** After the blocks: u64 scan ns, read ns, walk ns, root bytes, heap bytes, threads; u64
 *  indirect bytes per block; u8 kind per block; u8 heuristic per block; padded to 8 bytes, u32
 *  owner per block; padded to 8 bytes, u64 pair count and u32 (from, to) per pair. */
function decodeExitScan(view: DataView, at: number, count: number, entries: ArrayBuffer): NativeScan {
  const word = (i: number) => Number(view.getBigUint64(at + i * 8, true));
  const indirectAt = at + 6 * 8;
  const indirect = new Float64Array(count);
  for (let i = 0; i < count; i++) indirect[i] = Number(view.getBigUint64(indirectAt + i * 8, true));
  const kindsAt = indirectAt + count * 8;
  const bytes = new Uint8Array(view.buffer, view.byteOffset);
  const ownersAt = Math.ceil((kindsAt + 2 * count) / 8) * 8;
  const pairsAt = Math.ceil((ownersAt + count * 4) / 8) * 8;
  const pairs = Number(view.getBigUint64(pairsAt, true));
  const u32s = (from: number, n: number) => new Uint32Array(view.buffer.slice(view.byteOffset + from, view.byteOffset + from + n * 4));
  return {
    entries,
    kinds: bytes.slice(kindsAt, kindsAt + count),
    heuristics: bytes.slice(kindsAt + count, kindsAt + 2 * count),
    indirect,
    owners: u32s(ownersAt, count),
    lostEdges: u32s(pairsAt + 8, 2 * pairs),
    stats: {
      atExit: true,
      pauseNs: word(0),
      scanNs: word(0),
      readNs: word(1),
      markNs: word(2),
      rootBytes: word(3),
      heapBytes: word(4),
      blocks: count,
      threads: word(5),
      threadsWithRegisters: 0,
    },
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
