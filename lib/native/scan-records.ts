// What the addon's leak-kind scans (native/scan/) hand over: per block of a snapshot-format
// buffer, its kind, the heuristic that reached it, the bytes lost through it and, for an
// indirectly lost block, the lost block that owns it; and the pointers between lost blocks.
import type { BlockColumns } from './layout.js';
import type { LeakHeuristic, LeakKind, ScanInfo } from '../types.js';

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

/** What the addon's scan() and takeExitScan() return. */
export interface NativeScan {
  /** leak_block records, as snapshot()'s */
  entries: ArrayBuffer;
  /** Per record: kind code, heuristic code, bytes lost through it (definitely lost ones). */
  kinds: Uint8Array;
  heuristics: Uint8Array;
  indirect: Float64Array;
  /** Per record: for an indirectly lost block, the record of the lost block whose flood reached
   *  it (valgrind's clique tree: following owners ends at a definitely lost block); noOwner for
   *  the others. */
  owners: Uint32Array;
  /** (from, to) record pairs: every pointer from a lost block to another lost block, once. */
  lostEdges: Uint32Array;
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

/** owners[i] of a block no lost block owns. */
export const noOwner = 0xffff_ffff;

export type NativeExitScan = NativeScan | { notScanned: string };

/** Columns that carry each block's kind. */
export interface KindColumns extends BlockColumns {
  kind(i: number): number;
  heuristic(i: number): number;
  indirect(i: number): number;
  /** The owner's row (noOwner: none), and the pointers between lost rows. */
  owner?(i: number): number;
  lostEdges?: Uint32Array;
}

export function hasKinds(columns: BlockColumns): columns is KindColumns {
  return typeof (columns as Partial<KindColumns>).kind === 'function';
}

export function withKinds(columns: BlockColumns, scan: NativeScan): KindColumns {
  const { kinds, heuristics, indirect, owners, lostEdges } = scan;
  return {
    ...columns,
    kind: (i) => kinds[i]!,
    heuristic: (i) => heuristics[i]!,
    indirect: (i) => indirect[i]!,
    owner: (i) => owners[i]!,
    lostEdges,
  };
}

export function scanInfo(scan: NativeScan): ScanInfo {
  const s = scan.stats;
  const ms = (ns: number) => Math.round(ns / 1e4) / 100;
  return {
    scanned: true,
    atExit: s.atExit,
    pauseMs: ms(s.pauseNs),
    scanMs: ms(s.scanNs),
    readMs: ms(s.readNs),
    markMs: ms(s.markNs),
    rootBytes: s.rootBytes,
    heapBytes: s.heapBytes,
    threads: s.threads,
  };
}
