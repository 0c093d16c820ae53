// ebpf-leak: find native memory leaks by tracing malloc/free with eBPF uprobes.
export { trace } from './trace.js';
export { LeakTracer, leakTracerEvents, type TracerInfo } from './tracer.js';
export { tracedProcessEvents, type TracedProcess, type TracedProcessEvents, type ProcessExit } from './traced-process.js';
export * from './errors.js';
export * from './types.js';
export * from './harness.js';
export type { PlacementDecision, ProbePlacement } from './placement.js';
export type { StackTotal, UnwindMode, UnwindModule, UnwindStats } from './unwind.js';
export type { Counters } from './native-layout.js';
