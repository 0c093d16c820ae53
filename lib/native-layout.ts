// Decoders for the records in bpf/leak.h. Field order must match the structs there; the addon
// reports its struct sizes (`layout`) and checkLayout() refuses to run on a mismatch.
import { allocatorFunctions, type AllocatorFunction } from './types.js';
import type { NativeLayout } from './native.js';

/** enum leak_fn, by value: bpf/leak.h numbers the functions in allocatorFunctions' order. */
export const leakFunctions: readonly AllocatorFunction[] = allocatorFunctions;

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
  /** Allocations skipped because the tracer's own thread made them (self-tracing only). */
  'ignoredAllocations',
] as const;
export type Counters = Record<(typeof counterFields)[number], number>;

const SNAPSHOT_ENTRY_BYTES = 56;
const EVENT_BYTES = 56;
const PATH_PARTS = 12;
const PATH_PART_BYTES = 64;
const MODULE_BYTES = 5 * 8 + PATH_PARTS * PATH_PART_BYTES;

export function checkLayout(layout: NativeLayout): void {
  const expected = {
    counters: counterFields.length * 8,
    snapshotEntry: SNAPSHOT_ENTRY_BYTES,
    event: EVENT_BYTES,
    module: MODULE_BYTES,
  };
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
  fn(i: number): AllocatorFunction;
  /** How many blocks this one stands for: 1, or in sampling mode 1 / P(a block of its size is
   *  sampled) = 1 / (1 - e^(-size / mean)), the unbiased scale-up of tcmalloc's heap profiler. */
  weight(i: number): number;
}

/** 1 / P(sampled) for a block of `size` bytes when samples are `mean` bytes apart on average. */
export function sampleWeight(size: number, mean: number): number {
  if (size <= 0) return 1 / (1 - Math.exp(-1 / mean)); // counted as one byte
  return 1 / -Math.expm1(-size / mean);
}

export function snapshotColumns(buffer: ArrayBuffer, sampleEveryBytes = 0): SnapshotColumns {
  const u = new BigUint64Array(buffer);
  // Number-valued fields are read as two 32-bit halves: reading a BigUint64Array element
  // allocates a BigInt, which over a million blocks is most of a report's time.
  const h = new Uint32Array(buffer);
  const words = SNAPSHOT_ENTRY_BYTES / 8;
  const halves = words * 2;
  const num = (i: number, field: number) => h[i * halves + field * 2]! + h[i * halves + field * 2 + 1]! * 0x1_0000_0000;
  return {
    count: buffer.byteLength / SNAPSHOT_ENTRY_BYTES,
    address: (i) => u[i * words]!,
    size: (i) => num(i, 1),
    timestampNs: (i) => u[i * words + 2]!,
    tid: (i) => num(i, 3),
    // Stack ids are small, or hashes below 2^53 marked by a high bit (see bpf/leak.h); -1 is none.
    stackId: (i) => {
      const hi = h[i * halves + 9]!;
      return hi === 0xffff_ffff ? (h[i * halves + 8]! | 0) : num(i, 4);
    },
    mark: (i) => num(i, 5),
    fn: (i) => leakFunctions[h[i * halves + 12]!] ?? 'malloc',
    weight: sampleEveryBytes > 0 ? (i) => sampleWeight(num(i, 1), sampleEveryBytes) : () => 1,
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

const EVENT_WORDS = EVENT_BYTES / 8;

/** The records of an events batch, decoded one at a time (a batch holds up to ~18,700). */
export class EventBatch {
  readonly count: number;
  readonly byteLength: number;
  readonly #u: BigUint64Array;
  readonly #s: BigInt64Array;

  constructor(buffer: ArrayBuffer) {
    this.#u = new BigUint64Array(buffer);
    this.#s = new BigInt64Array(buffer);
    this.count = Math.floor(this.#u.length / EVENT_WORDS);
    this.byteLength = buffer.byteLength;
  }

  at(index: number): RawEvent {
    const u = this.#u;
    const base = index * EVENT_WORDS;
    return {
      kind: u[base] === 1n ? 'alloc' : 'free',
      fn: leakFunctions[Number(u[base + 1]!)] ?? 'malloc',
      address: u[base + 2]!,
      size: Number(u[base + 3]!),
      timestampNs: u[base + 4]!,
      tid: Number(u[base + 5]!),
      stackId: Number(this.#s[base + 6]!),
    };
  }
}

/** struct leak_module: an executable file mapping recorded in the kernel. */
export interface KernelModule {
  start: bigint;
  end: bigint;
  fileOffset: bigint;
  inode: bigint;
  /** Kernel dev_t: major << 20 | minor. */
  dev: number;
  /** Path from the root of the file's filesystem (not yet joined to a mount point). */
  pathInFs: string;
}

/** Records of readModules(): the map key (start) then struct leak_module. */
export function decodeModules(buffer: ArrayBuffer): KernelModule[] {
  const record = 8 + MODULE_BYTES;
  const view = new DataView(buffer);
  const bytes = new Uint8Array(buffer);
  const out: KernelModule[] = [];
  for (let base = 0; base + record <= buffer.byteLength; base += record) {
    const at = base + 8;
    const parts: string[] = [];
    for (let p = 0; p < PATH_PARTS; p++) {
      const from = at + 40 + p * PATH_PART_BYTES;
      const nul = bytes.indexOf(0, from);
      const end = nul === -1 || nul > from + PATH_PART_BYTES ? from + PATH_PART_BYTES : nul;
      if (end === from) break;
      parts.push(Buffer.from(bytes.subarray(from, end)).toString('utf8'));
    }
    out.push({
      start: view.getBigUint64(at, true),
      end: view.getBigUint64(at + 8, true),
      fileOffset: view.getBigUint64(at + 16, true),
      inode: view.getBigUint64(at + 24, true),
      dev: Number(view.getBigUint64(at + 32, true)),
      pathInFs: '/' + parts.reverse().join('/'),
    });
  }
  return out;
}
