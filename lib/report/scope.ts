// Reports that can be narrowed after the fact: by the window a block was allocated in (marks), by
// the thread that allocated it, and by the modules its stack passes through.
//
// Marks, not timestamps: `tracer.mark()` writes a counter into the BPF program, which stores the
// value current at each allocation in the block's record (`leak_block.mark`). "Allocated inside
// this window" is then an exact property of each block, whatever the clocks, the scheduling or
// the thread that made it.
//
// A ScopedLeakReport is a LeakReport (same enumerable fields, so JSON and the formatters see a
// plain report) with non-enumerable methods that return narrower reports. Filters compose by
// intersection. `summary.inUse*` and `leaks` describe the blocks kept; the other summary fields
// (allocs, frees, ...) are whole-tracer totals and stay as they were.
import { forEachRange, mapSliced, ROWS_PER_STEP } from '../util/cooperative.js';
import type { Counters, BlockColumns } from '../native/layout.js';
import { hasKinds } from '../native/scan-records.js';
import { attachLostGraph } from './lost-graph.js';
import { tallyRows, toLeakGroup, type Tally } from './tally.js';
import type { AllocatorFunction, LeakGroup, LeakReport, StackFrame } from '../types.js';

/** Which threads to keep: a list of tids, or a predicate. */
export type ThreadFilter = readonly number[] | ((tid: number) => boolean);

/** Which stacks to keep: those with a frame whose module (file path) matches. A string matches
 *  when it equals the path or is its last path component(s) (`'my_addon.node'`). */
export type ModuleFilter = RegExp | string | ((modulePath: string) => boolean);

export interface ScopeFilter {
  /** Keep blocks allocated while the mark was at least this (a value from `tracer.mark()`). */
  since?: number;
  /** Keep blocks allocated while the mark was below this. */
  until?: number;
  threads?: ThreadFilter;
  /** Keep blocks whose stack passes through a matching module. */
  module?: ModuleFilter;
  /** Drop blocks whose stack passes through a matching module. */
  excludeModule?: ModuleFilter;
}

/** One outstanding block of a report. */
export interface LeakBlock {
  address: bigint;
  size: number;
  tid: number;
  /** The mark current when it was allocated. */
  mark: number;
  /** Stack-trace id; -1 when no stack was captured. Blocks with one id form one leak group. */
  stackId: number;
  fn: AllocatorFunction;
}

export interface ScopedLeakReport extends LeakReport {
  /** Only blocks allocated at or after `mark` (a value returned by `tracer.mark()`). */
  since(mark: number): ScopedLeakReport;
  /** Only blocks allocated before `mark`. */
  until(mark: number): ScopedLeakReport;
  /** Only blocks allocated by these threads. */
  threads(filter: ThreadFilter): ScopedLeakReport;
  /** Only blocks whose stack passes through a module matching `filter`, e.g. /my_addon\.node$/. */
  module(filter: ModuleFilter): ScopedLeakReport;
  /** Any combination of the above. */
  filter(filter: ScopeFilter): ScopedLeakReport;
  /** The blocks behind `leaks`. */
  blocks(): LeakBlock[];
  /** Symbolized stack of a stack id (innermost first), or [] when unknown. */
  stackOf(stackId: number): StackFrame[];
  /** The kernel-side counters when the report was taken (includes stackFailures,
   *  inflightFailures and ignoredAllocations, which the summary leaves out). */
  readonly counters: Readonly<Counters>;
}

/** What a scoped report is made of; shared by every narrower report derived from it. */
export interface ReportSource {
  base: Omit<LeakReport, 'summary' | 'leaks'>;
  /** Summary fields that come from the counters (inUse* are recomputed). */
  summary: LeakReport['summary'];
  counters: Counters;
  columns: BlockColumns;
  /** Symbolized stacks by stack id; ids missing here have no frames. */
  stacks: ReadonlyMap<number, StackFrame[]>;
}

export function matchesModule(filter: ModuleFilter, path: string): boolean {
  if (typeof filter === 'function') return filter(path);
  if (typeof filter === 'string') return path === filter || path.endsWith(filter.startsWith('/') ? filter : `/${filter}`);
  filter.lastIndex = 0;
  return filter.test(path);
}

export function stackPassesThrough(stack: readonly StackFrame[], filter: ModuleFilter): boolean {
  return stack.some((f) => f.module !== undefined && matchesModule(filter, f.module));
}

function threadPredicate(filter: ThreadFilter): (tid: number) => boolean {
  if (typeof filter === 'function') return filter;
  const set = new Set(filter);
  return (tid) => set.has(tid);
}

/** Row predicate for a filter, or null when the filter keeps every row; `stacks` decides the
 *  module filters per stack id. */
export function rowFilter(
  columns: BlockColumns,
  filter: ScopeFilter,
  stacks?: ReadonlyMap<number, StackFrame[]>,
): ((i: number) => boolean) | null {
  const tests: Array<(i: number) => boolean> = [];
  const { since, until } = filter;
  if (since !== undefined) tests.push((i) => columns.mark(i) >= since);
  if (until !== undefined) tests.push((i) => columns.mark(i) < until);
  if (filter.threads !== undefined) {
    const keep = threadPredicate(filter.threads);
    tests.push((i) => keep(columns.tid(i)));
  }
  for (const [f, wanted] of [
    [filter.module, true],
    [filter.excludeModule, false],
  ] as const) {
    if (f === undefined) continue;
    const cache = new Map<number, boolean>();
    tests.push((i) => {
      const id = columns.stackId(i);
      let hit = cache.get(id);
      if (hit === undefined) {
        hit = stackPassesThrough(stacks?.get(id) ?? [], f);
        cache.set(id, hit);
      }
      return hit === wanted;
    });
  }
  if (tests.length === 0) return null;
  if (tests.length === 1) return tests[0]!;
  return (i) => tests.every((t) => t(i));
}

/** Rows kept: `rows` (every row of `columns` when null) that pass `keep`. */
export function keptRows(columns: BlockColumns, rows: Uint32Array | null, keep: (row: number) => boolean): Uint32Array {
  const count = rows === null ? columns.count : rows.length;
  const out = new Uint32Array(count);
  const n = keepRange(rows, keep, out, 0, 0, count);
  return out.slice(0, n);
}

/** keptRows() in slices, the event loop served between them. */
export async function keptRowsSliced(
  columns: BlockColumns,
  rows: Uint32Array | null,
  keep: (row: number) => boolean,
): Promise<Uint32Array> {
  const count = rows === null ? columns.count : rows.length;
  const out = new Uint32Array(count);
  let n = 0;
  await forEachRange(count, ROWS_PER_STEP, (start, end) => {
    n = keepRange(rows, keep, out, n, start, end);
  });
  return out.slice(0, n);
}

/** Appends the rows of positions [start, end) that pass `keep` to `out` from `n`; the new n. */
function keepRange(rows: Uint32Array | null, keep: (row: number) => boolean, out: Uint32Array, n: number, start: number, end: number): number {
  for (let k = start; k < end; k++) {
    const row = rows === null ? k : rows[k]!;
    if (keep(row)) out[n++] = row;
  }
  return n;
}

/** The report of the rows `rows` (every row when null) of `source`, at once; `tally` when the
 *  caller has it already. For the narrowing methods, which return synchronously. */
export function scopedReport(source: ReportSource, rows: Uint32Array | null, tally: Tally = tallyRows(source.columns, rows)): ScopedLeakReport {
  return assemble(source, rows, tally, tally.groups.map((g) => toLeakGroup(g, source.stacks.get(g.stackId) ?? [])));
}

/** scopedReport() with its groups built in slices: for reports the tracer makes (the final one
 *  may have tens of thousands of groups). */
export async function scopedReportSliced(source: ReportSource, rows: Uint32Array | null, tally: Tally): Promise<ScopedLeakReport> {
  const leaks = await mapSliced(tally.groups, 256, (g) => toLeakGroup(g, source.stacks.get(g.stackId) ?? []));
  return assemble(source, rows, tally, leaks);
}

function assemble(source: ReportSource, rows: Uint32Array | null, tally: Tally, leaks: LeakGroup[]): ScopedLeakReport {
  const { columns } = source;
  const view = rows === null ? columns : subsetColumns(columns, rows);
  const report = {
    version: source.base.version,
    target: source.base.target,
    summary: {
      ...source.summary,
      inUseBlocks: tally.inUse.blocks,
      inUseBytes: tally.inUse.bytes,
      ...(tally.kinds ? tally.kinds.summary() : {}),
    },
    leaks,
    durationMs: source.base.durationMs,
    ...(source.base.scan ? { scan: source.base.scan } : {}),
    ...(source.base.sampling ? { sampling: source.base.sampling } : {}),
  } as ScopedLeakReport;
  attachLostGraph(leaks, columns, rows, tally.groups);
  const narrow = (filter: ScopeFilter): ScopedLeakReport => {
    const keep = rowFilter(columns, filter, source.stacks);
    return scopedReport(source, keep === null ? rows : keptRows(columns, rows, keep));
  };
  const methods: Omit<ScopedLeakReport, keyof LeakReport | 'counters'> = {
    since: (mark) => narrow({ since: mark }),
    until: (mark) => narrow({ until: mark }),
    threads: (filter) => narrow({ threads: filter }),
    module: (filter) => narrow({ module: filter }),
    filter: (filter) => narrow(filter),
    blocks: () => {
      const out: LeakBlock[] = new Array(view.count);
      for (let i = 0; i < view.count; i++) {
        out[i] = {
          address: view.address(i),
          size: view.size(i),
          tid: view.tid(i),
          mark: view.mark(i),
          stackId: view.stackId(i),
          fn: view.fn(i),
        };
      }
      return out;
    },
    stackOf: (stackId) => source.stacks.get(stackId) ?? [],
  };
  for (const [name, value] of Object.entries(methods)) {
    Object.defineProperty(report, name, { value, enumerable: false, writable: false, configurable: true });
  }
  Object.defineProperty(report, 'counters', { value: Object.freeze({ ...source.counters }), enumerable: false });
  return report;
}

/** The rows `rows` of `columns`, as columns. */
export function subsetColumns(columns: BlockColumns, rows: Uint32Array): BlockColumns {
  const kinds = hasKinds(columns)
    ? {
        kind: (i: number) => columns.kind(rows[i]!),
        heuristic: (i: number) => columns.heuristic(rows[i]!),
        indirect: (i: number) => columns.indirect(rows[i]!),
      }
    : {};
  return {
    ...kinds,
    count: rows.length,
    address: (i) => columns.address(rows[i]!),
    size: (i) => columns.size(rows[i]!),
    tid: (i) => columns.tid(rows[i]!),
    stackId: (i) => columns.stackId(rows[i]!),
    mark: (i) => columns.mark(rows[i]!),
    fn: (i) => columns.fn(rows[i]!),
    weight: (i) => columns.weight(rows[i]!),
  };
}
