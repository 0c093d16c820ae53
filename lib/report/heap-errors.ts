// Heap errors as reports carry them: the kernel's records (bpf/heap_errors.bpf.h) with their stacks
// symbolized, an interior free placed in the block it points into.
import type { BlockColumns, RawHeapError } from '../native/layout.js';
import { hex, type RawLeakGroup } from './tally.js';
import { heapErrorKinds, type AllocatorFunction, type HeapError, type HeapErrorCounts, type StackFrame } from '../types.js';

/** Errors past this many are not placed in the blocks (a walk of every block each). */
const PLACED_ERRORS = 64;

/** Symbolized stacks, one per group, topped by the group's function (LeakTracer's #stacks). */
export type StackReader = (groups: readonly RawLeakGroup[]) => Promise<StackFrame[][]>;

function stackGroup(stackId: number, fn: AllocatorFunction, entryPage = 0): RawLeakGroup {
  const group: RawLeakGroup = { stackId, fn, bytes: 0, blocks: 0, largestBlock: 0, sampleAddresses: [], indirectBytes: 0 };
  if (entryPage !== 0) group.entryPage = entryPage;
  return group;
}

/** The outstanding block `address` points into (not at its start), as a row of `columns`. */
function containingRow(columns: BlockColumns, address: bigint): number {
  for (let i = 0; i < columns.count; i++) {
    const start = columns.address(i);
    if (address > start && address < start + BigInt(columns.size(i))) return i;
  }
  return -1;
}

/** The report's heap errors, in the order they happened. `releaseStacksKept` false: releases
 *  walked no stack unless they were errors (keepStacktraces 'alloc'), so a double free's first
 *  release has none, and says so. */
export async function heapErrorsOf(
  raw: readonly RawHeapError[],
  columns: BlockColumns,
  readStacks: StackReader,
  releaseStacksKept = true,
): Promise<HeapError[]> {
  if (raw.length === 0) return [];
  const inside = raw.map((e, i) =>
    e.kind === 'invalid-free' && i < PLACED_ERRORS ? containingRow(columns, e.address) : -1,
  );
  const groups: RawLeakGroup[] = [];
  raw.forEach((e, i) => {
    groups.push(stackGroup(e.releaseStack, e.releaseFn, e.releaseEntryPage));
    const row = inside[i]!;
    if (row >= 0) groups.push(stackGroup(columns.stackId(row), columns.fn(row)));
    else groups.push(stackGroup(e.allocFn !== undefined ? e.allocStack : -1, e.allocFn ?? 'malloc'));
    groups.push(stackGroup(e.kind === 'double-free' ? e.firstFreeStack : -1, e.firstFreeFn, e.firstFreeEntryPage));
  });
  const stacks = await readStacks(groups);
  return raw.map((e, i) => {
    const [release, alloc, first] = [stacks[3 * i] ?? [], stacks[3 * i + 1] ?? [], stacks[3 * i + 2] ?? []];
    const out: HeapError = { kind: e.kind, address: hex(e.address), releasedBy: e.releaseFn, tid: e.tid, stack: release };
    const row = inside[i]!;
    if (row >= 0) {
      out.block = {
        size: columns.size(row),
        allocatedBy: columns.fn(row),
        offset: Number(e.address - columns.address(row)),
        allocationStack: alloc,
      };
    } else if (e.allocFn !== undefined) {
      out.block = { size: e.allocSize, allocatedBy: e.allocFn, offset: 0, allocationStack: alloc };
    }
    if (e.kind === 'double-free') {
      out.firstFree = { releasedBy: e.firstFreeFn, stack: first };
      if (!releaseStacksKept && e.firstFreeStack < 0) out.firstFree.stackKept = false;
    }
    return out;
  });
}

/** Errors by kind; `seen` counts those the kernel had no room to record as well. */
export function heapErrorCounts(errors: readonly HeapError[], seen: number): HeapErrorCounts {
  const counts: HeapErrorCounts = { 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 };
  for (const e of errors) counts[e.kind]++;
  counts.notRecorded = Math.max(0, seen - errors.length);
  return counts;
}

/** All errors, recorded or not. */
export function heapErrorTotal(counts: HeapErrorCounts | undefined): number {
  if (!counts) return 0;
  return heapErrorKinds.reduce((n, k) => n + counts[k], 0) + counts.notRecorded;
}
