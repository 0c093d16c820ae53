// The stacks of the reports a followForks trace keeps: equal stacks are one array of one set of
// frames, whichever report they came from; different ones stay apart. Synthetic reports.
import { describe, expect, it } from 'vitest';
import { SharedStacks } from '../../lib/report/shared-stacks.js';
import type { LeakReport, StackFrame } from '../../lib/types.js';

const frame = (address: string, symbol?: string, line?: number): StackFrame => ({
  address,
  module: '/bin/prog',
  ...(symbol !== undefined ? { symbol } : {}),
  ...(line !== undefined ? { line } : {}),
});

function report(stacks: StackFrame[][], errorStack?: StackFrame[]): LeakReport {
  return {
    leaks: stacks.map((stack) => ({ bytes: 8, blocks: 1, stack, largestBlock: 8, sampleAddresses: ['0x10'] })),
    ...(errorStack
      ? {
          errors: [
            {
              kind: 'double-free',
              address: '0x10',
              releasedBy: 'free',
              tid: 1,
              stack: errorStack,
              block: { size: 8, allocatedBy: 'malloc', offset: 0, allocationStack: stacks[0]! },
              firstFree: { releasedBy: 'free', stack: errorStack.map((f) => ({ ...f })) },
            },
          ],
        }
      : {}),
  } as unknown as LeakReport;
}

describe('SharedStacks', () => {
  it('makes equal stacks of different reports one array of the same frames', () => {
    const shared = new SharedStacks();
    const a = shared.share(report([[frame('0x1', 'malloc'), frame('0x2', 'main', 3)]]));
    const b = shared.share(report([[frame('0x1', 'malloc'), frame('0x2', 'main', 3)]]));
    expect(b.leaks[0]!.stack).toBe(a.leaks[0]!.stack);
    expect(b.leaks[0]!.stack).toEqual([frame('0x1', 'malloc'), frame('0x2', 'main', 3)]);
  });

  it('keeps stacks apart that differ in any frame or field, and shares their equal frames', () => {
    const shared = new SharedStacks();
    const a = shared.share(report([[frame('0x1', 'malloc'), frame('0x2', 'main', 3)]]));
    const b = shared.share(report([[frame('0x1', 'malloc'), frame('0x2', 'main', 4)]]));
    const c = shared.share(report([[frame('0x1', 'malloc')]]));
    expect(b.leaks[0]!.stack).not.toBe(a.leaks[0]!.stack);
    expect(b.leaks[0]!.stack[1]!.line).toBe(4);
    expect(c.leaks[0]!.stack).toHaveLength(1);
    expect(b.leaks[0]!.stack[0]).toBe(a.leaks[0]!.stack[0]);
    expect(c.leaks[0]!.stack[0]).toBe(a.leaks[0]!.stack[0]);
  });

  it("shares the heap errors' stacks: the release, the allocation and the first free", () => {
    const shared = new SharedStacks();
    const alloc = [frame('0x1', 'malloc'), frame('0x2', 'main', 3)];
    const release = [frame('0x5', 'free'), frame('0x6', 'main', 9)];
    const a = shared.share(report([alloc], release));
    const b = shared.share(report([alloc.map((f) => ({ ...f }))], release.map((f) => ({ ...f }))));
    const [ea, eb] = [a.errors![0]!, b.errors![0]!];
    expect(eb.stack).toBe(ea.stack);
    expect(eb.firstFree!.stack).toBe(ea.stack);
    expect(eb.block!.allocationStack).toBe(a.leaks[0]!.stack);
  });
});
