// struct leak_event records read in place into 'alloc'/'free' events (lib/native/event-records.ts).
// Synthetic buffers, no kernel.
import { describe, expect, it } from 'vitest';
import { EventRecords } from '../../lib/native/event-records.js';
import { leakFunctions } from '../../lib/native/layout.js';

type Record = { kind: bigint; fn: bigint; address: bigint; size: bigint; timestampNs: bigint; tid: bigint; stackId: bigint };

function records(list: Record[]): ArrayBuffer {
  const u = new BigUint64Array(list.length * 7);
  list.forEach((r, i) => {
    u.set([r.kind, r.fn, r.address, r.size, r.timestampNs, r.tid, BigInt.asUintN(64, r.stackId)], i * 7);
  });
  return u.buffer;
}

const fn = (name: string) => BigInt(leakFunctions.indexOf(name as (typeof leakFunctions)[number]));
const base = { address: 0x7f12_3456_7890n, size: 64n, timestampNs: 123_456_789_012_345n, tid: 4242n, stackId: -1n };

describe('EventRecords', () => {
  it('reads alloc and free records with the fields of the public events', () => {
    const batch = new EventRecords(
      records([
        { ...base, kind: 1n, fn: fn('calloc') },
        { ...base, kind: 2n, fn: fn('free'), address: 0xffff_ffff_ffff_fff0n, timestampNs: 2n ** 64n - 1n },
        { ...base, kind: 2n, fn: fn('realloc') },
        { ...base, kind: 2n, fn: fn('reallocarray') },
        { ...base, kind: 2n, fn: fn('malloc') },
      ]),
    );
    expect(batch.count).toBe(5);
    expect(batch.byteLength).toBe(5 * 56);
    expect(batch.isAlloc(0)).toBe(true);
    expect(batch.allocEvent(0)).toEqual({ function: 'calloc', address: base.address, size: 64, tid: 4242, timestampNs: base.timestampNs });
    expect([1, 2, 3, 4].map((i) => batch.isAlloc(i))).toEqual([false, false, false, false]);
    expect(batch.freeEvent(1)).toEqual({ function: 'free', address: 0xffff_ffff_ffff_fff0n, size: 64, tid: 4242, timestampNs: 2n ** 64n - 1n });
    expect(batch.freeEvent(2).function).toBe('realloc');
    expect(batch.freeEvent(3).function).toBe('reallocarray');
    // A release by any other function is reported as a free.
    expect(batch.freeEvent(4).function).toBe('free');
  });

  it('numbers past 32 bits, unknown functions and odd records', () => {
    const batch = new EventRecords(
      records([
        { ...base, kind: 1n, fn: 999n, size: 2n ** 40n + 3n, tid: (4_194_000n << 32n) | 4_194_001n },
        { ...base, kind: 1n, fn: fn('malloc'), size: 2n ** 64n - 1n },
        { ...base, kind: 1n, fn: fn('free') },
        { ...base, kind: 1n + 2n ** 32n, fn: fn('malloc') },
      ]),
    );
    const first = batch.allocEvent(0)!;
    expect(first.function).toBe('malloc'); // unknown fn, as the native layout decoder does
    expect(first.size).toBe(2 ** 40 + 3);
    // Following forks, the tid word carries the process in its high half.
    expect(first.tid).toBe(4_194_001);
    expect(first.pid).toBe(4_194_000);
    expect(batch.allocEvent(1)).not.toHaveProperty('pid'); // one process: no pid
    expect(batch.allocEvent(1)!.size).toBe(Number(2n ** 64n - 1n));
    expect(batch.allocEvent(2)).toBeUndefined(); // an allocation record naming free: no event
    expect(batch.isAlloc(3)).toBe(false); // kind compared on all 64 bits
  });

  it('ignores a trailing partial record', () => {
    const buffer = new ArrayBuffer(56 * 2 + 8);
    expect(new EventRecords(buffer).count).toBe(2);
  });
});
