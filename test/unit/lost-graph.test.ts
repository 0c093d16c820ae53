// Suppressing a lost block hides what is lost only through it (lib/report/lost-graph.ts), on a
// synthetic scan: owners, the pointers between lost blocks, a narrowed report.
import { describe, expect, it } from 'vitest';

import { checkReport } from '../../lib/report/checked.js';
import { scopedReport, type ReportSource } from '../../lib/report/scope.js';
import { noOwner, type KindColumns } from '../../lib/native/scan-records.js';
import type { Counters } from '../../lib/native/layout.js';
import { parseSuppressions } from '../../lib/suppressions/rules.js';
import type { StackFrame } from '../../lib/types.js';

// Rows: A (parent) owns C, which owns D; B (other) owns E; A owns F, which B points at too.
//   row  block  kind      stack   size  tid  owner
const rows = [
  ['A', 0, 1, 32, 1, noOwner],
  ['C', 1, 2, 40, 2, 0],
  ['D', 1, 2, 24, 1, 1],
  ['B', 0, 3, 16, 1, noOwner],
  ['E', 1, 2, 8, 1, 3],
  ['F', 1, 2, 48, 1, 0],
] as const;
const edges = new Uint32Array([0, 1, 1, 2, 3, 4, 0, 5, 3, 5]);

const columns: KindColumns = {
  count: rows.length,
  address: (i) => BigInt(0x1000 + i * 0x100),
  size: (i) => rows[i]![3],
  tid: (i) => rows[i]![4],
  stackId: (i) => rows[i]![2],
  mark: () => 0,
  fn: () => 'malloc',
  weight: () => 1,
  kind: (i) => rows[i]![1],
  heuristic: () => 0,
  indirect: () => 0,
  owner: (i) => rows[i]![5],
  lostEdges: edges,
};

const frames = (fn: string): StackFrame[] => [
  { address: '0x1', symbol: 'malloc', module: '/lib/libc.so.6' },
  { address: '0x2', symbol: fn, module: '/work/prog' },
];
const source: ReportSource = {
  base: { version: 1, target: { pid: 1, allocator: '/lib/libc.so.6', exitCode: 0, signal: null }, durationMs: 1 },
  summary: { allocs: 6, frees: 0, bytesAllocated: 168, inUseBlocks: 6, inUseBytes: 168, lostEvents: 0, droppedAllocations: 0, unknownFrees: 0 },
  counters: {} as Counters,
  columns,
  stacks: new Map([
    [1, frames('parent')],
    [2, frames('child')],
    [3, frames('other')],
  ]),
};
const rule = (fn: string, kinds = 'all') =>
  parseSuppressions(`{\n   on-${fn}\n   Memcheck:Leak\n   match-leak-kinds: ${kinds}\n   fun:malloc\n   fun:${fn}\n}\n`, { source: 's' });
const childGroup = (groups: readonly { stack: StackFrame[] }[]) => groups.filter((g) => g.stack[1]?.symbol === 'child');

describe('hiding what is lost through a suppressed block', () => {
  it('hides the blocks only the suppressed owner leads to, keeps those another lost block reaches', () => {
    const checked = checkReport(scopedReport(source, null), rule('parent'));
    // C and D go with A; F stays (B points at it), E stays (B owns it).
    expect(checked.suppressed).toEqual([{ rule: 'on-parent', source: 's:1', bytes: 96, blocks: 3, groups: 1, owned: { bytes: 64, blocks: 2 } }]);
    expect(childGroup(checked.unsuppressed)).toMatchObject([
      { kind: 'indirect', bytes: 56, blocks: 2, largestBlock: 48, sampleAddresses: ['0x1400', '0x1500'] },
    ]);
    // The report itself is untouched.
    expect(childGroup(scopedReport(source, null).leaks)).toMatchObject([{ bytes: 120, blocks: 4 }]);
  });

  it('counts a hidden block to the rule of its nearest suppressed owner', () => {
    const checked = checkReport(scopedReport(source, null), [...rule('other'), ...rule('parent')]);
    expect(checked.unsuppressed.filter((g) => g.kind === 'definite' || g.kind === 'indirect')).toEqual([]);
    const byRule = Object.fromEntries(checked.suppressed.map((h) => [h.rule, [h.bytes, h.blocks, h.owned]]));
    // F is owned by A (parent) in the clique tree.
    expect(byRule).toEqual({ 'on-parent': [144, 4, { bytes: 112, blocks: 3 }], 'on-other': [24, 2, { bytes: 8, blocks: 1 }] });
  });

  it('a rule on the indirectly lost blocks hides nothing more than they lead to', () => {
    const checked = checkReport(scopedReport(source, null), rule('child', 'indirect'));
    expect(checked.suppressed).toEqual([{ rule: 'on-child', source: 's:1', bytes: 120, blocks: 4, groups: 1 }]);
  });

  it('keeps a block whose owner the narrowed report left out', () => {
    // Thread 1 only: C (thread 2) is out, so D has no suppressed owner in the report.
    const narrowed = scopedReport(source, null).threads([1]);
    const checked = checkReport(narrowed, rule('parent'));
    expect(checked.suppressed).toEqual([{ rule: 'on-parent', source: 's:1', bytes: 32, blocks: 1, groups: 1 }]);
    expect(childGroup(checked.unsuppressed)).toMatchObject([{ bytes: 80, blocks: 3 }]);
  });

  it('a report without kinds, or copied without its graph, is suppressed by its own stacks', () => {
    const report = scopedReport(source, null);
    const copy = { ...report, leaks: [...report.leaks] };
    expect(checkReport(copy, rule('parent')).suppressed).toEqual([{ rule: 'on-parent', source: 's:1', bytes: 32, blocks: 1, groups: 1 }]);
  });
});
