// Addresses -> StackFrames: mapping lookup, one native symbolize batch per module, perf-map JIT
// symbols for addresses outside any file.
//
// Everything built here outlives the call (the frames) or most of it (the placed addresses), so
// each object costs twice: once to make, and again in every young-generation GC that copies it.
// With 10,000 frames those copies held the event loop 5-12 ms at a time, so the passes keep their
// per-address state small (numbers, not BigInts), read the native results in place, and make
// each frame once.

import { pauseIfDue } from '../util/cooperative.js';
import { loadNative, type NativeSymbolizeOptions, type NativeSymbolizer } from '../native/addon.js';
import { findMapping, type PerfMap, type ProcMapping } from '../target/proc-maps.js';
import { SymbolizedBatchReader, type SymbolizedBatch } from '../native/symbolized-batch.js';
import type { StackFrame } from '../types.js';

export type { SymbolizedBatch, SymbolizedFrame, SymbolizeResult } from '../native/symbolized-batch.js';
export type { NativeSymbolizeOptions, NativeSymbolizer } from '../native/addon.js';

export interface SymbolizeStacksOptions extends NativeSymbolizeOptions {
  /** JIT symbols (from readPerfMap) for addresses outside any file mapping. */
  perfMap?: PerfMap | null;
  /** Frames after the first of each stack are return addresses: symbolize `address - 1` so the
   *  frame names the call, not the line after it. Default true. */
  returnAddresses?: boolean;
  /** The native symbolizer; default: the package's addon. */
  native?: NativeSymbolizer;
}

/** The addon's symbolizer (native/symbols/symbolizer.cc, registered by native/addon/addon.cc). */
export function loadNativeSymbolizer(): NativeSymbolizer {
  return loadNative();
}

const hex = (v: bigint | number): string => '0x' + v.toString(16);

/** Addresses placed or frames built between looks at the clock (lib/util/cooperative.ts). */
const FRAMES_PER_STEP = 256;

/** Counts work; every FRAMES_PER_STEP items, a pause for the event loop if the slice is used up
 *  (undefined otherwise: no await, no microtask). */
function framePacer(): (items: number) => Promise<void> | undefined {
  let sinceCheck = 0;
  return (items) => {
    sinceCheck += items;
    if (sinceCheck < FRAMES_PER_STEP) return undefined;
    sinceCheck = 0;
    return pauseIfDue();
  };
}

/** The distinct offsets looked up in one module file, and what came back. */
interface ModuleBatch {
  path: string;
  /** File offsets, numbers: a file mapping starts below 2^53 bytes into its file (placeAddress). */
  offsets: number[];
  /** Index in `offsets` of each offset. */
  indexOf: Map<number, number>;
  buildId?: string;
  /** Unset when the call failed: the frames keep their module and offset. */
  results?: SymbolizedBatchReader;
}

/** Where an address was found. */
interface Site {
  mapping: ProcMapping;
  /** File offset of the address itself (reported). */
  offset: number;
  /** The module file's batch, and the index there of the offset symbolized (the call instruction
   *  for a return address); no batch for pseudo mappings ([vdso]). */
  batch: ModuleBatch | undefined;
  index: number;
}

/** A frame: `address`, `module`, `offset`, then `buildId` when known; symbolizer fields after.
 *  Always from a literal: a `{ ...base }` copy given more properties costs V8 ~5 us a frame (the
 *  copy's map has no transitions to share), 50 ms for 10,000 frames. */
function fileFrame(address: string, module: string, offset: string, buildId: string | undefined): StackFrame {
  const frame: StackFrame = { address, module, offset };
  if (buildId !== undefined) frame.buildId = buildId;
  return frame;
}

/** Opens `paths` in the native symbolizer and builds their symbol indexes, one after another off
 *  the JS thread, so that a report later finds them ready: a command's program, allocator and C++
 *  runtime are in nearly every stack, and reading their debug files (decompressing DWARF) would
 *  otherwise happen while the report is awaited. Failures are the report's to meet, not this. */
export function warmSymbols(paths: readonly string[], debugDirs: readonly string[], native = loadNativeSymbolizer()): Promise<void> {
  const options: NativeSymbolizeOptions = debugDirs.length > 0 ? { debugDirs: [...debugDirs] } : {};
  let chain = Promise.resolve();
  for (const path of new Set(paths)) {
    chain = chain.then(() => native.symbolize(path, new BigUint64Array(0), options)).then(
      () => undefined,
      () => undefined,
    );
  }
  return chain;
}

/**
 * Symbolizes stacks of instruction addresses (innermost first) of one process, given its
 * executable mappings (readProcMaps). An address expands to several frames when it lies in
 * inlined code: the inlined callees first (`inlined: true`), then the function they were inlined
 * into. Frames in a file carry module (the path the target sees), buildId and file offset, plus
 * symbol/file/line when known; JIT frames found in the perf map get module `[perf-map]`; frames in
 * pseudo mappings (`[vdso]`) get the pseudo name; frames outside every mapping keep only `address`.
 */
export async function symbolizeStacks(
  stacks: readonly (readonly bigint[])[],
  mappings: readonly ProcMapping[],
  options: SymbolizeStacksOptions = {},
): Promise<StackFrame[][]> {
  const returnAddresses = options.returnAddresses ?? true;
  const sorted = [...mappings].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const pace = framePacer();

  // Pass 1: place every address; collect distinct lookup offsets per module file.
  const batches = new Map<string, ModuleBatch>();
  const sites: Array<Array<Site | undefined>> = new Array(stacks.length);
  for (let s = 0; s < stacks.length; s++) {
    const stack = stacks[s]!;
    const row: Array<Site | undefined> = new Array(stack.length);
    for (let i = 0; i < stack.length; i++) {
      const pause = pace(1);
      if (pause) await pause;
      row[i] = placeAddress(stack[i]!, returnAddresses && i > 0, sorted, batches);
    }
    sites[s] = row;
  }

  // Pass 2: one native call per module. Sequential on purpose: the native side serializes on one
  // lock, and parallel calls would only park libuv threadpool threads on it.
  if (batches.size > 0) {
    const native = options.native ?? loadNativeSymbolizer();
    const nativeOptions: NativeSymbolizeOptions = options.debugDirs ? { debugDirs: options.debugDirs } : {};
    for (const batch of batches.values()) {
      try {
        batch.buildId = native.readBuildId(batch.path) || undefined;
      } catch {
        // frames without a build ID
      }
      const offsets = new BigUint64Array(batch.offsets.length);
      batch.offsets.forEach((offset, i) => (offsets[i] = BigInt(offset)));
      try {
        batch.results = new SymbolizedBatchReader(await native.symbolize(batch.path, offsets, nativeOptions));
      } catch {
        // frames with module and offset only, as for an offset the symbolizer knows nothing of
      }
    }
  }

  // Pass 3: frames.
  const symbolized: StackFrame[][] = new Array(stacks.length);
  for (let s = 0; s < stacks.length; s++) {
    const stack = stacks[s]!;
    const row = sites[s]!;
    const out: StackFrame[] = [];
    for (let i = 0; i < stack.length; i++) {
      const made = addFrames(out, stack[i]!, row[i], options.perfMap);
      const pause = pace(made);
      if (pause) await pause;
    }
    symbolized[s] = out;
  }
  return symbolized;
}

/** The mapping of `address` (of `address - 1` for a return address), and the offset to look up
 *  in its file, added to the file's batch. Undefined outside every mapping with a name. */
function placeAddress(
  address: bigint,
  returnAddress: boolean,
  sorted: readonly ProcMapping[],
  batches: Map<string, ModuleBatch>,
): Site | undefined {
  const lookup = returnAddress && address > 0n ? address - 1n : address;
  const mapping = findMapping(sorted, lookup);
  if (!mapping || mapping.path === '') return undefined;
  // A file offset as a number: below 2^53 in any real file (checked: an address that claims more
  // is treated as outside every mapping).
  const offset = Number(mapping.offset) + Number(address - mapping.start);
  if (!Number.isSafeInteger(offset)) return undefined;
  const site: Site = { mapping, offset, batch: undefined, index: -1 };
  if (mapping.hostPath === undefined) return site;
  let batch = batches.get(mapping.hostPath);
  if (!batch) batches.set(mapping.hostPath, (batch = { path: mapping.hostPath, offsets: [], indexOf: new Map() }));
  const lookupOffset = lookup === address ? site.offset : site.offset - 1;
  let index = batch.indexOf.get(lookupOffset);
  if (index === undefined) {
    index = batch.offsets.push(lookupOffset) - 1;
    batch.indexOf.set(lookupOffset, index);
  }
  site.batch = batch;
  site.index = index;
  return site;
}

/** Appends the frames of one address; returns how many. */
function addFrames(out: StackFrame[], address: bigint, site: Site | undefined, perfMap: PerfMap | null | undefined): number {
  if (!site) {
    const jit = perfMap?.lookup(address);
    out.push(jit ? { address: hex(address), module: '[perf-map]', symbol: jit.symbol } : { address: hex(address) });
    return 1;
  }
  const { mapping, batch } = site;
  if (!batch) {
    // Pseudo mapping ([vdso], ...): the offset is relative to the mapping.
    out.push({ address: hex(address), module: mapping.path, offset: hex(address - mapping.start) });
    return 1;
  }
  const addressHex = hex(address);
  const offsetHex = hex(site.offset);
  const results = batch.results;
  const count = results && site.index < results.count ? results.frameCount(site.index) : 0;
  if (count === 0) {
    out.push(fileFrame(addressHex, mapping.path, offsetHex, batch.buildId));
    return 1;
  }
  const first = results!.firstFrame(site.index);
  for (let k = first; k < first + count; k++) {
    const frame = fileFrame(addressHex, mapping.path, offsetHex, batch.buildId);
    const symbol = results!.symbol(k);
    const file = results!.file(k);
    const line = results!.line(k);
    if (symbol !== undefined) frame.symbol = symbol;
    if (file !== undefined) frame.file = file;
    if (line !== undefined) frame.line = line;
    frame.inlined = results!.inlined(k);
    const mangled = results!.mangled(k);
    if (mangled !== undefined) frame.mangled = mangled;
    out.push(frame);
  }
  return count;
}
