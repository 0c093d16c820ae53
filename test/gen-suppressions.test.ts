// Suppression files between ebpf-leak and valgrind, on a C++ program (new, new[], aligned and
// nothrow new, libstdc++'s start-up pool): a file valgrind wrote suppresses under ebpf-leak what it
// suppresses under valgrind; a file ebpf-leak wrote is one valgrind reads and applies the same way;
// and each format ebpf-leak writes, fed back, suppresses the groups it was written from.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkReport } from '../lib/report/checked.js';
import { trace, type LeakReport } from '../lib/index.js';
import { generateSuppressions, parseSuppressions } from '../lib/suppressions/rules.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const work = mkdtempSync(join(tmpdir(), 'ebpf-leak-gen-supp-'));
const program = fixturePath('heap_errors');

async function ours(): Promise<LeakReport> {
  const tracer = await trace({ command: program, args: ['mismatch'], env, stdio: 'ignore' });
  return tracer.done;
}

/** The suppression blocks of a valgrind log written with --gen-suppressions=all, named. */
function valgrindWritten(log: string): string {
  const text = log
    .split('\n')
    .filter((l) => !l.startsWith('=='))
    .join('\n');
  let n = 0;
  return text.replace(/<insert_a_suppression_name_here>/g, () => `vg-${++n}`);
}

const totals = (groups: readonly { bytes: number; blocks: number }[]) => ({
  bytes: groups.reduce((n, g) => n + g.bytes, 0),
  blocks: groups.reduce((n, g) => n + g.blocks, 0),
});

describe('suppression files between ebpf-leak and valgrind', () => {
  it("a file valgrind wrote suppresses under ebpf-leak what it suppresses under valgrind", async () => {
    const gen = await runValgrind(program, ['mismatch'], { env, valgrindOptions: ['--gen-suppressions=all'] });
    const text = valgrindWritten(gen.log);
    expect(text).toContain('fun:_Znam\n');
    expect(text).toContain('fun:_ZnwmSt11align_val_t\n');
    const file = join(work, 'valgrind.supp');
    writeFileSync(file, text);
    const vg = await runValgrind(program, ['mismatch'], { env, valgrindOptions: [`--suppressions=${file}`] });
    const report = await ours();
    const checked = checkReport(report, parseSuppressions(text, { source: file }));
    expect(totals(checked.suppressed)).toEqual(vg.leakSummary.suppressed);
    expect(vg.leakSummary.suppressed).toEqual({ bytes: report.summary.inUseBytes, blocks: report.summary.inUseBlocks });
    expect(checked.leaks).toEqual([]);
  });

  it('a file ebpf-leak wrote in valgrind format is read by valgrind, which suppresses the same blocks', async () => {
    const report = await ours();
    const text = generateSuppressions(report);
    // valgrind's spelling: mangled names, nothing past main.
    expect(text).toContain('fun:_Znam\n   fun:_ZL9cxx_leaksv\n   fun:main\n}');
    expect(text).not.toContain('__libc_start_call_main');
    expect(text).not.toMatch(/fun:operator new/);
    const file = join(work, 'ours.supp');
    writeFileSync(file, text);
    const vg = await runValgrind(program, ['mismatch'], { env, valgrindOptions: [`--suppressions=${file}`] });
    expect(vg.exitCode).toBe(0); // valgrind exits 1 on a suppression file it cannot parse
    expect(vg.leakSummary.suppressed).toEqual({ bytes: report.summary.inUseBytes, blocks: report.summary.inUseBlocks });
    // Round trip: every group suppressed, each by the rule written from it.
    const checked = checkReport(report, parseSuppressions(text));
    expect(checked.leaks).toEqual([]);
    expect(checked.suppressed).toHaveLength(report.leaks.length);
    expect(checked.suppressed.every((h) => h.groups === 1)).toBe(true);
  });

  it('LSan format names the program\'s own first frame, never the allocator or the runtime, and round-trips', async () => {
    const report = await ours();
    const text = generateSuppressions(report, { format: 'lsan' });
    const rules = text.split('\n').filter((l) => l.startsWith('leak:'));
    expect(rules).toEqual(['leak:^cxx_leaks()$']);
    for (const r of rules) expect(r).not.toMatch(/operator new|malloc|libstdc\+\+|libc\.so/);
    const checked = checkReport(report, parseSuppressions(text, { format: 'lsan' }));
    // The program's four leaks go; libstdc++'s start-up pool, with no frame of the program, has no
    // rule and stays (still reachable, from libstdc++'s globals: listed, but no leak).
    const own = report.leaks.filter((g) => g.stack.some((f) => f.symbol === 'cxx_leaks()'));
    expect(own).toHaveLength(4);
    expect(totals(checked.suppressed)).toEqual(totals(own));
    expect(checked.unsuppressed.map((g) => [g.bytes, g.kind])).toEqual([[72704, 'reachable']]);
    expect(checked.leaks).toEqual([]);
  });
});
