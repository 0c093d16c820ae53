// `import 'ebpf-leak/vitest'`: registers the native-leak matchers with vitest's expect.
//
//   await expect(() => addon.parse(input)).not.toLeakNativeMemory();
//   await expect(fn).toLeakAtMost(64);                  // bytes per iteration
//   await expect(fn).not.toLeakNativeMemory({ iterations: 1000, module: /my_addon\.node$/ });
//
// The received value is a function (sync or async), measured in this process (see measure()).
// Both matchers are async: await them. An inconclusive measurement fails with a
// LeakInconclusiveError whether or not `.not` is used (unless allowInconclusive: true).
//
// skipIfUnsupported() skips the tests of the file or describe block it is called in on machines
// that cannot trace (no privileges, no BTF, no uprobes, addon not built).
import { beforeEach, expect } from 'vitest';
import { formatNativeLeakReport } from './in-process-check.js';
import { LeakInconclusiveError } from './leak-errors.js';
import { measure, type MeasuredFunction, type MeasureOptions, type NativeLeakReport } from './measure.js';
import { tracingSupport } from '../target/tracing-support.js';
import { InvalidOptionError } from '../errors.js';

export interface NativeLeakMatcherOptions extends MeasureOptions {
  /** Pass an inconclusive measurement on to the verdict instead of failing. */
  allowInconclusive?: boolean;
}

interface MatcherResult {
  pass: boolean;
  message: () => string;
  actual?: unknown;
  expected?: unknown;
}

function received(value: unknown, matcher: string): MeasuredFunction {
  if (typeof value !== 'function') {
    throw new InvalidOptionError(`${matcher}: expect() must be given the function to measure (got ${typeof value})`);
  }
  return value as MeasuredFunction;
}

async function run(value: unknown, matcher: string, options: NativeLeakMatcherOptions = {}): Promise<NativeLeakReport> {
  const { allowInconclusive, ...measureOptions } = options;
  const report = await measure(received(value, matcher), measureOptions);
  if (report.inconclusive.length > 0 && !allowInconclusive) {
    throw new LeakInconclusiveError(report.inconclusive, report, `${matcher}()`);
  }
  return report;
}

/** The matchers, for `expect.extend()` with another expect (this module registers them with
 *  vitest's). */
export const nativeLeakMatchers = {
  async toLeakNativeMemory(value: unknown, options?: NativeLeakMatcherOptions): Promise<MatcherResult> {
    const report = await run(value, 'toLeakNativeMemory', options);
    const pass = report.leaks.length > 0;
    return {
      pass,
      message: () =>
        pass
          ? `expected the function not to leak native memory, but it did:\n\n${formatNativeLeakReport(report)}`
          : `expected the function to leak native memory, but nothing grew:\n\n${formatNativeLeakReport(report)}`,
    };
  },

  async toLeakAtMost(value: unknown, bytesPerIteration: number, options?: NativeLeakMatcherOptions): Promise<MatcherResult> {
    if (typeof bytesPerIteration !== 'number' || !(bytesPerIteration >= 0)) {
      throw new InvalidOptionError(`toLeakAtMost(bytesPerIteration): expected a number >= 0 (got ${String(bytesPerIteration)})`);
    }
    const report = await run(value, 'toLeakAtMost', options);
    const pass = report.bytesPerIteration <= bytesPerIteration;
    return {
      pass,
      actual: report.bytesPerIteration,
      expected: bytesPerIteration,
      message: () =>
        pass
          ? `expected the function to leak more than ${bytesPerIteration} bytes per iteration, ` +
            `it leaked ${report.bytesPerIteration}:\n\n${formatNativeLeakReport(report)}`
          : `expected the function to leak at most ${bytesPerIteration} bytes per iteration, ` +
            `it leaked ${report.bytesPerIteration}:\n\n${formatNativeLeakReport(report)}`,
    };
  },
};

expect.extend(nativeLeakMatchers);

/** Call at the top of a test file or inside describe(): its tests are skipped (with the reason)
 *  where this process cannot trace. */
export function skipIfUnsupported(): void {
  beforeEach((context) => {
    const support = tracingSupport();
    if (!support.supported) context.skip(`ebpf-leak cannot trace here: ${support.reason}`);
  });
}

/** Whether this process can trace, for `describe.skipIf(!canTrace())` / `it.runIf(canTrace())`. */
export function canTrace(): boolean {
  return tracingSupport().supported;
}

export { tracingSupport };
export { HeapErrorsError, LeakError, LeakInconclusiveError } from './leak-errors.js';
export { leakCheck, type LeakCheckOptions } from './in-process-check.js';
export { measure, type NativeLeakReport, type MeasureOptions } from './measure.js';
export { assertNoLeaks, checkLeaks } from './program-check.js';

interface NativeLeakMatchers<R = unknown> {
  /** Measures the received function (see measure()); passes when a call site grows with the
   *  iteration count. Use as `await expect(fn).not.toLeakNativeMemory()`. */
  toLeakNativeMemory(options?: NativeLeakMatcherOptions): Promise<R>;
  /** Passes when the growing call sites leak at most `bytesPerIteration` together. */
  toLeakAtMost(bytesPerIteration: number, options?: NativeLeakMatcherOptions): Promise<R>;
}

declare module 'vitest' {
  interface Assertion<T = any> extends NativeLeakMatchers<void> {}
}
