// C++'s operators without return probes where decoding proves them wrappers (lib/probes/operators.ts):
// which of this machine's libstdc++ operators are proved so, that an operator that is not a
// wrapper keeps its return probe, and that the counts, sizes, kinds, errors and stacks of C++
// programs still equal valgrind's, also with many threads allocating at once (many runs).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { trace } from '../lib/index.js';
import { planProbes } from '../lib/probes/plan.js';
import type { LeakReport } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { codeByte } from './helpers/process-memory.js';
import { forTracer, forValgrind, kinds } from './helpers/attached-target.js';
import { runValgrind, valgrindKinds } from './helpers/valgrind.js';

const libc = '/usr/lib/x86_64-linux-gnu/libc.so.6';
const libstdcxx = '/usr/lib/x86_64-linux-gnu/libstdc++.so.6';

function heap(r: LeakReport) {
  const s = r.summary;
  return { inUseBytes: s.inUseBytes, inUseBlocks: s.inUseBlocks, allocs: s.allocs, frees: s.frees, bytesAllocated: s.bytesAllocated };
}

describe('which operators need no return probe', () => {
  // Debian 12's libstdc++ (GCC 12): new is `endbr64; test; mov; push; cmovne; mov; mov; call
  // malloc@plt; test %rax,%rax; je; pop; ret`, new[] `endbr64; jmp _Znwm@plt`, the plain and
  // sized deletes and delete[] `endbr64; jmp` to free or another delete.
  it("libstdc++'s new, new[], delete and delete[] are wrappers; nothrow and aligned new are not", () => {
    const plan = planProbes(libc, true, undefined, 'optimized', libstdcxx);
    const entryOnly = (symbol: string) => {
      const site = Object.values(plan.overloads).flat().find((o) => o!.symbol === symbol);
      expect(site, symbol).toBeDefined();
      const probe = plan.probes.find((p) => p.path === site!.path && p.returnOffset === site!.offset)!;
      return { entryOnly: probe.entryOnly === true, delta: probe.callReturnDelta ?? 0, entry: probe.entryOffset - probe.returnOffset };
    };
    // new: the probe on the emulated `push %rbx` at +0xc; malloc returns at +0x1c.
    expect(entryOnly('_Znwm')).toEqual({ entryOnly: true, delta: 0x1c - 0xc, entry: 0xc });
    // new[] and the deletes: the probe on their jump, past endbr64.
    for (const s of ['_Znam', '_ZdlPv', '_ZdlPvm', '_ZdaPv', '_ZdaPvm']) expect(entryOnly(s), s).toEqual({ entryOnly: true, delta: 0, entry: 4 });
    for (const s of ['_ZnwmRKSt9nothrow_t', '_ZnwmSt11align_val_t', '_ZnamRKSt9nothrow_t']) expect(entryOnly(s).entryOnly, s).toBe(false);
    // new needs no probe at all: malloc's return knows its call by the operator's 0x23 bytes
    // through the `ret`; the call returns at +0x1c with one push on the stack, and new(0) passes
    // 1 with the zero flag of `test %rdi,%rdi` set. Only new has a site.
    const withSite = plan.probes.filter((p) => p.site);
    expect(withSite).toHaveLength(1);
    const { site } = withSite[0]!;
    expect(withSite[0]!.returnOffset).toBe(plan.overloads['operator new']![0]!.offset);
    expect({ length: site!.code.length, returnAt: site!.returnAt, spDelta: site!.spDelta, zeroAsOne: site!.zeroAsOne }).toEqual({
      length: 0x23,
      returnAt: 0x1c,
      spDelta: 8,
      zeroAsOne: true,
    });
    const file = readFileSync(libstdcxx);
    expect(Buffer.from(site!.code).equals(file.subarray(withSite[0]!.returnOffset, withSite[0]!.returnOffset + 0x23))).toBe(true);
    const reasons = plan.placements.filter((d) => d.function.startsWith('operator new')).map((d) => d.reason);
    expect(reasons.some((r) => r.startsWith('it returns what its one call to malloc returns: no return probe'))).toBe(true);
    expect(reasons.some((r) => r.includes('keeps its return probe'))).toBe(true);
  });

  it('an operator new that hands out malloc\'s block at an offset, and its delete, keep their return probes', () => {
    const plan = planProbes(libc, true, undefined, 'optimized', fixturePath('custom_operators'));
    const ops = plan.probes.filter((p) => p.fn >= 10);
    expect(ops.length).toBe(2);
    expect(ops.every((p) => !p.entryOnly && p.entryOffset === p.returnOffset)).toBe(true);
    const why = plan.placements.filter((d) => d.function.startsWith('operator')).map((d) => d.reason);
    expect(why).toHaveLength(2);
    expect(why.every((r) => r.includes('keeps its return probe'))).toBe(true);
    expect(why.find((r) => r.includes('is not a jump to free'))).toBeDefined();
  });

  it("with probePlacement 'entry' nothing is moved or dropped", () => {
    const plan = planProbes(libc, true, undefined, 'entry', libstdcxx);
    expect(plan.probes.filter((p) => p.fn >= 10).every((p) => !p.entryOnly && p.entryOffset === p.returnOffset)).toBe(true);
  });
});

describe('C++ programs against valgrind, with operators probed at their entry only', () => {
  it('every overload: new(0), new[](0), arrays with cookies, nothrow, aligned, sized delete', async () => {
    const path = fixturePath('cxx_operators');
    const vg = await runValgrind(path, ['shapes'], { env: forValgrind });
    const tracer = await trace({ command: path, args: ['shapes'], env: forTracer, stdio: 'ignore' });
    const report = await tracer.done;
    expect(heap(report)).toEqual(vg.summary);
    expect(kinds(report)).toEqual(valgrindKinds(vg));
    expect(report.summary.errors?.['mismatched-free'] ?? 0).toBe(0);
    // Each leak of shapes() has valgrind's size and top frames: the operator, then shapes().
    const records = vg.lossRecords.filter((r) => r.frames.some((f) => f.function === 'shapes()'));
    expect(records.length).toBeGreaterThanOrEqual(5);
    for (const r of records) {
      const top = r.frames.slice(0, 3).map((f) => f.function);
      const group = report.leaks.find(
        (g) => g.bytes === r.bytes && g.blocks === r.blocks && g.stack.slice(0, 3).every((f, i) => f.symbol === top[i]),
      );
      expect(group, `${r.bytes} bytes in ${r.blocks} at ${top.join(' < ')}`).toBeDefined();
    }
    // operator new(0): a block of 0 bytes (malloc was asked for 1).
    expect(records.some((r) => r.bytes === 0 && r.frames[0]!.function === 'operator new(unsigned long)')).toBe(true);
  });

  it("a malloc returning at the same offset within a page as new's call, from other code, stays malloc's", async () => {
    // The fixture's call returns at 0x58c within its page, where Debian 12's libstdc++ new's does.
    const plan = planProbes(libc, true, undefined, 'optimized', libstdcxx);
    const site = plan.probes.find((p) => p.site)!;
    expect((site.returnOffset + site.site!.returnAt) % 4096).toBe(0x58c);
    const path = fixturePath('operator_site_twin');
    const vg = await runValgrind(path, [], { env: forValgrind });
    const tracer = await trace({ command: path, env: forTracer, stdio: 'ignore' });
    const report = await tracer.done;
    expect(heap(report)).toEqual(vg.summary);
    expect(kinds(report).definitelyLost).toEqual(vg.leakSummary.definitelyLost);
    expect(report.errors ?? []).toEqual([]);
    expect(report.counters.inflightFailures).toBe(0);
    // Both leaks are malloc's, called from twin_malloc: 1 byte (entered with the zero flag set
    // or not, it is no new(0)) and 40.
    const leaks = report.leaks.map((g) => ({ bytes: g.bytes, top: g.stack.slice(0, 2).map((f) => f.symbol) }));
    expect(leaks).toEqual(
      expect.arrayContaining([
        { bytes: 40, top: ['malloc', 'twin_malloc'] },
        { bytes: 1, top: ['malloc', 'twin_malloc'] },
      ]),
    );
  });

  it("another tracer's breakpoint in operator new leaves new's blocks new's", async () => {
    const plan = planProbes(libc, true, undefined, 'optimized', libstdcxx);
    const newAt = plan.overloads['operator new']![0]!.offset;
    const child = spawn(fixturePath('operator_site_twin'), ['wait'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await once(child.stdout!, 'data'); // "ready"
      const tracer = await trace({ pid: child.pid! });
      // A second tracer probing every function at its first instruction, with return probes: an
      // int3 at new's first byte, inside the code malloc's return compares.
      const other = await trace({ pid: child.pid!, probePlacement: 'entry' });
      expect(codeByte(child.pid!, libstdcxx, newAt)).toBe(0xcc);
      const done = once(child.stdout!, 'data');
      child.stdin!.write('go\n');
      await done; // "done"
      const [report, otherReport] = await Promise.all([tracer.stop(), other.stop()]);
      // Each block new's, so each delete matches it: a block taken for malloc's would make every
      // delete a mismatched free. The other tracer's return probe on new puts the kernel's
      // return trampoline where new's return address was; the walks take the real one from the
      // thread's uretprobe state, and every stack is whole.
      for (const r of [report, otherReport]) {
        expect(r.summary.allocs).toBe(1003);
        expect(r.summary.frees).toBe(1000);
        expect(r.errors ?? []).toEqual([]);
        expect(r.counters.inflightFailures).toBe(0);
        expect(r.counters.stackFailures).toBe(0);
        expect(r.leaks.map((g) => [g.bytes, g.blocks, ...g.stack.slice(0, 2).map((f) => f.symbol)])).toEqual([
          [24, 3, 'operator new(unsigned long)', 'wait_mode()'],
        ]);
      }
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('4 threads of new and delete at once: totals and kinds equal valgrind every time (10 runs)', async () => {
    const path = fixturePath('cxx_operators');
    const args = ['threads', '4', '20000'];
    const vg = await runValgrind(path, args, { env: forValgrind });
    expect(vg.summary.allocs).toBeGreaterThan(80_000);
    for (let run = 0; run < 10; run++) {
      const tracer = await trace({ command: path, args, env: forTracer, stdio: 'ignore' });
      const report = await tracer.done;
      expect(heap(report), `run ${run}`).toEqual(vg.summary);
      expect(kinds(report).definitelyLost, `run ${run}`).toEqual(vg.leakSummary.definitelyLost);
      expect(report.errors ?? [], `run ${run}`).toEqual([]);
      expect(report.counters.inflightFailures, `run ${run}`).toBe(0);
    }
  }, 300_000);
});
