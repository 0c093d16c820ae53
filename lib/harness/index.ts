// The test-harness API in one module: leak checks of spawned programs (checkLeaks,
// assertNoLeaks), of native code in this process (measure, leakCheck), suppressions, and the
// errors they throw. `ebpf-leak/vitest` and `ebpf-leak/node-test` build on it.
export { checkReport, formatCheckedReport, type CheckedLeakReport } from '../report/checked.js';
export {
  assertNoLeaks,
  assertReport,
  checkLeaks,
  type AssertNoLeaksOptions,
  type CheckLeaksOptions,
} from './program-check.js';
export { defaultSuppressions, defaultSuppressionsText } from '../suppressions/defaults.js';
export { collectGarbage } from './gc.js';
export {
  assertNativeReport,
  formatNativeLeakReport,
  leakCheck,
  type FormatNativeOptions,
  type LeakCheckOptions,
} from './in-process-check.js';
export { HeapErrorsError, LeakError, LeakInconclusiveError } from './leak-errors.js';
export {
  currentThreadId,
  isGrowing,
  measure,
  type Amount,
  type LeakSite,
  type MeasuredFunction,
  type MeasureOptions,
  type NativeLeakReport,
} from './measure.js';
export {
  type LeakBlock,
  type ModuleFilter,
  type ScopedLeakReport,
  type ScopeFilter,
  type ThreadFilter,
} from '../report/scope.js';
export {
  applySuppressions,
  findSuppression,
  generateSuppressions,
  leakKinds,
  loadSuppressions,
  parseSuppressions,
  resolveSuppressions,
  ruleMatches,
  type FramePattern,
  type GenerateOptions,
  type LeakKind,
  type LsanSuppression,
  type MatchOptions,
  type SuppressionHit,
  type SuppressionInput,
  type SuppressionRule,
  type ValgrindSuppression,
} from '../suppressions/rules.js';
export { SuppressionSyntaxError } from '../errors.js';
export { tracingSupport, type TracingSupport } from '../target/tracing-support.js';
