// The CFI stack walker (bpf/unwind.bpf.h, native/unwind/unwinder.cc) and the per-stack totals, as lib/ sees
// them: the modes, the stack ids the walker hands out, and decoders for what the addon returns.
//
// Modes (trace()'s `unwind` option):
//   'auto'  (default) stacks are walked in the kernel with unwind tables built from each module's
//           .eh_frame (DWARF CFI), so code built without frame pointers (Debian's libstdc++,
//           -O2 -fomit-frame-pointer programs) is walked right: `new` -> malloc names the function
//           that called `new`. A module whose table does not fit keeps the frame-pointer rule if
//           it keeps frame pointers.
//   'dwarf' the same, tables only.
//   'fp'    the kernel's frame-pointer walk (bpf_get_stackid), as before the walker.
// Not x86-64: always 'fp'.

export const unwindModes = ['auto', 'dwarf', 'fp'] as const;
export type UnwindMode = (typeof unwindModes)[number];

export function isUnwindMode(value: unknown): value is UnwindMode {
  return typeof value === 'string' && (unwindModes as readonly string[]).includes(value);
}

/** Stack ids of walked stacks: bit 51 set, a hash of the frames below (bpf/abi/unwind_types.h). */
export const UNWIND_STACK_ID_BIT = 2 ** 51;

export function isUnwoundStackId(id: number): boolean {
  return id >= UNWIND_STACK_ID_BIT && id < 2 * UNWIND_STACK_ID_BIT;
}

/** Outstanding bytes and blocks of one stack id (-1: allocations recorded without a stack). */
export interface StackTotal {
  stackId: number;
  bytes: number;
  blocks: number;
}

const STACK_TOTAL_BYTES = 24; // s64 stack id, s64 bytes, s64 blocks

/** Records of Tracer.readStackTotals(). Stacks whose blocks were all freed are left out. */
export function decodeStackTotals(buffer: ArrayBuffer): StackTotal[] {
  const words = new BigInt64Array(buffer, 0, Math.floor(buffer.byteLength / STACK_TOTAL_BYTES) * 3);
  const out: StackTotal[] = [];
  for (let i = 0; i + 2 < words.length; i += 3) {
    const blocks = Number(words[i + 2]!);
    const bytes = Number(words[i + 1]!);
    if (blocks === 0 && bytes === 0) continue;
    out.push({ stackId: Number(words[i]!), bytes, blocks });
  }
  return out;
}

/** A module the walker met, and what it has for it. */
export interface UnwindModule {
  path: string;
  /** 'table': its CFI rows; 'frame-pointers': the frame-pointer rule (no room for its table, and
   *  it keeps frame pointers); 'none': no usable CFI, stacks through it are marked incomplete. */
  kind: 'table' | 'frame-pointers' | 'none';
  rows: number;
}

/** Tracer.unwindStats(): the walker's counters (summed over CPUs) and tables. */
export interface UnwindStats {
  mode: UnwindMode;
  /** Stacks walked. */
  walks: number;
  /** Frames those walks produced. */
  frames: number;
  /** Frames whose rule came from the caches (per return address). */
  cacheHits: number;
  /** Frames whose rule was looked up in the tables (first time a return address was seen). */
  cacheMisses: number;
  /** Distinct stacks stored. */
  newStacks: number;
  /** Walks that stepped through a module without a table (yet) by the frame-pointer rule: their
   *  frames may be incomplete. Modules mapped after attach (dlopen) are loaded within
   *  milliseconds; allocations in them before that are counted here. */
  incomplete: number;
  /** Walks that stopped before the outermost frame: their frames are right, outer ones missing. */
  truncated: number;
  /** Allocations recorded without a stack because another stack had the same id. */
  collisions: number;
  /** Allocations recorded without a stack: stack map full, or the per-CPU scratch in use. */
  failures: number;
  /** Modules stacks reached before their table was loaded. */
  missingFiles: number;
  /** Walks cut short (counted in `truncated` too) because the kernel's lookup of a mapping user
   *  space had not listed yet found the mmap lock taken by another thread. */
  busy: number;
  /** Executable mappings in the walker's table (found without the mmap lock). */
  mappings: number;
  /** Updates of the per-stack totals lost (their map was full). */
  totalsDropped: number;
  tableRows: number;
  tableRowCapacity: number;
  rules: number;
  /** Modules left without a table because the row capacity was reached. */
  tablesFull: number;
  modules: UnwindModule[];
}

/** The addon's unwindTable(path): the table the walker gets for a file (tests, diagnostics). */
export interface NativeUnwindTable {
  fdes: number;
  /** FDEs with a row computing the CFA from rbp (functions that set up a frame pointer). */
  rbpFdes: number;
  keepsFramePointers: boolean;
  /** Why there are no rows. */
  error?: string;
  /** File offset where each row starts (sorted). */
  offsets: Uint32Array;
  /** Four per row: cfa type, cfa offset, rbp type, rbp offset (see cfaTypes, rbpTypes). */
  rules: Int32Array;
}

/** enum leak_unwind_cfa, by value. */
export const cfaTypes = ['none', 'rsp', 'rbp', 'deref-rbp', 'end', 'unsupported'] as const;
/** enum leak_unwind_rbp, by value. */
export const rbpTypes = ['same', 'at-cfa', 'at-rbp', 'undefined'] as const;
