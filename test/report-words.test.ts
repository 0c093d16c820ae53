// Words a report or an error uses must be true of what happened: abort() is SIGABRT, "all heap
// blocks were freed" only when they were, glibc's own frees at thread exit are not news, a
// directory is not "not executable", and each surface names its own options.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatReport } from '../lib/report/text-format.js';
import { trace } from '../lib/index.js';
import { signalNames } from '../lib/tracer/traced-process.js';
import { fixturePath } from './helpers/fixtures.js';
import { leakReport } from './helpers/reports.js';

const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-words-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const report = leakReport;

const leakSummary = (text: string) => text.split('\n').find((l) => l.startsWith('LEAK SUMMARY'));

describe('signals', () => {
  it('names each signal number by its usual name, not by a later alias', () => {
    expect(signalNames.get(6)).toBe('SIGABRT');
    expect(signalNames.get(29)).toBe('SIGIO');
    expect(signalNames.get(11)).toBe('SIGSEGV');
  });

  it('abort() is reported as SIGABRT', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'kill -ABRT $$'], stdio: 'ignore' });
    const done = await tracer.done;
    expect(done.target.signal).toBe('SIGABRT');
    expect(formatReport(done)).toContain('killed by SIGABRT;');
  });
});

describe('LEAK SUMMARY', () => {
  it('"all heap blocks were freed" only when none is in use', () => {
    expect(leakSummary(formatReport(report({})))).toBe('LEAK SUMMARY: no leaks: all heap blocks were freed');
  });

  it('blocks in use that suppressions left out are said to be that', () => {
    expect(leakSummary(formatReport(report({ inUseBlocks: 3, inUseBytes: 510 })))).toBe(
      'LEAK SUMMARY: no leaks listed: the 510 bytes in 3 blocks still in use are all suppressed (see below)',
    );
  });

  it('an incomplete run says leaks may be missing', () => {
    expect(leakSummary(formatReport(report({ droppedAllocations: 12, inUseBlocks: 3, inUseBytes: 510 })))).toBe(
      'LEAK SUMMARY: no leaks listed, but 12 allocations were not tracked, so leaks may be missing (inconclusive)',
    );
  });

  it('a process still running says no blocks are in use, not that they were freed at exit', () => {
    const text = formatReport(report({}, { target: { pid: 1, exitCode: null, signal: null, allocator: '/lib/libc.so.6' } }));
    expect(leakSummary(text)).toBe('LEAK SUMMARY: no leaks: no heap blocks in use');
  });
});

describe('frees of blocks never seen allocated', () => {
  it("a program that ends threads gets no warning: glibc's tcache returns blocks at thread exit", async () => {
    const tracer = await trace({ command: fixturePath('threads'), stdio: 'ignore' });
    const done = await tracer.done;
    // The case is real: the thread exits freed blocks the tracer never saw allocated.
    expect(done.summary.unknownFrees).toBeGreaterThan(0);
    expect(done.summary.unknownFrees).toBeLessThan(done.summary.frees);
    const text = formatReport(done);
    expect(text).not.toContain('never seen allocated');
    expect(text).not.toMatch(/another allocator|name it with/);
  });

  it('a started program with more unknown frees than known ones is warned, naming the allocator', () => {
    const text = formatReport(report({ frees: 10, unknownFrees: 500 }));
    expect(text).toContain(
      'warning: 500 frees were of blocks never seen allocated, more than the 10 frees of blocks that were: ' +
        'the program seems to allocate through another allocator than /lib/libc.so.6. If it has its own, name it with allocator: { path }.',
    );
  });

  it('an attached process gets a note, without suggesting another allocator', () => {
    const text = formatReport(report({ unknownFrees: 7 }, { target: { pid: 1, exitCode: 0, signal: null, allocator: '/lib/libc.so.6' } }));
    expect(text).toContain(
      "note: 7 frees were of blocks allocated before tracing started (or returned by glibc's per-thread caches when a thread exited); they were ignored.",
    );
  });
});

describe('commands', () => {
  it('a directory given as the command is called a directory', async () => {
    await expect(trace({ command: dir })).rejects.toMatchObject({
      code: 'ELEAK_COMMAND_NOT_FOUND',
      message: `cannot run ${dir}: it is a directory. Give the program inside it.`,
    });
  });
});

describe('option words', () => {
  it('the library names its options; after useCliWords(), the CLI flags', async () => {
    const { optionWord, useCliWords } = await import('../lib/option-words.js');
    expect(formatReport(report({ droppedAllocations: 1 }))).toContain('Raise maxAllocations.');
    expect(optionWord('allocator', '/x.so')).toBe("allocator: { path: '/x.so' }");
    useCliWords();
    expect(formatReport(report({ droppedAllocations: 1 }))).toContain('Raise --max-allocations N.');
    expect(optionWord('allocator', '/x.so')).toBe('--allocator /x.so');
  });
});
