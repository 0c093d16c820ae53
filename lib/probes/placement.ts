// Where an allocator function's entry probe goes.
//
// A uprobe costs a breakpoint trap plus whatever the kernel does with the instruction it replaced.
// On x86-64 the kernel emulates a few instructions (arch/x86/kernel/uprobes.c,
// branch_setup_xol_ops() and push_setup_xol_ops()); every other one is copied to a page of the
// process and single-stepped there, which costs a second trap: on the machine the bench measured,
// ~0.8 us for an emulated instruction against ~9.8 us for a single-stepped one. glibc's free()
// begins with `test %rdi,%rdi`, single-stepped; the `je` right after it is emulated. So this
// module decodes the first instructions of each probed function and moves the entry probe to the
// first emulated instruction that every call still reaches with its arguments in their registers.
//
// What the kernel (6.18, 64-bit process) emulates, and so what isEmulatedByKernel() accepts:
//   - the canonical nops of 1 to 8 bytes (x86_nops[]: 90, 66 90, 0f 1f 00, 0f 1f 40 00,
//     0f 1f 44 00 00, 66 0f 1f 44 00 00, 0f 1f 80 00*4, 0f 1f 84 00*5), and 0x90 behind 66/f3
//     prefixes (`pause`); the 9 to 11 byte ones carry a CS prefix, which makes the kernel refuse
//     the probe altogether (is_prefix_bad());
//   - jmp rel8/rel32 (eb, e9), call rel32 (e8), jcc rel8/rel32 (70-7f, 0f 80-8f): taken without
//     any prefix only (the kernel refuses 66-prefixed branches, and ES/CS/SS/DS/LOCK prefixes on
//     anything; a REX byte it would accept, but compilers do not emit one there);
//   - push of a register (50-57, or 41 50-57 for r8-r15), nothing else in front.
// Not emulated: endbr64, mov, test, cmp, sub, lea, ... (single-stepped).
//
// The rules for moving the probe off the function's first instruction, all conservative (when in
// doubt the probe stays at the entry, which is where it always was):
//   1. Linear prologue only. Every instruction before the chosen one falls through (the decoder's
//      flow 'next'): no jump, call, return, syscall. One exception, rule 4.
//   2. The BPF program reads the function's arguments from their registers when the probe fires
//      (alloc_entry() reads PT_REGS_PARM1..3 and the attach cookie, nothing else: no stack, no
//      memory). So no instruction before the chosen one may write an argument register the
//      function has (a write to edi or dil counts as one to rdi). Zydis lists implicit writes too
//      (mul writes rdx, rep movs writes rdi/rsi/rcx).
//   3. The chosen instruction must run exactly once per call. So no branch in the function may
//      land between the entry (exclusive) and it (inclusive): a loop back into the prologue (e.g.
//      glibc's valloc retries from +0xd after initializing malloc) would fire the probe twice. The
//      whole function body (its ELF symbol's size) is scanned for direct branch targets; an
//      indirect jump anywhere in it (a jump table could land anywhere) keeps the probe at the
//      entry. Jumps into the prologue from other functions are not looked for: compilers jump
//      into a function only at its entry (a tail call); a sibling .cold part jumps back to labels
//      of the body, not to the prologue.
//   4. Which paths may skip the chosen instruction: none for functions with a return probe;
//      free()'s NULL path for free. free has no return probe, and free_enter() ignores a NULL
//      pointer anyway, so a conditional jump taken only when the pointer is NULL (`test %rdi,%rdi`
//      or `cmp $0,%rdi`, then `je`) may be stepped over. For malloc, calloc, realloc & co. no path
//      may be skipped: malloc(0) and realloc(NULL, n) allocate, a NULL result must still consume
//      the inflight entry, and the entry probe must pair with the return probe one for one, or the
//      per-thread `inflight` record and its nesting `depth` go wrong for every later call. (In
//      practice the walk never needs rule 4: a conditional jump is itself emulated, so it is the
//      probe site; only a jcc the kernel refuses, e.g. one with a 3e "taken" hint, is stepped over.)
//   5. Functions with a return probe keep their entry probe at the entry in any case. The
//      uretprobe has to be at the entry (it swaps the return address at [rsp], which only holds it
//      before the first push), and a uprobe and a uretprobe at one address share one breakpoint,
//      one trap and one emulation or single-step. Moving only the entry probe would keep the
//      trap at the entry, single-stepped or not, and add a second one. (For glibc 2.36 this
//      changes nothing anyway: malloc, calloc and realloc begin with an emulated push.)
//   6. x86-64 ELF files only; anything else keeps the entry.

import { closeSync, fstatSync, readSync, type Stats } from 'node:fs';
import { loadNative, type NativeX86Instruction } from '../native/addon.js';
import type { AllocatorFunction } from '../types.js';
import { AddonError } from '../errors.js';

export type ProbePlacement = 'optimized' | 'entry';
export const probePlacements: readonly ProbePlacement[] = ['optimized', 'entry'];

export type ArgumentRegister = 'rdi' | 'rsi' | 'rdx';

/** Argument registers the BPF entry program reads, per function (System V x86-64 ABI). */
export const argumentRegisters: Readonly<Record<AllocatorFunction, readonly ArgumentRegister[]>> = {
  malloc: ['rdi'],
  free: ['rdi'],
  valloc: ['rdi'],
  pvalloc: ['rdi'],
  calloc: ['rdi', 'rsi'],
  realloc: ['rdi', 'rsi'],
  aligned_alloc: ['rdi', 'rsi'],
  memalign: ['rdi', 'rsi'],
  reallocarray: ['rdi', 'rsi', 'rdx'],
  posix_memalign: ['rdi', 'rsi', 'rdx'],
  'operator new': ['rdi'],
  'operator new(nothrow)': ['rdi'],
  'operator new(aligned)': ['rdi'],
  'operator new(aligned, nothrow)': ['rdi'],
  'operator new[]': ['rdi'],
  'operator new[](nothrow)': ['rdi'],
  'operator new[](aligned)': ['rdi'],
  'operator new[](aligned, nothrow)': ['rdi'],
  'operator delete': ['rdi'],
  'operator delete[]': ['rdi'],
  mallocx: ['rdi'],
  rallocx: ['rdi', 'rsi'],
  sdallocx: ['rdi'],
  dallocx: ['rdi'],
};

/** Functions without a return probe: they do all their work at the entry. */
export function hasReturnProbe(fn: AllocatorFunction): boolean {
  return fn !== 'free' && fn !== 'sdallocx' && fn !== 'dallocx';
}

export interface PlacementRule {
  /** Registers that must still hold the arguments where the probe fires. */
  registers: readonly ArgumentRegister[];
  /** The function also has a return probe (at its entry): rule 5. */
  returnProbe: boolean;
  /** A conditional jump taken only when the first argument is NULL may be skipped: rule 4. */
  skipNullExit: boolean;
}

/** `entryOnly`: a function hasReturnProbe() names that goes without one (lib/probes/operators.ts). */
export function placementRule(fn: AllocatorFunction, entryOnly = false): PlacementRule {
  return { registers: argumentRegisters[fn], returnProbe: hasReturnProbe(fn) && !entryOnly, skipNullExit: fn === 'free' };
}

/** Where one function's entry probe goes, and why. */
export interface PlacementDecision {
  function: AllocatorFunction;
  /** The function's own file offset (its return probe's site). */
  functionOffset: number;
  /** File offset of the entry probe. */
  entryOffset: number;
  /** The instruction at entryOffset, AT&T syntax ('' when it could not be decoded). */
  instruction: string;
  /** Whether the kernel emulates that instruction (false: single-stepped; null: not known). */
  emulated: boolean | null;
  reason: string;
}

export type PlacementResult = Omit<PlacementDecision, 'function'>;

/** Bytes decoded from the entry when looking for the probe site. 64 rather than 32: jemalloc's
 *  free() reaches its first emulated instruction (a jne) at +0x30. */
export const placementWindow = 64;
/** Most bytes of a function body scanned for branches into the prologue. */
const maxScan = 64 * 1024;
/** The longest x86-64 instruction. */
const maxInstructionLength = 15;

const legacyPrefixes = new Set([0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3]);
/** Prefixes that make the kernel refuse a probe on the instruction (is_prefix_bad()). */
const refusedPrefixes = new Set([0x26, 0x2e, 0x36, 0x3e, 0xf0]);
const kernelNops: readonly (readonly number[])[] = [
  [0x90],
  [0x66, 0x90],
  [0x0f, 0x1f, 0x00],
  [0x0f, 0x1f, 0x40, 0x00],
  [0x0f, 0x1f, 0x44, 0x00, 0x00],
  [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
  [0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
  [0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

export type EmulationKind = 'nop' | 'jmp' | 'jcc' | 'call' | 'push';

/**
 * How the x86-64 kernel handles a uprobe on this one instruction (exactly its bytes): the kind of
 * emulation, `null` when it single-steps it (or refuses the probe). Mirrors
 * arch/x86/kernel/uprobes.c (6.18) on the conservative side.
 */
export function isEmulatedByKernel(bytes: Uint8Array | readonly number[]): EmulationKind | null {
  const b = Array.from(bytes);
  if (b.length === 0) return null;
  if (kernelNops.some((nop) => nop.length === b.length && nop.every((x, i) => x === b[i]))) return 'nop';
  let i = 0;
  const prefixes: number[] = [];
  while (i < b.length && legacyPrefixes.has(b[i]!)) prefixes.push(b[i++]!);
  if (prefixes.some((p) => refusedPrefixes.has(p))) return null;
  let rex: number | undefined;
  if (i < b.length && b[i]! >= 0x40 && b[i]! <= 0x4f) rex = b[i++];
  const op = b[i];
  if (op === undefined) return null;
  const rest = b.length - i; // opcode + operands
  // prefix* + 90 (pause is f3 90): a nop to the kernel. With REX.B it would be xchg %r8,%rax.
  if (op === 0x90 && rest === 1 && rex === undefined && prefixes.every((p) => p === 0x66 || p === 0xf3)) return 'nop';
  if (op >= 0x50 && op <= 0x57) {
    if (prefixes.length === 0 && rex === undefined && b.length === 1) return 'push';
    if (prefixes.length === 0 && rex === 0x41 && b.length === 2) return 'push';
    return null;
  }
  // Branches: no prefix at all (the kernel refuses 66; REX is pointless on them).
  if (prefixes.length > 0 || rex !== undefined) return null;
  if (op === 0xeb && rest === 2) return 'jmp';
  if (op === 0xe9 && rest === 5) return 'jmp';
  if (op === 0xe8 && rest === 5) return 'call';
  if (op >= 0x70 && op <= 0x7f && rest === 2) return 'jcc';
  if (op === 0x0f && rest === 6 && b[i + 1]! >= 0x80 && b[i + 1]! <= 0x8f) return 'jcc';
  return null;
}

type Decoded = NativeX86Instruction & { bytes: Uint8Array };

/** The instructions of `code` (at file offset `offset`), decoded by the addon (Zydis): all that
 *  start in the first `detailBytes`, then only the branches, calls and other non-fall-throughs. */
function decodeAll(code: Uint8Array, offset: number, detailBytes: number): Decoded[] {
  const decode = loadNative().decodeX86;
  if (!decode) throw new AddonError("this build of the addon has no x86-64 decoder; use probePlacement: 'entry'");
  return decode(code, offset, detailBytes).map((d) => {
    const at = d.offset - offset;
    return { ...d, bytes: code.subarray(at, at + d.length) };
  });
}

const hexOffset = (n: number) => `0x${n.toString(16)}`;
const plus = (n: number) => `+${hexOffset(n)}`;

function describe(d: Decoded): string {
  return `\`${d.text}\``;
}

/**
 * The placement rules on the function's bytes: `code` starts at the function's file offset
 * `functionOffset` and holds its whole body when known (at least the first placementWindow bytes).
 * `bodySize` is the ELF symbol's size (0: unknown, only the window is scanned for branches).
 */
export function decidePlacement(code: Uint8Array, functionOffset: number, bodySize: number, rule: PlacementRule): PlacementResult {
  const scanEnd = Math.min(code.length, bodySize > 0 ? Math.max(bodySize, placementWindow) : placementWindow);
  // The window, plus room for an instruction that starts in it to end after it.
  const all = decodeAll(code.subarray(0, Math.min(scanEnd, placementWindow + maxInstructionLength)), functionOffset, placementWindow);
  const first = all[0];
  const entry = (reason: string, emulated: boolean | null = first ? isEmulatedByKernel(first.bytes) !== null : null): PlacementResult => ({
    functionOffset,
    entryOffset: functionOffset,
    instruction: first?.text ?? '',
    emulated,
    reason,
  });
  if (!first || first.invalid) return entry('the entry does not decode as x86-64: probe at the entry', null);
  const firstKind = isEmulatedByKernel(first.bytes);
  if (firstKind) return entry(`the entry ${describe(first)} is emulated (${firstKind}): probe at the entry`, true);

  // The walk: rules 1, 2 and 4.
  let chosen: Decoded | undefined;
  let kind: EmulationKind | null = null;
  let stop = '';
  let skipped: Decoded | undefined;
  for (let i = 0; i < all.length; i++) {
    const d = all[i]!;
    const at = d.offset - functionOffset;
    if (at >= placementWindow || (bodySize > 0 && at >= bodySize) || d.invalid) break;
    if (i > 0) {
      kind = isEmulatedByKernel(d.bytes);
      if (kind) {
        chosen = d;
        break;
      }
    }
    const clobbered = rule.registers.filter((r) => d.writes.includes(r));
    if (clobbered.length > 0) {
      stop = `${describe(d)} at ${plus(d.offset - functionOffset)} writes ${clobbered.join(', ')}, an argument the BPF program reads`;
      break;
    }
    if (d.flow === 'next') continue;
    const previous = all[i - 1];
    if (rule.skipNullExit && d.jumpsIfZero && previous?.testsFirstArgForNull) {
      skipped = d; // rule 4
      continue;
    }
    stop = `${describe(d)} at ${plus(d.offset - functionOffset)} changes the control flow before any emulated instruction`;
    break;
  }
  if (!chosen || !kind) {
    return entry(
      `the entry ${describe(first)} is single-stepped, and no emulated instruction follows that every call reaches with its arguments (${rule.registers.join(', ')}) intact: ${stop || `none in the first ${placementWindow} bytes`}; probe at the entry`,
      false,
    );
  }

  const where = `${plus(chosen.offset - functionOffset)} ${describe(chosen)}`;
  // Rule 5.
  if (rule.returnProbe) {
    return entry(
      `the entry ${describe(first)} is single-stepped, but the return probe must stay at the entry and shares its breakpoint: moving the entry probe to the emulated ${where} would add a second trap; probe at the entry`,
      false,
    );
  }
  // Rule 3: nothing in the whole body may branch into (entry, chosen]. Only the instructions that
  // do not fall through are decoded past the start.
  const branches = decodeAll(code.subarray(0, scanEnd), functionOffset, 0);
  const indirect = branches.find((d) => d.flow === 'indirect-jump');
  const into = branches.find((d) => d.target !== undefined && d.target > functionOffset && d.target <= chosen.offset);
  if (into) {
    return entry(
      `the entry ${describe(first)} is single-stepped, but ${describe(into)} at ${plus(into.offset - functionOffset)} jumps into the prologue, so the emulated ${where} could run twice per call; probe at the entry`,
      false,
    );
  }
  if (indirect) {
    return entry(
      `the entry ${describe(first)} is single-stepped, but the function has an indirect jump (${describe(indirect)} at ${plus(indirect.offset - functionOffset)}) that might land in the prologue; probe at the entry`,
      false,
    );
  }
  return {
    functionOffset,
    entryOffset: chosen.offset,
    instruction: chosen.text,
    emulated: true,
    reason:
      `the entry ${describe(first)} is single-stepped; ${where} is emulated (${kind}${kind === 'nop' && chosen.length === 5 ? ', optimized into a call by the kernel' : ''}), ` +
      `every call${skipped ? ` with a non-NULL argument reaches it (${describe(skipped)} leaves before it only for NULL, which free ignores)` : ' reaches it'} and nothing before it writes ${rule.registers.join(', ')}: probe at ${plus(chosen.offset - functionOffset)}`,
  };
}

/** ELF class and machine of a file: x86-64 is ELFCLASS64 and EM_X86_64 (62). */
function isX8664Elf(header: Uint8Array): boolean {
  return (
    header.length >= 20 &&
    header[0] === 0x7f &&
    header[1] === 0x45 &&
    header[2] === 0x4c &&
    header[3] === 0x46 &&
    header[4] === 2 &&
    header[5] === 1 &&
    header[18] === 62 &&
    header[19] === 0
  );
}

/** Decisions by file identity and function: a file is decoded once per process. */
const cache = new Map<string, PlacementResult>();

interface PlacementRequest {
  fn: AllocatorFunction;
  /** File offset of the function. */
  functionOffset: number;
  /** Its ELF symbol size. */
  size: number;
}

function cacheKey(st: Stats, r: PlacementRequest, entryOnly: boolean): string {
  return `${st.dev}:${st.ino}:${st.mtimeMs}:${st.size}:${r.functionOffset}:${r.size}:${r.fn}:${entryOnly}`;
}

/**
 * Where `fn`'s entry probe goes in the allocator file `path`, given the function's file offset and
 * its ELF symbol size. Never throws: whatever goes wrong keeps the probe at the entry.
 */
export function placeEntryProbe(
  path: string,
  fn: AllocatorFunction,
  functionOffset: number,
  size: number,
  placement: ProbePlacement = 'optimized',
  entryOnly = false,
): PlacementDecision {
  const at = (reason: string): PlacementDecision => ({
    function: fn,
    functionOffset,
    entryOffset: functionOffset,
    instruction: '',
    emulated: null,
    reason,
  });
  if (placement === 'entry') return at("probePlacement 'entry': probe at the entry");
  let fd: number | undefined;
  try {
    // Not openSync(): a FIFO there would block the event loop (native/target/target_file.h).
    fd = loadNative().openTargetFile(path);
    const st = fstatSync(fd);
    const key = cacheKey(st, { fn, functionOffset, size }, entryOnly);
    const known = cache.get(key);
    if (known) return { function: fn, ...known };
    const header = new Uint8Array(20);
    readSync(fd, header, 0, header.length, 0);
    if (!isX8664Elf(header)) return at('not an x86-64 ELF file: probe at the entry');
    const length = Math.min(Math.max(size, placementWindow), maxScan);
    const code = new Uint8Array(length);
    const n = readSync(fd, code, 0, length, functionOffset);
    const result = decidePlacement(code.subarray(0, n), functionOffset, size, placementRule(fn, entryOnly));
    cache.set(key, result);
    return { function: fn, ...result };
  } catch (error) {
    return at(`cannot decode the function (${error instanceof Error ? error.message : String(error)}): probe at the entry`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
