// Snapshot.allocations as a view over the snapshot's buffer (lib/native/allocation-view.ts): it must
// behave as the array of objects it replaced, without building a million of them up front.
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { allocationsView, viewColumns } from '../../lib/native/allocation-view.js';
import { snapshotColumns } from '../../lib/native/layout.js';
import type { OutstandingAllocation } from '../../lib/types.js';
import { snapshotBuffer, type SyntheticBlock } from '../helpers/snapshot-buffer.js';

const blocks: SyntheticBlock[] = [
  { address: 0x1000n, size: 32, timestampNs: 1_000_000_000n, tid: 7, stackId: 3 },
  { address: 0x2000n, size: 4096, timestampNs: 1_500_000_000n, tid: 8, stackId: -1 },
  { address: 0x3000n, size: 8, timestampNs: 1_999_000_000n, tid: 7, stackId: 2 ** 52 + 5 },
];
const now = 2_000_000_000n;
const expected: OutstandingAllocation[] = [
  { address: 0x1000n, size: 32, ageMs: 1000, tid: 7, stackId: 3 },
  { address: 0x2000n, size: 4096, ageMs: 500, tid: 8, stackId: -1 },
  { address: 0x3000n, size: 8, ageMs: 1, tid: 7, stackId: 2 ** 52 + 5 },
];
const view = () => allocationsView(snapshotColumns(snapshotBuffer(blocks)), now);

describe('snapshot allocations view', () => {
  it('reads as an array of plain objects', () => {
    const a = view();
    expect(Array.isArray(a)).toBe(true);
    expect(a).toBeInstanceOf(Array);
    expect(a).toHaveLength(3);
    expect(a[0]).toEqual(expected[0]);
    expect(a[2]).toEqual(expected[2]);
    expect(a[3]).toBeUndefined();
    expect(a[-1]).toBeUndefined();
    expect(1 in a && !(3 in a)).toBe(true);
    expect(a).toEqual(expected);
    expect([...a]).toEqual(expected);
    expect(Array.from(a)).toEqual(expected);
    expect(a.filter((x) => x.tid === 7).map((x) => x.size)).toEqual([32, 8]);
    expect(a.some((x) => x.stackId === -1) && a.every((x) => x.ageMs > 0)).toBe(true);
    expect(a.reduce((n, x) => n + x.size, 0)).toBe(4136);
    expect(a.slice(1)).toEqual(expected.slice(1));
    expect([...a.entries()].map(([i]) => i)).toEqual([0, 1, 2]);
    expect(Object.keys(a)).toEqual(['0', '1', '2']);
    expect({ ...a[1] }).toEqual(expected[1]);
    expect(JSON.stringify(a, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))).toBe(
      JSON.stringify(expected, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
    );
    expect(a.concat([])).toEqual(expected);
  });

  it('keeps its columns until written to; a write makes it an ordinary array', () => {
    const a = view();
    expect(viewColumns(a)?.count).toBe(3);
    a.sort((x, y) => x.size - y.size);
    expect(viewColumns(a)).toBeUndefined();
    expect(a.map((x) => x.size)).toEqual([8, 32, 4096]);
    a.push({ address: 1n, size: 1, ageMs: 0, tid: 1, stackId: 1 });
    expect(a).toHaveLength(4);
    a[0]!.size = 9; // an ordinary array now: elements are kept objects
    expect(a[0]!.size).toBe(9);
    a.length = 1;
    expect(a).toEqual([{ ...expected[2], size: 9 }]);

    const b = view();
    b[1] = expected[0]!;
    expect(b).toEqual([expected[0], expected[0], expected[2]]);
    const c = view();
    Object.freeze(c);
    expect(Object.isFrozen(c) && c.length === 3).toBe(true);
    expect(c[2]).toEqual(expected[2]);
  });

  it('other properties do not end the view', () => {
    const a = view() as OutstandingAllocation[] & { note?: string };
    a.note = 'kept';
    expect(a.note).toBe('kept');
    expect(viewColumns(a)).toBeDefined();
  });

  it('prints its elements, and at most maxArrayLength of them', () => {
    const text = inspect(view());
    expect(text).toContain('size: 4096');
    expect(text).not.toContain('empty');
    const long = allocationsView(
      snapshotColumns(snapshotBuffer(Array.from({ length: 150 }, (_, i) => ({ ...blocks[0]!, size: i })))),
      now,
    );
    expect(inspect(long, { maxArrayLength: 2 })).toMatch(/size: 1\b[\s\S]*\.\.\. 148 more items \]$/);
  });

  it('answers a million blocks without building them', () => {
    const count = 1_000_000;
    const buffer = new ArrayBuffer(count * 40); // zeroed leak_timed_block records
    const heapBefore = process.memoryUsage().heapUsed;
    const a = allocationsView(snapshotColumns(buffer), now);
    expect(a).toHaveLength(count);
    expect(a[count - 1]).toMatchObject({ address: 0n, size: 0 });
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(1 << 20);
  });
});
