// Error classes with a literal `code`, so callers can switch on `err.code` with type narrowing.
// Every message says what went wrong and what to do about it.
import { optionWord } from './option-words.js';

export const errorCodes = [
  'ELEAK_PERM',
  'ELEAK_NO_PID',
  'ELEAK_NO_BTF',
  'ELEAK_NO_UPROBES',
  'ELEAK_LIB_NOT_FOUND',
  'ELEAK_SYMBOL_NOT_FOUND',
  'ELEAK_TARGET_EXITED',
  'ELEAK_ALLOCATOR',
  'ELEAK_OPTION',
  'ELEAK_BPF',
  'ELEAK_COMMAND_NOT_FOUND',
  'ELEAK_CLOSED',
  'ELEAK_UNSAFE_FILE',
  'ELEAK_PROBE_CONFLICT',
  'ELEAK_PTRACE',
  'ELEAK_STATE',
  'ELEAK_NO_MULTI',
  'ELEAK_ADDON',
  'ELEAK_NO_GC',
  'ELEAK_SUPPRESSION_SYNTAX',
  'ELEAK_SCAN',
] as const;
export type ErrorCode = (typeof errorCodes)[number];

export abstract class EbpfLeakError extends Error {
  abstract readonly code: ErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Not root, or missing CAP_BPF + CAP_PERFMON (and CAP_SYS_PTRACE for other users' processes). */
export class PermissionError extends EbpfLeakError {
  readonly code = 'ELEAK_PERM' as const;
}
/** No process with the given pid. */
export class NoSuchProcessError extends EbpfLeakError {
  readonly code = 'ELEAK_NO_PID' as const;
}
/** The kernel has no BTF (/sys/kernel/btf/vmlinux), needed to load the CO-RE program. */
export class NoBtfError extends EbpfLeakError {
  readonly code = 'ELEAK_NO_BTF' as const;
}
/** The kernel cannot do uprobes (CONFIG_UPROBE_EVENTS off). */
export class UprobesUnsupportedError extends EbpfLeakError {
  readonly code = 'ELEAK_NO_UPROBES' as const;
}
/** The allocator library could not be found or read. */
export class LibraryNotFoundError extends EbpfLeakError {
  readonly code = 'ELEAK_LIB_NOT_FOUND' as const;
}
/** A required allocator function is not in the library. */
export class SymbolNotFoundError extends EbpfLeakError {
  readonly code = 'ELEAK_SYMBOL_NOT_FOUND' as const;
}
/** The target exited before the probes were attached. */
export class TargetExitedError extends EbpfLeakError {
  readonly code = 'ELEAK_TARGET_EXITED' as const;
}
/** The target does not allocate through glibc's shared malloc (static binary, jemalloc, ...). */
export class UnsupportedAllocatorError extends EbpfLeakError {
  readonly code = 'ELEAK_ALLOCATOR' as const;
}
/** An option is missing or has a wrong value. */
export class InvalidOptionError extends EbpfLeakError {
  readonly code = 'ELEAK_OPTION' as const;
}
/** Loading or attaching the BPF program failed; the message carries libbpf's log. */
export class BpfError extends EbpfLeakError {
  readonly code = 'ELEAK_BPF' as const;
}
/** The command to run does not exist or is not executable. */
export class CommandNotFoundError extends EbpfLeakError {
  readonly code = 'ELEAK_COMMAND_NOT_FOUND' as const;
}
/** The tracer was already stopped. */
export class TracerClosedError extends EbpfLeakError {
  readonly code = 'ELEAK_CLOSED' as const;
}

/** A file the target names was refused: not a regular file inside the target's root (a symlink
 *  out of it, a FIFO, a device, a socket), or larger than ebpf-leak reads from one file. */
export class UnsafeFileError extends EbpfLeakError {
  readonly code = 'ELEAK_UNSAFE_FILE' as const;
}

/** The kernel refused our uprobe because another tool holds one at the same instruction with a
 *  reference counter ("ref_ctr_offset mismatch" in the kernel log). */
export class ProbeConflictError extends EbpfLeakError {
  readonly code = 'ELEAK_PROBE_CONFLICT' as const;
}

/** A call at a time it cannot be made: a tracer attached twice, a measurement started on a
 *  tracer that is already measuring. */
export class StateError extends EbpfLeakError {
  readonly code = 'ELEAK_STATE' as const;
}
/** The kernel has no multi-uprobe links. trace() falls back to one classic uprobe per function on
 *  its own, so this reaches callers only from a kernel that refuses both. */
export class MultiUprobeUnsupportedError extends EbpfLeakError {
  readonly code = 'ELEAK_NO_MULTI' as const;
}
/** No native addon fits this platform, it does not load, or it was built from other sources than
 *  lib/ (rebuild it). */
export class AddonError extends EbpfLeakError {
  readonly code = 'ELEAK_ADDON' as const;
}
/** measure() needs a gc() function and could not get one from V8. */
export class GcUnavailableError extends EbpfLeakError {
  readonly code = 'ELEAK_NO_GC' as const;
}
/** A suppressions file or text that cannot be parsed; the message names the file and line. */
export class SuppressionSyntaxError extends EbpfLeakError {
  readonly code = 'ELEAK_SUPPRESSION_SYNTAX' as const;
}

/** @internal What to do about ELEAK_PERM, in every message that reports it. */
export const permissionAdvice =
  'Run as root (sudo), or give node the capabilities CAP_BPF and CAP_PERFMON ' +
  '(plus CAP_SYS_PTRACE to trace another user\'s process), e.g. ' +
  '`sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep "$(command -v node)"`.';

interface NativeErrorShape {
  code?: unknown;
  message?: unknown;
}

/** The process cannot be followed with ptrace (needed to see its exec()s and forks). */
export class PtraceError extends EbpfLeakError {
  readonly code = 'ELEAK_PTRACE' as const;
}

/** The target's memory could not be scanned for the leak kinds on demand (scan()). */
export class ScanError extends EbpfLeakError {
  readonly code = 'ELEAK_SCAN' as const;
}

/** @internal Turn an error thrown by the addon (plain Error with a `code`) into our typed class. */
export function fromNativeError(error: unknown, context: string): EbpfLeakError | unknown {
  if (!(error instanceof Error)) return error;
  const { code, message } = error as NativeErrorShape;
  const text = `${context}: ${String(message)}`;
  switch (code) {
    case 'ELEAK_PERM':
      return new PermissionError(`${text}\n${permissionAdvice}`, { cause: error });
    case 'ELEAK_TARGET_EXITED':
      return new TargetExitedError(`${text}\nThe process exited before the probes were attached.`, {
        cause: error,
      });
    case 'ELEAK_LIB_NOT_FOUND':
      return new LibraryNotFoundError(text, { cause: error });
    case 'ELEAK_BPF':
      return new BpfError(text, { cause: error });
    case 'ELEAK_CLOSED':
      return new TracerClosedError(text, { cause: error });
    case 'ELEAK_PROBE_CONFLICT':
      return new ProbeConflictError(
        `${text}\nThe kernel refused the probe (EINVAL). The usual cause: another tool already has a uprobe on ` +
          'this instruction with a reference counter (a USDT-style semaphore; the kernel log, `dmesg`, says ' +
          "\"ref_ctr_offset mismatch\"), and the kernel allows one reference counter per probed instruction. " +
          'Stop that tool, or remove its probe (`bpftool perf` lists the processes holding uprobes; trace ' +
          "events are removed with `echo '-:GROUP/EVENT' >> /sys/kernel/tracing/uprobe_events`), then trace again.",
        { cause: error },
      );
    case 'ELEAK_UNSAFE_FILE':
      return new UnsafeFileError(
        `${text}\nebpf-leak runs as root and reads only regular files, inside the traced process's root. ` +
          `If this is the allocator, name a file you trust with ${optionWord('allocator')}.`,
        { cause: error },
      );
    case 'ELEAK_PTRACE':
      return new PtraceError(
        `${text}\nA process can have one tracer: detach the debugger (gdb, strace) first, or run as root ` +
          `(CAP_SYS_PTRACE) if /proc/sys/kernel/yama/ptrace_scope forbids it.`,
        { cause: error },
      );
    case 'ELEAK_STATE':
      return new StateError(text, { cause: error });
    case 'ELEAK_SCAN':
      return new ScanError(
        `${text}\nThe report of the target's end still has its leak kinds when it exits while traced; ` +
          'a process being debugged (gdb, strace) cannot be stopped by a second tracer.',
        { cause: error },
      );
    case 'ELEAK_NO_MULTI':
      return new MultiUprobeUnsupportedError(text, { cause: error });
    default:
      return error;
  }
}
