// The records snapshot() hands over (bpf/abi/leak.h leak_block, leak_timed_block) decode to every
// value the kernel's slot can hold: the size and the function share a word, stack ids are -1,
// small, or hashes past 2^32, tids and marks are 32 bits.
import { describe, expect, it } from 'vitest';
import { blockColumns, snapshotColumns, type BlockColumns } from '../../lib/native/layout.js';
import { allocatorFunctions } from '../../lib/types.js';
import { blockBuffer, snapshotBuffer, type SyntheticBlock } from '../helpers/snapshot-buffer.js';

const blocks: SyntheticBlock[] = allocatorFunctions.map((fn, i) => ({
  address: 0x7fff_ffff_f000n - BigInt(i * 64),
  size: [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3, 2 ** 53 - 1][i % 6]!,
  timestampNs: 0xffff_ffff_ffff_ff00n + BigInt(i),
  tid: [1, 4_194_304, 0xffff_ffff][i % 3]!,
  stackId: [-1, 0, 65_535, 2 ** 52 + 0x1_0000_0001, 2 ** 53 - 1][i % 5]!,
  mark: [0, 1, 0xffff_ffff][i % 3]!,
  fn,
}));

function decoded(columns: BlockColumns): Omit<SyntheticBlock, 'timestampNs'>[] {
  return Array.from({ length: columns.count }, (_, i) => ({
    address: columns.address(i),
    size: columns.size(i),
    tid: columns.tid(i),
    stackId: columns.stackId(i),
    mark: columns.mark(i),
    fn: columns.fn(i),
  }));
}

describe('snapshot records', () => {
  const untimed = blocks.map(({ timestampNs: _, ...rest }) => rest);

  it('decode every field of a block', () => {
    const columns = blockColumns(blockBuffer(blocks));
    expect(columns.count).toBe(blocks.length);
    expect(decoded(columns)).toEqual(untimed);
    expect(columns.weight(0)).toBe(1);
  });

  it('decode the same with timestamps, and the timestamps', () => {
    const columns = snapshotColumns(snapshotBuffer(blocks));
    expect(columns.count).toBe(blocks.length);
    expect(decoded(columns)).toEqual(untimed);
    expect(blocks.map((_, i) => columns.timestampNs(i))).toEqual(blocks.map((b) => b.timestampNs));
  });

  it('weigh sampled blocks by their size, not their function', () => {
    const sampled = blockColumns(blockBuffer([{ ...blocks[0]!, size: 4096, fn: 'pvalloc' }]), 4096);
    expect(sampled.weight(0)).toBeCloseTo(1 / (1 - Math.exp(-1)), 12);
  });
});
