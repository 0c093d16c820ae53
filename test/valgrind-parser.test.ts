// The valgrind oracle's parser, on real logs captured from the fixtures
// (test/fixtures/valgrind-logs/, see its README), and runValgrind() on the real seed program.
// Needs valgrind for the last describe block only.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { fixturePath, fixturesDir } from './helpers/fixtures.js';
import {
  formatHeapSummary,
  parseFrameText,
  parseValgrindLog,
  parseValgrindNumber,
  runValgrind,
  type ValgrindLossRecord,
} from './helpers/valgrind.js';

const logs = join(fixturesDir, 'valgrind-logs');
const log = (name: string): string => readFileSync(join(logs, `${name}.log`), 'utf8');
const parse = (name: string) => parseValgrindLog(log(name));
const vgpreload = '/usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so';

/** Frames as "function file:line" / "function in object" / "function", for compact assertions. */
function frameList(r: ValgrindLossRecord): string[] {
  return r.frames.map((f) =>
    f.file !== undefined ? `${f.function} ${f.file}:${f.line}` : f.object !== undefined ? `${f.function} in ${f.object}` : f.function,
  );
}

describe('parseValgrindNumber', () => {
  it('reads thousands separators', () => {
    expect(parseValgrindNumber('0')).toBe(0);
    expect(parseValgrindNumber('999')).toBe(999);
    expect(parseValgrindNumber('1,234')).toBe(1234);
    expect(parseValgrindNumber('488,421,312')).toBe(488_421_312);
    expect(parseValgrindNumber('12,345,678,901')).toBe(12_345_678_901);
  });

  it('rejects what is not a number', () => {
    expect(() => parseValgrindNumber('')).toThrow();
    expect(() => parseValgrindNumber('12a')).toThrow();
    expect(() => parseValgrindNumber('-1')).toThrow();
  });
});

describe('parseFrameText', () => {
  it('splits function and source location', () => {
    expect(parseFrameText('by', '0x109211', 'main (seed.c:22)')).toEqual({
      kind: 'by',
      address: '0x109211',
      function: 'main',
      file: 'seed.c',
      line: 22,
    });
  });

  it('keeps C++ parentheses in the function and reads the object', () => {
    expect(parseFrameText('at', '0x4841F2F', `operator new(unsigned long) (in ${vgpreload})`)).toEqual({
      kind: 'at',
      address: '0x4841F2F',
      function: 'operator new(unsigned long)',
      object: vgpreload,
    });
    const f = parseFrameText(
      'by',
      '0x10AD25',
      'std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::basic_string<std::allocator<char> >(unsigned long, char, std::allocator<char> const&) (basic_string.h:659)',
    );
    expect(f.function).toBe(
      'std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::basic_string<std::allocator<char> >(unsigned long, char, std::allocator<char> const&)',
    );
    expect([f.file, f.line]).toEqual(['basic_string.h', 659]);
  });

  it('takes a bare ??? (unknown object) as the function', () => {
    expect(parseFrameText('by', '0x4853143', '???')).toEqual({ kind: 'by', address: '0x4853143', function: '???' });
    expect(parseFrameText('by', '0x49007B9', '??? (in /usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30)')).toEqual({
      kind: 'by',
      address: '0x49007B9',
      function: '???',
      object: '/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30',
    });
  });

  it('keeps versioned symbol names', () => {
    const f = parseFrameText('by', '0x48E4DAE', 'pthread_create@@GLIBC_2.34 (pthread_create.c:650)');
    expect([f.function, f.file, f.line]).toEqual(['pthread_create@@GLIBC_2.34', 'pthread_create.c', 650]);
  });
});

describe('parseValgrindLog on captured logs', () => {
  it('seed: the 8-byte leak and the stdout buffer', () => {
    const r = parse('seed');
    expect(r.pid).toBe(13392);
    expect(r.summary).toEqual({ inUseBytes: 4104, inUseBlocks: 2, allocs: 11, frees: 9, bytesAllocated: 4176 });
    expect(r.allHeapBlocksFreed).toBe(false);
    expect(r.leakSummary).toEqual({
      definitelyLost: { bytes: 8, blocks: 1 },
      indirectlyLost: { bytes: 0, blocks: 0 },
      possiblyLost: { bytes: 0, blocks: 0 },
      stillReachable: { bytes: 4096, blocks: 1 },
      suppressed: { bytes: 0, blocks: 0 },
      reachableViaHeuristic: {},
    });
    expect(r.errorSummary).toEqual({ errors: 0, contexts: 0, suppressedErrors: 0, suppressedContexts: 0 });
    expect(r.fatal).toEqual([]);
    expect(r.lossRecords).toHaveLength(2);
    const [leak, buffer] = r.lossRecords as [ValgrindLossRecord, ValgrindLossRecord];
    expect(leak).toMatchObject({
      bytes: 8,
      directBytes: 8,
      indirectBytes: 0,
      blocks: 1,
      kind: 'definitely lost',
      index: 1,
      total: 2,
    });
    expect(leak.frames).toEqual([
      { kind: 'at', address: '0x48417B4', function: 'malloc', object: vgpreload },
      { kind: 'by', address: '0x109211', function: 'main', file: 'seed.c', line: 22 },
    ]);
    expect(buffer).toMatchObject({ bytes: 4096, blocks: 1, kind: 'still reachable', index: 2, total: 2 });
    expect(frameList(buffer)).toEqual([
      `malloc in ${vgpreload}`,
      '_IO_file_doallocate filedoalloc.c:101',
      '_IO_doallocbuf genops.c:347',
      '_IO_doallocbuf genops.c:342', // inlined frames repeat the address
      '_IO_file_overflow@@GLIBC_2.2.5 fileops.c:744',
      '_IO_new_file_xsputn fileops.c:1243',
      '_IO_file_xsputn@@GLIBC_2.2.5 fileops.c:1196',
      'outstring_func vfprintf-internal.c:239',
      '__vfprintf_internal vfprintf-internal.c:767',
      'printf printf.c:33',
      'main seed.c:17',
    ]);
    expect(buffer.frames[2]!.address).toBe(buffer.frames[3]!.address);
  });

  it('entry_points: direct/indirect split, every allocator, 0-byte blocks', () => {
    const r = parse('entry_points');
    expect(r.summary).toEqual({ inUseBytes: 1778, inUseBlocks: 11, allocs: 30, frees: 19, bytesAllocated: 13080 });
    expect(r.leakSummary.definitelyLost).toEqual({ bytes: 24, blocks: 1 });
    expect(r.leakSummary.indirectlyLost).toEqual({ bytes: 31, blocks: 1 });
    expect(r.leakSummary.stillReachable).toEqual({ bytes: 1723, blocks: 9 });
    expect(r.lossRecords).toHaveLength(11);
    expect(r.lossRecords.map((l) => l.index)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(r.lossRecords.every((l) => l.total === 11)).toBe(true);
    // the blocks of the records add up to the HEAP SUMMARY (direct bytes: indirect ones have their own record)
    expect(r.lossRecords.reduce((n, l) => n + l.blocks, 0)).toBe(11);
    expect(r.lossRecords.reduce((n, l) => n + l.directBytes, 0)).toBe(1778);

    const zero = r.lossRecords[0]!;
    expect([zero.bytes, zero.blocks, zero.kind]).toEqual([0, 1, 'still reachable']);
    const chain = r.lossRecords.find((l) => l.indirectBytes > 0)!;
    expect(chain).toMatchObject({ bytes: 55, directBytes: 24, indirectBytes: 31, blocks: 1, kind: 'definitely lost' });
    expect(r.lossRecords.find((l) => l.kind === 'indirectly lost')).toMatchObject({ bytes: 31, blocks: 1 });

    const allocators = r.lossRecords.map((l) => l.frames[0]!.function);
    expect(new Set(allocators)).toEqual(new Set(['malloc', 'memalign', 'realloc', 'calloc']));
    // posix_memalign is valgrind's memalign called from its posix_memalign: two frames in the preload
    const pm = r.lossRecords.find((l) => l.frames[1]?.function === 'posix_memalign')!;
    expect(frameList(pm)).toEqual([`memalign in ${vgpreload}`, `posix_memalign in ${vgpreload}`, 'main entry_points.c:88']);
  });

  it('cpp_containers: C++ names, ??? frames, the libstdc++ emergency pool', () => {
    const r = parse('cpp_containers');
    expect(r.summary).toEqual({ inUseBytes: 73393, inUseBlocks: 5, allocs: 80, frees: 75, bytesAllocated: 86512 });
    expect(r.lossRecords.map((l) => [l.bytes, l.blocks, l.kind])).toEqual([
      [56, 1, 'definitely lost'],
      [201, 1, 'indirectly lost'],
      [233, 1, 'definitely lost'],
      [400, 1, 'still reachable'],
      [72704, 1, 'still reachable'],
    ]);
    const widget = r.lossRecords[0]!;
    expect(frameList(widget)).toEqual([
      `operator new(unsigned long) in ${vgpreload}`,
      'leak_some() cpp_containers.cc:45',
      'main cpp_containers.cc:98',
    ]);
    expect(r.lossRecords[3]!.frames[0]!.function).toBe('operator new[](unsigned long)');
    const pool = r.lossRecords[4]!;
    expect(pool.frames[1]).toEqual({
      kind: 'by',
      address: '0x49007B9',
      function: '???',
      object: '/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30',
    });
    expect(r.leakSummary.stillReachable).toEqual({ bytes: 73104, blocks: 2 });
  });

  it('cpp_containers_nofp: same numbers at -O2, inlined frames', () => {
    const r = parse('cpp_containers_nofp');
    expect(r.summary).toEqual(parse('cpp_containers').summary);
    const str = r.lossRecords.find((l) => l.kind === 'indirectly lost')!;
    expect(frameList(str).slice(2)).toEqual([
      'basic_string<> basic_string.h:659',
      'leak_some() cpp_containers.cc:48',
      'main cpp_containers.cc:98',
    ]);
  });

  it('threads: large grouped numbers, possibly lost', () => {
    const r = parse('threads');
    expect(r.summary).toEqual({
      inUseBytes: 101_268,
      inUseBlocks: 44,
      allocs: 914_328,
      frees: 914_284,
      bytesAllocated: 488_421_312,
    });
    expect(r.leakSummary.possiblyLost).toEqual({ bytes: 1088, blocks: 4 });
    expect(r.leakSummary.stillReachable).toEqual({ bytes: 100_180, blocks: 40 });
    // 4 threads x 10 leaked blocks of 1000 * (t + 1) + j bytes
    expect(100_180).toBe([1, 2, 3, 4].reduce((n, t) => n + 10 * 1000 * t + 45, 0));
    expect(r.lossRecords[0]!.frames.map((f) => f.function)).toContain('allocate_dtv');
  });

  it('many_outstanding: 200,000 blocks', () => {
    const r = parse('many_outstanding');
    expect(r.summary).toEqual({
      inUseBytes: 50_999_851,
      inUseBlocks: 200_000,
      allocs: 200_000,
      frees: 0,
      bytesAllocated: 50_999_851,
    });
    expect(r.lossRecords).toHaveLength(1);
    expect(r.lossRecords[0]).toMatchObject({ bytes: 50_999_851, blocks: 200_000, kind: 'still reachable' });
  });

  it('dlopen_main: a frame in the unloaded plugin is a bare ???', () => {
    const r = parse('dlopen_main');
    expect(r.summary).toEqual({ inUseBytes: 2496, inUseBlocks: 4, allocs: 11, frees: 7, bytesAllocated: 4104 });
    const plugin = r.lossRecords[0]!;
    expect(plugin).toMatchObject({ bytes: 192, blocks: 3, kind: 'definitely lost' });
    expect(plugin.frames[1]).toEqual({ kind: 'by', address: '0x4853143', function: '???' });
    expect(plugin.frames[2]).toMatchObject({ function: 'main', file: 'dlopen_main.c', line: 29 });
    // ld.so's dl_find_object table, allocated through libc's malloc during dlopen
    expect(r.lossRecords[1]).toMatchObject({ bytes: 2304, blocks: 1, kind: 'possibly lost' });
    expect(r.lossRecords[1]!.frames.map((f) => f.function)).toContain('_dlfo_mappings_segment_allocate');
  });

  it('exit_immediately and forever', () => {
    expect(parse('exit_immediately').summary).toEqual({
      inUseBytes: 24,
      inUseBlocks: 1,
      allocs: 1,
      frees: 0,
      bytesAllocated: 24,
    });
    // forever 20: the stdout buffer (4096) + 20 x (64 malloc'd and freed, 32 leaked)
    expect(parse('forever_20').summary).toEqual({
      inUseBytes: 4096 + 20 * 32,
      inUseBlocks: 21,
      allocs: 41,
      frees: 20,
      bytesAllocated: 4096 + 20 * 96,
    });
  });

  it('true: "All heap blocks were freed -- no leaks are possible"', () => {
    const r = parse('true');
    expect(r.summary).toEqual({ inUseBytes: 0, inUseBlocks: 0, allocs: 0, frees: 0, bytesAllocated: 0 });
    expect(r.allHeapBlocksFreed).toBe(true);
    expect(r.lossRecords).toEqual([]);
    const { reachableViaHeuristic, ...kinds } = r.leakSummary;
    expect(reachableViaHeuristic).toEqual({});
    expect(Object.values(kinds).every((v) => v.bytes === 0 && v.blocks === 0)).toBe(true);
  });

  it('pvalloc: valgrind aborts the program and says why', () => {
    const r = parse('pvalloc');
    expect(r.fatal).toEqual(['Program aborting because of call to pvalloc']);
    expect(r.allHeapBlocksFreed).toBe(true);
    expect(r.summary.allocs).toBe(0);
  });

  it('errors: error contexts are not loss records; ERROR SUMMARY is read', () => {
    const r = parse('errors');
    expect(r.summary).toEqual({ inUseBytes: 108, inUseBlocks: 2, allocs: 3, frees: 2, bytesAllocated: 124 });
    expect(r.errorSummary).toEqual({ errors: 2, contexts: 2, suppressedErrors: 0, suppressedContexts: 0 });
    expect(r.lossRecords.map((l) => [l.bytes, l.kind, l.frames.length])).toEqual([
      [8, 'definitely lost', 2],
      [100, 'possibly lost', 2],
    ]);
  });
});

describe('parseValgrindLog edge cases', () => {
  it('reads only the first pid when another process wrote to the same log', () => {
    const other = log('true').replaceAll('==13491==', '==999==');
    const mixed = log('seed')
      .split('\n')
      .flatMap((line, i) => [line, other.split('\n')[i] ?? ''])
      .join('\n');
    const r = parseValgrindLog(mixed);
    expect(r.pid).toBe(13392);
    expect(r.summary.allocs).toBe(11);
    expect(r.lossRecords).toHaveLength(2);
  });

  it('ignores --PID-- lines and text that is not valgrind\'s', () => {
    const text = `--13392-- warning: something\n${log('seed')}\nnot valgrind\n`;
    expect(parseValgrindLog(text).summary.frees).toBe(9);
  });

  it('reads the heuristic lines of a LEAK SUMMARY without confusing them', () => {
    const text = log('seed').replace(
      '==13392==    still reachable: 4,096 bytes in 1 blocks\n',
      '==13392==    still reachable: 4,096 bytes in 1 blocks\n' +
        '==13392==                       of which reachable via heuristic:\n' +
        '==13392==                         stdstring          : 1,056 bytes in 3 blocks\n',
    );
    expect(parseValgrindLog(text).leakSummary.stillReachable).toEqual({ bytes: 4096, blocks: 1 });
  });

  it('throws on a log without a HEAP SUMMARY, and on text that is not a log', () => {
    const cut = log('seed').split('\n').slice(0, 6).join('\n');
    expect(() => parseValgrindLog(cut)).toThrow(/no HEAP SUMMARY/);
    expect(() => parseValgrindLog('hello\n')).toThrow(/not a valgrind log/);
  });

  it('formats a summary like valgrind', () => {
    expect(formatHeapSummary(parse('threads').summary)).toBe(
      'in use at exit: 101,268 bytes in 44 blocks; total heap usage: 914,328 allocs, 914,284 frees, 488,421,312 bytes allocated',
    );
  });
});

describe('runValgrind on the real fixtures', () => {
  it('seed: what valgrind really reports', async () => {
    const r = await runValgrind(fixturePath('seed'), [], { stdio: 'pipe' });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe(`pid :${r.pid}\n`);
    // The seed article's program does 10 x malloc(8) and 9 frees: 10 allocs, 9 frees, 80 bytes,
    // 1 block of 8 in use. valgrind (like any malloc tracer) also sees the 4,096-byte buffer glibc
    // mallocs for stdout at the first printf() (st_blksize of the pipe; a terminal would give
    // 1,024) and never frees (--run-libc-freeres=no): one more alloc, 4,096 more bytes allocated
    // and in use at exit.
    expect(r.summary).toEqual({
      inUseBytes: 8 + 4096,
      inUseBlocks: 2,
      allocs: 10 + 1,
      frees: 9,
      bytesAllocated: 80 + 4096,
    });
    expect(r.leakSummary.definitelyLost).toEqual({ bytes: 8, blocks: 1 });
    expect(r.leakSummary.stillReachable).toEqual({ bytes: 4096, blocks: 1 });
    const leak = r.lossRecords.find((l) => l.bytes === 8)!;
    expect(leak.frames[0]!.function).toBe('malloc');
    expect(leak.frames[1]).toMatchObject({ function: 'main', file: 'seed.c' });
    const buffer = r.lossRecords.find((l) => l.bytes === 4096)!;
    expect(buffer.frames.map((f) => f.function)).toContain('_IO_file_doallocate');
  });

  it('seed with stdout to /dev/null: the same numbers', async () => {
    const r = await runValgrind(fixturePath('seed'), ['0']);
    expect(r.summary).toEqual({ inUseBytes: 4104, inUseBlocks: 2, allocs: 11, frees: 9, bytesAllocated: 4176 });
  });

  it('entry_points: the counts its source comment predicts', async () => {
    const r = await runValgrind(fixturePath('entry_points'));
    expect(r.exitCode).toBe(0); // every call behaved as glibc documents, under valgrind too
    expect(r.summary).toEqual({ inUseBytes: 1778, inUseBlocks: 11, allocs: 30, frees: 19, bytesAllocated: 13080 });
  });

  it('pvalloc: valgrind 3.19 cannot run it', async () => {
    const r = await runValgrind(fixturePath('pvalloc'));
    expect(r.fatal).toContain('Program aborting because of call to pvalloc');
    expect(r.exitCode).toBe(1);
  });
});
