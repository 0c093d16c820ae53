// Outstanding bytes and blocks per stack id of a snapshot (the `attach --interval` view), summed
// in slices so a million blocks do not stall the event loop; from the snapshot's columns while
// its allocations are still the tracer's lazy view (no object per block).
import { viewColumns } from '../native/allocation-view.js';
import { forEachRange, ROWS_PER_STEP } from '../util/cooperative.js';
import type { OutstandingAllocation, Snapshot } from '../types.js';

export interface StackUse {
  bytes: number;
  count: number;
}

function add(byStack: Map<number, StackUse>, stackId: number, size: number): void {
  const entry = byStack.get(stackId);
  if (entry) {
    entry.bytes += size;
    entry.count += 1;
  } else {
    byStack.set(stackId, { bytes: size, count: 1 });
  }
}

/** Per stack id, at once. */
export function stackUse(allocations: readonly OutstandingAllocation[]): Map<number, StackUse> {
  const byStack = new Map<number, StackUse>();
  for (const a of allocations) add(byStack, a.stackId, a.size);
  return byStack;
}

/** Per stack id, in slices. */
export async function stackUseSliced(snapshot: Snapshot): Promise<Map<number, StackUse>> {
  const byStack = new Map<number, StackUse>();
  const columns = viewColumns(snapshot.allocations);
  const allocations = snapshot.allocations;
  await forEachRange(allocations.length, ROWS_PER_STEP, (start, end) => {
    if (columns) {
      for (let i = start; i < end; i++) add(byStack, columns.stackId(i), columns.size(i));
    } else {
      for (let i = start; i < end; i++) add(byStack, allocations[i]!.stackId, allocations[i]!.size);
    }
  });
  return byStack;
}
