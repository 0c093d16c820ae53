// ebpf-leak: find native memory leaks by tracing malloc/free with eBPF uprobes.
export { trace } from './trace.js';
export { LeakTracer, leakTracerEvents, type TracerInfo } from './tracer.js';
export * from './errors.js';
export * from './types.js';
