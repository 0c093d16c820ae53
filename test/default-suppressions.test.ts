// The shipped default suppressions are what reachability does not already explain. With the scan
// on, real programs of the machine list no group valgrind does not call definitely or possibly
// lost (valgrind --leak-check=full --run-libc-freeres=no --run-cxx-freeres=no), their kinds equal
// valgrind's, and no default rule is needed for them: glibc's stdio buffers, locale, NSS and time
// zone data, the loader's and libstdc++'s blocks are still reachable. The few rules kept for
// scanned reports each hide a group the scan (like valgrind) calls lost although the runtime
// holds it; the others apply only to reports without kinds, which still need them.
import { describe, expect, it } from 'vitest';

import { checkReport, defaultSuppressions, trace } from '../lib/index.js';
import type { LeakGroup, LeakKind, LeakReport } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind, valgrindEnvironment, type ValgrindLossRecord } from './helpers/valgrind.js';

const base: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const { forValgrind, forTracer } = valgrindEnvironment(base);

async function traced(command: string, args: string[], leakKinds = true): Promise<LeakReport> {
  const tracer = await trace({ command, args, env: forTracer, stdio: 'ignore', leakKinds });
  return tracer.done;
}

const valgrindKind: Record<string, LeakKind> = {
  'definitely lost': 'definite',
  'indirectly lost': 'indirect',
  'possibly lost': 'possible',
  'still reachable': 'reachable',
};

/** The groups of `listed` that no valgrind loss record of the same kind, bytes and blocks
 *  accounts for (each record accounts for one group). */
function unmatched(listed: readonly LeakGroup[], records: readonly ValgrindLossRecord[], kinds?: readonly LeakKind[]): LeakGroup[] {
  const left = records.filter((r) => kinds === undefined || kinds.includes(valgrindKind[r.kind]!));
  const out: LeakGroup[] = [];
  for (const g of listed) {
    const at = left.findIndex((r) => (g.kind === undefined || valgrindKind[r.kind] === g.kind) && r.directBytes === g.bytes && r.blocks === g.blocks);
    if (at < 0) out.push(g);
    else left.splice(at, 1);
  }
  return out;
}

const show = (groups: readonly LeakGroup[]) =>
  groups.map((g) => `${g.kind ?? 'any'} ${g.bytes}/${g.blocks} ${g.stack.slice(0, 5).map((f) => f.symbol ?? f.module).join(' < ')}`).join('\n');

const programs: [command: string, args: string[]][] = [
  ['/usr/bin/ls', ['-la', '/usr/lib']],
  ['/usr/bin/sort', ['/etc/services']],
  ['/usr/bin/python3', ['-c', 'print(1)']],
  ['/usr/bin/git', ['--version']],
  [fixturePath('cpp_iostream'), []],
];

describe('real programs with the default suppressions', () => {
  it.each(programs)('%s %j: kinds equal valgrind, listed groups are its lost ones, and no rule is needed', async (command, args) => {
    const vg = await runValgrind(command, args, { env: forValgrind });
    const report = await traced(command, args);
    expect(report.scan).toMatchObject({ scanned: true, atExit: true });
    const s = report.summary;
    expect({ d: s.definitelyLost, i: s.indirectlyLost, p: s.possiblyLost, r: s.stillReachable }).toEqual({
      d: vg.leakSummary.definitelyLost,
      i: vg.leakSummary.indirectlyLost,
      p: vg.leakSummary.possiblyLost,
      r: vg.leakSummary.stillReachable,
    });
    const checked = checkReport(report, [...defaultSuppressions()]);
    // What the run lists (its error kinds, definite and possible) valgrind calls lost too.
    expect(show(unmatched(checked.leaks, vg.lossRecords, ['definite', 'possible']))).toBe('');
    expect(checked.leakedBytes).toBe(vg.leakSummary.definitelyLost.bytes + vg.leakSummary.possiblyLost.bytes);
    // And no default rule applied: reachability explains the runtime's blocks.
    expect(checked.suppressed).toEqual([]);
  }, 120_000);
});

describe('each rule kept for scanned reports hides a group the scan calls lost', () => {
  const cases: [rule: string, fixture: 'threads' | 'dlopen_main' | 'alloc_count_static', args: string[], kind: LeakKind][] = [
    // A thread alive at the exit: its DTV, pointed into by its descriptor (possibly lost for valgrind too).
    ['ld.so-thread-dtv', 'threads', [], 'possible'],
    // dlopen()'s _dl_find_object() table, held by an aligned pointer into it (possibly lost for valgrind too).
    ['ld.so-dl-find-object', 'dlopen_main', [fixturePath('dlopen_plugin')], 'possible'],
    // A static executable's start-up blocks (valgrind cannot trace a static executable).
    ['glibc-static-startup', 'alloc_count_static', [], 'definite'],
  ];
  it.each(cases)('%s (%s)', async (rule, fixture, args, kind) => {
    const report = await traced(fixturePath(fixture), args);
    expect(report.scan).toMatchObject({ scanned: true });
    const named = defaultSuppressions().filter((r) => r.name === rule);
    const without = checkReport(report, []);
    const hidden = checkReport(report, named);
    expect(hidden.suppressed).toHaveLength(1);
    expect(hidden.suppressed[0]!.rule).toBe(rule);
    expect(without.leaks.filter((g) => g.kind === kind).length).toBeGreaterThan(hidden.leaks.filter((g) => g.kind === kind).length);
    // The whole default set leaves only the program's own blocks.
    const all = checkReport(report, [...defaultSuppressions()]);
    expect(all.suppressed.map((h) => h.rule)).toEqual([rule]);
    for (const g of all.leaks) expect(g.stack.some((f) => /^(main|plugin_work|allocate_all\(\)|work)$/.test(f.symbol ?? ''))).toBe(true);
  }, 120_000);

  it('the rules for reports without kinds never apply to a scanned group', () => {
    const scanned = defaultSuppressions().filter((r) => r.format === 'valgrind' && !r.unscannedOnly);
    expect(scanned.map((r) => r.name)).toEqual(['ld.so-thread-dtv', 'ld.so-dl-find-object', 'glibc-static-startup']);
    for (const r of scanned) expect(r.format === 'valgrind' && r.leakKinds.includes('reachable')).toBe(false);
  });
});
