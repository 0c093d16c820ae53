// Where each allocator function is in the allocator file, and so where the uprobes go.
import { closeSync, readSync } from 'node:fs';
import { pauseIfDue } from '../util/cooperative.js';
import { preloadMarker } from '../target/resolve.js';
import { fromNativeError, SymbolNotFoundError } from '../errors.js';
import { leakFunctions } from '../native/layout.js';
import { loadNative, type NativeElfInfo, type NativeProbe } from '../native/addon.js';
import { optionWord } from '../option-words.js';
import { placeEntryProbe, type PlacementDecision, type ProbePlacement } from './placement.js';
import { operatorCallees, proveWrappers, type WrapperProof } from './operators.js';
import type { UnwindMode } from '../native/unwind.js';
import type { AllocatorFunction, AllocatorOptions } from '../types.js';

/** The functions of the C allocator interface, looked up in the allocator's file. */
const cFunctions: readonly AllocatorFunction[] = leakFunctions.slice(0, 10);
/** jemalloc's own entry points, in any allocator's file that has them. */
const jemallocFunctions: readonly AllocatorFunction[] = ['mallocx', 'rallocx', 'sdallocx', 'dallocx'];

/** C++'s operators (Itanium ABI, 64-bit size_t), every overload, in the file that defines them
 *  for the program (libstdc++, libc++, or an allocator that replaces them). */
export const cxxOperatorSymbols: ReadonlyArray<readonly [string, AllocatorFunction]> = [
  ['_Znwm', 'operator new'],
  ['_ZnwmRKSt9nothrow_t', 'operator new(nothrow)'],
  ['_ZnwmSt11align_val_t', 'operator new(aligned)'],
  ['_ZnwmSt11align_val_tRKSt9nothrow_t', 'operator new(aligned, nothrow)'],
  ['_Znam', 'operator new[]'],
  ['_ZnamRKSt9nothrow_t', 'operator new[](nothrow)'],
  ['_ZnamSt11align_val_t', 'operator new[](aligned)'],
  ['_ZnamSt11align_val_tRKSt9nothrow_t', 'operator new[](aligned, nothrow)'],
  ['_ZdlPv', 'operator delete'],
  ['_ZdlPvm', 'operator delete'],
  ['_ZdlPvRKSt9nothrow_t', 'operator delete'],
  ['_ZdlPvSt11align_val_t', 'operator delete'],
  ['_ZdlPvmSt11align_val_t', 'operator delete'],
  ['_ZdlPvSt11align_val_tRKSt9nothrow_t', 'operator delete'],
  ['_ZdaPv', 'operator delete[]'],
  ['_ZdaPvm', 'operator delete[]'],
  ['_ZdaPvRKSt9nothrow_t', 'operator delete[]'],
  ['_ZdaPvSt11align_val_t', 'operator delete[]'],
  ['_ZdaPvmSt11align_val_t', 'operator delete[]'],
  ['_ZdaPvSt11align_val_tRKSt9nothrow_t', 'operator delete[]'],
];

/** Where a probed function is, for the frame a stack gets on top (the allocating or releasing
 *  function, as valgrind shows it). */
export interface FunctionSite {
  path: string;
  offset: number;
  symbol: string;
}

/** One symbol of a probed function and where its entry probe went: a release at an entry names
 *  the overload it came through by that probe (operator delete(void*, unsigned long), not
 *  operator delete(void*)), as valgrind's stacks do. */
export interface OverloadSite extends FunctionSite {
  entryOffset: number;
}

/** Without these there is no leak report worth the name. */
const requiredFunctions: readonly AllocatorFunction[] = ['malloc', 'free'];
/** glibc always has these; their absence means the file is not what we think it is. */
const requiredInGlibc: readonly AllocatorFunction[] = ['malloc', 'free', 'calloc', 'realloc'];

export interface ProbePlan {
  probes: NativeProbe[];
  /** Function -> symbol probed, for the tracer's info. */
  attached: Partial<Record<AllocatorFunction, string>>;
  /** Functions that were looked for and are absent (optional ones). */
  missing: AllocatorFunction[];
  /** Functions that share an address with another one and are covered by its probe. */
  aliases: Partial<Record<AllocatorFunction, AllocatorFunction>>;
  /** Where each probed function's entry probe went and why (lib/probes/placement.ts), in probe order.
   *  The return probes stay at the function offsets. */
  placements: PlacementDecision[];
  /** Each function's site (for several symbols of one function, the first). */
  sites: Partial<Record<AllocatorFunction, FunctionSite>>;
  /** Every symbol probed for each function, with its entry probe. */
  overloads: Partial<Record<AllocatorFunction, OverloadSite[]>>;
  /** Pairs of families (`alloc>release`, see familyPair) a mismatch cannot be told in: an
   *  allocator whose operator delete is its free, or new[] its new, records both as one. */
  ambiguousPairs: string[];
}

type Family = 'malloc' | 'new' | 'new[]';

/** The family of the function that allocated a block. */
export function allocFamily(fn: AllocatorFunction): Family {
  if (fn.startsWith('operator new[]')) return 'new[]';
  if (fn.startsWith('operator new')) return 'new';
  return 'malloc';
}

/** The family of blocks a release function is for. */
export function releaseFamily(fn: AllocatorFunction): Family {
  if (fn === 'operator delete[]') return 'new[]';
  if (fn === 'operator delete') return 'new';
  return 'malloc';
}

export function familyPair(allocatedBy: AllocatorFunction, releasedBy: AllocatorFunction): string {
  return `${allocFamily(allocatedBy)}>${releaseFamily(releasedBy)}`;
}

/**
 * `unwind`: the stack walker the tracer will use ('fp': operator new keeps its return probe).
 * `probePlacement`: 'optimized' (default) moves an entry probe off a single-stepped first
 * instruction when lib/probes/placement.ts proves it safe; 'entry' keeps every probe at its function's
 * first instruction (for comparison, or should a placement ever be suspected).
 * `afterCalls`: false when the tracer runs no program after a preloaded call (it loaded none: no
 * image had the preloaded library when it started); the library's malloc and calloc then get an
 * entry and a return probe, as with 'entry'.
 */
export function planProbes(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
  probePlacement: ProbePlacement = 'optimized',
  cxxRuntime?: string,
  unwind: UnwindMode = 'auto',
  afterCalls = true,
): ProbePlan {
  const steps = planSteps(path, glibc, allocator, probePlacement, cxxRuntime, unwind, afterCalls);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/** planProbes() with the event loop served between functions: in a fresh process (cold code, the
 *  file's symbols read for the first time) the plan takes 3-5 ms. */
export async function planProbesSliced(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
  probePlacement: ProbePlacement = 'optimized',
  cxxRuntime?: string,
  unwind: UnwindMode = 'auto',
  afterCalls = true,
): Promise<ProbePlan> {
  const steps = planSteps(path, glibc, allocator, probePlacement, cxxRuntime, unwind, afterCalls);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    await pauseIfDue();
  }
}

/** The plan, one function at a time: it yields after reading the file and after each function. */
function* planSteps(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
  probePlacement: ProbePlacement,
  cxxRuntime: string | undefined,
  unwind: UnwindMode,
  withAfterCalls: boolean,
): Generator<void, ProbePlan> {
  const found = findProbedFunctions(path, glibc, allocator);
  const afterCalls =
    !withAfterCalls || unwind === 'fp' || probePlacement === 'entry' ? new Map<AllocatorFunction, number>() : preloadedCalls(path, found.info);
  const ambiguous = new Set<string>();
  const preloaded = preloadedDeletes(path, cxxRuntime);
  found.functions.push(...preloaded);
  if (cxxRuntime !== undefined) {
    const bound = new Set(preloaded.map((f) => f.symbol));
    found.functions.push(...findCxxOperators(cxxRuntime, found.functions, path, ambiguous, probePlacement, unwind, bound));
  }
  const plan: ProbePlan = {
    probes: [],
    attached: {},
    missing: found.missing,
    aliases: found.aliases,
    placements: [],
    sites: {},
    overloads: {},
    ambiguousPairs: [...ambiguous],
  };
  for (const f of found.functions) {
    yield;
    const afterCall = f.path === path ? afterCalls.get(f.fn) : undefined;
    if (afterCall !== undefined) {
      plan.placements.push({
        function: f.fn,
        functionOffset: f.offset,
        entryOffset: afterCall,
        instruction: 'nopl 0x0(%rax,%rax,1)',
        emulated: false,
        reason: 'a preloaded entry point: one probe on the 5-byte nop after its call into glibc, which sees the request and the block',
      });
      plan.attached[f.fn] ??= f.symbol;
      plan.sites[f.fn] ??= { path: f.path, offset: f.offset, symbol: f.symbol };
      (plan.overloads[f.fn] ??= []).push({ path: f.path, offset: f.offset, symbol: f.symbol, entryOffset: afterCall });
      plan.probes.push({ fn: f.index, path: f.path, entryOffset: afterCall, returnOffset: f.offset, afterCall: true });
      continue;
    }
    let placement = f.wrapper?.placement ?? placeEntryProbe(f.path, f.fn, f.offset, f.size, probePlacement);
    if (f.wrapper && !f.wrapper.entryOnly) placement = { ...placement, reason: `${placement.reason} (keeps its return probe: ${f.wrapper.reason})` };
    plan.placements.push(placement);
    if (plan.attached[f.fn] === undefined) plan.attached[f.fn] = f.symbol;
    plan.sites[f.fn] ??= { path: f.path, offset: f.offset, symbol: f.symbol };
    (plan.overloads[f.fn] ??= []).push({ path: f.path, offset: f.offset, symbol: f.symbol, entryOffset: placement.entryOffset });
    plan.probes.push({
      fn: f.index,
      path: f.path,
      entryOffset: placement.entryOffset,
      returnOffset: f.offset,
      ...(f.wrapper?.entryOnly ? { entryOnly: true, callReturnDelta: f.wrapper.callReturnDelta } : {}),
      ...(f.wrapper?.site ? { site: f.wrapper.site } : {}),
    });
  }
  return plan;
}

interface ProbedFunction {
  fn: AllocatorFunction;
  /** enum leak_fn */
  index: number;
  path: string;
  symbol: string;
  offset: number;
  size: number;
  /** A C++ operator proved to need no return probe (lib/probes/operators.ts). */
  wrapper?: WrapperProof;
}

/** The C++ operators `file` defines, but those at an address already probed (an allocator whose
 *  operator new is its malloc). */
function findCxxOperators(
  file: string,
  probed: readonly ProbedFunction[],
  allocatorPath: string,
  ambiguous: Set<string>,
  probePlacement: ProbePlacement,
  unwind: UnwindMode,
  boundElsewhere: ReadonlySet<string>,
): ProbedFunction[] {
  const info = loadNative().readElf(file, cxxOperatorSymbols.map(([symbol]) => symbol), [...operatorCallees, ...cxxOperatorSymbols.map(([symbol]) => symbol)]);
  const taken = new Map(probed.filter((p) => p.path === allocatorPath && file === allocatorPath).map((p) => [p.offset, p.fn]));
  const out: ProbedFunction[] = [];
  for (const [symbol, fn] of cxxOperatorSymbols) {
    const s = info.symbols[symbol];
    if (!s || boundElsewhere.has(symbol)) continue;
    const twin = taken.get(s.offset);
    if (twin !== undefined) {
      // Calls of `symbol` are recorded as `twin`'s.
      if (fn.startsWith('operator delete')) ambiguous.add(`${releaseFamily(fn)}>${releaseFamily(twin)}`);
      else ambiguous.add(`${allocFamily(twin)}>${allocFamily(fn)}`);
      continue;
    }
    taken.set(s.offset, fn);
    out.push({ fn, index: leakFunctions.indexOf(fn), path: file, symbol, offset: s.offset, size: s.size });
  }
  const sameFile = (fn: AllocatorFunction) => probed.find((p) => p.fn === fn && p.path === file)?.offset;
  const proofs = proveWrappers(
    file,
    out.map((o) => ({ fn: o.fn, symbol: o.symbol, offset: o.offset, size: o.size, address: info.symbols[o.symbol]!.address })),
    info,
    { malloc: sameFile('malloc'), free: sameFile('free') },
    probePlacement,
    // An operator new's block is seen at malloc's return, inside the operator: the stack then
    // starts from the operator's caller by its return address on the stack. The kernel's
    // frame-pointer walk cannot start there, so with it new keeps its return probe.
    { news: unwind !== 'fp' },
  );
  for (const o of out) o.wrapper = proofs.get(o.symbol);
  return out;
}

/** The operator delete overloads of ebpf-leak's preloaded entry points (the C++ variant of
 *  native/preload/preload.c), which the dynamic loader binds ahead of the C++ runtime's: a 5-byte
 *  nop and a jump to glibc's free each, so each releases at its entry and needs no return probe. */
function preloadedDeletes(path: string, cxxRuntime: string | undefined): ProbedFunction[] {
  if (cxxRuntime === undefined || cxxRuntime === path) return [];
  const deletes = cxxOperatorSymbols.filter(([, fn]) => fn.startsWith('operator delete'));
  let info: NativeElfInfo;
  try {
    info = loadNative().readElf(path, [preloadMarker, ...deletes.map(([symbol]) => symbol)]);
  } catch {
    return [];
  }
  if (info.symbols[preloadMarker] === undefined) return [];
  return deletes.flatMap(([symbol, fn]) => {
    const s = info.symbols[symbol];
    if (!s) return [];
    const wrapper: WrapperProof = { entryOnly: true, callReturnDelta: 0, reason: 'a preloaded entry point: a 5-byte nop, then a jump to free' };
    return [{ fn, index: leakFunctions.indexOf(fn), path, symbol, offset: s.offset, size: s.size, wrapper }];
  });
}

/** The preloaded malloc and calloc of ebpf-leak's own library (native/preload/preload.c): where
 *  the 5-byte nop after each one's call into glibc is, proved by its bytes: `call *rel(%rip)`, then
 *  the nop, inside the function. A probe there sees the request in callee-saved registers and the
 *  block in %rax, and the stack is walked from the caller's return address above the function's
 *  frame: the CFI walker's work, so not with the frame-pointer walk. Empty for any other file. */
function preloadedCalls(path: string, info: NativeElfInfo): Map<AllocatorFunction, number> {
  const out = new Map<AllocatorFunction, number>();
  if (info.symbols[preloadMarker] === undefined) return out;
  for (const [fn, mark] of afterCallMarks) {
    const f = info.symbols[fn];
    const at = info.symbols[mark];
    if (!f || !at || at.offset < f.offset + callLength || at.offset + nop5.length > f.offset + f.size) continue;
    const code = readFileBytes(path, at.offset - callLength, callLength + nop5.length);
    if (code && code[0] === 0xff && code[1] === 0x15 && nop5.every((b, i) => code[callLength + i] === b)) out.set(fn, at.offset);
  }
  return out;
}

/** The preloaded functions probed after their call, and the symbol on the nop there. */
const afterCallMarks: ReadonlyArray<readonly [AllocatorFunction, string]> = [
  ['malloc', 'ebpf_leak_malloc_returned'],
  ['calloc', 'ebpf_leak_calloc_returned'],
];

/** `call *rel32(%rip)` */
const callLength = 6;
const nop5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];

function readFileBytes(path: string, offset: number, length: number): Uint8Array | undefined {
  let fd: number | undefined;
  try {
    fd = loadNative().openTargetFile(path);
    const out = new Uint8Array(length);
    return readSync(fd, out, 0, length, offset) === length ? out : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The functions to probe, in leak_fn order, and those absent or sharing another's address. */
function findProbedFunctions(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
): { functions: ProbedFunction[]; missing: AllocatorFunction[]; aliases: ProbePlan['aliases']; info: NativeElfInfo } {
  const symbolOf = (fn: AllocatorFunction) => allocator?.symbols?.[fn] ?? fn;
  const wanted = glibc ? cFunctions : [...cFunctions, ...jemallocFunctions];
  let info: NativeElfInfo;
  try {
    // With what tells ebpf-leak's preloaded library (preloadedCalls()), in the same read.
    info = loadNative().readElf(path, [...wanted.map(symbolOf), preloadMarker, ...afterCallMarks.map(([, mark]) => mark)]);
  } catch (error) {
    throw fromNativeError(error, `cannot read the allocator library ${path}`);
  }
  const required = glibc ? requiredInGlibc : requiredFunctions;
  const found = { functions: [] as ProbedFunction[], missing: [] as AllocatorFunction[], aliases: {} as ProbePlan['aliases'], info };
  const byOffset = new Map<number, AllocatorFunction>();
  wanted.forEach((fn) => {
    const index = leakFunctions.indexOf(fn);
    const symbol = symbolOf(fn);
    const elfSymbol = info.symbols[symbol];
    if (!elfSymbol) {
      if (required.includes(fn) || allocator?.symbols?.[fn] !== undefined) {
        throw new SymbolNotFoundError(
          `${path} has no function ${symbol} (for ${fn}), which ebpf-leak must probe. ` +
            (glibc
              ? `This libc is not a glibc ebpf-leak knows; name the allocator with ${optionWord('allocatorSymbols')}.`
              : `Check the name with \`nm -D ${path} | grep ${symbol}\` and pass allocator.symbols.${fn}.`),
        );
      }
      if (!jemallocFunctions.includes(fn)) found.missing.push(fn);
      return;
    }
    // Aliases (glibc's aligned_alloc is memalign, cfree is free) must be probed once, or every
    // call through them would count twice.
    const twin = byOffset.get(elfSymbol.offset);
    if (twin) {
      found.aliases[fn] = twin;
      return;
    }
    byOffset.set(elfSymbol.offset, fn);
    found.functions.push({ fn, index, path, symbol, offset: elfSymbol.offset, size: elfSymbol.size });
  });
  return found;
}
