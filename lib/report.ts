// From a walk of the kernel's allocation map to the numbers and groups users read.
import type { Counters, SnapshotColumns } from './native-layout.js';
import type { AllocatorFunction, HeapSummary, LeakGroup, OutstandingAllocation, StackFrame } from './types.js';

const SAMPLE_ADDRESSES = 4;

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** valgrind's HEAP SUMMARY from the counters; in-use numbers from the map walk, which is what the
 *  leak list is made of, so the two always agree. */
export function summarize(counters: Counters, columns: SnapshotColumns): HeapSummary {
  const { blocks, bytes } = inUse(columns);
  return {
    allocs: counters.allocs,
    frees: counters.frees,
    bytesAllocated: counters.bytesAllocated,
    inUseBlocks: blocks,
    inUseBytes: bytes,
    lostEvents: counters.lostEvents,
    droppedAllocations: counters.droppedAllocations,
    unknownFrees: counters.unknownFrees,
  };
}

/** Blocks and bytes the walked blocks stand for: exact, or estimated in sampling mode. */
export function inUse(columns: SnapshotColumns): { blocks: number; bytes: number } {
  let blocks = 0;
  let bytes = 0;
  for (let i = 0; i < columns.count; i++) {
    const w = columns.weight(i);
    blocks += w;
    bytes += columns.size(i) * w;
  }
  return { blocks: Math.round(blocks), bytes: Math.round(bytes) };
}

/** Blocks per slice of work between yields to the event loop: about 5 ms of object building. */
const SLICE = 16_384;
const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** One object per outstanding block. Built in slices with the event loop served between them, so
 *  a million blocks never stall it for long. */
export async function outstandingAllocations(columns: SnapshotColumns, nowNs: bigint): Promise<OutstandingAllocation[]> {
  const out: OutstandingAllocation[] = new Array(columns.count);
  const now = Number(nowNs);
  for (let start = 0; start < columns.count; start += SLICE) {
    if (start > 0) await yieldToEventLoop();
    const end = Math.min(columns.count, start + SLICE);
    for (let i = start; i < end; i++) {
      out[i] = {
        address: columns.address(i),
        size: columns.size(i),
        ageMs: (now - Number(columns.timestampNs(i))) / 1e6,
        tid: columns.tid(i),
        stackId: columns.stackId(i),
      };
    }
  }
  return out;
}

export interface RawLeakGroup {
  stackId: number;
  /** Function that allocated the group's first block. */
  fn: AllocatorFunction;
  bytes: number;
  blocks: number;
  largestBlock: number;
  sampleAddresses: bigint[];
}

/** Blocks grouped by allocation stack, largest total first. `keep` filters blocks (e.g. by mark). */
export function groupByStack(columns: SnapshotColumns, keep?: (i: number) => boolean): RawLeakGroup[] {
  const groups = new Map<number, RawLeakGroup>();
  for (let i = 0; i < columns.count; i++) {
    if (keep && !keep(i)) continue;
    const stackId = columns.stackId(i);
    const size = columns.size(i);
    let g = groups.get(stackId);
    if (!g) {
      g = { stackId, fn: columns.fn(i), bytes: 0, blocks: 0, largestBlock: 0, sampleAddresses: [] };
      groups.set(stackId, g);
    }
    const w = columns.weight(i);
    g.bytes += size * w;
    g.blocks += w;
    if (size > g.largestBlock) g.largestBlock = size;
    if (g.sampleAddresses.length < SAMPLE_ADDRESSES) g.sampleAddresses.push(columns.address(i));
  }
  for (const g of groups.values()) {
    g.bytes = Math.round(g.bytes);
    g.blocks = Math.round(g.blocks);
  }
  return [...groups.values()].sort((a, b) => b.bytes - a.bytes || b.blocks - a.blocks);
}

export function toLeakGroup(raw: RawLeakGroup, stack: StackFrame[]): LeakGroup {
  return {
    bytes: raw.bytes,
    blocks: raw.blocks,
    stack,
    largestBlock: raw.largestBlock,
    sampleAddresses: raw.sampleAddresses.map(hex),
  };
}
