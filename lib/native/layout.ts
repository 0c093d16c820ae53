// Decoders for the records in bpf/abi/leak.h. Field order must match the structs there; the addon
// reports its struct sizes (`layout`) and checkLayout() refuses to run on a mismatch.
import { allocatorFunctions, type AllocatorFunction } from '../types.js';
import type { NativeLayout } from './addon.js';
import { AddonError } from '../errors.js';

/** enum leak_fn, by value: bpf/abi/leak.h numbers the functions in allocatorFunctions' order. */
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

/** struct leak_block, and struct leak_timed_block (the same, then the timestamp). */
const BLOCK_BYTES = 32;
const TIMED_BLOCK_BYTES = 40;
const EVENT_BYTES = 56;
const PATH_PARTS = 12;
const PATH_PART_BYTES = 64;
const MODULE_BYTES = 5 * 8 + PATH_PARTS * PATH_PART_BYTES;
const HEAP_ERROR_BYTES = 72;

export function checkLayout(layout: NativeLayout): void {
  const expected = {
    counters: counterFields.length * 8,
    block: BLOCK_BYTES,
    timedBlock: TIMED_BLOCK_BYTES,
    event: EVENT_BYTES,
    module: MODULE_BYTES,
    heapError: HEAP_ERROR_BYTES,
  };
  for (const [name, size] of Object.entries(expected)) {
    if (layout[name as keyof NativeLayout] !== size) {
      throw new AddonError(
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

/** Struct-of-arrays view of a buffer of leak_block records: cheap for a million blocks. */
export interface BlockColumns {
  count: number;
  address(i: number): bigint;
  size(i: number): number;
  tid(i: number): number;
  stackId(i: number): number;
  mark(i: number): number;
  fn(i: number): AllocatorFunction;
  /** How many blocks this one stands for: 1, or in sampling mode 1 / P(a block of its size is
   *  sampled) = 1 / (1 - e^(-size / mean)), the unbiased scale-up of tcmalloc's heap profiler. */
  weight(i: number): number;
}

/** The same over leak_timed_block records: each block's allocation time too. */
export interface SnapshotColumns extends BlockColumns {
  timestampNs(i: number): bigint;
}

/** 1 / P(sampled) for a block of `size` bytes when samples are `mean` bytes apart on average. */
export function sampleWeight(size: number, mean: number): number {
  if (size <= 0) return 1 / (1 - Math.exp(-1 / mean)); // counted as one byte
  return 1 / -Math.expm1(-size / mean);
}

/** Columns of a buffer of leak_block records (the snapshots reports are made of). */
export function blockColumns(buffer: ArrayBuffer, sampleEveryBytes = 0): BlockColumns {
  return recordColumns(buffer, BLOCK_BYTES, sampleEveryBytes);
}

/** Columns of a buffer of leak_timed_block records (snapshot() with timestamps). */
export function snapshotColumns(buffer: ArrayBuffer, sampleEveryBytes = 0): SnapshotColumns {
  const columns = recordColumns(buffer, TIMED_BLOCK_BYTES, sampleEveryBytes);
  const u = new BigUint64Array(buffer);
  const words = TIMED_BLOCK_BYTES / 8;
  return { ...columns, timestampNs: (i) => u[i * words + BLOCK_BYTES / 8]! };
}

/** The leak_block fields of records `bytes` long. */
function recordColumns(buffer: ArrayBuffer, bytes: number, sampleEveryBytes: number): BlockColumns {
  const u = new BigUint64Array(buffer);
  // Number-valued fields are read as 32-bit halves: reading a BigUint64Array element allocates
  // a BigInt, which over a million blocks is most of a report's time.
  const h = new Uint32Array(buffer);
  const words = bytes / 8;
  const halves = bytes / 4;
  // size_fn: the size in the low 56 bits (LEAK_SIZE_BITS), the function in the top 8.
  const size = (i: number) => h[i * halves + 2]! + (h[i * halves + 3]! & 0x00ff_ffff) * 0x1_0000_0000;
  return {
    count: buffer.byteLength / bytes,
    address: (i) => u[i * words]!,
    size,
    fn: (i) => leakFunctions[h[i * halves + 3]! >>> 24] ?? 'malloc',
    // Stack ids are small, or hashes below 2^53 marked by a high bit (see bpf/abi/leak.h); -1 is none.
    stackId: (i) => {
      const lo = h[i * halves + 4]!;
      const hi = h[i * halves + 5]!;
      return hi === 0xffff_ffff ? lo | 0 : lo + hi * 0x1_0000_0000;
    },
    tid: (i) => h[i * halves + 6]!,
    mark: (i) => h[i * halves + 7]!,
    weight: sampleEveryBytes > 0 ? (i) => sampleWeight(size(i), sampleEveryBytes) : () => 1,
  };
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

/** enum leak_error_kind, by value. */
const errorKinds = [undefined, 'invalid-free', 'double-free', 'mismatched-free'] as const;

/** struct leak_heap_error. Stack ids as in blocks (-1: none). */
export interface RawHeapError {
  kind: 'invalid-free' | 'double-free' | 'mismatched-free';
  tid: number;
  /** The process (followForks: whose report it belongs in). */
  pid: number;
  address: bigint;
  releaseFn: AllocatorFunction;
  /** At an entry: the entry probe's offset in its page + 1 (which overload); 0 elsewhere. */
  releaseEntryPage: number;
  releaseStack: number;
  /** The block, when known (size 0 and fn undefined: not known). */
  allocSize: number;
  allocFn: AllocatorFunction | undefined;
  allocStack: number;
  firstFreeFn: AllocatorFunction;
  firstFreeEntryPage: number;
  firstFreeStack: number;
}

function stackIdOf(lo: number, hi: number): number {
  return hi === 0xffff_ffff ? lo | 0 : lo + hi * 0x1_0000_0000;
}

/** The addon's readHeapErrors(): how many errors the kernel saw, and those it recorded. */
export function decodeHeapErrors(buffer: ArrayBuffer): { seen: number; errors: RawHeapError[] } {
  const h = new Uint32Array(buffer);
  const u = new BigUint64Array(buffer);
  const seen = h[0]! + h[1]! * 0x1_0000_0000;
  const errors: RawHeapError[] = [];
  const halves = HEAP_ERROR_BYTES / 4;
  for (let base = 2; base + halves <= h.length; base += halves) {
    const kind = errorKinds[h[base]!];
    if (kind === undefined) continue;
    const sizeFn = u[base / 2 + 4]!;
    errors.push({
      kind,
      tid: h[base + 1]!,
      address: u[base / 2 + 1]!,
      releaseFn: leakFunctions[h[base + 4]!] ?? 'free',
      releaseEntryPage: h[base + 5]!,
      releaseStack: stackIdOf(h[base + 6]!, h[base + 7]!),
      allocSize: Number(sizeFn & 0xff_ffff_ffff_ffffn),
      allocFn: sizeFn === 0n ? undefined : leakFunctions[Number(sizeFn >> 56n)],
      allocStack: stackIdOf(h[base + 10]!, h[base + 11]!),
      firstFreeFn: leakFunctions[h[base + 12]!] ?? 'free',
      firstFreeEntryPage: h[base + 13]!,
      firstFreeStack: stackIdOf(h[base + 14]!, h[base + 15]!),
      pid: h[base + 16]!,
    });
  }
  return { seen, errors };
}
