// ebpf-leak: find native memory leaks by tracing malloc/free with eBPF uprobes.
export { trace } from './trace.js';
export { LeakTracer, leakTracerEvents, type TracerInfo } from './tracer.js';
export * from './errors.js';
export * from './types.js';
export * from './harness.js';
export type { PlacementDecision, ProbePlacement } from './placement.js';
export type { StackTotal, UnwindMode, UnwindModule, UnwindStats } from './unwind.js';
export type { Counters } from './native-layout.js';
