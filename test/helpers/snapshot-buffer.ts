// Synthetic snapshot buffers: struct leak_snapshot_entry records (bpf/leak.h), as the addon's
// snapshot() hands them over, for tests of the code that reads them without a kernel.
import { leakFunctions } from '../../lib/native-layout.js';
import type { AllocatorFunction } from '../../lib/types.js';

export interface SyntheticBlock {
  address: bigint;
  size: number;
  timestampNs: bigint;
  tid: number;
  /** -1: no stack. */
  stackId: number;
  mark?: number;
  fn?: AllocatorFunction;
}

/** address, then size, timestamp_ns, tid, stack_id, mark, fn: seven 8-byte words. */
export function snapshotBuffer(blocks: readonly SyntheticBlock[]): ArrayBuffer {
  const buffer = new ArrayBuffer(blocks.length * 56);
  const u = new BigUint64Array(buffer);
  const s = new BigInt64Array(buffer);
  blocks.forEach((b, i) => {
    const at = i * 7;
    u[at] = b.address;
    u[at + 1] = BigInt(b.size);
    u[at + 2] = b.timestampNs;
    u[at + 3] = BigInt(b.tid);
    s[at + 4] = BigInt(b.stackId);
    u[at + 5] = BigInt(b.mark ?? 0);
    u[at + 6] = BigInt(leakFunctions.indexOf(b.fn ?? 'malloc'));
  });
  return buffer;
}

/** `count` blocks over `stacks` stack ids (some of them CFI-walker hashes, past 2^32). */
export function manyBlocks(count: number, stacks = 7): SyntheticBlock[] {
  const ids = Array.from({ length: stacks }, (_, k) => (k % 2 === 0 ? k : 2 ** 52 + k * 0x1_0000_0001));
  return Array.from({ length: count }, (_, i) => ({
    address: 0x5555_0000_0000n + BigInt(i * 48),
    size: 16 + (i % 13) * 8,
    timestampNs: 1_000_000_000n + BigInt(i),
    tid: 100 + (i % 3),
    stackId: ids[i % stacks]!,
    mark: i % 4,
    fn: i % 5 === 0 ? 'calloc' : 'malloc',
  }));
}
