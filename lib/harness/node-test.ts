// `ebpf-leak/node-test`: plain assertion helpers for node:test (or any runner: they throw).
//
//   import { test } from 'node:test';
//   import { assertNoNativeLeaks, skipIfUnsupported } from 'ebpf-leak/node-test';
//
//   test('parse does not leak', skipIfUnsupported(), async () => {
//     await assertNoNativeLeaks(() => addon.parse('{"a":1}'), { iterations: 1000 });
//   });
import { leakCheck, type LeakCheckOptions } from './in-process-check.js';
import type { MeasuredFunction, NativeLeakReport } from './measure.js';
import { tracingSupport } from '../target/tracing-support.js';

/** Fails (LeakError, whose message is the report) when a call site of `fn` grows with the
 *  iteration count; LeakInconclusiveError when the measurement cannot be trusted. */
export function assertNoNativeLeaks(fn: MeasuredFunction, options: Omit<LeakCheckOptions, 'maxBytesPerIteration'> = {}): Promise<NativeLeakReport> {
  return leakCheck(fn, options);
}

/** Fails when `fn`'s growing call sites leak more than `bytesPerIteration` together. */
export function assertNativeLeaksAtMost(
  fn: MeasuredFunction,
  bytesPerIteration: number,
  options: Omit<LeakCheckOptions, 'maxBytesPerIteration'> = {},
): Promise<NativeLeakReport> {
  return leakCheck(fn, { ...options, maxBytesPerIteration: bytesPerIteration });
}

/** Test options that skip a node:test test or suite where this process cannot trace:
 *  `test(name, skipIfUnsupported(), fn)`, `describe(name, skipIfUnsupported(), fn)`. Merges into
 *  `options` when given. */
export function skipIfUnsupported<T extends object>(options?: T): T & { skip?: string } {
  const support = tracingSupport();
  const base = { ...(options ?? {}) } as T & { skip?: string };
  if (!support.supported) base.skip = `ebpf-leak cannot trace here: ${support.reason}`;
  return base;
}

export { tracingSupport };
export { assertNoLeaks, checkLeaks } from './program-check.js';
export { formatCheckedReport } from '../report/checked.js';
export { HeapErrorsError, LeakError, LeakInconclusiveError } from './leak-errors.js';
export { formatNativeLeakReport, leakCheck, type LeakCheckOptions } from './in-process-check.js';
export { measure, type MeasureOptions, type NativeLeakReport } from './measure.js';
export { generateSuppressions, loadSuppressions, parseSuppressions } from '../suppressions/rules.js';
