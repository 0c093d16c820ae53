// Snapshot.allocations without an object per block. A million blocks as a million objects were
// ~240 MB of heap and most of a second of building; the snapshot's columns (the buffer the addon
// handed over, 40 bytes a block) already hold everything. So `allocations` is an array whose
// elements are built from the columns when read.
//
// It is a real array to every check (Array.isArray, instanceof Array, length, indexing,
// iteration, the Array.prototype methods, JSON.stringify): a Proxy over an empty array that
// answers for the elements and the length (an array of a million holes would still be 8 MB of
// heap and a 5 ms allocation). The differences: reading an element twice gives two equal objects, not one, and
// changing an element object changes nothing in the array. Writing to the array itself (sort,
// push, assigning an element or the length, freezing) first builds every element into the
// array, which from then on is an ordinary one.
import { inspect, type InspectOptionsStylized } from 'node:util';
import type { SnapshotColumns } from './layout.js';
import type { OutstandingAllocation } from '../types.js';

/** The columns behind each view still lazy (internal fast paths read them directly). */
const lazyViews = new WeakMap<object, SnapshotColumns>();

/** The columns behind `allocations` when it is a view no one has written to; else undefined. */
export function viewColumns(allocations: readonly OutstandingAllocation[]): SnapshotColumns | undefined {
  return lazyViews.get(allocations);
}

/** The element index a property key names, or -1 (`'length'`, `'map'`, symbols, `'01'`). */
function elementIndex(key: string | symbol, count: number): number {
  if (typeof key !== 'string') return -1;
  const first = key.charCodeAt(0);
  if (first < 48 || first > 57) return -1; // not a digit: the common non-index case, decided fast
  const i = Number(key);
  return Number.isInteger(i) && i < count && String(i) === key ? i : -1;
}

/** The outstanding allocations of `columns`, ages taken at `nowNs` (CLOCK_MONOTONIC). */
export function allocationsView(columns: SnapshotColumns, nowNs: bigint): OutstandingAllocation[] {
  const now = Number(nowNs);
  const count = columns.count;
  const at = (i: number): OutstandingAllocation => ({
    address: columns.address(i),
    size: columns.size(i),
    ageMs: (now - Number(columns.timestampNs(i))) / 1e6,
    tid: columns.tid(i),
    stackId: columns.stackId(i),
  });

  const target: OutstandingAllocation[] = [];
  // console.log() and util.inspect() look at the target, not through the traps: show elements.
  Object.defineProperty(target, inspect.custom, {
    value(this: OutstandingAllocation[], depth: number, options: InspectOptionsStylized) {
      if (depth < 0) return options.stylize('[Array]', 'special');
      const limit = options.maxArrayLength ?? 100;
      const shown = Array.from({ length: Math.min(this.length, limit) }, (_, i) => this[i]);
      const text = inspect(shown, { ...options, depth });
      const rest = this.length - shown.length;
      return rest > 0 ? `${text.slice(0, -1).trimEnd()}, ... ${rest} more item${rest > 1 ? 's' : ''} ]` : text;
    },
    enumerable: false,
  });

  let lazy = true;
  let view: OutstandingAllocation[];
  /** Before a change to `key`: when it is an element or the length, the array becomes an
   *  ordinary one, every element built into it. Other properties change nothing lazy. */
  const materializeFor = (key: string | symbol): void => {
    if (!lazy || typeof key !== 'string' || (key !== 'length' && !/^(0|[1-9]\d*)$/.test(key))) return;
    lazy = false;
    lazyViews.delete(view);
    for (let i = 0; i < count; i++) target.push(at(i));
  };
  view = new Proxy(target, {
    get(t, key, receiver) {
      if (lazy) {
        const i = elementIndex(key, count);
        if (i >= 0) return at(i);
        if (key === 'length') return count;
      }
      return Reflect.get(t, key, receiver);
    },
    has(t, key) {
      return (lazy && elementIndex(key, count) >= 0) || Reflect.has(t, key);
    },
    getOwnPropertyDescriptor(t, key) {
      if (lazy) {
        const i = elementIndex(key, count);
        if (i >= 0) return { value: at(i), writable: true, enumerable: true, configurable: true };
        // As the target's own length is: writable, not configurable (a proxy may not say otherwise).
        if (key === 'length') return { value: count, writable: true, enumerable: false, configurable: false };
      }
      return Reflect.getOwnPropertyDescriptor(t, key);
    },
    ownKeys(t) {
      if (!lazy) return Reflect.ownKeys(t);
      const keys: (string | symbol)[] = new Array(count);
      for (let i = 0; i < count; i++) keys[i] = String(i);
      return keys.concat(Reflect.ownKeys(t));
    },
    set(t, key, value) {
      materializeFor(key);
      return Reflect.set(t, key, value);
    },
    defineProperty(t, key, descriptor) {
      materializeFor(key);
      return Reflect.defineProperty(t, key, descriptor);
    },
    deleteProperty(t, key) {
      materializeFor(key);
      return Reflect.deleteProperty(t, key);
    },
    preventExtensions(t) {
      materializeFor('length');
      return Reflect.preventExtensions(t);
    },
  });
  lazyViews.set(view, columns);
  return view;
}
