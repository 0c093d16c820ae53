// Long loops on the JS thread (a million blocks to group, thousands of stacks to turn into
// frames) cut into slices of a few milliseconds, with the event loop served between them: the
// application that traces must keep answering (issue 5: no event-loop stall over 10 ms).
//
// Loops call `await pauseIfDue()` every few hundred or thousand iterations (whatever takes well
// under a millisecond). It yields only when the current slice has run for SLICE_MS; otherwise it
// costs a clock read and a microtask.

/** Longest run of work between two turns of the event loop, milliseconds. */
export const SLICE_MS = 2;

/** Snapshot rows handled between two looks at the clock: a fraction of a millisecond. */
export const ROWS_PER_STEP = 1024;

/** When the current slice started: when our last yield resumed. Shared by every loop, so loops
 *  that follow one another in one task share one budget. */
let sliceStarted = performance.now();

/** Lets the event loop run (timers, I/O, other immediates), then continues. An immediate queued
 *  from one of our own slices (themselves immediates) runs on the next turn of the loop, after
 *  its timers and I/O. Queued from any other task (a native call's result, I/O, a timer), it
 *  would run on this same turn, before any timer: so from there it hops twice. */
export function yieldToEventLoop(): Promise<void> {
  const fromOwnSlice = performance.now() - sliceStarted < 2 * SLICE_MS;
  return new Promise((resolve) => {
    const resume = () => {
      sliceStarted = performance.now();
      resolve();
    };
    setImmediate(fromOwnSlice ? resume : () => setImmediate(resume));
  });
}

/** Yields to the event loop when the current slice has used its time: always at the first check
 *  in a task we did not start (its own work, before the check, is of unknown length). */
export async function pauseIfDue(): Promise<void> {
  if (performance.now() - sliceStarted >= SLICE_MS) await yieldToEventLoop();
}

/** Calls `body(start, end)` on consecutive ranges of [0, count), `step` items each, pausing
 *  between ranges when the slice is used up. */
export async function forEachRange(
  count: number,
  step: number,
  body: (start: number, end: number) => void,
): Promise<void> {
  for (let start = 0; start < count; start += step) {
    await pauseIfDue();
    body(start, Math.min(count, start + step));
  }
}

/** `items.map(fn)`, in slices. */
export async function mapSliced<T, U>(items: readonly T[], step: number, fn: (item: T, index: number) => U): Promise<U[]> {
  const out: U[] = new Array(items.length);
  await forEachRange(items.length, step, (start, end) => {
    for (let i = start; i < end; i++) out[i] = fn(items[i]!, i);
  });
  return out;
}
