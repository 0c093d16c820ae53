// A block reachable only from a suppressed block is not listed, as in LeakSanitizer: the scan
// hands over, for each indirectly lost block, the lost block that owns it and the pointers between
// lost blocks; a rule that covers a lost block hides what is lost only through it, counted in the
// rule's suppressed totals. Real runs of test/fixtures/owned_blocks.c, whose kinds first equal
// valgrind's (which has no such hiding: its suppressions cover loss records one by one). valgrind
// 3.19's numbers:
//   owner   definite 32/1, indirect 40/1
//   chain   definite 32/1, indirect 104/3
//   ring    definite 32/1, indirect 104/3 (the first of the ring leads it)
//   shared  definite 64/2, indirect 40/1
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { checkReport, formatCheckedReport, parseSuppressions, trace, type CheckedLeakReport } from '../lib/index.js';
import { toJsonReport } from '../lib/report/json-format.js';
import type { LeakGroup, LeakReport } from '../lib/types.js';
import { buildCli, cliPath as cli } from './helpers/built-cli.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind, valgrindEnvironment } from './helpers/valgrind.js';

const base: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const { forValgrind, forTracer } = valgrindEnvironment(base);
let tmp: string;

beforeAll(() => {
  buildCli();
  tmp = mkdtempSync(join(tmpdir(), 'ebpf-leak-owned-'));
}, 120_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const rule = (fn: string, kinds = 'all') =>
  parseSuppressions(`{\n   on-${fn}\n   Memcheck:Leak\n   match-leak-kinds: ${kinds}\n   fun:calloc\n   fun:${fn}\n}\n`, { source: 'test.supp' });

const allKinds = ['definite', 'indirect', 'possible', 'reachable'] as const;

async function traced(arg: string, followForks = false): Promise<LeakReport> {
  const tracer = await trace({ command: fixturePath('owned_blocks'), args: [arg], env: forTracer, stdio: 'ignore', followForks });
  return tracer.done;
}

/** The function under calloc in a group's stack. */
const allocatedBy = (g: LeakGroup) => g.stack[1]?.symbol;
const sum = (groups: readonly { bytes: number; blocks: number }[]) => ({
  bytes: groups.reduce((n, g) => n + g.bytes, 0),
  blocks: groups.reduce((n, g) => n + g.blocks, 0),
});

/** Text, JSON and summary tell the same story: what is listed plus what is suppressed is every
 *  block in use, and the summary's kinds stay the whole program's. */
function expectAgreement(checked: CheckedLeakReport): void {
  const listed = sum(checked.unsuppressed);
  const hidden = sum(checked.suppressed);
  expect(listed.bytes + hidden.bytes).toBe(checked.summary.inUseBytes);
  expect(listed.blocks + hidden.blocks).toBe(checked.summary.inUseBlocks);
  const json = toJsonReport(checked) as unknown as { summary: LeakReport['summary']; suppressed: unknown[]; leaks: unknown[] };
  expect(json.summary).toEqual(checked.summary);
  expect(json.suppressed).toEqual(checked.suppressed);
  const text = formatCheckedReport(checked, { showLeakKinds: [...allKinds] });
  if (hidden.blocks > 0) expect(text).toContain(`suppressed: ${hidden.bytes} bytes in ${hidden.blocks} blocks`);
  for (const h of checked.suppressed) {
    expect(text).toContain(`${h.bytes} bytes in ${h.blocks} blocks by ${h.rule} (test.supp:1)`);
    if (h.owned) expect(text).toContain(`of which ${h.owned.bytes} bytes in ${h.owned.blocks} blocks lost only through them`);
  }
}

describe('kinds of the fixture equal valgrind LEAK SUMMARY', () => {
  it.each([
    ['owner', 32, 1, 40, 1],
    ['chain', 32, 1, 104, 3],
    ['ring', 32, 1, 104, 3],
    ['shared', 64, 2, 40, 1],
  ] as const)('%s: definite %d/%d, indirect %d/%d', async (arg, db, dn, ib, inn) => {
    const vg = await runValgrind(fixturePath('owned_blocks'), [arg], { env: forValgrind });
    expect(vg.leakSummary.definitelyLost).toEqual({ bytes: db, blocks: dn });
    expect(vg.leakSummary.indirectlyLost).toEqual({ bytes: ib, blocks: inn });
    const report = await traced(arg);
    expect(report.scan).toMatchObject({ scanned: true, atExit: true });
    expect(report.summary.definitelyLost).toEqual(vg.leakSummary.definitelyLost);
    expect(report.summary.indirectlyLost).toEqual(vg.leakSummary.indirectlyLost);
    expect(report.summary.possiblyLost).toEqual(vg.leakSummary.possiblyLost);
    expect(report.summary.stillReachable).toEqual(vg.leakSummary.stillReachable);
    // Unsuppressed, the owned blocks are listed as indirectly lost, and counted in their owner's
    // loss record, as valgrind's.
    const checked = checkReport(report, []);
    const indirect = checked.unsuppressed.filter((g) => g.kind === 'indirect');
    expect(sum(indirect)).toEqual(vg.leakSummary.indirectlyLost);
    const owners = vg.lossRecords.filter((r) => r.kind === 'definitely lost').reduce((n, r) => n + r.indirectBytes, 0);
    expect(checked.unsuppressed.reduce((n, g) => n + (g.indirectBytes ?? 0), 0)).toBe(owners);
    expect(checked.suppressed).toEqual([]);
    expectAgreement(checked);
  });
});

describe('a rule on a lost owner hides what is lost through it', () => {
  it('owner: the child allocated at another stack is not listed, and counted as suppressed', async () => {
    const report = await traced('owner');
    const checked = checkReport(report, rule('make_parent'), { errorsForLeakKinds: ['definite', 'indirect'] });
    expect(checked.unsuppressed.filter((g) => allocatedBy(g) === 'make_child' || allocatedBy(g) === 'make_parent')).toEqual([]);
    expect(checked.suppressed).toEqual([
      { rule: 'on-make_parent', source: 'test.supp:1', bytes: 72, blocks: 2, groups: 1, owned: { bytes: 40, blocks: 1 } },
    ]);
    // LeakSanitizer's verdict (direct and indirect leaks) finds nothing left.
    expect(checked.leaks).toEqual([]);
    // The whole program's kinds are unchanged: suppressions hide, they do not reclassify.
    expect(checked.summary.indirectlyLost).toEqual({ bytes: 40, blocks: 1 });
    expectAgreement(checked);
  });

  it('owner: a rule on the child alone hides the child only', async () => {
    const checked = checkReport(await traced('owner'), rule('make_child'));
    expect(checked.suppressed).toEqual([{ rule: 'on-make_child', source: 'test.supp:1', bytes: 40, blocks: 1, groups: 1 }]);
    expect(checked.unsuppressed.filter((g) => allocatedBy(g) === 'make_parent')).toMatchObject([{ kind: 'definite', bytes: 32, indirectBytes: 40 }]);
    expectAgreement(checked);
  });

  it('chain: every link and the child at its end go with the head', async () => {
    const checked = checkReport(await traced('chain'), rule('make_parent'));
    expect(checked.unsuppressed.filter((g) => g.kind === 'definite' || g.kind === 'indirect')).toEqual([]);
    expect(checked.suppressed).toEqual([
      { rule: 'on-make_parent', source: 'test.supp:1', bytes: 136, blocks: 4, groups: 1, owned: { bytes: 104, blocks: 3 } },
    ]);
    expectAgreement(checked);
  });

  it('ring: a rule for the definitely lost block of a ring hides the ring and what it owns', async () => {
    // Only the leader matches (match-leak-kinds: definite); the rest of the ring, from the same
    // stack but indirectly lost, and the child go with it.
    const checked = checkReport(await traced('ring'), rule('make_ring', 'definite'));
    expect(checked.unsuppressed.filter((g) => g.kind === 'definite' || g.kind === 'indirect')).toEqual([]);
    expect(checked.suppressed).toEqual([
      { rule: 'on-make_ring', source: 'test.supp:1', bytes: 136, blocks: 4, groups: 1, owned: { bytes: 104, blocks: 3 } },
    ]);
    expectAgreement(checked);
  });

  it('ring: a rule for the indirectly lost part of a ring hides nothing the leader still reaches', async () => {
    // The leader is listed; the ring's others are suppressed by kind (two groups: each call of
    // make_ring has a stack of its own), and the child, reached from the leader only through
    // them, goes with them.
    const checked = checkReport(await traced('ring'), rule('make_ring', 'indirect'));
    const lost = checked.unsuppressed.filter((g) => g.kind === 'definite' || g.kind === 'indirect');
    expect(lost).toMatchObject([{ kind: 'definite', bytes: 32, blocks: 1, indirectBytes: 104 }]);
    expect(checked.suppressed).toEqual([
      { rule: 'on-make_ring', source: 'test.supp:1', bytes: 104, blocks: 3, groups: 2, owned: { bytes: 40, blocks: 1 } },
    ]);
    expectAgreement(checked);
  });

  it.each(['make_parent', 'make_other'])('shared: the child is also reached from an unsuppressed lost block, so it stays listed (rule on %s)', async (fn) => {
    // Whichever of the two owns the child in the scan, a rule on either one leaves it listed.
    const checked = checkReport(await traced('shared'), rule(fn), { errorsForLeakKinds: ['definite', 'indirect'] });
    expect(checked.suppressed).toEqual([{ rule: `on-${fn}`, source: 'test.supp:1', bytes: 32, blocks: 1, groups: 1 }]);
    const child = checked.unsuppressed.filter((g) => allocatedBy(g) === 'make_child');
    expect(child).toMatchObject([{ kind: 'indirect', bytes: 40, blocks: 1 }]);
    expect(checked.leaks.map(allocatedBy).sort()).toEqual(['make_child', fn === 'make_parent' ? 'make_other' : 'make_parent'].sort());
    expectAgreement(checked);
  });

  it('shared: rules on both owners hide the child too', async () => {
    const checked = checkReport(await traced('shared'), [...rule('make_parent'), ...rule('make_other')]);
    expect(checked.unsuppressed.filter((g) => g.kind === 'definite' || g.kind === 'indirect')).toEqual([]);
    expect(sum(checked.suppressed)).toEqual({ bytes: 104, blocks: 3 });
    expect(checked.suppressed.reduce((n, h) => n + (h.owned?.blocks ?? 0), 0)).toBe(1);
    expectAgreement(checked);
  });

  it('followForks: each process report carries its owners too', async () => {
    const report = await traced('owner', true);
    const checked = checkReport(report, rule('make_parent'));
    expect(checked.processes).toHaveLength(1);
    for (const r of [checked, checked.processes![0]!]) {
      expect(r.suppressed).toEqual([
        { rule: 'on-make_parent', source: 'test.supp:1', bytes: 72, blocks: 2, groups: 1, owned: { bytes: 40, blocks: 1 } },
      ]);
      expectAgreement(r);
    }
  });

  it("followForks: a child's report, kept as plain data without its blocks, carries its owners too", async () => {
    const script = `${fixturePath('owned_blocks')} owner; true`; // the shell forks for it
    const tracer = await trace({ command: '/bin/sh', args: ['-c', script], env: forTracer, stdio: 'ignore', followForks: true });
    const checked = checkReport(await tracer.done, rule('make_parent'));
    const child = checked.processes!.find((p) => p.target.commandLine?.[0] === fixturePath('owned_blocks'))!;
    expect(child.target.pid).not.toBe(checked.target.pid);
    expect(child.suppressed).toEqual([
      { rule: 'on-make_parent', source: 'test.supp:1', bytes: 72, blocks: 2, groups: 1, owned: { bytes: 40, blocks: 1 } },
    ]);
    expectAgreement(child);
  });
});

describe('the CLI', () => {
  function runCli(args: string[]): Promise<{ code: number | null; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...forTracer }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.once('error', reject);
      child.once('close', (code) => resolve({ code, stderr }));
    });
  }

  it('a rule on the owner: the text, the JSON and the exit status leave the child out', async () => {
    const supp = join(tmp, 'owner.supp');
    writeFileSync(supp, `{\n   on-make_parent\n   Memcheck:Leak\n   fun:calloc\n   fun:make_parent\n}\n`);
    const json = join(tmp, 'owner.json');
    const common = ['run', '--errors-for-leak-kinds=definite,indirect', '--show-leak-kinds=all', '--error-exitcode', '7'];
    const without = await runCli([...common, '--', fixturePath('owned_blocks'), 'owner']);
    expect(without.code).toBe(7);
    expect(without.stderr).toContain('40 bytes in 1 blocks are indirectly lost in loss record');
    expect(without.stderr).toMatch(/make_child/);
    const r = await runCli([...common, '--suppressions', supp, '--json', json, '--', fixturePath('owned_blocks'), 'owner']);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('in loss record');
    expect(r.stderr).not.toContain('make_child');
    expect(r.stderr).toContain(`72 bytes in 2 blocks by on-make_parent (${supp}:1), of which 40 bytes in 1 blocks lost only through them`);
    expect(r.stderr).toContain('indirectly lost: 40 bytes in 1 blocks');
    const written = JSON.parse(readFileSync(json, 'utf8')) as { summary: LeakReport['summary']; suppressed: unknown[]; leaks: LeakGroup[] };
    expect(written.suppressed).toContainEqual({ rule: 'on-make_parent', source: `${supp}:1`, bytes: 72, blocks: 2, groups: 1, owned: { bytes: 40, blocks: 1 } });
    expect(written.leaks.filter((g) => g.kind === 'definite' || g.kind === 'indirect')).toEqual([]);
    expect(written.summary.indirectlyLost).toEqual({ bytes: 40, blocks: 1 });
  }, 60_000);
});
