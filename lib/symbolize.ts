// Addresses -> StackFrames: mapping lookup, one native symbolize batch per module, perf-map JIT
// symbols for addresses outside any file.

import { pauseIfDue } from './cooperative.js';
import { loadNative } from './native.js';
import { findMapping, type PerfMap, type ProcMapping } from './proc-maps.js';
import type { StackFrame } from './types.js';

/** One frame for one address as the native symbolizer returns it, innermost first. */
export interface SymbolizedFrame {
  symbol?: string;
  file?: string;
  line?: number;
  /** This frame was inlined into the next one in the list. */
  inlined: boolean;
}

export type SymbolizeResult = SymbolizedFrame[] | { error: string };

export interface NativeSymbolizeOptions {
  /** Extra roots searched for `.build-id/xx/yyyy.debug` and `.gnu_debuglink` files, before
   *  `/proc/PID/root/usr/lib/debug` (for modules under a /proc/PID/root) and `/usr/lib/debug`. */
  debugDirs?: string[];
}

/** What lib/symbolize.ts needs from the native addon (native/symbolizer.cc). */
export interface NativeSymbolizer {
  /** File offsets in `modulePath` -> frames, one entry per offset. Runs off the JS thread. */
  symbolize(
    modulePath: string,
    offsets: BigUint64Array | Array<number | bigint>,
    options?: NativeSymbolizeOptions,
  ): Promise<SymbolizeResult[]>;
  readBuildId(path: string): string | null;
}

export interface SymbolizeStacksOptions extends NativeSymbolizeOptions {
  /** JIT symbols (from readPerfMap) for addresses outside any file mapping. */
  perfMap?: PerfMap | null;
  /** Frames after the first of each stack are return addresses: symbolize `address - 1` so the
   *  frame names the call, not the line after it. Default true. */
  returnAddresses?: boolean;
  /** The native symbolizer; default: the package's addon. */
  native?: NativeSymbolizer;
}

/** The addon's symbolizer (native/symbolizer.cc, registered by native/addon.cc). */
export function loadNativeSymbolizer(): NativeSymbolizer {
  const addon = loadNative() as unknown as Partial<NativeSymbolizer>;
  if (typeof addon.symbolize !== 'function' || typeof addon.readBuildId !== 'function')
    throw new Error('this build of the ebpf-leak addon has no symbolizer (native/symbolizer.cc)');
  return addon as NativeSymbolizer;
}

const hex = (v: bigint): string => '0x' + v.toString(16);

/** Frames placed or built between looks at the clock (lib/cooperative.ts). */
const FRAMES_PER_STEP = 256;

/** Pauses for the event loop every FRAMES_PER_STEP frames, when the time slice is used up. */
function framePacer(): (frames: number) => Promise<void> | undefined {
  let sinceCheck = 0;
  return (frames) => {
    sinceCheck += frames + 1;
    if (sinceCheck < FRAMES_PER_STEP) return undefined;
    sinceCheck = 0;
    return pauseIfDue();
  };
}

interface Site {
  mapping: ProcMapping;
  /** Offset in the file of the address itself (reported). */
  offset: bigint;
  /** Offset symbolized (the call instruction for a return address). */
  lookupOffset: bigint;
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

  // Pass 1: place every address; collect distinct lookup offsets per module file.
  const sites: Array<Array<Site | undefined>> = [];
  const perModule = new Map<string, Set<bigint>>();
  const pace = framePacer();
  for (const stack of stacks) {
    await pace(stack.length);
    const row: Array<Site | undefined> = [];
    stack.forEach((address, i) => {
      const lookup = returnAddresses && i > 0 && address > 0n ? address - 1n : address;
      const mapping = findMapping(sorted, lookup);
      if (!mapping || mapping.path === '') {
        row.push(undefined);
        return;
      }
      const site: Site = {
        mapping,
        offset: address - mapping.start + mapping.offset,
        lookupOffset: lookup - mapping.start + mapping.offset,
      };
      row.push(site);
      if (mapping.hostPath !== undefined) {
        let set = perModule.get(mapping.hostPath);
        if (!set) perModule.set(mapping.hostPath, (set = new Set()));
        set.add(site.lookupOffset);
      }
    });
    sites.push(row);
  }

  // Pass 2: one batch per module. Sequential on purpose: the native side serializes on one lock,
  // and parallel batches would only park libuv threadpool threads on it.
  const results = new Map<string, Map<bigint, SymbolizeResult>>();
  const buildIds = new Map<string, string | null>();
  if (perModule.size > 0) {
    const native = options.native ?? loadNativeSymbolizer();
    const nativeOptions: NativeSymbolizeOptions = options.debugDirs ? { debugDirs: options.debugDirs } : {};
    for (const [path, set] of perModule) {
      try {
        buildIds.set(path, native.readBuildId(path));
      } catch {
        buildIds.set(path, null);
      }
      const offsets = [...set];
      const byOffset = new Map<bigint, SymbolizeResult>();
      try {
        const res = await native.symbolize(path, BigUint64Array.from(offsets), nativeOptions);
        offsets.forEach((off, i) => {
          const r = res[i];
          if (r !== undefined) byOffset.set(off, r);
        });
      } catch (err) {
        const error = err instanceof Error ? err.message : String(err);
        for (const off of offsets) byOffset.set(off, { error });
      }
      results.set(path, byOffset);
    }
  }

  // Pass 3: frames.
  const symbolized: StackFrame[][] = new Array(stacks.length);
  for (let s = 0; s < stacks.length; s++) {
    const stack = stacks[s]!;
    await pace(stack.length);
    const out: StackFrame[] = [];
    stack.forEach((address, i) => {
      const site = sites[s]![i];
      if (!site) {
        const jit = options.perfMap?.lookup(address);
        if (jit) out.push({ address: hex(address), module: '[perf-map]', symbol: jit.symbol });
        else out.push({ address: hex(address) });
        return;
      }
      const { mapping } = site;
      const base: StackFrame = { address: hex(address), module: mapping.path, offset: hex(site.offset) };
      if (mapping.hostPath === undefined) {
        // Pseudo mapping ([vdso], ...): the offset is relative to the mapping.
        base.offset = hex(address - mapping.start);
        out.push(base);
        return;
      }
      const buildId = buildIds.get(mapping.hostPath);
      if (buildId) base.buildId = buildId;
      const r = results.get(mapping.hostPath)?.get(site.lookupOffset);
      if (!r || !Array.isArray(r) || r.length === 0) {
        out.push(base);
        return;
      }
      for (const f of r) {
        const frame: StackFrame = { ...base };
        if (f.symbol !== undefined) frame.symbol = f.symbol;
        if (f.file !== undefined) frame.file = f.file;
        if (f.line !== undefined) frame.line = f.line;
        frame.inlined = f.inlined;
        out.push(frame);
      }
    });
    symbolized[s] = out;
  }
  return symbolized;
}
