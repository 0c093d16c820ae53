// "Can this machine trace?" as a value, for test suites that skip instead of failing.
import { EbpfLeakError } from '../errors.js';
import { loadNative } from '../native/addon.js';
import { checkSupport } from './support.js';

export type TracingSupport =
  | { supported: true }
  | {
      supported: false;
      /** Why not, with what to do about it (e.g. the capabilities to grant). */
      reason: string;
      error: Error;
    };

let cached: TracingSupport | undefined;

/** Whether this process can trace: privileges (root, or CAP_BPF + CAP_PERFMON), kernel BTF,
 *  uprobes, and the native addon built. Checked once; nothing is loaded into the kernel. */
export function tracingSupport(): TracingSupport {
  if (cached) return cached;
  try {
    checkSupport();
    loadNative();
    cached = { supported: true };
  } catch (error) {
    const e = error instanceof Error ? error : new Error(String(error));
    const reason = e instanceof EbpfLeakError ? `${e.message} (${e.code})` : e.message;
    cached = { supported: false, reason, error: e };
  }
  return cached;
}
