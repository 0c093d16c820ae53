// followForks: the kernel's table keys each block by its address and its process's index in the
// top bits (bpf/traced_processes.bpf.h). Live views are split by process here, each block's
// address as its process saw it.
import type { BlockColumns } from '../native/layout.js';
import { keptRowsSliced } from '../report/scope.js';

const PROCESS_SHIFT = 48n;
const ADDRESS_MASK = (1n << PROCESS_SHIFT) - 1n;

/** The rows of `columns` that belong to the process with index `index`. */
export function processRows(columns: BlockColumns, index: number): Promise<Uint32Array> {
  const bits = BigInt(index);
  return keptRowsSliced(columns, null, (row) => columns.address(row) >> PROCESS_SHIFT === bits);
}

/** `columns` narrowed to `rows`, addresses without their process's bits. */
export function rowsColumns<C extends BlockColumns>(columns: C, rows: Uint32Array): C {
  const out: Record<string, unknown> = { count: rows.length };
  for (const [key, value] of Object.entries(columns)) {
    if (typeof value !== 'function') continue;
    const field = value as (i: number) => unknown;
    out[key] = key === 'address' ? (i: number) => (field(rows[i]!) as bigint) & ADDRESS_MASK : (i: number) => field(rows[i]!);
  }
  return out as unknown as C;
}
