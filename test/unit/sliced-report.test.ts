// Reports built in slices (lib/util/cooperative.ts): the same result as in one go, with the event
// loop served in between. Synthetic snapshot buffers, no kernel.
import { describe, expect, it } from 'vitest';
import { forEachRange } from '../../lib/util/cooperative.js';
import { EventQueue } from '../../lib/tracer/event-queue.js';
import type { EventRecords } from '../../lib/native/event-records.js';
import { blockColumns, type Counters } from '../../lib/native/layout.js';
import { inUseSliced, summarize, tallyRows, tallyRowsSliced } from '../../lib/report/tally.js';
import { keptRows, keptRowsSliced, scopedReport, scopedReportSliced, type ReportSource } from '../../lib/report/scope.js';
import { blockBuffer, manyBlocks } from '../helpers/snapshot-buffer.js';

/** Runs `work` with a 1 ms timer going; how often the timer ran meanwhile. */
async function timerDuring(work: () => Promise<unknown>): Promise<{ ticks: number }> {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  await new Promise((r) => setTimeout(r, 5));
  ticks = 0;
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return { ticks };
}

const counters: Counters = {
  allocs: 10,
  frees: 1,
  bytesAllocated: 100,
  bytesFreed: 10,
  unknownFrees: 0,
  droppedAllocations: 0,
  lostEvents: 0,
  stackFailures: 0,
  inflightFailures: 0,
  execs: 0,
  ignoredAllocations: 0,
};

describe('reports built in slices', () => {
  const columns = blockColumns(blockBuffer(manyBlocks(20_000)));

  it('group and total as one pass does, over all rows or some', async () => {
    expect(await tallyRowsSliced(columns, null)).toEqual(tallyRows(columns, null));
    const odd = keptRows(columns, null, (row) => row % 2 === 1);
    expect(odd.length).toBe(10_000);
    expect(await keptRowsSliced(columns, null, (row) => row % 2 === 1)).toEqual(odd);
    expect(await tallyRowsSliced(columns, odd)).toEqual(tallyRows(columns, odd));
    const tally = tallyRows(columns, null);
    expect(tally.groups).toHaveLength(7);
    expect(tally.groups.map((g) => g.stackId)).toContain(2 ** 52 + 0x1_0000_0001);
    expect(tally.inUse.blocks).toBe(20_000);
    expect(tally.groups.reduce((n, g) => n + g.bytes, 0)).toBe(tally.inUse.bytes);
    expect(await inUseSliced(columns)).toEqual(tally.inUse);
  });

  it('estimate the same in sampling mode', async () => {
    const sampled = blockColumns(blockBuffer(manyBlocks(5_000)), 4096);
    const tally = tallyRows(sampled, null);
    expect(await tallyRowsSliced(sampled, null)).toEqual(tally);
    expect(tally.inUse.blocks).toBeGreaterThan(5_000 * 50);
  });

  it('make the same report, which narrows the same', async () => {
    const stacks = new Map([[0, [{ address: '0x1', module: '/lib/a.so', symbol: 'f' }]]]);
    const source: ReportSource = {
      base: { version: 1, target: { pid: 1, exitCode: 0, signal: null, allocator: '/libc.so.6' }, durationMs: 5 },
      summary: summarize(counters, tallyRows(columns, null).inUse),
      counters,
      columns,
      stacks,
    };
    const once = scopedReport(source, null);
    const sliced = await scopedReportSliced(source, null, await tallyRowsSliced(columns, null));
    expect(sliced).toEqual(once);
    expect(sliced.leaks[0]!.sampleAddresses).toHaveLength(4);
    expect(sliced.since(3)).toEqual(once.since(3));
    expect(sliced.since(3).summary.inUseBlocks).toBe(5_000);
    expect(sliced.threads([100]).blocks().every((b) => b.tid === 100)).toBe(true);
    expect(sliced.module('a.so').summary.inUseBlocks).toBe(tallyRows(columns, null).groups.find((g) => g.stackId === 0)!.blocks);
    expect(sliced.counters.allocs).toBe(10);
  });

  it('serve the event loop while a million blocks are grouped', async () => {
    const million = blockColumns(blockBuffer(manyBlocks(1_000_000, 3000)));
    const { ticks } = await timerDuring(() => tallyRowsSliced(million, null));
    // One pass in one go would let the timer run once at most, after it. How long a slice is in
    // wall time depends on the machine, so that is for the bench, not for a test.
    expect(ticks).toBeGreaterThan(3);
  });

  it('forEachRange visits every index once, in order', async () => {
    const seen: number[] = [];
    await forEachRange(1000, 7, (start, end) => {
      for (let i = start; i < end; i++) seen.push(i);
    });
    expect(seen).toEqual(Array.from({ length: 1000 }, (_, i) => i));
  });
});

/** An events batch of `count` records (struct leak_event: 7 words), numbered by address. */
function eventsBuffer(first: number, count: number): ArrayBuffer {
  const u = new BigUint64Array(count * 7);
  for (let i = 0; i < count; i++) {
    u[i * 7] = 1n; // alloc
    u[i * 7 + 2] = BigInt(first + i);
  }
  return u.buffer;
}

describe('event batches delivered in slices', () => {
  const collect = () => {
    const seen: number[] = [];
    const deliver = (batch: EventRecords, from: number, to: number) => {
      for (let i = from; i < to; i++) seen.push(Number(batch.allocEvent(i)!.address));
    };
    return { seen, deliver };
  };

  it('in order, each event once, and drained() waits for all of them', async () => {
    const { seen, deliver } = collect();
    const queue = new EventQueue(
      deliver,
      (e) => {
        throw e;
      },
      () => {},
    );
    queue.push(eventsBuffer(0, 3000));
    queue.push(eventsBuffer(3000, 10));
    expect(seen.length).toBeLessThan(3010); // not all at once
    await queue.drained();
    queue.push(eventsBuffer(3010, 5));
    await queue.drained();
    expect(seen).toEqual(Array.from({ length: 3015 }, (_, i) => i));
  });

  it('a delivery that throws drops the rest of its batch, reports, and goes on', async () => {
    let done = 0;
    const seen: number[] = [];
    const errors: unknown[] = [];
    const queue = new EventQueue(
      (batch, from, to) => {
        for (let i = from; i < to; i++) {
          const address = Number(batch.allocEvent(i)!.address);
          if (address === 5) throw new Error('listener failed');
          seen.push(address);
        }
      },
      (e) => errors.push(e),
      () => done++,
    );
    queue.push(eventsBuffer(0, 1000));
    queue.push(eventsBuffer(1000, 3));
    await queue.drained();
    expect(seen).toEqual([0, 1, 2, 3, 4, 1000, 1001, 1002]);
    expect(errors).toHaveLength(1);
    expect(done).toBe(2); // the dropped rest counts as done
  });

  it('reports each batch done once its last event is delivered, and never delivers 16 MB at once', async () => {
    const { seen, deliver } = collect();
    const doneAt: number[] = [];
    const queue = new EventQueue(deliver, () => {}, () => doneAt.push(seen.length));
    const perBatch = Math.floor((1 << 20) / 56);
    for (let b = 0; b < 17; b++) queue.push(eventsBuffer(b * perBatch, perBatch));
    expect(seen.length).toBeLessThan(perBatch); // the backpressure is the poll thread's now
    await queue.drained();
    expect(seen).toHaveLength(17 * perBatch);
    expect(doneAt).toEqual(Array.from({ length: 17 }, (_, b) => (b + 1) * perBatch));
  });
});
