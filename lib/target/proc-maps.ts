// /proc/PID/maps and /tmp/perf-PID.map parsing: which file (and where in it) an address came from.

import { constants as fsConstants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { InvalidOptionError } from '../errors.js';

/** One mapping of a process, as /proc/PID/maps lists it. */
export interface ProcMapping {
  start: bigint;
  /** Exclusive. */
  end: bigint;
  /** Offset of `start` in the mapped file. */
  offset: bigint;
  /** `rwxp`-style permissions. */
  perms: string;
  /** `major:minor` of the file's device, hex, as the kernel prints it. */
  dev: string;
  inode: bigint;
  /** Path as the target sees it (its own mount namespace), without a ` (deleted)` suffix; a pseudo
   *  name such as `[vdso]` or `[heap]`; or `''` for an anonymous mapping. */
  path: string;
  /** The mapped file was deleted (or replaced) after it was mapped. */
  deleted: boolean;
  /** Where this process can open the mapped file: `/proc/PID/root<path>` (so files inside a
   *  container resolve), or `/proc/PID/map_files/<start>-<end>` for a deleted file. Unset for
   *  pseudo and anonymous mappings. Without a pid, the path itself. */
  hostPath?: string;
}

export interface ParseProcMapsOptions {
  /** Pid whose maps these are; used to build `hostPath`. */
  pid?: number;
  /** Keep every mapping, not only executable ones. Default false. */
  all?: boolean;
}

const lineRe =
  /^([0-9a-fA-F]+)-([0-9a-fA-F]+)\s+([r-][w-][x-][psPS-])\s+([0-9a-fA-F]+)\s+([0-9a-fA-F]+:[0-9a-fA-F]+)\s+(\d+)(?:\s+(.*))?$/;

const deletedSuffix = ' (deleted)';

/** Parses the text of /proc/PID/maps. Returns executable mappings (all of them with `all`),
 *  in file order (the kernel lists them by address). Malformed lines are skipped. */
export function parseProcMaps(text: string, options: ParseProcMapsOptions = {}): ProcMapping[] {
  const out: ProcMapping[] = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.replace(/\r$/, '');
    const m = lineRe.exec(line);
    if (!m) continue;
    const perms = m[3]!;
    if (!options.all && perms[2] !== 'x') continue;
    const start = BigInt('0x' + m[1]!);
    const end = BigInt('0x' + m[2]!);
    if (end <= start) continue;
    // The kernel escapes a newline in a path as \012.
    let path = (m[7] ?? '').replace(/\\012/g, '\n');
    let deleted = false;
    if (path.startsWith('/') && path.endsWith(deletedSuffix)) {
      path = path.slice(0, -deletedSuffix.length);
      deleted = true;
    }
    const mapping: ProcMapping = {
      start,
      end,
      offset: BigInt('0x' + m[4]!),
      perms,
      dev: m[5]!,
      inode: BigInt(m[6]!),
      path,
      deleted,
    };
    if (path.startsWith('/')) {
      if (options.pid === undefined) mapping.hostPath = path;
      else if (deleted)
        mapping.hostPath = `/proc/${options.pid}/map_files/${start.toString(16)}-${end.toString(16)}`;
      else mapping.hostPath = `/proc/${options.pid}/root${path}`;
    }
    out.push(mapping);
  }
  return out;
}

/** Reads and parses /proc/PID/maps (executable mappings unless `all`). */
export async function readProcMaps(pid: number, options: { all?: boolean } = {}): Promise<ProcMapping[]> {
  if (!Number.isInteger(pid) || pid <= 0) throw new InvalidOptionError(`bad pid ${pid}: a pid is an integer >= 1`);
  const text = await readFile(`/proc/${pid}/maps`, 'utf8');
  return parseProcMaps(text, { pid, all: options.all ?? false });
}

/** Finds the mapping containing `address` in mappings sorted by start (binary search). */
export function findMapping<T extends { start: bigint; end: bigint }>(
  sorted: readonly T[],
  address: bigint,
): T | undefined {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const m = sorted[mid]!;
    if (address < m.start) hi = mid - 1;
    else if (address >= m.end) lo = mid + 1;
    else return m;
  }
  return undefined;
}

// --- perf map (JIT symbols: `node --perf-basic-prof`, also the JVM's perf-map-agent, LuaJIT...) --

export interface PerfMapEntry {
  start: bigint;
  /** Exclusive. */
  end: bigint;
  symbol: string;
}

const perfLineRe = /^\s*(?:0x)?([0-9a-fA-F]+)\s+(?:0x)?([0-9a-fA-F]+)\s+(.*?)\s*$/;

/** Parses perf map text: one `START SIZE name` per line, START and SIZE hex. Lines that do not
 *  parse, and zero-size entries, are skipped. Entries are returned in file order. */
export function parsePerfMap(text: string): PerfMapEntry[] {
  const out: PerfMapEntry[] = [];
  for (const line of text.split('\n')) {
    const m = perfLineRe.exec(line);
    if (!m || m[3] === '') continue;
    const start = BigInt('0x' + m[1]!);
    const size = BigInt('0x' + m[2]!);
    if (size === 0n) continue;
    out.push({ start, end: start + size, symbol: m[3]! });
  }
  return out;
}

/** Address lookup over perf map entries. Where entries overlap (a JIT reused code space), the one
 *  later in the file wins. */
export class PerfMap {
  readonly size: number;
  private readonly sorted: Array<PerfMapEntry & { order: number }>;
  private readonly maxEnd: bigint[];

  constructor(entries: readonly PerfMapEntry[]) {
    this.sorted = entries
      .map((e, order) => ({ ...e, order }))
      .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : a.order - b.order));
    this.maxEnd = [];
    let max = 0n;
    for (const e of this.sorted) {
      if (e.end > max) max = e.end;
      this.maxEnd.push(max);
    }
    this.size = this.sorted.length;
  }

  lookup(address: bigint): PerfMapEntry | undefined {
    // Last entry starting at or before the address.
    let lo = 0;
    let hi = this.sorted.length - 1;
    let idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.sorted[mid]!.start <= address) {
        idx = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    let best: (PerfMapEntry & { order: number }) | undefined;
    for (let j = idx, steps = 0; j >= 0 && this.maxEnd[j]! > address && steps < 100_000; j--, steps++) {
      const e = this.sorted[j]!;
      if (address < e.end && (best === undefined || e.order > best.order)) best = e;
    }
    return best && { start: best.start, end: best.end, symbol: best.symbol };
  }
}

const maxPerfMapBytes = 512 * 1024 * 1024;

/** Reads a perf map file safely (regular file only, no blocking on a FIFO, size-capped).
 *  Returns null when it does not exist or is not usable. */
export async function readPerfMapFile(path: string): Promise<PerfMap | null> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY);
  } catch {
    return null;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > maxPerfMapBytes) return null;
    const text = await handle.readFile('utf8');
    return new PerfMap(parsePerfMap(text));
  } catch {
    return null;
  } finally {
    await handle.close();
  }
}

/** The pid a process has in its own pid namespace (last NSpid field), or `pid` itself. */
export async function namespacePid(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = /^NSpid:\s*(.*)$/m.exec(status);
    const last = m?.[1]?.trim().split(/\s+/).pop();
    const n = last === undefined ? NaN : Number(last);
    return Number.isInteger(n) && n > 0 ? n : pid;
  } catch {
    return pid;
  }
}

/** Reads the perf map of a process: `/tmp/perf-<pid>.map` inside its mount namespace, named with
 *  its namespace pid (so a node in a container works), falling back to this namespace's /tmp. */
export async function readPerfMap(pid: number): Promise<PerfMap | null> {
  const nsPid = await namespacePid(pid);
  const candidates = [`/proc/${pid}/root/tmp/perf-${nsPid}.map`];
  if (nsPid !== pid) candidates.push(`/proc/${pid}/root/tmp/perf-${pid}.map`);
  candidates.push(`/tmp/perf-${pid}.map`);
  for (const c of candidates) {
    const map = await readPerfMapFile(c);
    if (map) return map;
  }
  return null;
}
