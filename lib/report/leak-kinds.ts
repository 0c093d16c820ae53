// Leak kinds in reports: valgrind's LEAK SUMMARY totals, and its kind lists (--show-leak-kinds,
// --errors-for-leak-kinds) with their defaults.
import { InvalidOptionError } from '../errors.js';
import { heuristicByCode } from '../native/scan-records.js';
import { leakKinds, type BytesBlocks, type HeapSummary, type LeakHeuristic, type LeakKind } from '../types.js';

/** valgrind's defaults for --show-leak-kinds and --errors-for-leak-kinds. */
export const defaultShownKinds: readonly LeakKind[] = ['definite', 'possible'];

/** Per-kind and per-heuristic sums, added a block at a time. */
export class KindTotals {
  readonly bytes = [0, 0, 0, 0];
  readonly blocks = [0, 0, 0, 0];
  readonly heuristicBytes = [0, 0, 0, 0, 0];
  readonly heuristicBlocks = [0, 0, 0, 0, 0];

  add(kind: number, heuristic: number, bytes: number, weight: number): void {
    this.bytes[kind]! += bytes * weight;
    this.blocks[kind]! += weight;
    if (heuristic !== 0) {
      this.heuristicBytes[heuristic]! += bytes * weight;
      this.heuristicBlocks[heuristic]! += weight;
    }
  }

  summary(): Pick<HeapSummary, 'definitelyLost' | 'indirectlyLost' | 'possiblyLost' | 'stillReachable' | 'reachableViaHeuristic'> {
    const at = (k: number): BytesBlocks => ({ bytes: Math.round(this.bytes[k]!), blocks: Math.round(this.blocks[k]!) });
    const heuristics: Partial<Record<LeakHeuristic, BytesBlocks>> = {};
    let any = false;
    heuristicByCode.forEach((name, h) => {
      if (name === undefined || this.heuristicBlocks[h] === 0) return;
      heuristics[name] = { bytes: Math.round(this.heuristicBytes[h]!), blocks: Math.round(this.heuristicBlocks[h]!) };
      any = true;
    });
    return {
      definitelyLost: at(0),
      indirectlyLost: at(1),
      possiblyLost: at(2),
      stillReachable: at(3),
      ...(any ? { reachableViaHeuristic: heuristics } : {}),
    };
  }
}

/** Parses valgrind's kind lists: `all`, `none`, or a comma-separated list of definite, indirect,
 *  possible, reachable. `what` names the option in messages. */
export function parseLeakKindList(value: string, what: string): LeakKind[] {
  const words = value.split(',').map((w) => w.trim());
  if (words.length === 1 && words[0] === 'all') return [...leakKinds];
  if (words.length === 1 && words[0] === 'none') return [];
  const out = new Set<LeakKind>();
  for (const word of words) {
    if (!(leakKinds as readonly string[]).includes(word)) {
      throw new InvalidOptionError(
        `${what} must be all, none, or a comma-separated list of definite, indirect, possible, reachable (got ${JSON.stringify(value)})`,
      );
    }
    out.add(word as LeakKind);
  }
  return [...out];
}

/** A list given as an option: an array of kinds, or valgrind's text. */
export function leakKindsOption(value: unknown, what: string): LeakKind[] | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'string') return parseLeakKindList(value, what);
  if (Array.isArray(value) && value.every((k) => typeof k === 'string')) return parseLeakKindList(value.join(','), what);
  throw new InvalidOptionError(`${what} must be an array of leak kinds or valgrind's list text (got ${typeof value})`);
}

/** Whether a group of `kind` (undefined: not scanned, so any) is among `kinds`. */
export function kindSelected(kind: LeakKind | undefined, kinds: readonly LeakKind[]): boolean {
  return kind === undefined || kinds.includes(kind);
}
