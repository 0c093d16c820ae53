// The tracer against real processes: attaching to a running pid, the event stream, snapshots,
// stop(), and data we could not keep (full map, full ring buffer) being counted and reported.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { trace, type AllocEvent, type FreeEvent, type LostInfo, type LeakGroup, type LeakReport } from '../lib/index.js';
import { fixturePath } from './helpers/fixtures.js';
import { codeByte } from './helpers/process-memory.js';
import { EVENTS_PER_STEP } from '../lib/tracer/event-queue.js';
import { releaseSnapshot } from '../lib/tracer/leak-tracer.js';
import { SLICE_MS } from '../lib/util/cooperative.js';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function startForever(): Promise<ChildProcess> {
  const child = spawn(fixturePath('forever'), [], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await once(child.stdout!, 'data'); // "ready"
  return child;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('attach to a running process', () => {
  it('sees allocations made after attach, and the process keeps running after stop()', async () => {
    const child = await startForever();
    const tracer = await trace({ pid: child.pid! });
    expect(tracer.pid).toBe(child.pid);
    expect(tracer.info.attachMode).toBe('uprobe_multi');
    await sleep(600);
    const snap = await tracer.snapshot();
    // One 32-byte block leaks every ~10 ms; the 64-byte one is freed at once.
    const leaked32 = snap.allocations.filter((a) => a.size === 32);
    expect(leaked32.length).toBeGreaterThan(20);
    expect(snap.allocations.every((a) => a.ageMs >= 0 && a.ageMs < 5000)).toBe(true);
    expect(snap.allocations.every((a) => a.tid === child.pid)).toBe(true);
    // Two allocations per leaked block. The snapshot's totals are read just before its map walk,
    // which finds the blocks of the iterations made meanwhile too (more of them on a busy
    // machine); counters read after the walk count every block it found, and the 64-byte block
    // before each (but the first's, which may have come before the probes).
    expect(snap.summary.allocs).toBeGreaterThan(0);
    expect(tracer.counters().allocs).toBeGreaterThanOrEqual(2 * leaked32.length - 1);

    // Every probe is a breakpoint in the process's copy of libc while traced; stop() closes every
    // link (at once, on threads of their own) and the process's code is the file's again.
    const probed = [...new Set(tracer.info.placements.flatMap((p) => [p.entryOffset, p.functionOffset]))];
    expect(probed.length).toBeGreaterThanOrEqual(4);
    expect(probed.map((off) => codeByte(child.pid!, tracer.info.allocator, off))).toContain(0xcc);
    const first = tracer.stop();
    expect(tracer.stop()).toBe(first); // idempotent: same promise
    const report = await first;
    const file = readFileSync(tracer.info.allocator);
    expect(probed.map((off) => codeByte(child.pid!, tracer.info.allocator, off))).toEqual(probed.map((off) => file[off]));
    expect(report).toBe(await tracer.done);
    expect(report.target.pid).toBe(child.pid);
    expect(report.target.exitCode).toBeNull();
    expect(report.summary.inUseBlocks).toBeGreaterThanOrEqual(leaked32.length);
    expect(report.leaks[0]!.largestBlock).toBe(32);
    expect(child.exitCode).toBeNull(); // still running, untraced
    await expect(tracer.snapshot()).rejects.toMatchObject({ code: 'ELEAK_CLOSED' });
  });

  it("releaseSnapshot() frees a snapshot's buffer at once, and later snapshots read in full", async () => {
    const child = await startForever();
    const tracer = await trace({ pid: child.pid! });
    try {
      await sleep(1500);
      const snap = await tracer.snapshot();
      const blocks = snap.allocations.length;
      // Over 4 KiB of 40-byte timed blocks: the buffer spans two pages or more.
      expect(blocks).toBeGreaterThan(110);
      const before = process.memoryUsage().external;
      releaseSnapshot(snap);
      // The finalizer runs from the event loop, with no collection: an immediate or two later.
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      // V8 was told of the buffer's pages (two or more); other buffers may come and go meanwhile.
      expect(before - process.memoryUsage().external).toBeGreaterThanOrEqual(4096);
      expect(snap.summary.allocs).toBeGreaterThan(0);
      releaseSnapshot(snap); // twice: nothing more to do
      const next = await tracer.snapshot();
      expect(next.allocations.filter((a) => a.size === 32).length).toBeGreaterThanOrEqual(blocks - 2);
    } finally {
      await tracer.stop();
    }
  });

  it('reports when the traced process exits', async () => {
    // 3 s: longer than an attach takes on a loaded 2-vCPU machine, so the exit comes after it.
    const child = spawn(fixturePath('forever'), ['300'], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    await once(child.stdout!, 'data');
    const tracer = await trace({ pid: child.pid! });
    const exitEvent = once(tracer, 'exit') as Promise<[LeakReport]>;
    const report = await tracer.done;
    const [fromEvent] = await exitEvent;
    expect(fromEvent).toBe(report);
    // It ran up to 300 iterations, some before we attached: every one after leaked 32 bytes.
    expect(report.summary.inUseBlocks).toBeGreaterThan(0);
    expect(report.summary.inUseBlocks).toBeLessThanOrEqual(300);
    expect(report.summary.inUseBytes).toBe(32 * report.summary.inUseBlocks);
  });
});

describe('event stream', () => {
  it('emits every alloc and free of the seed program, in order per thread', async () => {
    const tracer = await trace({ command: fixturePath('seed'), stdio: 'ignore', events: true });
    const allocs: AllocEvent[] = [];
    const frees: FreeEvent[] = [];
    const leaks: LeakGroup[] = [];
    tracer.on('alloc', (e) => allocs.push(e));
    tracer.on('free', (e) => frees.push(e));
    tracer.on('leak', (g) => leaks.push(g));
    const report = await tracer.done;
    const eight = allocs.filter((a) => a.size === 8);
    expect(eight).toHaveLength(10);
    expect(eight.every((a) => a.function === 'malloc' && a.tid === tracer.pid)).toBe(true);
    expect(frees).toHaveLength(9);
    expect(frees.every((f) => f.size === 8 && f.function === 'free')).toBe(true);
    // The nine freed are the first nine allocated; the tenth is the leak.
    expect(frees.map((f) => f.address)).toEqual(eight.slice(0, 9).map((a) => a.address));
    const leakedAddress = `0x${eight[9]!.address.toString(16)}`;
    expect(leaks.flatMap((g) => g.sampleAddresses)).toContain(leakedAddress);
    expect(allocs.length).toBe(report.summary.allocs);
    expect(report.summary.lostEvents).toBe(0);
    // timestamps increase
    for (let i = 1; i < eight.length; i++) expect(eight[i]!.timestampNs > eight[i - 1]!.timestampNs).toBe(true);
  });

  it('calls listeners as emit() does while listeners come and go mid-stream', async () => {
    // Events skip emit() (lib/tracer/listener-snapshot.ts); its semantics must hold across 200,000
    // events in many batches: `once`, removal by the listener itself or by another, additions.
    const tracer = await trace({ command: fixturePath('many_outstanding'), stdio: 'ignore', events: true, eventBufferBytes: 32 << 20 });
    let counted = 0;
    let onceCalls = 0;
    let firstAddress: bigint | undefined;
    let upToThree = 0;
    let late = 0;
    let victimCalls = 0;
    let receiver: unknown;
    tracer.once('alloc', (e) => {
      onceCalls++;
      firstAddress = e.address;
    });
    const three = () => {
      if (++upToThree === 3) tracer.off('alloc', three);
    };
    tracer.on('alloc', three);
    const lateListener = () => late++;
    const victim = () => victimCalls++;
    tracer.on('alloc', function (this: unknown) {
      receiver = this;
      counted++;
      if (counted === 1000) tracer.on('alloc', lateListener);
      if (counted === 2000) tracer.removeListener('alloc', victim);
    });
    tracer.on('alloc', victim);
    let firstSeen: bigint | undefined;
    tracer.prependOnceListener('alloc', (e) => (firstSeen = e.address));
    const report = await tracer.done;
    expect(report.summary.lostEvents).toBe(0);
    expect(report.summary.allocs).toBeGreaterThanOrEqual(200_000);
    expect(counted).toBe(report.summary.allocs);
    expect(receiver).toBe(tracer);
    expect(onceCalls).toBe(1);
    expect(firstAddress).toBe(firstSeen);
    expect(upToThree).toBe(3);
    // Added during event 1000: called from event 1001 on (emit() calls the listeners present
    // when it started). Removed during event 2000 by a listener before it: still called for 2000.
    expect(late).toBe(counted - 1000);
    expect(victimCalls).toBe(2000);
    expect(tracer.listenerCount('alloc')).toBe(2); // the counting listener and the late one
  });

  it('with EventEmitter.captureRejections, an async listener that rejects makes an error event, as emit() does', async () => {
    EventEmitter.captureRejections = true;
    try {
      const tracer = await trace({ command: fixturePath('seed'), stdio: 'ignore', events: true });
      const errors: Error[] = [];
      tracer.on('error', (e) => errors.push(e));
      tracer.once('alloc', async () => {
        throw new Error('the listener failed');
      });
      await tracer.done;
      await sleep(20); // emit() reports the rejection on a later tick
      expect(errors.map((e) => e.message)).toEqual(['the listener failed']);
    } finally {
      EventEmitter.captureRejections = false;
    }
  });
});

describe('data that could not be kept is counted and reported', () => {
  it('counts allocations dropped because the address map is full', async () => {
    const tracer = await trace({ command: fixturePath('many_outstanding'), stdio: 'ignore', maxAllocations: 1000 });
    const lost: LostInfo[] = [];
    tracer.on('lost', (l) => lost.push(l));
    const report = await tracer.done;
    // 200,000 blocks outstanding, room for at least 1,250 (1,256 slots in buckets and a spill of
    // 500): the rest are counted, not silently missing.
    expect(report.summary.inUseBlocks).toBeGreaterThanOrEqual(1250);
    expect(report.summary.inUseBlocks).toBeLessThanOrEqual(1256 + 500);
    expect(report.summary.droppedAllocations).toBe(report.summary.allocs - report.summary.frees - report.summary.inUseBlocks);
    expect(report.summary.droppedAllocations).toBeGreaterThanOrEqual(198_000);
    expect(report.summary.allocs).toBeGreaterThanOrEqual(200_000);
    expect(lost.reduce((n, l) => n + l.allocations, 0)).toBe(report.summary.droppedAllocations);
  });

  it('counts events dropped because the ring buffer is full', async () => {
    const tracer = await trace({
      command: fixturePath('threads'),
      stdio: 'ignore',
      events: true,
      eventBufferBytes: 4096,
    });
    const lost: LostInfo[] = [];
    let delivered = 0;
    tracer.on('lost', (l) => lost.push(l));
    tracer.on('alloc', () => delivered++);
    tracer.on('free', () => delivered++);
    const report = await tracer.done;
    expect(report.summary.lostEvents).toBeGreaterThan(0);
    expect(lost.reduce((n, l) => n + l.events, 0)).toBe(report.summary.lostEvents);
    // Every call is either delivered or counted as lost: nothing vanishes.
    expect(delivered + report.summary.lostEvents).toBe(report.summary.allocs + report.summary.frees);
    // Losing events does not change the leak accounting, which comes from the map.
    expect(report.summary.allocs - report.summary.frees).toBe(report.summary.inUseBlocks);
  });

  it('a listener slower than the stream loses events, without holding the event loop', async () => {
    const tracer = await trace({ command: fixturePath('threads'), stdio: 'ignore', events: true, eventBufferBytes: 1 << 20 });
    let delivered = 0;
    let sinceTick = 0;
    let mostBetweenTicks = 0;
    // 30 us an event: far slower than 4 threads allocate, also where each probe's trap takes
    // several microseconds (at 3 us, such a machine's program made events no faster than this).
    const perEventMs = 0.03;
    const slowListener = () => {
      delivered++;
      sinceTick++;
      const until = performance.now() + perEventMs;
      while (performance.now() < until);
    };
    tracer.on('alloc', slowListener);
    tracer.on('free', slowListener);
    let ticks = 0;
    const timer = setInterval(() => {
      ticks++;
      mostBetweenTicks = Math.max(mostBetweenTicks, sinceTick);
      sinceTick = 0;
    }, 1);
    const report = await tracer.done;
    clearInterval(timer);
    expect(report.summary.lostEvents).toBeGreaterThan(0);
    expect(delivered + report.summary.lostEvents).toBe(report.summary.allocs + report.summary.frees);
    // Delivered in slices, and no backlog delivered at once: each event takes at least
    // perEventMs, so a slice of SLICE_MS holds at most SLICE_MS / perEventMs events plus the step
    // it ends in. A slower machine only makes slices hold fewer.
    expect(ticks).toBeGreaterThan(3);
    expect(mostBetweenTicks).toBeLessThanOrEqual(Math.ceil(SLICE_MS / perEventMs) + EVENTS_PER_STEP);
  });
});

describe('event stream backpressure', () => {
  it('loses nothing when the ring buffer has room, though the listener holds every batch when the program exits', async () => {
    // 200,000 allocations in a fraction of a second, a listener at ~4 us an event: when the
    // program exits, JS still has every event slot (native/tracer/event_slots.h) and ~20,000 events wait
    // in the 32 MB ring buffer; the final drain hands them over past the slots.
    const tracer = await trace({ command: fixturePath('many_outstanding'), stdio: 'ignore', events: true, eventBufferBytes: 32 << 20 });
    let delivered = 0;
    const slowListener = () => {
      delivered++;
      const until = performance.now() + 0.004;
      while (performance.now() < until);
    };
    tracer.on('alloc', slowListener);
    tracer.on('free', slowListener);
    const report = await tracer.done;
    expect(report.summary.allocs).toBeGreaterThanOrEqual(200_000);
    expect(report.summary.lostEvents).toBe(0);
    expect(delivered).toBe(report.summary.allocs + report.summary.frees);
  });
});

describe('command targets', () => {
  it('propagates the exit status and counts nothing before exec', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'exit 3'], stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.target.exitCode).toBe(3);
    expect(report.target.command).toBe('sh');
    expect(report.target.args).toEqual(['-c', 'exit 3']);
    expect(report.target.allocator).toMatch(/libc\.so\.6$/);
  });

  it('reports the signal that killed the program', async () => {
    const tracer = await trace({ command: 'sleep', args: ['30'], stdio: 'ignore' });
    setTimeout(() => tracer.process!.kill('SIGTERM'), 200);
    const report = await tracer.done;
    expect(report.target.signal).toBe('SIGTERM');
    expect(report.target.exitCode).toBeNull();
  });
});
