// ebpf-leak: find native memory leaks by tracing malloc/free with eBPF uprobes.
// The package's public surface, by name; every name here is documented in docs/api.md
// (test/unit/public-api.test.ts pins the list and checks the documentation).

// Tracing
export { trace } from './tracer/trace.js';
export { LeakTracer, leakTracerEvents, type TracerInfo } from './tracer/leak-tracer.js';
export { tracedProcessEvents, type TracedProcess, type TracedProcessEvents, type ProcessExit } from './tracer/traced-process.js';
export {
  allocatorFunctions,
  type AllocatorFunction,
  type AllocatorOptions,
  type CommonTraceOptions,
  type PidTraceOptions,
  type CommandTraceOptions,
  type KeepStacktraces,
  type TraceOptions,
  type HeapSummary,
  type HeapError,
  type HeapErrorCounts,
  type StackFrame,
  type LeakGroup,
  type LeakHeuristic,
  type BytesBlocks,
  type ScanInfo,
  type TargetInfo,
  type LeakReport,
  type PreviousImage,
  type OutstandingAllocation,
  type Snapshot,
  type ProcessSnapshot,
  type AllocEvent,
  type FreeEvent,
  type LostInfo,
  type LeakTracerEvents,
} from './types.js';
export type { PlacementDecision, ProbePlacement } from './probes/placement.js';
export type { StackTotal, UnwindMode, UnwindModule, UnwindStats } from './native/unwind.js';
export type { Counters } from './native/layout.js';
export type { LeakBlock, ModuleFilter, ScopedLeakReport, ScopeFilter, ThreadFilter } from './report/scope.js';

// Errors
export {
  errorCodes,
  type ErrorCode,
  EbpfLeakError,
  PermissionError,
  NoSuchProcessError,
  NoBtfError,
  UprobesUnsupportedError,
  LibraryNotFoundError,
  SymbolNotFoundError,
  TargetExitedError,
  UnsupportedAllocatorError,
  InvalidOptionError,
  BpfError,
  CommandNotFoundError,
  TracerClosedError,
  StateError,
  MultiUprobeUnsupportedError,
  AddonError,
  GcUnavailableError,
  SuppressionSyntaxError,
  UnsafeFileError,
  ProbeConflictError,
  PtraceError,
  ScanError,
} from './errors.js';

// Checked reports and leak checks for test suites
export { checkReport, formatCheckedReport, type CheckedLeakReport } from './report/checked.js';
export {
  assertNoLeaks,
  assertReport,
  checkLeaks,
  type AssertNoLeaksOptions,
  type CheckLeaksOptions,
} from './harness/program-check.js';
export { formatNativeLeakReport, leakCheck, type FormatNativeOptions, type LeakCheckOptions } from './harness/in-process-check.js';
export {
  currentThreadId,
  measure,
  type Amount,
  type LeakSite,
  type MeasuredFunction,
  type MeasureOptions,
  type NativeLeakReport,
} from './harness/measure.js';
export { collectGarbage } from './harness/gc.js';
export { HeapErrorsError, LeakError, LeakInconclusiveError } from './harness/leak-errors.js';
export { tracingSupport, type TracingSupport } from './target/tracing-support.js';

// Suppressions
export { defaultSuppressions } from './suppressions/defaults.js';
export {
  generateSuppressions,
  leakKinds,
  loadSuppressions,
  parseSuppressions,
  resolveSuppressions,
  type FramePattern,
  type GenerateOptions,
  type LeakKind,
  type LsanSuppression,
  type MatchOptions,
  type SuppressionHit,
  type SuppressionInput,
  type SuppressionRule,
  type ValgrindSuppression,
} from './suppressions/rules.js';
