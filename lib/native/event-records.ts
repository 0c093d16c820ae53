// One events batch from the poll thread (struct leak_event records, bpf/abi/leak.h), read in place
// into the public 'alloc'/'free' events. A batch holds up to ~4,700 records and a busy target
// sends hundreds of thousands a second, so each record costs one object and the two BigInts the
// API hands out (address, timestamp): small fields are read as 32-bit halves. Going through a
// decoded record with every u64 field a BigInt made ~9 allocations an event, and the scavenges
// that followed held the event loop for several milliseconds at a time.
import { leakFunctions } from './layout.js';
import { releaseFunctions, type AllocEvent, type AllocatorFunction, type FreeEvent, type ReleaseFunction } from '../types.js';

/** struct leak_event: kind, fn, address, size, timestamp_ns, tid (u64 each; following forks, the
 *  process in its high half), stack_id (s64). */
const WORDS = 7;
const KIND = 0;
const FN = 1;
const ADDRESS = 2;
const SIZE = 3;
const TIMESTAMP = 4;
const TID = 5;
/** enum leak_event_kind */
const LEAK_EVENT_ALLOC = 1;

export class EventRecords {
  readonly count: number;
  readonly byteLength: number;
  readonly #words: BigUint64Array;
  /** The same words as 32-bit halves, low half first (x86-64 and arm64 are little-endian). */
  readonly #halves: Uint32Array;

  /** The records in the first `length` bytes of `buffer`. */
  constructor(buffer: ArrayBuffer, length = buffer.byteLength) {
    this.count = Math.floor(Math.min(length, buffer.byteLength) / (WORDS * 8));
    this.byteLength = this.count * WORDS * 8;
    this.#words = new BigUint64Array(buffer, 0, this.count * WORDS);
    this.#halves = new Uint32Array(buffer, 0, this.count * WORDS * 2);
  }

  /** Record `i` is an allocation (else a release). */
  isAlloc(i: number): boolean {
    return this.#u64(i * WORDS + KIND) === LEAK_EVENT_ALLOC;
  }

  /** The 'alloc' event of allocation record `i`; undefined when it names `free`. */
  allocEvent(i: number): AllocEvent | undefined {
    const fn = this.#fn(i);
    if (isRelease(fn)) return undefined;
    return this.#event(i, fn);
  }

  /** The 'free' event of release record `i`: `free`, or the realloc that released the block. */
  freeEvent(i: number): FreeEvent {
    const fn = this.#fn(i);
    return this.#event(i, isRelease(fn) || fn === 'realloc' || fn === 'reallocarray' || fn === 'rallocx' ? fn : 'free');
  }

  #event<F extends AllocatorFunction>(i: number, fn: F) {
    const w = i * WORDS;
    // Following forks, the record's tid word carries the process in its high half.
    const pid = this.#halves[(w + TID) * 2 + 1]!;
    const event = {
      function: fn,
      address: this.#words[w + ADDRESS]!,
      size: this.#u64(w + SIZE),
      tid: this.#halves[(w + TID) * 2]!,
      timestampNs: this.#words[w + TIMESTAMP]!,
    };
    return pid === 0 ? event : { ...event, pid };
  }

  #fn(i: number): AllocatorFunction {
    return leakFunctions[this.#u64(i * WORDS + FN)] ?? 'malloc';
  }

  /** Word `w` as a number (rounded past 2^53, as Number(bigint) rounds). */
  #u64(w: number): number {
    return this.#halves[2 * w]! + this.#halves[2 * w + 1]! * 0x1_0000_0000;
  }
}

function isRelease(fn: AllocatorFunction): fn is ReleaseFunction {
  return (releaseFunctions as readonly string[]).includes(fn);
}
