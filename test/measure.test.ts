// Native leaks inside this very process, with the example addon (examples/native-addon): the
// leaking function caught with its bytes per iteration and its C++ function and line, the fixed
// one and a one-time cache passing, a leaking thread of the process not blamed on the measured
// function, mark/thread/module scoping, the tracer's own allocations kept out, inconclusive
// results failing, and the vitest matchers and node:test helpers.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { exampleDir, loadExampleAddon, type ExampleAddon } from '../examples/native-addon/build.js';
import {
  currentThreadId,
  formatNativeLeakReport,
  generateSuppressions,
  leakCheck,
  LeakError,
  LeakInconclusiveError,
  measure,
  parseSuppressions,
} from '../lib/harness/index.js';
import { trace } from '../lib/index.js';
import { assertNativeLeaksAtMost, assertNoNativeLeaks, skipIfUnsupported as nodeTestSkip } from '../lib/harness/node-test.js';
import '../lib/harness/vitest.js';
import { repoRoot } from './helpers/fixtures.js';

let addon: ExampleAddon;
let addonPath: string;
beforeAll(async () => {
  ({ addon, path: addonPath } = await loadExampleAddon());
});

/** 1-based line of the first line of addon.cc containing `text` (after `after`, if given). */
function lineOf(text: string, after?: string): number {
  const lines = readFileSync(join(exampleDir, 'addon.cc'), 'utf8').split('\n');
  const from = after === undefined ? 0 : lines.findIndex((l) => l.includes(after));
  const i = lines.findIndex((l, n) => n > from && l.includes(text));
  expect(i).toBeGreaterThan(-1);
  return i + 1;
}

describe('in-process measurement with the example addon', () => {
  it('catches the leaking function at 1,000 iterations: 64 bytes per iteration, its C++ function and line', async () => {
    const report = await measure(() => addon.greetLeaky('World'), { iterations: 1000 });
    expect(report.inconclusive).toEqual([]);
    expect(report.iterations).toBe(1000);
    expect(report.leaks).toHaveLength(1);
    const site = report.leaks[0]!;
    expect(site).toMatchObject({
      bytesPerIteration: 64,
      blocksPerIteration: 1,
      bytes: 64_000,
      blocks: 1000,
      largestBlock: 64,
      iterationsWithBlocks: 1000,
      growing: true,
    });
    expect(report.bytesPerIteration).toBe(64);
    // malloc, then the function that called it, then the one that forgot to free.
    expect(site.stack[0]).toMatchObject({ symbol: 'malloc' });
    expect(site.stack[1]).toMatchObject({
      symbol: expect.stringMatching(/^example::FormatGreeting\(/),
      file: join(exampleDir, 'addon.cc'),
      line: lineOf('malloc(kGreetingBytes)'),
      module: addonPath,
    });
    expect(site.stack[2]).toMatchObject({
      symbol: 'example::GreetLeaky(Napi::CallbackInfo const&)',
      line: lineOf('FormatGreeting(name)', 'Value GreetLeaky'),
    });
    const text = formatNativeLeakReport(report);
    expect(text).toMatch(/^ebpf-leak: native memory grew by 64 bytes per iteration over 1,000 iterations \(after 10 warm-up\), at 1 call site:\n/);
    expect(text).toContain(`example::GreetLeaky(Napi::CallbackInfo const&) (${join(exampleDir, 'addon.cc')}:${lineOf('FormatGreeting(name)', 'Value GreetLeaky')})`);
  });

  it('passes the fixed function', async () => {
    const report = await leakCheck(() => addon.greet('World'), { iterations: 1000 });
    expect(report.leaks).toEqual([]);
    expect(report.bytesPerIteration).toBe(0);
  });

  it('passes a function with a one-time cache, even when the cache is made inside the measured runs', async () => {
    const report = await leakCheck(() => addon.checksum('hello'), { iterations: 1000, warmup: 0 });
    expect(report.leaks).toEqual([]);
    // The table is there, seen, and not counted.
    expect(report.oneTime).toHaveLength(1);
    expect(report.oneTime[0]).toMatchObject({ bytes: 1024, blocks: 1, iterationsWithBlocks: 1, growing: false });
    expect(report.oneTime[0]!.stack[1]!.symbol).toBe('example::CrcTable()');
    expect(formatNativeLeakReport(report)).toContain('not growing (one-time allocations, not counted): 1,024 bytes in 1 block at 1 call site');
  });

  it('does not blame a leak in an unrelated thread on the measured function', async () => {
    // 1 ms per iteration: the background thread leaks 128 bytes about once per iteration.
    const slowGreet = async () => {
      addon.greet('World');
      await sleep(1);
    };
    addon.startBackgroundLeak();
    try {
      const report = await measure(slowGreet, { iterations: 200 });
      expect(report.leaks).toEqual([]);
      // Node's own threads (V8 platform workers, libuv) may keep a block or two of their own
      // during the run, so the background thread's 128-byte blocks are a lower bound here.
      expect(report.excluded.otherThreads.blocks).toBeGreaterThan(50);
      expect(report.excluded.otherThreads.bytes).toBeGreaterThanOrEqual(128 * 50);
      expect(formatNativeLeakReport(report)).toMatch(/excluded: [\d,]+ bytes in [\d,]+ blocks allocated by other threads/);
      // Counting every thread, the background leak is found, and placed in its own thread.
      const all = await measure(slowGreet, { iterations: 200, threads: 'all' });
      expect(all.leaks.length).toBeGreaterThan(0);
      expect(all.leaks[0]!.stack.map((f) => f.symbol)).toContain('example::BackgroundLeakLoop()');
      // Its site holds only the background thread's 128-byte blocks.
      expect(all.leaks[0]!.bytes).toBe(128 * all.leaks[0]!.blocks);
      expect(all.leaks.some((s) => s.stack.some((f) => f.symbol?.includes('Greet')))).toBe(false);
    } finally {
      addon.stopBackgroundLeak();
    }
  });

  it('keeps only stacks through a module with `module:`', async () => {
    const kept: Buffer[] = [];
    // A JavaScript leak: node allocates each Buffer's memory natively.
    const jsLeak = () => {
      kept.push(Buffer.alloc(1000));
      addon.greetLeaky('x');
    };
    const everything = await measure(jsLeak, { iterations: 200 });
    expect(everything.bytesPerIteration).toBeGreaterThan(1000 + 64);
    const onlyAddon = await measure(jsLeak, { iterations: 200, module: /native_addon\.node$/ });
    expect(onlyAddon.leaks).toHaveLength(1);
    expect(onlyAddon.bytesPerIteration).toBe(64);
    expect(onlyAddon.excluded.otherModules.bytes).toBeGreaterThanOrEqual(200 * 1000);
    kept.length = 0;
  });

  it('collects garbage before judging: native memory of unreferenced JS objects is not a leak', async () => {
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined(); // no --expose-gc here
    // Each call makes a 5,000-byte ArrayBuffer (malloc'd by node) and drops it; only a full GC
    // and V8's sweeping of its backing stores free them.
    const report = await leakCheck(() => Buffer.alloc(5000).length, { iterations: 1000 });
    expect(report.leaks).toEqual([]);
    expect(report.settle.stable).toBe(true);
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined(); // and none left behind
    // Kept alive, the same buffers are a leak of at least 5,000 bytes per iteration.
    const kept: Buffer[] = [];
    const leaking = await measure(() => kept.push(Buffer.alloc(5000)), { iterations: 1000 });
    expect(leaking.bytesPerIteration).toBeGreaterThanOrEqual(5000);
    kept.length = 0;
  });

  it('fails inconclusive when the address map fills, instead of passing on partial data', async () => {
    const error = await leakCheck(() => addon.greet('World'), { iterations: 200, maxAllocations: 20 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeakInconclusiveError);
    expect((error as LeakInconclusiveError).reasons[0]).toMatch(/allocations were not tracked because the address map was full; raise maxAllocations/);
    await expect(
      leakCheck(() => addon.greet('World'), { iterations: 200, maxAllocations: 20, allowInconclusive: true }),
    ).resolves.toMatchObject({ inconclusive: [expect.stringMatching(/address map was full/)] });
  });

  it('suppresses a site with a valgrind rule, and generates rules that do', async () => {
    const leaky = () => addon.greetLeaky('World');
    const rules = parseSuppressions(
      '{\n   greeting-known\n   Memcheck:Leak\n   fun:malloc\n   fun:example::FormatGreeting*\n   fun:example::GreetLeaky*\n}',
      { source: 'inline' },
    );
    const report = await measure(leaky, { iterations: 100, suppressions: rules });
    expect(report.leaks).toEqual([]);
    expect(report.suppressed).toEqual([{ rule: 'greeting-known', source: 'inline:1', bytes: 6400, blocks: 100, groups: expect.any(Number) }]);
    // Rules from a report suppress what it found.
    const found = await measure(leaky, { iterations: 100 });
    const generated = generateSuppressions(found);
    // Written as valgrind writes it: the mangled name.
    expect(generated).toContain('   fun:_ZN7example14FormatGreetingERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE\n');
    const again = await measure(leaky, { iterations: 100, suppressions: { text: generated } });
    expect(again.leaks).toEqual([]);
  });
});

describe('tracer marks and the tracer\'s own allocations', () => {
  it('report.since(mark) / until(mark) / threads() / module() scope blocks exactly', async () => {
    const tracer = await trace({ pid: process.pid });
    try {
      for (let i = 0; i < 5; i++) addon.greetLeaky('before');
      const mark = tracer.mark();
      expect(tracer.currentMark).toBe(mark);
      for (let i = 0; i < 3; i++) addon.greetLeaky('after');
      const report = await tracer.report();
      const greeting = (r: typeof report) =>
        r.leaks.filter((g) => g.stack.some((f) => f.symbol?.startsWith('example::FormatGreeting'))).reduce((n, g) => n + g.blocks, 0);
      expect(greeting(report)).toBe(8);
      expect(greeting(report.since(mark))).toBe(3);
      expect(greeting(report.until(mark))).toBe(5);
      expect(greeting(report.since(mark).threads([currentThreadId()]))).toBe(3);
      expect(greeting(report.threads([-1]))).toBe(0);
      expect(report.since(mark).module(/native_addon\.node$/).leaks.every((g) => g.stack.some((f) => f.module === addonPath))).toBe(true);
      expect(report.since(mark).blocks().every((b) => b.mark >= mark)).toBe(true);
      // Narrowed before symbolizing: the same answer.
      expect(greeting(await tracer.report({ since: mark }))).toBe(3);
      // The final report narrows the same way.
      const final = await tracer.stop();
      expect(greeting(final.since(mark))).toBe(3);
    } finally {
      await tracer.stop();
    }
  });

  it('measure() can share an attached tracer, which it leaves running', async () => {
    const tracer = await trace({ pid: process.pid });
    try {
      const a = await measure(() => addon.greetLeaky('x'), { iterations: 100, tracer });
      const b = await measure(() => addon.greet('x'), { iterations: 100, tracer });
      expect(a.bytesPerIteration).toBe(64);
      expect(b.leaks).toEqual([]);
      expect(b.marks.first).toBeGreaterThan(a.marks.end); // windows never overlap
      expect(tracer.currentMark).toBe(b.marks.end);
      await expect(tracer.report()).resolves.toBeDefined(); // still attached
    } finally {
      await tracer.stop();
    }
  });

  it('never reports the tracer\'s own allocations (poll thread, workers in its calls, N-API)', async () => {
    const tracer = await trace({ pid: process.pid, events: true });
    const pollTid = readdirSync('/proc/self/task')
      .map(Number)
      .find((tid) => readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'ebpf-leak-poll');
    expect(pollTid).toBeDefined();
    tracer.on('alloc', () => {}); // make the poll thread post event batches
    for (let i = 0; i < 20; i++) {
      addon.greetLeaky('x');
      await tracer.report(); // snapshots, stack reads and symbolization on libuv workers
      await sleep(5);
    }
    const counters = tracer.counters();
    const report = await tracer.stop();
    expect(counters.ignoredAllocations).toBeGreaterThan(0);
    expect(report.blocks().some((b) => b.tid === pollTid)).toBe(false);
    const ownFrames = report.leaks.flatMap((g) => g.stack).filter((f) => f.module?.endsWith('ebpf_leak.node') || f.symbol?.startsWith('ebpf_leak::'));
    expect(ownFrames).toEqual([]);
    // What we did allocate is there.
    expect(report.leaks.some((g) => g.stack.some((f) => f.symbol?.startsWith('example::FormatGreeting')))).toBe(true);
  });
});

describe('vitest matchers', () => {
  it('toLeakNativeMemory / not.toLeakNativeMemory', async () => {
    await expect(() => addon.greetLeaky('x')).toLeakNativeMemory({ iterations: 200 });
    await expect(() => addon.greet('x')).not.toLeakNativeMemory({ iterations: 200 });
    const failure = await expect(() => addon.greetLeaky('x'))
      .not.toLeakNativeMemory({ iterations: 200 })
      .catch((e: unknown) => e);
    expect(String((failure as Error).message)).toMatch(/expected the function not to leak native memory, but it did:\n\nebpf-leak: native memory grew by 64 bytes per iteration/);
    expect(String((failure as Error).message)).toContain('example::GreetLeaky(Napi::CallbackInfo const&)');
  });

  it('toLeakAtMost(bytes per iteration)', async () => {
    await expect(() => addon.greetLeaky('x')).toLeakAtMost(64, { iterations: 200 });
    await expect(async () => addon.greet('x')).toLeakAtMost(0, { iterations: 200 });
    await expect(expect(() => addon.greetLeaky('x')).toLeakAtMost(32, { iterations: 200 })).rejects.toThrow(
      /expected the function to leak at most 32 bytes per iteration, it leaked 64/,
    );
  });

  it('an inconclusive measurement fails, with or without .not', async () => {
    await expect(expect(() => addon.greet('x')).not.toLeakNativeMemory({ iterations: 50, maxAllocations: 20 })).rejects.toBeInstanceOf(
      LeakInconclusiveError,
    );
  });
});

describe('node:test helpers', () => {
  it('assertNoNativeLeaks / assertNativeLeaksAtMost throw LeakError with the report', async () => {
    await expect(assertNoNativeLeaks(() => addon.greet('x'), { iterations: 200 })).resolves.toMatchObject({ leaks: [] });
    await expect(assertNativeLeaksAtMost(() => addon.greetLeaky('x'), 64, { iterations: 200 })).resolves.toMatchObject({ bytesPerIteration: 64 });
    const error = await assertNativeLeaksAtMost(() => addon.greetLeaky('x'), 10, { iterations: 200 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeakError);
    expect((error as LeakError).message).toMatch(/^ebpf-leak: native memory grew by 64 bytes per iteration over 200 iterations \(after 10 warm-up\), at 1 call site \(at most 10 bytes per iteration allowed\):\n/);
    expect(nodeTestSkip()).toEqual({});
    expect(nodeTestSkip({ timeout: 5 })).toEqual({ timeout: 5 });
  });
});

describe('node:test', () => {
  // Runs the example as a user would: `node --test`, importing ebpf-leak/node-test, which the
  // package's exports map to dist/ (built by `npm run build`, which CI runs first).
  it.skipIf(!existsSync(join(repoRoot, 'dist', 'harness', 'node-test.js')))('examples/native-addon/addon.node-test.mjs passes', () => {
    const child = spawnSync(process.execPath, ['--test', join(exampleDir, 'addon.node-test.mjs')], {
      cwd: repoRoot,
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(child.stdout).toMatch(/^# pass 3$/m);
    expect(child.status).toBe(0);
  });
});

describe('without privileges', () => {
  const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
  const runUnprivileged = (script: string) =>
    spawnSync('setpriv', ['--inh-caps=-all', '--bounding-set=-all', viteNode, join(repoRoot, 'test', 'helpers', script)], {
      cwd: repoRoot,
      encoding: 'utf8',
      timeout: 60_000,
    });

  it('names the capabilities needed, and skipIfUnsupported skips', () => {
    const child = runUnprivileged('unprivileged-child.ts');
    expect(child.stderr).toBe('');
    const out = JSON.parse(child.stdout) as { support: { supported: boolean; reason: string }; skip: { skip?: string }; error: { name: string; code: string; message: string } };
    expect(out.support.supported).toBe(false);
    expect(out.support.reason).toMatch(/CAP_BPF \+ CAP_PERFMON/);
    expect(out.skip.skip).toMatch(/^ebpf-leak cannot trace here: .*CAP_BPF/);
    expect(out.error).toMatchObject({ name: 'PermissionError', code: 'ELEAK_PERM' });
    expect(out.error.message).toMatch(/setcap cap_bpf,cap_perfmon/);
  });
});
