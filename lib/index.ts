// ebpf-leak: find native memory leaks by tracing malloc/free with eBPF uprobes.
export { trace } from './tracer/trace.js';
export { LeakTracer, leakTracerEvents, type TracerInfo } from './tracer/leak-tracer.js';
export { tracedProcessEvents, type TracedProcess, type TracedProcessEvents, type ProcessExit } from './tracer/traced-process.js';
export * from './errors.js';
export * from './types.js';
export * from './harness/index.js';
export type { PlacementDecision, ProbePlacement } from './probes/placement.js';
export type { StackTotal, UnwindMode, UnwindModule, UnwindStats } from './native/unwind.js';
export type { Counters } from './native/layout.js';
