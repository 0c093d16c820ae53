// Which lost blocks are lost through which: a scanned report's lost blocks (definitely and
// indirectly), their owners (valgrind's clique tree: the lost block whose flood reached each
// indirectly lost one) and the pointers between them. A suppression that hides a lost block hides
// what is lost only through it, as LeakSanitizer does (it takes a suppressed block as a root and
// what it reaches as no leak): a block still reached from a lost block no rule hides stays listed.
//
// The graph belongs to a report's leak list (the array, which copies of a report share), so that
// checking a report after the fact finds it; a report read back from JSON has none, and its
// groups are suppressed by their own stacks only.
import { hex } from './tally.js';
import { hasKinds, noOwner } from '../native/scan-records.js';
import type { BlockColumns } from '../native/layout.js';
import type { LeakGroup } from '../types.js';

/** Kind codes of lost blocks (lib/native/scan-records.ts kindByCode). */
const DEFINITE = 0;
const INDIRECT = 1;
const SAMPLE_ADDRESSES = 4;

/** The lost blocks of a report, in its rows' order. */
export interface LostGraph {
  count: number;
  /** Index in the report's `leaks` of each block's group. */
  group: Int32Array;
  kind: Uint8Array;
  size: Float64Array;
  address(i: number): bigint;
  /** Owner's index in this graph, -1 when none (a definitely lost block, or an owner the report
   *  left out). */
  owner: Int32Array;
  /** Out-pointers of block i: to[begin[i] .. begin[i + 1]). */
  begin: Uint32Array;
  to: Uint32Array;
}

const graphs = new WeakMap<readonly LeakGroup[], () => LostGraph | null>();

/** Ties the lost blocks of `rows` (every row when null) of `columns` to `leaks`, whose groups are
 *  `groupKeys` in order (stack id and kind code each). Built only when a suppression needs it. */
export function attachLostGraph(
  leaks: readonly LeakGroup[],
  columns: BlockColumns,
  rows: Uint32Array | null,
  groupKeys: readonly { stackId: number; kind?: number }[],
): void {
  if (!hasKinds(columns) || columns.owner === undefined || columns.lostEdges === undefined) return;
  let built: LostGraph | null | undefined;
  graphs.set(leaks, () => (built ??= buildLostGraph(columns, rows, groupKeys)));
}

/** Builds the graph of `leaks` now and lets go of the blocks' columns it was to be built from:
 *  for a report kept for long (a finished child process's), which must not hold every block it
 *  was made from. */
export function settleLostGraph(leaks: readonly LeakGroup[]): void {
  const graph = graphs.get(leaks)?.() ?? null;
  // Only indirectly lost blocks can be hidden through others: without one, suppressing hides
  // exactly the suppressed groups, as with no graph.
  if (graph === null || !graph.kind.includes(INDIRECT)) {
    graphs.delete(leaks);
    return;
  }
  const addresses = new BigUint64Array(graph.count);
  for (let i = 0; i < graph.count; i++) addresses[i] = graph.address(i);
  const settled: LostGraph = { ...graph, address: (i) => addresses[i]! };
  graphs.set(leaks, () => settled);
}

export function lostGraphOf(leaks: readonly LeakGroup[]): LostGraph | null {
  return graphs.get(leaks)?.() ?? null;
}

function buildLostGraph(
  columns: BlockColumns & { kind(i: number): number; owner?(i: number): number; lostEdges?: Uint32Array },
  rows: Uint32Array | null,
  groupKeys: readonly { stackId: number; kind?: number }[],
): LostGraph | null {
  // Per stack id: its definitely and its indirectly lost group's index.
  const groupIndex = new Map<number, [number, number]>();
  groupKeys.forEach((g, i) => {
    if (g.kind !== DEFINITE && g.kind !== INDIRECT) return;
    const pair = groupIndex.get(g.stackId) ?? [-1, -1];
    pair[g.kind] = i;
    groupIndex.set(g.stackId, pair);
  });
  if (groupIndex.size === 0) return null;
  const total = rows === null ? columns.count : rows.length;
  const at = new Int32Array(columns.count).fill(-1); // row -> index in the graph
  const picked: number[] = [];
  for (let k = 0; k < total; k++) {
    const row = rows === null ? k : rows[k]!;
    const kind = columns.kind(row);
    if (kind !== DEFINITE && kind !== INDIRECT) continue;
    at[row] = picked.length;
    picked.push(row);
  }
  const n = picked.length;
  const group = new Int32Array(n);
  const kind = new Uint8Array(n);
  const size = new Float64Array(n);
  const owner = new Int32Array(n);
  // Neighbours share their stack (a list built in a loop): one lookup per run of them.
  let lastStack = NaN;
  let lastPair: [number, number] | undefined;
  for (let i = 0; i < n; i++) {
    const row = picked[i]!;
    kind[i] = columns.kind(row);
    const stackId = columns.stackId(row);
    if (stackId !== lastStack) {
      lastStack = stackId;
      lastPair = groupIndex.get(stackId);
    }
    group[i] = lastPair?.[kind[i]!] ?? -1;
    size[i] = columns.size(row);
    const o = columns.owner!(row);
    owner[i] = o === noOwner || o >= at.length ? -1 : at[o]!;
  }
  const edges = columns.lostEdges!;
  const begin = new Uint32Array(n + 1);
  const pairs: number[] = [];
  for (let e = 0; e + 1 < edges.length; e += 2) {
    const from = at[edges[e]!] ?? -1;
    const to = at[edges[e + 1]!] ?? -1;
    if (from < 0 || to < 0) continue;
    pairs.push(from, to);
    begin[from + 1]!++;
  }
  for (let i = 0; i < n; i++) begin[i + 1]! += begin[i]!;
  const to = new Uint32Array(pairs.length / 2);
  const fill = begin.slice(0, n);
  for (let p = 0; p < pairs.length; p += 2) to[fill[pairs[p]!]!++] = pairs[p + 1]!;
  return { count: n, group, kind, size, address: (i) => columns.address(picked[i]!), owner, begin, to };
}

/** What hiding the suppressed groups' blocks hides besides them. */
export interface OwnedHidden<H> {
  /** Per group index in `leaks`: the group without its hidden blocks (null: none are left). */
  groups: Map<number, LeakGroup | null>;
  /** Per hit: the bytes and blocks it hides through the blocks it suppressed. */
  hits: Map<H, { bytes: number; blocks: number }>;
}

/** The lost blocks hidden because only suppressed blocks lead to them: every lost block that no
 *  path from an unsuppressed definitely lost block reaches without passing through a suppressed
 *  one. Each is counted to the rule of the nearest suppressed block among its owners (one always
 *  is: its owners lead from a definitely lost block to it). `hitOf` gives the hit of a suppressed
 *  group's index, undefined for a group no rule covers. */
export function hiddenThroughOwners<H>(
  leaks: readonly LeakGroup[],
  graph: LostGraph,
  hitOf: (group: number) => H | undefined,
): OwnedHidden<H> {
  const out: OwnedHidden<H> = { groups: new Map(), hits: new Map() };
  const n = graph.count;
  const suppressed = new Uint8Array(n);
  let any = false;
  for (let i = 0; i < n; i++) {
    const g = graph.group[i]!;
    if (g >= 0 && hitOf(g) !== undefined) {
      suppressed[i] = 1;
      any = true;
    }
  }
  if (!any) return out;
  // Listed: reached from an unsuppressed definitely lost block through unsuppressed blocks.
  const listed = new Uint8Array(n);
  const stack: number[] = [];
  for (let i = 0; i < n; i++) {
    if (graph.kind[i] !== DEFINITE || suppressed[i]) continue;
    listed[i] = 1;
    stack.push(i);
  }
  while (stack.length > 0) {
    const i = stack.pop()!;
    for (let e = graph.begin[i]!; e < graph.begin[i + 1]!; e++) {
      const t = graph.to[e]!;
      if (listed[t] || suppressed[t]) continue;
      listed[t] = 1;
      stack.push(t);
    }
  }
  const hiddenIn = new Map<number, number>(); // group -> hidden blocks
  const hidden = new Uint8Array(n);
  // The nearest suppressed owner of each block (-1: none; -2: not known yet), each chain of
  // owners walked once: a lost list of a million links is one chain.
  const nearest = new Int32Array(n).fill(-2);
  const path: number[] = [];
  const nearestOwner = (i: number): number => {
    let o = graph.owner[i]!;
    path.length = 0;
    while (o >= 0 && !suppressed[o] && nearest[o] === -2) {
      path.push(o);
      o = graph.owner[o]!;
    }
    const found = o < 0 ? -1 : suppressed[o] ? o : nearest[o]!;
    for (const p of path) nearest[p] = found;
    nearest[i] = found;
    return found;
  };
  for (let i = 0; i < n; i++) {
    if (listed[i] || suppressed[i]) continue;
    const o = nearest[i] !== -2 ? nearest[i]! : nearestOwner(i);
    // An owner the report left out (narrowed by thread or mark): the block keeps its listing.
    if (o < 0) continue;
    hidden[i] = 1;
    const hit = hitOf(graph.group[o]!)!;
    const h = out.hits.get(hit) ?? { bytes: 0, blocks: 0 };
    h.bytes += graph.size[i]!;
    h.blocks += 1;
    out.hits.set(hit, h);
    const g = graph.group[i]!;
    if (g >= 0) hiddenIn.set(g, (hiddenIn.get(g) ?? 0) + 1);
  }
  const kept = new Map<number, { bytes: number; largest: number; samples: string[] }>();
  for (const [g, count] of hiddenIn) {
    if (count >= leaks[g]!.blocks) out.groups.set(g, null);
    else kept.set(g, { bytes: 0, largest: 0, samples: [] });
  }
  for (let i = 0; i < n && kept.size > 0; i++) {
    const k = hidden[i] ? undefined : kept.get(graph.group[i]!);
    if (k === undefined) continue;
    k.bytes += graph.size[i]!;
    k.largest = Math.max(k.largest, graph.size[i]!);
    if (k.samples.length < SAMPLE_ADDRESSES) k.samples.push(hex(graph.address(i)));
  }
  for (const [g, k] of kept) {
    const before = leaks[g]!;
    out.groups.set(g, {
      ...before,
      bytes: k.bytes,
      blocks: before.blocks - hiddenIn.get(g)!,
      largestBlock: k.largest,
      sampleAddresses: k.samples,
    });
  }
  return out;
}
