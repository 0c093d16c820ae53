// What makes a checked report inconclusive: every counter of lost or unfollowed data, so that a
// run missing some of it never passes as green.
import { describe, expect, it } from 'vitest';

import { checkReport, type ReportInput } from '../../lib/report/checked.js';
import { counterFields, type Counters } from '../../lib/native/layout.js';
import { leakReport } from '../helpers/reports.js';

function report(counters: Partial<Counters>, summary: Partial<ReportInput['summary']> = {}): ReportInput {
  const counted = { ...(Object.fromEntries(counterFields.map((f) => [f, 0])) as Counters), ...counters };
  return { ...leakReport(summary), counters: counted };
}

describe('inconclusive checked reports', () => {
  it('a clean run is conclusive', () => {
    expect(checkReport(report({}), []).inconclusive).toEqual([]);
  });

  it('allocator calls that could not be followed make it inconclusive, with their count', () => {
    const checked = checkReport(report({ inflightFailures: 1234 }), []);
    expect(checked.inconclusive).toHaveLength(1);
    expect(checked.inconclusive[0]).toMatch(/^1,234 allocator calls could not be followed \(/);
    expect(checked.inconclusive[0]).toContain("operator new's call could not be read");
  });

  it('dropped allocations and lost events are each a reason of their own', () => {
    const checked = checkReport(report({ inflightFailures: 2 }, { droppedAllocations: 5, lostEvents: 7 }), []);
    expect(checked.inconclusive).toHaveLength(3);
    expect(checked.inconclusive.join('\n')).toMatch(/5 allocations were not tracked/);
    expect(checked.inconclusive.join('\n')).toMatch(/7 events were lost/);
  });
});
