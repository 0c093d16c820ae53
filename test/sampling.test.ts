// Sampling mode: only allocations that cross a sampling point are recorded (Poisson, mean
// sampleEveryBytes), totals stay exact, and the report scales the sampled blocks into estimates
// of what is in use, saying that it did.
import { describe, expect, it } from 'vitest';
import { trace, type LeakReport } from '../lib/index.js';
import { formatReport } from '../lib/report/text-format.js';
import { toJsonReport } from '../lib/report/json-format.js';
import { sampleWeight } from '../lib/native/layout.js';
import { fixturePath } from './helpers/fixtures.js';

const SMALL_KEPT = 100_000 * 64;
const BIG_KEPT = 1_000 * 10_000;

async function run(sampleEveryBytes?: number): Promise<LeakReport> {
  const tracer = await trace({
    command: fixturePath('sampling'),
    stdio: 'ignore',
    ...(sampleEveryBytes ? { sampleEveryBytes } : {}),
  });
  return tracer.done;
}

const groupBytes = (r: LeakReport, fn: string) =>
  r.leaks.filter((g) => g.stack.some((f) => f.symbol === fn)).reduce((n, g) => n + g.bytes, 0);

describe('sampling mode', () => {
  it('scales a sampled block by 1 / P(sampled)', () => {
    expect(sampleWeight(8192, 8192)).toBeCloseTo(1 / (1 - Math.exp(-1)), 10);
    expect(sampleWeight(1_000_000, 8192)).toBeCloseTo(1, 10); // big blocks are always sampled
    expect(sampleWeight(64, 8192)).toBeCloseTo(128.5, 0); // small ones stand for ~mean/size
  });

  it('estimates what is in use within a few percent, and keeps the totals exact', async () => {
    const exact = await run();
    const sampled = await run(8192);
    // The totals come from counters that see every call.
    expect(sampled.summary.allocs).toBe(exact.summary.allocs);
    expect(sampled.summary.frees).toBe(exact.summary.frees);
    expect(sampled.summary.bytesAllocated).toBe(exact.summary.bytesAllocated);
    expect(sampled.summary.unknownFrees).toBe(0);
    expect(exact.sampling).toBeUndefined();
    expect(sampled.sampling).toEqual({ everyBytes: 8192 });

    expect(groupBytes(exact, 'keep_small')).toBe(SMALL_KEPT);
    expect(groupBytes(exact, 'keep_big')).toBe(BIG_KEPT);
    // ~780 samples of the small blocks (relative error ~4%) and ~700 of the 1,000 big ones:
    // 15% is more than 3.5 standard deviations.
    const small = groupBytes(sampled, 'keep_small');
    const big = groupBytes(sampled, 'keep_big');
    expect(Math.abs(small - SMALL_KEPT) / SMALL_KEPT, `small ${small}`).toBeLessThan(0.15);
    expect(Math.abs(big - BIG_KEPT) / BIG_KEPT, `big ${big}`).toBeLessThan(0.15);
    const total = exact.summary.inUseBytes;
    expect(Math.abs(sampled.summary.inUseBytes - total) / total).toBeLessThan(0.15);

    // The report says these are estimates, in text and JSON.
    expect(formatReport(sampled)).toContain('(sampled: one allocation per 8,192 bytes on average;');
    expect(formatReport(exact)).not.toContain('sampled:');
    expect(toJsonReport(sampled).sampling).toEqual({ everyBytes: 8192 });
  });
});
