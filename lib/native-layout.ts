// Decoders for the records in bpf/leak.h. Field order must match the structs there; the addon
// reports its struct sizes (`layout`) and checkLayout() refuses to run on a mismatch.
import type { AllocatorFunction } from './types.js';
import type { NativeLayout } from './native.js';

/** enum leak_fn, by value. */
export const leakFunctions: readonly AllocatorFunction[] = [
  'malloc',
  'calloc',
  'realloc',
  'reallocarray',
  'free',
  'posix_memalign',
  'aligned_alloc',
  'memalign',
  'valloc',
  'pvalloc',
];

export const counterFields = [
  'allocs',
  'frees',
  'bytesAllocated',
  'bytesFreed',
  'unknownFrees',
  'droppedAllocations',
  'lostEvents',
  'stackFailures',
  'inflightFailures',
  'execs',
] as const;
export type Counters = Record<(typeof counterFields)[number], number>;

const SNAPSHOT_ENTRY_BYTES = 48;
const EVENT_BYTES = 56;

export function checkLayout(layout: NativeLayout): void {
  const expected = { counters: counterFields.length * 8, snapshotEntry: SNAPSHOT_ENTRY_BYTES, event: EVENT_BYTES };
  for (const [name, size] of Object.entries(expected)) {
    if (layout[name as keyof NativeLayout] !== size) {
      throw new Error(
        `ebpf-leak: the native addon's ${name} record is ${layout[name as keyof NativeLayout]} bytes, ` +
          `lib/ expects ${size}: rebuild with 'npm run build'`,
      );
    }
  }
}

export function decodeCounters(buffer: ArrayBuffer): Counters {
  const words = new BigUint64Array(buffer);
  const out = {} as Counters;
  counterFields.forEach((field, i) => {
    out[field] = Number(words[i] ?? 0n);
  });
  return out;
}

/** Struct-of-arrays view of a snapshot buffer: cheap for a million entries. */
export interface SnapshotColumns {
  count: number;
  address(i: number): bigint;
  size(i: number): number;
  timestampNs(i: number): bigint;
  tid(i: number): number;
  stackId(i: number): number;
  mark(i: number): number;
}

export function snapshotColumns(buffer: ArrayBuffer): SnapshotColumns {
  const u = new BigUint64Array(buffer);
  const s = new BigInt64Array(buffer);
  const words = SNAPSHOT_ENTRY_BYTES / 8;
  return {
    count: buffer.byteLength / SNAPSHOT_ENTRY_BYTES,
    address: (i) => u[i * words]!,
    size: (i) => Number(u[i * words + 1]!),
    timestampNs: (i) => u[i * words + 2]!,
    tid: (i) => Number(u[i * words + 3]!),
    stackId: (i) => Number(s[i * words + 4]!),
    mark: (i) => Number(u[i * words + 5]!),
  };
}

export interface RawEvent {
  kind: 'alloc' | 'free';
  fn: AllocatorFunction;
  address: bigint;
  size: number;
  timestampNs: bigint;
  tid: number;
  stackId: number;
}

export function* decodeEvents(buffer: ArrayBuffer): Generator<RawEvent> {
  const u = new BigUint64Array(buffer);
  const s = new BigInt64Array(buffer);
  const words = EVENT_BYTES / 8;
  for (let base = 0; base + words <= u.length; base += words) {
    yield {
      kind: u[base] === 1n ? 'alloc' : 'free',
      fn: leakFunctions[Number(u[base + 1]!)] ?? 'malloc',
      address: u[base + 2]!,
      size: Number(u[base + 3]!),
      timestampNs: u[base + 4]!,
      tid: Number(u[base + 5]!),
      stackId: Number(s[base + 6]!),
    };
  }
}
