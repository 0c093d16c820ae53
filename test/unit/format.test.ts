import { describe, expect, it } from 'vitest';

import {
  formatCount,
  formatDuration,
  formatFrame,
  formatReport,
  formatSnapshotTop,
} from '../../lib/report/text-format.js';
import { stringifyJsonReport, toJsonReport } from '../../lib/report/json-format.js';
import type { HeapSummary, LeakGroup, LeakReport, OutstandingAllocation, Snapshot } from '../../lib/types.js';

const LIBC = '/usr/lib/x86_64-linux-gnu/libc.so.6';
const SEED = '/work/test/.build/seed';

function summary(over: Partial<HeapSummary> = {}): HeapSummary {
  return {
    allocs: 11,
    frees: 9,
    bytesAllocated: 4176,
    inUseBlocks: 2,
    inUseBytes: 4104,
    lostEvents: 0,
    droppedAllocations: 0,
    unknownFrees: 0,
    ...over,
  };
}

const seedLeak: LeakGroup = {
  bytes: 8,
  blocks: 1,
  largestBlock: 8,
  sampleAddresses: ['0x55d0c0a2b2a0'],
  stack: [
    { address: '0x555555555211', module: SEED, offset: '0x1211', symbol: 'main', file: 'seed.c', line: 22 },
    { address: '0x7ffff7dd424a', module: LIBC, offset: '0x2724a', symbol: '__libc_start_call_main' },
  ],
};

const stdoutBuffer: LeakGroup = {
  bytes: 4096,
  blocks: 1,
  largestBlock: 4096,
  sampleAddresses: ['0x55d0c0a2a2a0'],
  stack: [
    { address: '0x7ffff7e288cb', module: LIBC, symbol: '_IO_file_doallocate', file: 'filedoalloc.c', line: 101 },
    { address: '0x7ffff7e0d65a', module: LIBC, symbol: 'printf', file: 'printf.c', line: 33 },
    { address: '0x5555555551e5', module: SEED, symbol: 'main', file: 'seed.c', line: 17 },
  ],
};

function seedReport(over: Partial<LeakReport> = {}): LeakReport {
  return {
    version: 1,
    target: { pid: 4242, command: SEED, args: ['0'], exitCode: 0, signal: null, allocator: LIBC },
    summary: summary(),
    // Deliberately unsorted: the formatter sorts by bytes.
    leaks: [seedLeak, stdoutBuffer],
    durationMs: 12.4,
    ...over,
  };
}

describe('formatCount', () => {
  it('groups thousands like valgrind', () => {
    expect(formatCount(0)).toBe('0');
    expect(formatCount(999)).toBe('999');
    expect(formatCount(1000)).toBe('1,000');
    expect(formatCount(4176)).toBe('4,176');
    expect(formatCount(1234567)).toBe('1,234,567');
    expect(formatCount(-1234)).toBe('-1,234');
    expect(formatCount(Number.MAX_SAFE_INTEGER)).toBe('9,007,199,254,740,991');
  });
});

describe('formatDuration', () => {
  it('uses ms, s and min', () => {
    expect(formatDuration(12.4)).toBe('12 ms');
    expect(formatDuration(1000)).toBe('1 s');
    expect(formatDuration(1250)).toBe('1.25 s');
    expect(formatDuration(10500)).toBe('10.5 s');
    expect(formatDuration(125_000)).toBe('2 min 5 s');
    expect(formatDuration(120_000)).toBe('2 min');
  });
});

describe('formatFrame', () => {
  it('prints symbol, file:line and module', () => {
    expect(formatFrame({ address: '0x401136', symbol: 'main', file: 'seed.c', line: 22, module: '/a/seed' })).toBe(
      '0x401136: main (seed.c:22) [/a/seed]',
    );
  });
  it('prints ??? and the module offset when the symbol is unknown', () => {
    expect(formatFrame({ address: '0x7f0000001234', module: '/lib/libfoo.so', offset: '0x1234' })).toBe(
      '0x7f0000001234: ??? [/lib/libfoo.so+0x1234]',
    );
    expect(formatFrame({ address: '0x1234' })).toBe('0x1234: ???');
  });
  it('prints a file without a line', () => {
    expect(formatFrame({ address: '0x1', symbol: 'f', file: 'f.c' })).toBe('0x1: f (f.c)');
  });
});

describe('formatReport', () => {
  it('prints a valgrind-like report, groups sorted by bytes', () => {
    expect(formatReport(seedReport()).split('\n')).toEqual([
      `pid 4242: ${SEED} 0`,
      `exited with status 0; traced for 12 ms; allocator ${LIBC}`,
      '',
      'HEAP SUMMARY:',
      '    in use at exit: 4,104 bytes in 2 blocks',
      '  total heap usage: 11 allocs, 9 frees, 4,176 bytes allocated',
      '',
      '4,096 bytes in 1 blocks are still allocated in loss record 1 of 2',
      `   at 0x7ffff7e288cb: _IO_file_doallocate (filedoalloc.c:101) [${LIBC}]`,
      `   by 0x7ffff7e0d65a: printf (printf.c:33) [${LIBC}]`,
      `   by 0x5555555551e5: main (seed.c:17) [${SEED}]`,
      '',
      '8 bytes in 1 blocks are still allocated in loss record 2 of 2',
      `   at 0x555555555211: main (seed.c:22) [${SEED}]`,
      `   by 0x7ffff7dd424a: __libc_start_call_main [${LIBC}]`,
      '',
      'LEAK SUMMARY: leaked: 4,104 bytes in 2 blocks in 2 groups',
      '',
    ]);
  });

  it('says so when there are no leaks', () => {
    const text = formatReport(
      seedReport({ leaks: [], summary: summary({ allocs: 3, frees: 3, inUseBlocks: 0, inUseBytes: 0 }) }),
    );
    expect(text).toContain('    in use at exit: 0 bytes in 0 blocks\n');
    expect(text).toContain('  total heap usage: 3 allocs, 3 frees, 4,176 bytes allocated\n');
    expect(text).not.toContain('still allocated');
    expect(text.endsWith('\nLEAK SUMMARY: no leaks: all heap blocks were freed\n')).toBe(true);
  });

  it('keeps the top N groups and says how many were left out', () => {
    const groups: LeakGroup[] = [1, 5000, 30, 700, 2].map((bytes) => ({
      bytes,
      blocks: bytes === 5000 ? 5 : 1,
      largestBlock: bytes,
      sampleAddresses: [],
      stack: [{ address: `0x${bytes.toString(16)}`, symbol: `f${bytes}` }],
    }));
    const text = formatReport(
      seedReport({ leaks: groups, summary: summary({ inUseBlocks: 9, inUseBytes: 5733 }) }),
      { top: 2 },
    );
    const lines = text.split('\n');
    expect(lines.filter((l) => l.includes('are still allocated'))).toEqual([
      '5,000 bytes in 5 blocks are still allocated in loss record 1 of 5',
      '700 bytes in 1 blocks are still allocated in loss record 2 of 5',
    ]);
    expect(lines).toContain(
      '... 3 more groups (33 bytes in 3 blocks) not shown; raise --top, or write all of them with --json FILE',
    );
    expect(lines).toContain('LEAK SUMMARY: leaked: 5,733 bytes in 9 blocks in 5 groups');
  });

  it('uses the singular for one omitted group, and top 0 means all', () => {
    expect(formatReport(seedReport(), { top: 1 })).toContain(
      '... 1 more group (8 bytes in 1 blocks) not shown;',
    );
    expect(formatReport(seedReport(), { top: 0 })).not.toContain('not shown');
    expect(formatReport(seedReport(), { top: 5 })).not.toContain('not shown');
  });

  it('prints a placeholder for an empty stack', () => {
    const text = formatReport(seedReport({ leaks: [{ ...seedLeak, stack: [] }] }));
    expect(text).toContain(
      '8 bytes in 1 blocks are still allocated in loss record 1 of 1\n   (no stack: stacks not captured)\n',
    );
  });

  it('warns about lost events, dropped allocations and unknown frees, with what to do', () => {
    const text = formatReport(
      seedReport({ summary: summary({ lostEvents: 1500, droppedAllocations: 2, unknownFrees: 3 }) }),
    );
    const lines = text.split('\n');
    const heapEnd = lines.indexOf('  total heap usage: 11 allocs, 9 frees, 4,176 bytes allocated');
    expect(lines[heapEnd + 1]).toBe('');
    expect(lines[heapEnd + 2]).toBe(
      'warning: 2 allocations were not tracked because the address map was full; leaks among ' +
        'them are missing from this report. Raise maxAllocations.',
    );
    expect(lines[heapEnd + 3]).toBe(
      'warning: 1,500 alloc/free events were lost because the event ring buffer was full, so the ' +
        'event stream is incomplete; the counts and leaks above are not affected. Use ' +
        'a larger eventBufferBytes.',
    );
    // A program started traced: 3 unknown frees, fewer than its 9 frees, are glibc's own (a
    // thread's tcache returned at its exit): no warning.
    expect(lines[heapEnd + 4]).toBe('');
  });

  it('prints no warnings when nothing was missed', () => {
    expect(formatReport(seedReport())).not.toContain('warning');
  });

  it('describes a target killed by a signal', () => {
    const text = formatReport(
      seedReport({ target: { pid: 7, exitCode: null, signal: 'SIGSEGV', allocator: LIBC }, durationMs: 1500 }),
    );
    expect(text.split('\n').slice(0, 5)).toEqual([
      'pid 7',
      `killed by SIGSEGV; traced for 1.5 s; allocator ${LIBC}`,
      '',
      'HEAP SUMMARY:',
      '    in use at exit: 4,104 bytes in 2 blocks',
    ]);
  });

  it('says "in use at stop" for a process still running when tracing stopped', () => {
    const text = formatReport(
      seedReport({ target: { pid: 7, exitCode: null, signal: null, allocator: LIBC }, durationMs: 60_000 }),
    );
    expect(text.split('\n').slice(0, 5)).toEqual([
      'pid 7',
      `still running (tracing stopped); traced for 1 min; allocator ${LIBC}`,
      '',
      'HEAP SUMMARY:',
      '    in use at stop: 4,104 bytes in 2 blocks',
    ]);
  });

  it('says "exited" when told so and no status is known (a process traced by pid)', () => {
    const text = formatReport(
      seedReport({ target: { pid: 7, exitCode: null, signal: null, allocator: LIBC }, durationMs: 2350 }),
      { exited: true },
    );
    expect(text.split('\n').slice(0, 5)).toEqual([
      'pid 7',
      `exited; traced for 2.35 s; allocator ${LIBC}`,
      '',
      'HEAP SUMMARY:',
      '    in use at exit: 4,104 bytes in 2 blocks',
    ]);
  });

  it('quotes arguments like a shell', () => {
    const text = formatReport(seedReport({ target: { ...seedReport().target, command: 'sh', args: ['-c', "echo 'hi' $X", ''] } }));
    expect(text.split('\n')[0]).toBe(`pid 4242: sh -c 'echo '\\''hi'\\'' $X' ''`);
  });

  it('adds the largest block and sample addresses when verbose', () => {
    const text = formatReport(seedReport({ leaks: [seedLeak] }), { verbose: true });
    expect(text).toContain(
      `   by 0x7ffff7dd424a: __libc_start_call_main [${LIBC}]\n   (largest block 8 bytes; e.g. at 0x55d0c0a2b2a0)\n`,
    );
  });

  it('colours only when asked', () => {
    expect(formatReport(seedReport())).not.toContain('\x1b[');
    const colored = formatReport(seedReport(), { color: true });
    expect(colored).toContain('\x1b[1mHEAP SUMMARY:\x1b[0m');
    expect(colored).toContain('\x1b[31m8 bytes in 1 blocks are still allocated in loss record 2 of 2\x1b[0m');
  });
});

describe('formatSnapshotTop', () => {
  const now = new Date(2024, 0, 2, 9, 5, 7);
  function alloc(size: number, stackId: number, address = 0x1000n): OutstandingAllocation {
    return { address, size, ageMs: 10, tid: 1, stackId };
  }
  const snapshot: Snapshot = {
    allocations: [alloc(32, 3), alloc(4096, 17), alloc(32, 3), alloc(8, -1), alloc(100, 5), alloc(2000, 17)],
    summary: summary({ allocs: 1200, frees: 1194, inUseBlocks: 6, inUseBytes: 6268 }),
  };

  it('groups by stack id, largest bytes first, BCC style', () => {
    expect(formatSnapshotTop(snapshot, { top: 10, now }).split('\n')).toEqual([
      '[09:05:07] Top 10 stacks with outstanding allocations:',
      '\t6,096 bytes in 2 allocations from a stack whose frames could not be read',
      '\t100 bytes in 1 allocations from a stack whose frames could not be read',
      '\t64 bytes in 2 allocations from a stack whose frames could not be read',
      '\t8 bytes in 1 allocations from an uncaptured stack',
      '\tin use: 6,268 bytes in 6 blocks; 1,200 allocs, 1,194 frees since attach',
      '',
    ]);
  });

  it('keeps the top N and counts the rest', () => {
    expect(formatSnapshotTop(snapshot, { top: 2, now }).split('\n')).toEqual([
      '[09:05:07] Top 2 stacks with outstanding allocations:',
      '\t6,096 bytes in 2 allocations from a stack whose frames could not be read',
      '\t100 bytes in 1 allocations from a stack whose frames could not be read',
      '\t... 2 more stacks',
      '\tin use: 6,268 bytes in 6 blocks; 1,200 allocs, 1,194 frees since attach',
      '',
    ]);
  });

  it('shows all stacks with top 0', () => {
    const text = formatSnapshotTop(snapshot, { top: 0, now });
    expect(text.startsWith('[09:05:07] Stacks with outstanding allocations:\n')).toBe(true);
    expect(text).toContain('from an uncaptured stack');
    expect(text).not.toContain('more stack');
  });

  it('prints frames when the caller can resolve them', () => {
    const text = formatSnapshotTop(snapshot, {
      top: 1,
      now,
      frames: (id) => (id === 17 ? [{ address: '0x401136', symbol: 'main', module: '/a/b' }] : undefined),
    });
    expect(text.split('\n').slice(0, 4)).toEqual([
      '[09:05:07] Top 1 stacks with outstanding allocations:',
      '\t6,096 bytes in 2 allocations from stack',
      '\t\t0x401136: main [/a/b]',
      '\t... 3 more stacks',
    ]);
  });

  it('says when nothing is outstanding', () => {
    expect(
      formatSnapshotTop({ allocations: [], summary: summary({ inUseBlocks: 0, inUseBytes: 0 }) }, { top: 10, now }),
    ).toBe(
      '[09:05:07] Top 10 stacks with outstanding allocations:\n' +
        '\t(no outstanding allocations)\n' +
        '\tin use: 0 bytes in 0 blocks; 11 allocs, 9 frees since attach\n',
    );
  });
});

describe('toJsonReport', () => {
  it('produces the documented plain-JSON shape, leaks sorted by bytes', () => {
    const json = toJsonReport(seedReport());
    expect(json).toEqual({
      version: 1,
      target: { pid: 4242, command: SEED, args: ['0'], exitCode: 0, signal: null, allocator: LIBC, allocatorName: null },
      durationMs: 12.4,
      summary: {
        allocs: 11,
        frees: 9,
        bytesAllocated: 4176,
        inUseBlocks: 2,
        inUseBytes: 4104,
        lostEvents: 0,
        droppedAllocations: 0,
        unknownFrees: 0,
        errors: { 'invalid-free': 0, 'double-free': 0, 'mismatched-free': 0, notRecorded: 0 },
      },
      leaks: [
        {
          bytes: 4096,
          blocks: 1,
          largestBlock: 4096,
          sampleAddresses: ['0x55d0c0a2a2a0'],
          stack: stdoutBuffer.stack,
        },
        { bytes: 8, blocks: 1, largestBlock: 8, sampleAddresses: ['0x55d0c0a2b2a0'], stack: seedLeak.stack },
      ],
      errors: [],
      suppressed: [],
    });
    expect(Object.keys(json)).toEqual(['version', 'target', 'durationMs', 'summary', 'leaks', 'errors', 'suppressed']);
    // Round-trips through JSON unchanged: nothing JSON cannot hold.
    expect(JSON.parse(stringifyJsonReport(seedReport()))).toEqual(json);
  });

  it('uses null for what a pid target does not have, and leaves unknown frame keys out', () => {
    const json = toJsonReport(
      seedReport({
        target: { pid: 9, exitCode: null, signal: null, allocator: LIBC },
        leaks: [{ ...seedLeak, stack: [{ address: '0x10', module: undefined, symbol: 'f' }] }],
      }),
    );
    expect(json.target).toEqual({ pid: 9, command: null, args: null, exitCode: null, signal: null, allocator: LIBC, allocatorName: null });
    expect(json.leaks[0]?.stack).toEqual([{ address: '0x10', symbol: 'f' }]);
    expect(Object.keys(json.leaks[0]?.stack[0] ?? {})).toEqual(['address', 'symbol']);
  });

  it('turns stray bigints into numbers instead of throwing', () => {
    const report = seedReport();
    (report.summary as unknown as Record<string, unknown>).allocs = 11n;
    expect(() => stringifyJsonReport(report)).not.toThrow();
    expect(toJsonReport(report).summary.allocs).toBe(11);
  });
});
