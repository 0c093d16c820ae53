// Forcing garbage collection in this process, with or without --expose-gc, and letting what a
// collection schedules (finalizers, N-API finalizers posted as immediates, FinalizationRegistry
// callbacks) run.
import { setImmediate as immediate, setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { GcUnavailableError } from '../errors.js';

let cached: (() => void) | undefined;

/** A function that runs a full, synchronous garbage collection. Uses `globalThis.gc` when node
 *  runs with --expose-gc; otherwise turns the flag on and takes `gc` from a fresh context (the
 *  flag only affects contexts created after it is set). */
export function getGc(): () => void {
  if (cached) return cached;
  const global = (globalThis as { gc?: unknown }).gc;
  if (typeof global === 'function') {
    cached = () => (global as () => void)();
    return cached;
  }
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as unknown;
  if (typeof gc !== 'function') throw new GcUnavailableError('ebpf-leak: cannot get a gc() function (v8 --expose-gc did not take effect); run node with --expose-gc');
  cached = () => (gc as () => void)();
  return cached;
}

/** One round: a full collection, then the event loop turned so that what the collection queued
 *  runs (immediates twice: finalizers may queue more; a timer: platform tasks). */
export async function collectGarbage(): Promise<void> {
  const gc = getGc();
  gc();
  await immediate();
  await immediate();
  await sleep(1);
  gc();
  await immediate();
}
