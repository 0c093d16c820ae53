// The leak kinds of a scan of the target's memory (native/scan/): per block, and their totals as
// valgrind's LEAK SUMMARY counts them.
import { InvalidOptionError } from './errors.js';
import type { BlockColumns } from './native-layout.js';
import { leakKinds, type BytesBlocks, type HeapSummary, type LeakHeuristic, type LeakKind, type ScanInfo } from './types.js';

/** Kinds by the native scanner's codes (native/scan/heap_scan.h LeakKind). */
export const kindByCode: readonly LeakKind[] = ['definite', 'indirect', 'possible', 'reachable'];
/** Heuristics by the native scanner's codes (Heuristic; 0 is none). */
export const heuristicByCode: readonly (LeakHeuristic | undefined)[] = [
  undefined,
  'stdstring',
  'length64',
  'newarray',
  'multipleinheritance',
];

/** valgrind's defaults for --show-leak-kinds and --errors-for-leak-kinds. */
export const defaultShownKinds: readonly LeakKind[] = ['definite', 'possible'];

/** What the addon's scan() and takeExitScan() return. */
export interface NativeScan {
  /** leak_block records, as snapshot()'s */
  entries: ArrayBuffer;
  /** Per record: kind code, heuristic code, bytes lost through it (definitely lost ones). */
  kinds: Uint8Array;
  heuristics: Uint8Array;
  indirect: Float64Array;
  stats: {
    atExit: boolean;
    pauseNs: number;
    scanNs: number;
    readNs: number;
    markNs: number;
    rootBytes: number;
    heapBytes: number;
    blocks: number;
    threads: number;
    threadsWithRegisters: number;
  };
}

export type NativeExitScan = NativeScan | { notScanned: string };

/** Columns that carry each block's kind. */
export interface KindColumns extends BlockColumns {
  kind(i: number): number;
  heuristic(i: number): number;
  indirect(i: number): number;
}

export function hasKinds(columns: BlockColumns): columns is KindColumns {
  return typeof (columns as Partial<KindColumns>).kind === 'function';
}

export function withKinds(columns: BlockColumns, scan: NativeScan): KindColumns {
  const { kinds, heuristics, indirect } = scan;
  return { ...columns, kind: (i) => kinds[i]!, heuristic: (i) => heuristics[i]!, indirect: (i) => indirect[i]! };
}

export function scanInfo(scan: NativeScan): ScanInfo {
  const s = scan.stats;
  return {
    scanned: true,
    atExit: s.atExit,
    pauseMs: Math.round(s.pauseNs / 1e4) / 100,
    scanMs: Math.round(s.scanNs / 1e4) / 100,
    readMs: Math.round(s.readNs / 1e4) / 100,
    markMs: Math.round(s.markNs / 1e4) / 100,
    rootBytes: s.rootBytes,
    heapBytes: s.heapBytes,
    threads: s.threads,
  };
}

/** Per-kind and per-heuristic sums, added a block at a time. */
export class KindTotals {
  readonly bytes = [0, 0, 0, 0];
  readonly blocks = [0, 0, 0, 0];
  readonly heuristicBytes = [0, 0, 0, 0, 0];
  readonly heuristicBlocks = [0, 0, 0, 0, 0];

  add(kind: number, heuristic: number, bytes: number, weight: number): void {
    this.bytes[kind]! += bytes * weight;
    this.blocks[kind]! += weight;
    if (heuristic !== 0) {
      this.heuristicBytes[heuristic]! += bytes * weight;
      this.heuristicBlocks[heuristic]! += weight;
    }
  }

  summary(): Pick<HeapSummary, 'definitelyLost' | 'indirectlyLost' | 'possiblyLost' | 'stillReachable' | 'reachableViaHeuristic'> {
    const at = (k: number): BytesBlocks => ({ bytes: Math.round(this.bytes[k]!), blocks: Math.round(this.blocks[k]!) });
    const heuristics: Partial<Record<LeakHeuristic, BytesBlocks>> = {};
    let any = false;
    heuristicByCode.forEach((name, h) => {
      if (name === undefined || this.heuristicBlocks[h] === 0) return;
      heuristics[name] = { bytes: Math.round(this.heuristicBytes[h]!), blocks: Math.round(this.heuristicBlocks[h]!) };
      any = true;
    });
    return {
      definitelyLost: at(0),
      indirectlyLost: at(1),
      possiblyLost: at(2),
      stillReachable: at(3),
      ...(any ? { reachableViaHeuristic: heuristics } : {}),
    };
  }
}

/** Parses valgrind's kind lists: `all`, `none`, or a comma-separated list of definite, indirect,
 *  possible, reachable. `what` names the option in messages. */
export function parseLeakKindList(value: string, what: string): LeakKind[] {
  const words = value.split(',').map((w) => w.trim());
  if (words.length === 1 && words[0] === 'all') return [...leakKinds];
  if (words.length === 1 && words[0] === 'none') return [];
  const out = new Set<LeakKind>();
  for (const word of words) {
    if (!(leakKinds as readonly string[]).includes(word)) {
      throw new InvalidOptionError(
        `${what} must be all, none, or a comma-separated list of definite, indirect, possible, reachable (got ${JSON.stringify(value)})`,
      );
    }
    out.add(word as LeakKind);
  }
  return [...out];
}

/** A list given as an option: an array of kinds, or valgrind's text. */
export function leakKindsOption(value: unknown, what: string): LeakKind[] | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'string') return parseLeakKindList(value, what);
  if (Array.isArray(value) && value.every((k) => typeof k === 'string')) return parseLeakKindList(value.join(','), what);
  throw new InvalidOptionError(`${what} must be an array of leak kinds or valgrind's list text (got ${typeof value})`);
}

/** Whether a group of `kind` (undefined: not scanned, so any) is among `kinds`. */
export function kindSelected(kind: LeakKind | undefined, kinds: readonly LeakKind[]): boolean {
  return kind === undefined || kinds.includes(kind);
}
