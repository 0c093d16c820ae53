// Synthetic snapshot buffers: struct leak_block or leak_timed_block records (bpf/abi/leak.h), as the
// addon's snapshot() hands them over, for tests of the code that reads them without a kernel.
import { leakFunctions } from '../../lib/native/layout.js';
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

/** leak_block records: address, size | fn << 56, stack_id, then tid and mark as 32-bit halves;
 *  with `timestamps`, leak_timed_block records (the same, then timestamp_ns). */
function records(blocks: readonly SyntheticBlock[], timestamps: boolean): ArrayBuffer {
  const words = timestamps ? 5 : 4;
  const buffer = new ArrayBuffer(blocks.length * words * 8);
  const u = new BigUint64Array(buffer);
  const s = new BigInt64Array(buffer);
  const h = new Uint32Array(buffer);
  blocks.forEach((b, i) => {
    const at = i * words;
    u[at] = b.address;
    u[at + 1] = BigInt(b.size) | (BigInt(leakFunctions.indexOf(b.fn ?? 'malloc')) << 56n);
    s[at + 2] = BigInt(b.stackId);
    h[at * 2 + 6] = b.tid;
    h[at * 2 + 7] = b.mark ?? 0;
    if (timestamps) u[at + 4] = b.timestampNs;
  });
  return buffer;
}

/** What snapshot() reads (leak_timed_block records). */
export function snapshotBuffer(blocks: readonly SyntheticBlock[]): ArrayBuffer {
  return records(blocks, true);
}

/** What reports are made of (leak_block records). */
export function blockBuffer(blocks: readonly SyntheticBlock[]): ArrayBuffer {
  return records(blocks, false);
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
