// A finished report with nothing in it but what a test sets: for the code that words, checks or
// formats reports, without a traced program.
import type { HeapSummary, LeakReport } from '../../lib/types.js';

export function leakReport(summary: Partial<HeapSummary> = {}, over: Partial<LeakReport> = {}): LeakReport {
  return {
    version: 1,
    target: { pid: 1, command: '/bin/prog', args: [], exitCode: 0, signal: null, allocator: '/lib/libc.so.6' },
    summary: { allocs: 10, frees: 10, bytesAllocated: 100, inUseBlocks: 0, inUseBytes: 0, lostEvents: 0, droppedAllocations: 0, unknownFrees: 0, ...summary },
    leaks: [],
    durationMs: 1,
    ...over,
  };
}
