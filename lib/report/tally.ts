// From a walk of the kernel's allocation map to the numbers and groups users read.
import { forEachRange, ROWS_PER_STEP } from '../util/cooperative.js';
import type { Counters, BlockColumns } from '../native/layout.js';
import { hasKinds, kindByCode, type KindColumns } from '../native/scan-records.js';
import { KindTotals } from './leak-kinds.js';
import type { AllocatorFunction, HeapSummary, LeakGroup, StackFrame } from '../types.js';

const SAMPLE_ADDRESSES = 4;

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** Blocks and bytes outstanding: exact, or estimated in sampling mode. */
export interface InUse {
  blocks: number;
  bytes: number;
}

/** valgrind's HEAP SUMMARY from the counters; in-use numbers from the map walk, which is what the
 *  leak list is made of, so the two always agree. */
export function summarize(counters: Counters, inUse: InUse): HeapSummary {
  return {
    allocs: counters.allocs,
    frees: counters.frees,
    bytesAllocated: counters.bytesAllocated,
    inUseBlocks: inUse.blocks,
    inUseBytes: inUse.bytes,
    lostEvents: counters.lostEvents,
    droppedAllocations: counters.droppedAllocations,
    unknownFrees: counters.unknownFrees,
  };
}

export interface RawLeakGroup {
  stackId: number;
  /** Function that allocated the group's first block. */
  fn: AllocatorFunction;
  bytes: number;
  blocks: number;
  largestBlock: number;
  sampleAddresses: bigint[];
  /** Leak kind code (lib/leak-kinds.ts), when the rows were scanned: groups are then per stack
   *  and kind. */
  kind?: number;
  /** Bytes lost only through the group's blocks (definitely lost groups). */
  indirectBytes: number;
  /** A release at a function's entry: its entry probe's offset in the page + 1, which names the
   *  overload on top of the stack (heap errors). */
  entryPage?: number;
}

/** The leak groups of some rows and their in-use totals (the groups' sum, so they agree). */
export interface Tally {
  /** Largest total first. */
  groups: RawLeakGroup[];
  inUse: InUse;
  /** Per kind, when the rows were scanned. */
  kinds?: KindTotals;
}

/** Groups whose stack ids (and kinds) share a key (stackKey), chained. */
interface Bucket {
  stackId: number;
  kind: number;
  group: RawLeakGroup;
  next: Bucket | undefined;
}

/** A small-integer key of a stack id. Ids past 2^30 (the CFI walker's hashes, up to 2^53) are
 *  doubles, which a Map boxes on every lookup: a million boxes per report, and the garbage
 *  collections they bring (whose helper threads then take the CPU from this one). */
function stackKey(stackId: number): number {
  const hi = Math.floor(stackId / 0x1_0000_0000);
  return ((stackId - hi * 0x1_0000_0000) ^ Math.imul(hi, 0x9e37_79b1)) & 0x3fff_ffff;
}

/** Sums rows into per-stack groups and in-use totals, a range of rows at a time, so a caller can
 *  pause between ranges. Sums stay unrounded until result(): sampling weights are fractions. */
export class StackTally {
  readonly #columns: BlockColumns;
  readonly #kinds: KindColumns | null;
  readonly #kindTotals: KindTotals | undefined;
  readonly #buckets = new Map<number, Bucket>();
  readonly #groups: RawLeakGroup[] = [];
  #blocks = 0;
  #bytes = 0;

  constructor(columns: BlockColumns) {
    this.#columns = columns;
    this.#kinds = hasKinds(columns) ? columns : null;
    this.#kindTotals = this.#kinds ? new KindTotals() : undefined;
  }

  /** Adds the rows `rows[start..end)`, or rows start..end themselves when `rows` is null. */
  add(rows: Uint32Array | null, start: number, end: number): void {
    const columns = this.#columns;
    // Summed in row order, as one loop over all rows would: the rounded totals do not depend on
    // where the slices fall.
    let blocks = this.#blocks;
    let bytes = this.#bytes;
    const kinds = this.#kinds;
    for (let k = start; k < end; k++) {
      const i = rows === null ? k : rows[k]!;
      const kind = kinds ? kinds.kind(i) : -1;
      const g = this.#group(columns.stackId(i), kind, i);
      const size = columns.size(i);
      const w = columns.weight(i);
      g.bytes += size * w;
      g.blocks += w;
      if (kinds) {
        this.#kindTotals!.add(kind, kinds.heuristic(i), size, w);
        g.indirectBytes += kinds.indirect(i) * w;
      }
      if (size > g.largestBlock) g.largestBlock = size;
      if (g.sampleAddresses.length < SAMPLE_ADDRESSES) g.sampleAddresses.push(columns.address(i));
      blocks += w;
      bytes += size * w;
    }
    this.#blocks = blocks;
    this.#bytes = bytes;
  }

  /** The group of `stackId` and `kind` (-1: none), made from row `row` when it is the first. */
  #group(stackId: number, kind: number, row: number): RawLeakGroup {
    const key = (stackKey(stackId) + kind + 1) & 0x3fff_ffff;
    const first = this.#buckets.get(key);
    for (let b = first; b !== undefined; b = b.next) if (b.stackId === stackId && b.kind === kind) return b.group;
    const group: RawLeakGroup = {
      stackId,
      fn: this.#columns.fn(row),
      bytes: 0,
      blocks: 0,
      largestBlock: 0,
      sampleAddresses: [],
      indirectBytes: 0,
      ...(kind >= 0 ? { kind } : {}),
    };
    this.#buckets.set(key, { stackId, kind, group, next: first });
    this.#groups.push(group);
    return group;
  }

  result(): Tally {
    const groups = this.#groups;
    for (const g of groups) {
      g.bytes = Math.round(g.bytes);
      g.blocks = Math.round(g.blocks);
      g.indirectBytes = Math.round(g.indirectBytes);
    }
    groups.sort((a, b) => b.bytes - a.bytes || b.blocks - a.blocks);
    return {
      groups,
      inUse: { blocks: Math.round(this.#blocks), bytes: Math.round(this.#bytes) },
      ...(this.#kindTotals ? { kinds: this.#kindTotals } : {}),
    };
  }
}

/** Row count of `rows`, or of every row of `columns` when null. */
function rowCount(columns: BlockColumns, rows: Uint32Array | null): number {
  return rows === null ? columns.count : rows.length;
}

/** The groups and totals of `rows` (every row when null), at once: for what a caller asked for
 *  synchronously (narrowing a report). */
export function tallyRows(columns: BlockColumns, rows: Uint32Array | null): Tally {
  const tally = new StackTally(columns);
  tally.add(rows, 0, rowCount(columns, rows));
  return tally.result();
}

/** tallyRows() in slices, the event loop served between them: a million blocks take ~100 ms. */
export async function tallyRowsSliced(columns: BlockColumns, rows: Uint32Array | null): Promise<Tally> {
  const tally = new StackTally(columns);
  await forEachRange(rowCount(columns, rows), ROWS_PER_STEP, (start, end) => tally.add(rows, start, end));
  return tally.result();
}

/** Blocks and bytes of every row, in slices. */
export async function inUseSliced(columns: BlockColumns): Promise<InUse> {
  let blocks = 0;
  let bytes = 0;
  await forEachRange(columns.count, ROWS_PER_STEP, (start, end) => {
    for (let i = start; i < end; i++) {
      const w = columns.weight(i);
      blocks += w;
      bytes += columns.size(i) * w;
    }
  });
  return { blocks: Math.round(blocks), bytes: Math.round(bytes) };
}

export function toLeakGroup(raw: RawLeakGroup, stack: StackFrame[]): LeakGroup {
  return {
    bytes: raw.bytes,
    blocks: raw.blocks,
    stack,
    largestBlock: raw.largestBlock,
    sampleAddresses: raw.sampleAddresses.map(hex),
    ...(raw.kind !== undefined ? { kind: kindByCode[raw.kind]! } : {}),
    ...(raw.kind === 0 && raw.indirectBytes > 0 ? { indirectBytes: raw.indirectBytes } : {}),
  };
}
