// The event stream's batches delivered a slice at a time. A batch from the native poll thread
// holds up to 256 KB (~4,700 events); delivering a batch at once, with the listeners' own work,
// held the event loop for 10-20 ms when batches were 1 MB. Batches are delivered in arrival order,
// every event once.
//
// Backpressure is the poll thread's: a batch's event slot (native/tracer/event_slots.h) stays with JS
// until `onBatchDone` reports it delivered, and with all 16 slots here it stops draining the ring
// buffer, which fills, and the BPF side counts what does not fit as lost events. So listeners
// slower than the stream lose events instead of growing this queue. (It used to deliver
// everything at once past 16 MB queued: ~300,000 events in one task.)
import { pauseIfDue } from '../util/cooperative.js';
import { EventRecords } from '../native/event-records.js';

/** Events emitted between looks at the clock (lib/util/cooperative.ts). */
export const EVENTS_PER_STEP = 256;

/** Delivers events [from, to) of a batch. */
export type DeliverEvents = (batch: EventRecords, from: number, to: number) => void;

export class EventQueue {
  readonly #deliver: DeliverEvents;
  readonly #onError: (error: unknown) => void;
  readonly #onBatchDone: (slot: number) => void;
  readonly #batches: Array<{ records: EventRecords; slot: number }> = [];
  /** Next event of #batches[0]. */
  #next = 0;
  #draining: Promise<void> | undefined;

  /** `onError` gets what a delivery threw; the rest of that batch is dropped. `onBatchDone` is
   *  called once per batch pushed, with its slot, when its last event has been delivered (or
   *  dropped). */
  constructor(deliver: DeliverEvents, onError: (error: unknown) => void, onBatchDone: (slot: number) => void) {
    this.#deliver = deliver;
    this.#onError = onError;
    this.#onBatchDone = onBatchDone;
  }

  /** A batch: the first `length` bytes of `buffer`, from event slot `slot` (-1: none). */
  push(buffer: ArrayBuffer, length = buffer.byteLength, slot = -1): void {
    this.#batches.push({ records: new EventRecords(buffer, length), slot });
    this.#draining ??= this.#drain();
  }

  /** Resolves once every batch pushed so far has been delivered. */
  drained(): Promise<void> {
    return this.#draining ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    try {
      do await pauseIfDue();
      while (this.#step(EVENTS_PER_STEP));
    } finally {
      this.#draining = undefined;
    }
  }

  /** Delivers up to `limit` events of the first batch; false when nothing is left. */
  #step(limit: number): boolean {
    const first = this.#batches[0];
    if (first === undefined) return false;
    const batch = first.records;
    const from = this.#next;
    const to = Math.min(batch.count, from + limit);
    this.#next = to;
    try {
      this.#deliver(batch, from, to);
    } catch (error) {
      this.#next = batch.count;
      this.#report(error);
    }
    if (this.#next >= batch.count) {
      this.#batches.shift();
      this.#next = 0;
      this.#onBatchDone(first.slot);
    }
    return this.#batches.length > 0;
  }

  #report(error: unknown): void {
    try {
      this.#onError(error);
    } catch (thrown) {
      // An 'error' event nobody listens to throws: an uncaught exception, as it was when
      // batches were delivered from the addon's callback.
      process.nextTick(() => {
        throw thrown;
      });
    }
  }
}
