// Where each allocator function is in the allocator file, and so where the uprobes go.
import { pauseIfDue } from '../util/cooperative.js';
import { SymbolNotFoundError } from '../errors.js';
import { leakFunctions } from '../native/layout.js';
import { loadNative, type NativeProbe } from '../native/addon.js';
import { placeEntryProbe, type PlacementDecision, type ProbePlacement } from './placement.js';
import type { AllocatorFunction, AllocatorOptions } from '../types.js';

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
}

/**
 * `probePlacement`: 'optimized' (default) moves an entry probe off a single-stepped first
 * instruction when lib/probes/placement.ts proves it safe; 'entry' keeps every probe at its function's
 * first instruction (for comparison, or should a placement ever be suspected).
 */
export function planProbes(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
  probePlacement: ProbePlacement = 'optimized',
): ProbePlan {
  const steps = planSteps(path, glibc, allocator, probePlacement);
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
): Promise<ProbePlan> {
  const steps = planSteps(path, glibc, allocator, probePlacement);
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
): Generator<void, ProbePlan> {
  const found = findProbedFunctions(path, glibc, allocator);
  const plan: ProbePlan = { probes: [], attached: {}, missing: found.missing, aliases: found.aliases, placements: [] };
  for (const f of found.functions) {
    yield;
    const placement = placeEntryProbe(path, f.fn, f.offset, f.size, probePlacement);
    plan.placements.push(placement);
    plan.attached[f.fn] = f.symbol;
    plan.probes.push({ fn: f.index, path, entryOffset: placement.entryOffset, returnOffset: f.offset });
  }
  return plan;
}

interface ProbedFunction {
  fn: AllocatorFunction;
  /** enum leak_fn */
  index: number;
  symbol: string;
  offset: number;
  size: number;
}

/** The functions to probe, in leak_fn order, and those absent or sharing another's address. */
function findProbedFunctions(
  path: string,
  glibc: boolean,
  allocator: AllocatorOptions | undefined,
): { functions: ProbedFunction[]; missing: AllocatorFunction[]; aliases: ProbePlan['aliases'] } {
  const symbolOf = (fn: AllocatorFunction) => allocator?.symbols?.[fn] ?? fn;
  const info = loadNative().readElf(path, leakFunctions.map(symbolOf));
  const required = glibc ? requiredInGlibc : requiredFunctions;
  const found = { functions: [] as ProbedFunction[], missing: [] as AllocatorFunction[], aliases: {} as ProbePlan['aliases'] };
  const byOffset = new Map<number, AllocatorFunction>();
  leakFunctions.forEach((fn, index) => {
    const symbol = symbolOf(fn);
    const elfSymbol = info.symbols[symbol];
    if (!elfSymbol) {
      if (required.includes(fn) || allocator?.symbols?.[fn] !== undefined) {
        throw new SymbolNotFoundError(
          `${path} has no function ${symbol} (for ${fn}), which ebpf-leak must probe. ` +
            (glibc
              ? 'This libc is not a glibc ebpf-leak knows; name the allocator with allocator: { path, symbols }.'
              : `Check the name with \`nm -D ${path} | grep ${symbol}\` and pass allocator.symbols.${fn}.`),
        );
      }
      found.missing.push(fn);
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
    found.functions.push({ fn, index, symbol, offset: elfSymbol.offset, size: elfSymbol.size });
  });
  return found;
}
