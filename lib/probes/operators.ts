// C++ operators that need no return probe.
//
// libstdc++'s operator new and delete are thin wrappers: delete is `endbr64; jmp free@plt`, sized
// delete and delete[] jump to delete, new calls malloc and returns what malloc returned, new[]
// jumps to new. Each begins with `endbr64`, which the kernel single-steps; and a function with a
// return probe keeps its entry probe at its first instruction (lib/probes/placement.ts, rule 5).
// So with entry and return probes a new+delete pair paid three single-stepped traps (~12 us
// each) and three returns, on top of malloc's and free's probes.
//
// A wrapper proved here gets an entry probe only, past `endbr64` on an emulated instruction, and
// the BPF program finishes its work elsewhere (bpf/leak.bpf.c):
//   - delete releases the block at its entry, as it always did; the free() it tail-calls finds
//     the block gone and is known as part of it;
//   - new leaves its size and kind in its thread's state; the return of its call to malloc
//     records the block as the operator's when it returns exactly where that call returns.
// What is proved, by decoding the function's bytes (anything else keeps both probes):
//   - delete: after an optional endbr64, a `jmp` to free, or to another operator delete proved so;
//   - new: after an optional endbr64, a `jmp` to an operator new proved so (new[] to new); or,
//     in a body with no indirect jump, exactly one `call` to malloc, and from where it returns to
//     the first `ret` nothing writes %rax and the only branch is a `je` right after
//     `test %rax,%rax` (taken only when malloc failed: libstdc++ then calls the new-handler and
//     tries again, or throws). The entry probe must fire before that call, once per call.
// A callee is named by its address in the same file (a symbol probed there) or, through a PLT
// stub (`[endbr64] [bnd] jmp *slot(%rip)`), by the GOT slot that stub reads
// (readElf's imports).

import { closeSync, readSync } from 'node:fs';
import { loadNative, type NativeElfInfo, type NativeX86Instruction } from '../native/addon.js';
import type { AllocatorFunction } from '../types.js';
import { placeEntryProbe, type PlacementDecision, type ProbePlacement } from './placement.js';

/** One operator's symbol in its file. */
export interface OperatorSymbol {
  fn: AllocatorFunction;
  symbol: string;
  /** File offset. */
  offset: number;
  /** Address (st_value): with the offset, how the file's code is mapped. */
  address: number;
  size: number;
}

export interface WrapperProof {
  /** The operator needs no return probe. */
  entryOnly: boolean;
  /** Where its entry probe goes (entry-only operators only). */
  placement?: PlacementDecision;
  /** Entry-only operator new: where its call to malloc returns, less the entry probe's offset
   *  (0: it jumps to another operator new). */
  callReturnDelta: number;
  /** Entry-only operator new that needs no probe at all: its call to malloc is known at malloc's
   *  return by the code around the return site (see proveCallSite). */
  site?: OperatorCallSite;
  reason: string;
}

/** What malloc's return program checks to know its caller is this operator new. */
export interface OperatorCallSite {
  /** The function's bytes from its start through the first `ret` after the call. */
  code: Uint8Array;
  /** Offset in `code` where the call to malloc returns. */
  returnAt: number;
  /** Bytes the operator pushed before the call: its entry's stack pointer is the return's plus this. */
  spDelta: number;
  /** new(0) asks malloc for 1 byte, and the zero flag of its `test` of the size is still set at the
   *  call: malloc's entry sees it. */
  zeroAsOne: boolean;
  /** Offsets in `code` where its instructions begin: another tracer's breakpoint (int3) may take
   *  the place of such a byte, and the code still runs the same. */
  instructionStarts: number[];
}

/** Functions of other files the operators may call: asked of readElf as imports. */
export const operatorCallees: readonly string[] = ['malloc', 'free'];

/** Bodies longer than this are not wrappers. */
const maxBody = 256;

const isEndbr64 = (b: Uint8Array) => b.length === 4 && b[0] === 0xf3 && b[1] === 0x0f && b[2] === 0x1e && b[3] === 0xfa;

type Decoded = NativeX86Instruction & { bytes: Uint8Array };

function readAt(fd: number, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  const n = readSync(fd, buf, 0, length, offset);
  return buf.subarray(0, n);
}

function decode(code: Uint8Array, offset: number): Decoded[] {
  const decoder = loadNative().decodeX86;
  if (!decoder) return [];
  return decoder(code, offset, code.length).map((d) => {
    const at = d.offset - offset;
    return { ...d, bytes: code.subarray(at, at + d.length) };
  });
}

/** The name of what a PLT stub at `offset` jumps to, from the GOT slot it reads. */
function pltStubTarget(fd: number, offset: number, slide: number, slots: ReadonlyMap<number, string>): string | undefined {
  const b = readAt(fd, offset, 16);
  let i = 0;
  if (isEndbr64(b.subarray(0, 4))) i = 4;
  if (b[i] === 0xf2) i++; // bnd
  if (b[i] !== 0xff || b[i + 1] !== 0x25 || b.length < i + 6) return undefined;
  const disp = new DataView(b.buffer, b.byteOffset + i + 2, 4).getInt32(0, true);
  return slots.get(offset + slide + i + 6 + disp);
}

/**
 * Which of a file's operators are wrappers needing no return probe, by symbol. `sameFile`: the
 * file offsets of malloc and free when the allocator is this very file.
 */
export function proveWrappers(
  file: string,
  operators: readonly OperatorSymbol[],
  info: Pick<NativeElfInfo, 'imports'>,
  sameFile: Partial<Record<'malloc' | 'free', number>>,
  placement: ProbePlacement,
  which: { news: boolean } = { news: true },
): Map<string, WrapperProof> {
  const proofs = new Map<string, WrapperProof>();
  const no = (reason: string): WrapperProof => ({ entryOnly: false, callReturnDelta: 0, reason });
  if (placement === 'entry' || !loadNative().decodeX86 || operators.length === 0) {
    for (const o of operators) proofs.set(o.symbol, no('not decoded'));
    return proofs;
  }
  const slots = new Map(Object.entries(info.imports ?? {}).map(([name, slot]) => [slot, name]));
  const byOffset = new Map(operators.map((o) => [o.offset, o.symbol]));
  let fd: number | undefined;
  try {
    fd = loadNative().openTargetFile(file);
    const openFd = fd;
    const bodies = new Map<string, Decoded[]>();
    for (const o of operators) {
      if (o.size <= 0 || o.size > maxBody) continue;
      bodies.set(o.symbol, decode(readAt(openFd, o.offset, o.size), o.offset));
    }
    const callee = (o: OperatorSymbol, target: number): string | undefined => {
      if (target === sameFile.malloc) return 'malloc';
      if (target === sameFile.free) return 'free';
      return byOffset.get(target) ?? pltStubTarget(openFd, target, o.address - o.offset, slots);
    };
    const entryOnlyAt = (o: OperatorSymbol, what: string, delta: number, ok: (p: PlacementDecision) => boolean): WrapperProof => {
      const p = placeEntryProbe(file, o.fn, o.offset, o.size, placement, true);
      if (!ok(p) || !p.emulated) return no(`${what}, but its entry probe would not go where it must (${p.reason})`);
      const d = delta ? delta - (p.entryOffset - o.offset) : 0;
      const reason = `${what}: no return probe; ${p.reason}`;
      return { entryOnly: true, placement: { ...p, reason }, callReturnDelta: d, reason };
    };
    // Deletes and tail-calling news depend on the operator they jump to: repeat until nothing changes.
    for (let changed = true; changed; ) {
      changed = false;
      for (const o of operators) {
        if (proofs.get(o.symbol)?.entryOnly) continue;
        const body = bodies.get(o.symbol);
        if (!body || body.length === 0 || body.some((d) => d.invalid)) {
          proofs.set(o.symbol, no('its body is not a short wrapper'));
          continue;
        }
        const isDelete = o.fn.startsWith('operator delete');
        const plainNew = which.news && (o.fn === 'operator new' || o.fn === 'operator new[]');
        const first = isEndbr64(body[0]!.bytes) ? body[1] : body[0];
        if (first?.flow === 'jump' && first.target !== undefined) {
          const to = callee(o, first.target);
          const proven = to !== undefined && proofs.get(to)?.entryOnly === true;
          const sameKind = to !== undefined && operators.find((x) => x.symbol === to)?.fn.startsWith(isDelete ? 'operator delete' : 'operator new');
          if ((isDelete && to === 'free') || (proven && sameKind && (isDelete || plainNew))) {
            const proof = entryOnlyAt(o, `it jumps to ${to}`, 0, (p) => p.entryOffset === first.offset);
            proofs.set(o.symbol, proof);
            changed ||= proof.entryOnly;
            continue;
          }
          proofs.set(o.symbol, no(`it jumps to ${to ?? 'a function not known here'}`));
          continue;
        }
        if (isDelete || !plainNew) {
          proofs.set(o.symbol, no('it is not a jump to free or to a proven operator'));
          continue;
        }
        const proof = provePlainNew(o, body, callee, entryOnlyAt);
        proofs.set(o.symbol, proof);
        changed ||= proof.entryOnly;
      }
    }
  } catch (error) {
    for (const o of operators) if (!proofs.get(o.symbol)?.entryOnly) proofs.set(o.symbol, no(`cannot decode it (${error instanceof Error ? error.message : String(error)})`));
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return proofs;
}

function provePlainNew(
  o: OperatorSymbol,
  body: readonly Decoded[],
  callee: (o: OperatorSymbol, target: number) => string | undefined,
  entryOnlyAt: (o: OperatorSymbol, what: string, delta: number, ok: (p: PlacementDecision) => boolean) => WrapperProof,
): WrapperProof {
  const no = (reason: string): WrapperProof => ({ entryOnly: false, callReturnDelta: 0, reason });
  if (body.some((d) => d.flow === 'indirect-jump')) return no('it has an indirect jump');
  const mallocCalls = body.filter((d) => d.flow === 'call' && d.target !== undefined && callee(o, d.target) === 'malloc');
  if (mallocCalls.length !== 1) return no(`it calls malloc ${mallocCalls.length} times, not once`);
  const call = mallocCalls[0]!;
  const returnSite = call.offset + call.length;
  let i = body.findIndex((d) => d.offset === returnSite);
  if (i < 0) return no('malloc returns past its body');
  for (; i < body.length; i++) {
    const d = body[i]!;
    if (d.writes.includes('rax')) return no(`\`${d.text}\` changes what malloc returned`);
    if (d.flow === 'return') {
      const proof = entryOnlyAt(o, 'it returns what its one call to malloc returns', returnSite - o.offset, (p) => p.entryOffset < call.offset);
      if (!proof.entryOnly) return proof;
      const site = proveCallSite(body, call, d);
      if (!site) return proof;
      const reason = `${proof.reason}; no probe at all: malloc's return knows its call by the operator's code`;
      return { ...proof, site, reason, placement: { ...proof.placement!, reason } };
    }
    if (d.flow === 'next') continue;
    const previous = body[i - 1];
    if (d.flow === 'conditional-jump' && d.jumpsIfZero && previous?.text.replace(/\s+/g, '') === 'test%rax,%rax') continue;
    return no(`\`${d.text}\` after malloc returns is not a wrapper's`);
  }
  return no('no return after malloc');
}

/** Longest function prefix malloc's return program compares (bpf/leak.bpf.c). */
export const maxSiteCode = 64;

type Value = 'size' | 'one' | 'size-or-one' | undefined;
const reg64: Record<string, string> = { eax: 'rax', ebx: 'rbx', ecx: 'rcx', edx: 'rdx', esi: 'rsi', edi: 'rdi', ebp: 'rbp' };
const asReg = (r: string) => (r.startsWith('%r') && /^%r(ax|bx|cx|dx|si|di|bp|8|9|1[0-5])$/.test(r) ? r.slice(1) : r.startsWith('%e') ? reg64[r.slice(1)] : undefined);

/**
 * An entry-only operator new that needs no probe: what it passes to malloc, and how deep its stack
 * is at the call, follow from straight-line code from its first instruction to the call, made only
 * of the moves, pushes and conditional moves modelled here (anything else: no). malloc must get the
 * size asked for, or libstdc++'s `size ? size : 1` with the zero flag of `test size,size` still set
 * at the call (how malloc's entry tells new(0) from new(1)). The code through the `ret` after the
 * call is what malloc's return compares with the bytes around its return address, so that a call
 * from anywhere else is never taken for this operator's; an int3 where one of its instructions
 * begins (another tracer's probe, a debugger's breakpoint) still matches.
 */
function proveCallSite(body: readonly Decoded[], call: Decoded, ret: Decoded): OperatorCallSite | undefined {
  const start = body[0]!.offset;
  const end = ret.offset + ret.length;
  if (end - start > maxSiteCode) return undefined;
  const regs = new Map<string, Value>([['rdi', 'size']]);
  let zfSizeZero = false;
  let spDelta = 0;
  for (const d of body) {
    if (d.offset === call.offset) break;
    if (d.flow !== 'next') return undefined;
    const text = d.text.trim().replace(/\s+/g, ' ');
    let m: RegExpMatchArray | null;
    if (d === body[0] && isEndbr64(d.bytes)) continue;
    if ((m = /^test (%\w+),(%\w+)$/.exec(text)) && m[1] === m[2] && regs.get(asReg(m[1]!) ?? '') === 'size' && asReg(m[1]!) !== undefined) {
      zfSizeZero = true;
    } else if ((m = /^mov \$0x1,(%\w+)$/.exec(text)) && asReg(m[1]!)) {
      regs.set(asReg(m[1]!)!, 'one');
    } else if ((m = /^mov (%r\w+),(%r\w+)$/.exec(text)) && asReg(m[1]!) && asReg(m[2]!)) {
      regs.set(asReg(m[2]!)!, regs.get(asReg(m[1]!)!));
    } else if ((m = /^push (%r\w+)$/.exec(text)) && asReg(m[1]!)) {
      spDelta += 8;
    } else if ((m = /^cmov(nz|ne|z|e) (%r\w+),(%r\w+)$/.exec(text)) && zfSizeZero && asReg(m[2]!) && asReg(m[3]!)) {
      // cmovnz: dst = size != 0 ? src : dst; cmovz: dst = size == 0 ? src : dst.
      const src = regs.get(asReg(m[2]!)!);
      const dst = asReg(m[3]!)!;
      const whenNonZero = m[1] === 'nz' || m[1] === 'ne' ? src : regs.get(dst);
      const whenZero = m[1] === 'nz' || m[1] === 'ne' ? regs.get(dst) : src;
      regs.set(dst, whenNonZero === 'size' && (whenZero === 'one' || whenZero === 'size-or-one') ? 'size-or-one' : whenNonZero === 'size' && whenZero === 'size' ? 'size' : undefined);
    } else {
      return undefined;
    }
    if (d.writes.includes('rflags') && !/^test /.test(text)) zfSizeZero = false;
  }
  const arg = regs.get('rdi');
  if (arg !== 'size' && !(arg === 'size-or-one' && zfSizeZero)) return undefined;
  const code = new Uint8Array(end - start);
  for (const d of body) if (d.offset < end) code.set(d.bytes, d.offset - start);
  const instructionStarts = body.filter((d) => d.offset < end).map((d) => d.offset - start);
  return { code, returnAt: call.offset + call.length - start, spDelta, zeroAsOne: arg === 'size-or-one', instructionStarts };
}
