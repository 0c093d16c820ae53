// A target that dies of a signal still gets its report, with the signal's name, and the numbers
// equal valgrind's for the same crash.
import { describe, expect, it } from 'vitest';

import { trace } from '../../lib/index.js';
import { fixturePath } from '../helpers/fixtures.js';
import { formatHeapSummary, runValgrind } from '../helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };

describe('a target that crashes', () => {
  for (const [how, signal] of [
    ['segv', 'SIGSEGV'],
    ['abort', 'SIGABRT'],
  ] as const) {
    it(`${how}: a report, ${signal}, the heap as valgrind saw it`, async () => {
      const command = fixturePath('crash');
      const vg = await runValgrind(command, [how], { env });
      expect(vg.signal).toBe(signal);
      const tracer = await trace({ command, args: [how], env, stdio: 'ignore' });
      const report = await tracer.done;
      expect(report.target).toMatchObject({ exitCode: null, signal });
      const s = report.summary;
      const pick = (x: typeof vg.summary) => [x.inUseBlocks, x.inUseBytes, x.allocs, x.frees, x.bytesAllocated];
      expect(pick(s), `valgrind: ${formatHeapSummary(vg.summary)}`).toEqual(pick(vg.summary));
      // The kept block, with the line that allocated it.
      const kept = report.leaks.find((g) => g.bytes === 100);
      expect(kept?.stack.some((f) => f.symbol === 'main' && f.line !== undefined)).toBe(true);
    });
  }
});
