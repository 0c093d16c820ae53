// One file by design: the command line without a kernel, one module's cases each (lib/cli/args.ts parsing, help, exit statuses, signals, events lines).
import { describe, expect, it } from 'vitest';

import { parseCliArgs } from '../../lib/cli/args.js';
import { ATTACH_HELP, formatUsageError, MAIN_HELP, RUN_HELP } from '../../lib/cli/help.js';
import { main } from '../../lib/cli/main.js';
import { parseBufferSizeOption } from '../../lib/cli/options.js';
import { formatAllocEvent, formatFreeEvent, formatStackProblems, type CliIo } from '../../lib/cli/output.js';
import { attachExitStatus, parseProcStat, runExitStatus, shouldForwardSignal, signalExitStatus } from '../../lib/cli/signals.js';
import type { LeakReport } from '../../lib/types.js';
import type { UnwindStats } from '../../lib/native/unwind.js';

const runDefaults = {
  kind: 'run',
  top: 10,
  allowInconclusive: false,
  asRoot: false,
  events: false,
  verbose: false,
  stacks: true,
  suppressions: [],
  defaultSuppressions: true,
  debugDirs: [],
} as const;

function usageError(argv: string[]) {
  const r = parseCliArgs(argv);
  if (r.kind !== 'usage-error') throw new Error(`expected a usage error, got ${JSON.stringify(r)}`);
  return r;
}

describe('parseCliArgs: top level', () => {
  it('help and version', () => {
    expect(parseCliArgs(['--help'])).toEqual({ kind: 'help', topic: 'main' });
    expect(parseCliArgs(['-h'])).toEqual({ kind: 'help', topic: 'main' });
    expect(parseCliArgs(['help'])).toEqual({ kind: 'help', topic: 'main' });
    expect(parseCliArgs(['help', 'run'])).toEqual({ kind: 'help', topic: 'run' });
    expect(parseCliArgs(['help', 'attach'])).toEqual({ kind: 'help', topic: 'attach' });
    expect(parseCliArgs(['--version'])).toEqual({ kind: 'version' });
  });

  it('usage errors', () => {
    expect(usageError([])).toEqual({ kind: 'usage-error', message: 'missing command: run or attach', topic: 'main' });
    expect(usageError(['frobnicate'])).toEqual({
      kind: 'usage-error',
      message: "unknown command 'frobnicate': the commands are run and attach",
      topic: 'main',
    });
    expect(usageError(['--frob']).message).toBe("unknown option '--frob'");
    expect(usageError(['help', 'frob']).message).toBe("no help for 'frob': the commands are run and attach");
    expect(usageError(['help', 'run', 'x']).message).toBe("unexpected argument 'x'");
  });
});

describe('parseCliArgs: run', () => {
  it('takes the command after --', () => {
    expect(parseCliArgs(['run', '--', './seed', '0'])).toEqual({ ...runDefaults, command: './seed', args: ['0'] });
  });

  it('takes the command without --, and everything after it belongs to the command', () => {
    expect(parseCliArgs(['run', 'ls', '-l', '--json', 'x', '--', '--help'])).toEqual({
      ...runDefaults,
      command: 'ls',
      args: ['-l', '--json', 'x', '--', '--help'],
    });
  });

  it('reads every option', () => {
    expect(
      parseCliArgs([
        'run',
        '--json',
        'out.json',
        '--error-exitcode',
        '7',
        '--top=3',
        '--max-allocations',
        '5000',
        '--event-buffer',
        '64K',
        '--events',
        '--verbose',
        '--no-stacks',
        '--stack-depth',
        '16',
        '--allocator',
        '/lib/libjemalloc.so.2',
        '--allocator-symbol',
        'malloc=je_malloc',
        '--allocator-symbol',
        'free=je_free',
        '--suppressions',
        'a.supp',
        '--suppressions',
        'b.supp',
        '--no-default-suppressions',
        '--gen-suppressions=lsan',
        '--probe-placement',
        'entry',
        '--debug-dir',
        '/tmp/dbg',
        '--unwind',
        'fp',
        '--sample-every',
        '65536',
        '--allow-inconclusive',
        '--as-root',
        '--',
        'prog',
      ]),
    ).toEqual({
      kind: 'run',
      json: 'out.json',
      errorExitcode: 7,
      allowInconclusive: true,
      asRoot: true,
      top: 3,
      maxAllocations: 5000,
      eventBufferBytes: 65536,
      events: true,
      verbose: true,
      stacks: false,
      stackDepth: 16,
      allocator: { path: '/lib/libjemalloc.so.2', symbols: { malloc: 'je_malloc', free: 'je_free' } },
      suppressions: ['a.supp', 'b.supp'],
      defaultSuppressions: false,
      genSuppressions: 'lsan',
      probePlacement: 'entry',
      debugDirs: ['/tmp/dbg'],
      unwind: 'fp',
      sampleEveryBytes: 65536,
      command: 'prog',
      args: [],
    });
  });

  it("accepts '-' for --json (standard output) and top 0", () => {
    expect(parseCliArgs(['run', '--json', '-', '--top', '0', '--', 'p'])).toMatchObject({ json: '-', top: 0 });
  });

  it('checks the stack and allocator flags', () => {
    expect(usageError(['run', '--stack-depth', '0', 'p']).message).toContain("'--stack-depth'");
    expect(usageError(['run', '--stack-depth', '128', 'p']).message).toContain("'--stack-depth'");
    expect(usageError(['run', '--allocator-symbol', 'malloc=je_malloc', 'p']).message).toBe(
      "option '--allocator-symbol' needs '--allocator PATH' (the file that defines the symbols)",
    );
    expect(usageError(['run', '--allocator', '/x.so', '--allocator-symbol', 'mallocz=m', 'p']).message).toContain(
      "FUNCTION=SYMBOL with FUNCTION one of malloc, calloc",
    );
  });

  it('checks the suppression and placement flags', () => {
    expect(parseCliArgs(['run', '--gen-suppressions', 'p'])).toMatchObject({ genSuppressions: 'valgrind', command: 'p' });
    expect(usageError(['run', '--gen-suppressions=xml', 'p']).message).toBe(
      "option '--gen-suppressions' takes 'valgrind' or 'lsan' (got 'xml')",
    );
    expect(usageError(['run', '--probe-placement', 'middle', 'p']).message).toBe(
      "option '--probe-placement' takes 'optimized' or 'entry' (got 'middle')",
    );
  });

  it('warns about stacks the walker could not complete', () => {
    const stats = { walks: 200, incomplete: 3, truncated: 2, collisions: 1, failures: 0 } as UnwindStats;
    expect(formatStackProblems(stats, 4)).toBe(
      'warning: 3 of 200 stacks went through code whose unwind table was not loaded yet (mapped after the start), ' +
        'so they may miss frames; 2 stacks stop before their outermost frame; ' +
        '5 allocations have no stack (the walk failed, or another stack had the same id).\n',
    );
    expect(formatStackProblems({ walks: 9, incomplete: 0, truncated: 0, collisions: 0, failures: 0 } as UnwindStats, 0)).toBe('');
    expect(formatStackProblems(null, 0)).toBe('');
  });

  it('the last occurrence of an option wins', () => {
    expect(parseCliArgs(['run', '--top', '3', '--top', '4', 'p'])).toMatchObject({ top: 4 });
  });

  it('--help wins over everything else before the command', () => {
    expect(parseCliArgs(['run', '--help'])).toEqual({ kind: 'help', topic: 'run' });
    expect(parseCliArgs(['run', '--top', 'x', '-h', '--', 'p'])).toEqual({ kind: 'help', topic: 'run' });
    // After the command it is the command's.
    expect(parseCliArgs(['run', '--', 'p', '--help'])).toEqual({ ...runDefaults, command: 'p', args: ['--help'] });
  });

  it.each([
    [['run'], 'missing the command to run (put it after --)'],
    [['run', '--'], 'missing the command to run (put it after --)'],
    [['run', '--top', '3'], 'missing the command to run (put it after --)'],
    [['run', '--', ''], 'the command to run is an empty string'],
    [['run', '--frob', '--', 'p'], "unknown option '--frob'"],
    [['run', '-x', 'p'], "unknown option '-x'"],
    [['run', '-p', '1', 'p'], "unknown option '-p'"],
    [['run', '--interval', '1', 'p'], "unknown option '--interval'"],
    [['run', '--json'], "option '--json' needs a value"],
    [['run', '--json', '--', 'p'], "option '--json' needs a value"],
    [['run', '--top', '--events', 'p'], "option '--top' needs a value"],
    [['run', '--json=', 'p'], "option '--json' needs a file name ('-' for standard output)"],
    [['run', '--events=yes', 'p'], "option '--events' takes no value"],
    [['run', '--top', 'ten', 'p'], "option '--top' needs an integer from 0 to 9007199254740991, not 'ten'"],
    // A negative number is a wrong value, not a missing one.
    [['run', '--top', '-1', 'p'], "option '--top' needs an integer from 0 to 9007199254740991, not '-1'"],
    [['run', '--top=-1', 'p'], "option '--top' needs an integer from 0 to 9007199254740991, not '-1'"],
    [['run', '--top', '1.5', 'p'], "option '--top' needs an integer from 0 to 9007199254740991, not '1.5'"],
    [['run', '--error-exitcode', '0', 'p'], "option '--error-exitcode' needs an integer from 1 to 255, not '0'"],
    [['run', '--error-exitcode', '256', 'p'], "option '--error-exitcode' needs an integer from 1 to 255, not '256'"],
    [['run', '--max-allocations', '0', 'p'], "option '--max-allocations' needs an integer from 1 to 20000000, not '0'"],
    [['run', '--max-allocations', '20000001', 'p'], "option '--max-allocations' needs an integer from 1 to 20000000, not '20000001'"],
    [['run', '--max-allocations', '1e6', 'p'], "option '--max-allocations' needs an integer from 1 to 20000000, not '1e6'"],
    [
      ['run', '--event-buffer', '5000', 'p'],
      "option '--event-buffer' needs a power of two from 4096 bytes to 1G (e.g. 65536, 64K, 8M), not '5000'",
    ],
  ])('%j -> %s', (argv, message) => {
    expect(usageError(argv)).toEqual({ kind: 'usage-error', message, topic: 'run' });
  });
});

describe('parseCliArgs: attach', () => {
  const { asRoot: _asRoot, ...common } = runDefaults;
  const attachDefaults = { ...common, kind: 'attach', intervalS: 5 } as const;

  it('needs only -p', () => {
    expect(parseCliArgs(['attach', '-p', '1234'])).toEqual({ ...attachDefaults, pid: 1234 });
    expect(parseCliArgs(['attach', '--pid', '1234'])).toEqual({ ...attachDefaults, pid: 1234 });
    expect(parseCliArgs(['attach', '-p1234'])).toEqual({ ...attachDefaults, pid: 1234 });
    expect(parseCliArgs(['attach', '--pid=1234'])).toEqual({ ...attachDefaults, pid: 1234 });
  });

  it('reads every option', () => {
    expect(
      parseCliArgs([
        'attach',
        '-p',
        '42',
        '--interval',
        '0.5',
        '--duration',
        '60',
        '--top',
        '5',
        '--json',
        'r.json',
        '--max-allocations',
        '100',
        '--error-exitcode',
        '9',
        '--event-buffer',
        '8M',
        '--events',
        '--verbose',
      ]),
    ).toEqual({
      kind: 'attach',
      pid: 42,
      intervalS: 0.5,
      durationS: 60,
      top: 5,
      json: 'r.json',
      maxAllocations: 100,
      errorExitcode: 9,
      allowInconclusive: false,
      eventBufferBytes: 8 * 1024 * 1024,
      events: true,
      verbose: true,
      stacks: true,
      suppressions: [],
      defaultSuppressions: true,
      debugDirs: [],
    });
  });

  it('--follow-forks, for run and attach', () => {
    expect(parseCliArgs(['attach', '-p', '7', '--follow-forks'])).toEqual({ ...attachDefaults, pid: 7, followForks: true });
    expect(parseCliArgs(['run', '--follow-forks', '--', 'make', '-j2'])).toEqual({
      ...runDefaults,
      command: 'make',
      args: ['-j2'],
      followForks: true,
    });
  });

  it('--interval 0 turns the periodic output off', () => {
    expect(parseCliArgs(['attach', '-p', '1', '--interval', '0'])).toMatchObject({ intervalS: 0 });
  });

  it('--help', () => {
    expect(parseCliArgs(['attach', '--help'])).toEqual({ kind: 'help', topic: 'attach' });
    expect(parseCliArgs(['attach', '-p', 'x', '-h'])).toEqual({ kind: 'help', topic: 'attach' });
  });

  it.each([
    [['attach'], 'missing the process to trace: -p PID'],
    [['attach', '--top', '3'], 'missing the process to trace: -p PID'],
    [['attach', '1234'], "unexpected argument '1234' (give the process with -p PID)"],
    [['attach', '-p', '1', '--', 'x'], "unexpected argument 'x' (give the process with -p PID)"],
    [['attach', '-p'], "option '-p' needs a value"],
    [['attach', '-p', 'abc'], "option '--pid' needs an integer from 1 to 4194304, not 'abc'"],
    [['attach', '-p', '0'], "option '--pid' needs an integer from 1 to 4194304, not '0'"],
    [['attach', '-p', '4194305'], "option '--pid' needs an integer from 1 to 4194304, not '4194305'"],
    [['attach', '-p', '1', '--interval', 'soon'], "option '--interval' needs a number of seconds (0 or more), not 'soon'"],
    [['attach', '-p', '1', '--interval=-1'], "option '--interval' needs a number of seconds (0 or more), not '-1'"],
    [['attach', '-p', '1', '--duration', '0'], "option '--duration' needs a number of seconds above 0, not '0'"],
    [['attach', '-p', '1', '--duration', '1e3'], "option '--duration' needs a number of seconds above 0, not '1e3'"],
    [['attach', '-p', '1', '--frob'], "unknown option '--frob'"],
  ])('%j -> %s', (argv, message) => {
    expect(usageError(argv)).toEqual({ kind: 'usage-error', message, topic: 'attach' });
  });
});

describe('option value parsers', () => {
  it('--event-buffer sizes', () => {
    expect(parseBufferSizeOption('event-buffer', '4096')).toBe(4096);
    expect(parseBufferSizeOption('event-buffer', '64k')).toBe(65536);
    expect(parseBufferSizeOption('event-buffer', '64KiB')).toBe(65536);
    expect(parseBufferSizeOption('event-buffer', '8M')).toBe(8 * 1024 * 1024);
    expect(parseBufferSizeOption('event-buffer', '1G')).toBe(1024 ** 3);
    expect(() => parseBufferSizeOption('event-buffer', '2048')).toThrow(/power of two from 4096 bytes to 1G/);
    expect(() => parseBufferSizeOption('event-buffer', '3M')).toThrow(/power of two/);
    expect(() => parseBufferSizeOption('event-buffer', '2G')).toThrow(/power of two/);
    expect(() => parseBufferSizeOption('event-buffer', 'lots')).toThrow(/power of two/);
  });
});

describe('usage error output', () => {
  it('is one line of error, the usage line and where to look', () => {
    expect(formatUsageError(usageError(['run', '--frob']))).toBe(
      "ebpf-leak: unknown option '--frob'\n" +
        'usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]\n' +
        "try 'ebpf-leak run --help'\n",
    );
    expect(formatUsageError(usageError(['attach']))).toBe(
      'ebpf-leak: missing the process to trace: -p PID\n' +
        'usage: ebpf-leak attach -p PID [OPTIONS]\n' +
        "try 'ebpf-leak attach --help'\n",
    );
    expect(formatUsageError(usageError(['nope']))).toMatch(/\ntry 'ebpf-leak --help'\n$/);
  });
});

describe('help texts', () => {
  it('list every option of their command with its default', () => {
    for (const flag of [
      '--json FILE',
      '--error-exitcode N',
      '--top N',
      '--max-allocations N',
      '--event-buffer BYTES',
      '--events',
      '--verbose',
      '-h, --help',
    ]) {
      expect(RUN_HELP).toContain(`  ${flag} `);
      expect(ATTACH_HELP).toContain(`  ${flag} `);
    }
    for (const flag of ['-p, --pid PID', '--interval S', '--duration S']) {
      expect(ATTACH_HELP).toContain(`  ${flag} `);
      expect(RUN_HELP).not.toContain(flag);
    }
    expect(RUN_HELP).toContain('Default: 10.');
    expect(RUN_HELP).toContain('Default: 1000000.');
    expect(RUN_HELP).toContain('Default: 8M.');
    expect(ATTACH_HELP).toContain('0 turns them off. Default: 5.');
    for (const text of [MAIN_HELP, RUN_HELP, ATTACH_HELP]) {
      expect(text).toContain('Exit status:');
      expect(text).toContain('Examples:');
    }
  });

  it('fit in 80 columns', () => {
    for (const text of [MAIN_HELP, RUN_HELP, ATTACH_HELP]) {
      for (const line of text.split('\n')) expect(line.length, line).toBeLessThanOrEqual(80);
    }
  });
});

describe('exit statuses', () => {
  function report(over: Partial<LeakReport['target']>, leaks = 0): LeakReport {
    return {
      version: 1,
      target: { pid: 1, exitCode: 0, signal: null, allocator: 'libc.so.6', ...over },
      summary: {
        allocs: 0,
        frees: 0,
        bytesAllocated: 0,
        inUseBlocks: leaks,
        inUseBytes: leaks,
        lostEvents: 0,
        droppedAllocations: 0,
        unknownFrees: 0,
      },
      leaks: Array.from({ length: leaks }, () => ({
        bytes: 1,
        blocks: 1,
        largestBlock: 1,
        sampleAddresses: [],
        stack: [],
      })),
      durationMs: 1,
    };
  }

  it('run: the program status, 128+signal (before --error-exitcode), or --error-exitcode when leaks were found', () => {
    expect(runExitStatus(report({ exitCode: 0 }))).toBe(0);
    expect(runExitStatus(report({ exitCode: 3 }))).toBe(3);
    expect(runExitStatus(report({ exitCode: 3 }), 7)).toBe(3);
    expect(runExitStatus(report({ exitCode: 0 }, 1))).toBe(0);
    expect(runExitStatus(report({ exitCode: 0 }, 1), 7)).toBe(7);
    expect(runExitStatus(report({ exitCode: 3 }, 1), 7)).toBe(7);
    expect(runExitStatus(report({ exitCode: null, signal: 'SIGTERM' }))).toBe(143);
    expect(runExitStatus(report({ exitCode: null, signal: 'SIGSEGV' }))).toBe(139);
    expect(runExitStatus(report({ exitCode: null, signal: 'SIGKILL' }, 2), 9)).toBe(137);
  });

  it('run: a crash first, then --error-exitcode, then inconclusive (3, unless allowed), then the program', () => {
    const incomplete = (r: LeakReport) => ({ ...r, inconclusive: ['2 allocations were not tracked'] });
    expect(runExitStatus(incomplete(report({ exitCode: 0 })))).toBe(3);
    expect(runExitStatus(incomplete(report({ exitCode: 0 })), undefined, true)).toBe(0);
    expect(runExitStatus(incomplete(report({ exitCode: 0 }, 1)), 9)).toBe(9);
    expect(runExitStatus(incomplete(report({ exitCode: null, signal: 'SIGABRT' }, 1)), 9)).toBe(134);
    expect(runExitStatus(report({ exitCode: null, signal: 'SIGSEGV' }, 1), 9)).toBe(139);
    expect(attachExitStatus(incomplete(report({ exitCode: null })))).toBe(3);
    expect(attachExitStatus(incomplete(report({ exitCode: null })), undefined, true)).toBe(0);
  });

  it('attach: 0, or --error-exitcode when leaks were found', () => {
    expect(attachExitStatus(report({ exitCode: null }))).toBe(0);
    expect(attachExitStatus(report({ exitCode: null }, 1))).toBe(0);
    expect(attachExitStatus(report({ exitCode: null }, 1), 5)).toBe(5);
    expect(attachExitStatus(report({ exitCode: null }), 5)).toBe(0);
  });

  it('--follow-forks: --error-exitcode when any process leaked, the first or another', () => {
    const clean = report({ exitCode: 0 });
    const leaking = report({ pid: 2, exitCode: 0 }, 1);
    expect(runExitStatus({ ...clean, processes: [clean, leaking] }, 7)).toBe(7);
    expect(attachExitStatus({ ...clean, processes: [clean, leaking] }, 5)).toBe(5);
    expect(runExitStatus({ ...clean, processes: [clean, report({ pid: 2, exitCode: 0 })] }, 7)).toBe(0);
  });

  it('signal numbers', () => {
    expect(signalExitStatus('SIGINT')).toBe(130);
    expect(signalExitStatus('SIGHUP')).toBe(129);
  });
});

describe('signal forwarding', () => {
  it('parses /proc/PID/stat, even with spaces and parentheses in the name', () => {
    expect(parseProcStat('4242 (seed) S 4000 4000 3900 34816 4000 4194560 100')).toEqual({ pgrp: 4000, tpgid: 4000 });
    expect(parseProcStat('77 (a b) c)) R 1 77 77 0 -1 4194560')).toEqual({ pgrp: 77, tpgid: -1 });
    expect(parseProcStat('garbage')).toBeUndefined();
  });

  const foreground = { pgrp: 100, tpgid: 100 };
  const background = { pgrp: 100, tpgid: 200 };
  const noTty = { pgrp: 100, tpgid: -1 };

  it('does not resend a terminal signal the program got from the terminal too', () => {
    expect(shouldForwardSignal('SIGINT', foreground, 100)).toBe(false);
    expect(shouldForwardSignal('SIGHUP', foreground, 100)).toBe(false);
  });

  it('forwards when the program could not have got it', () => {
    expect(shouldForwardSignal('SIGINT', background, 100)).toBe(true);
    expect(shouldForwardSignal('SIGINT', noTty, 100)).toBe(true);
    expect(shouldForwardSignal('SIGINT', foreground, 555)).toBe(true);
    expect(shouldForwardSignal('SIGINT', undefined, 100)).toBe(true);
    expect(shouldForwardSignal('SIGINT', foreground, undefined)).toBe(true);
  });

  it('always forwards SIGTERM: a terminal never sends it', () => {
    expect(shouldForwardSignal('SIGTERM', foreground, 100)).toBe(true);
    expect(shouldForwardSignal('SIGTERM', noTty, 100)).toBe(true);
  });
});

describe('--events lines', () => {
  it('show time since the first event, function, size, address and thread', () => {
    const origin = 5_000_000_000n;
    expect(
      formatAllocEvent(
        { function: 'malloc', address: 0x55d0c0a2b2a0n, size: 4096, tid: 42, timestampNs: origin + 1_234_567n },
        origin,
      ),
    ).toBe('[   0.001234] + malloc 4,096 bytes at 0x55d0c0a2b2a0 (tid 42)');
    expect(
      formatFreeEvent(
        { function: 'free', address: 0x10n, size: 8, tid: 7, timestampNs: origin + 12_000_000_000n },
        origin,
      ),
    ).toBe('[  12.000000] - free 8 bytes at 0x10 (tid 7)');
  });
});

describe('main without a kernel: help, version, usage errors', () => {
  function capture(): { io: CliIo; out: () => string; err: () => string } {
    let out = '';
    let err = '';
    const io = {
      stdout: { write: (s: string) => ((out += s), true) },
      stderr: { write: (s: string) => ((err += s), true) },
      env: {},
    } as unknown as CliIo;
    return { io, out: () => out, err: () => err };
  }

  it('prints help on stdout and exits 0', async () => {
    const c = capture();
    expect(await main(['run', '--help'], c.io)).toBe(0);
    expect(c.out()).toBe(RUN_HELP);
    expect(c.err()).toBe('');
  });

  it('prints the version from package.json', async () => {
    const c = capture();
    expect(await main(['--version'], c.io)).toBe(0);
    expect(c.out()).toMatch(/^ebpf-leak \d+\.\d+\.\d+\S*\n$/);
  });

  it('prints usage errors on stderr and exits 2', async () => {
    const c = capture();
    expect(await main(['attach', '-p', 'me'], c.io)).toBe(2);
    expect(c.out()).toBe('');
    expect(c.err()).toBe(
      "ebpf-leak: option '--pid' needs an integer from 1 to 4194304, not 'me'\n" +
        'usage: ebpf-leak attach -p PID [OPTIONS]\n' +
        "try 'ebpf-leak attach --help'\n",
    );
  });
});
