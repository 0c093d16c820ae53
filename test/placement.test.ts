// Entry-probe placement (lib/probes/placement.ts): which instructions the kernel emulates, the walk over a
// prologue on byte sequences, glibc 2.36's real prologues, and planProbes() on this machine's libc.
// End to end, the oracle tests (test/oracle.test.ts) run with the default placement, 'optimized'.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { loadNative } from '../lib/native/addon.js';
import {
  decidePlacement,
  isEmulatedByKernel,
  placeEntryProbe,
  placementRule,
  type PlacementRule,
} from '../lib/probes/placement.js';
import { planProbes, planProbesSliced } from '../lib/probes/plan.js';
import type { AllocatorFunction } from '../lib/types.js';

const bytes = (hex: string) => Uint8Array.from(hex.replace(/\s+/g, '').match(/../g)!.map((b) => parseInt(b, 16)));
const base = 0x1000;
const decide = (hex: string, rule: PlacementRule, size = 0) => decidePlacement(bytes(hex), base, size, rule);
const free = placementRule('free');
const malloc = placementRule('malloc');
/** free's registers and NULL rule, as if it had no return probe and no NULL exemption. */
const strict: PlacementRule = { registers: ['rdi'], returnProbe: false, skipNullExit: false };

describe('the x86-64 decoder (native/x86/x86_decoder.cc, Zydis)', () => {
  const decodeOne = (hex: string) => loadNative().decodeX86!(bytes(hex), base, 64)[0]!;

  it.each([
    ['4885ff', 'test %rdi,%rdi', 'next', ['rflags']],
    ['55', 'push %rbp', 'next', ['rsp']],
    ['48f7e2', 'mul %rdx', 'next', ['rax', 'rdx', 'rflags']],
    ['f3a4', 'rep movsb', 'next', ['rcx', 'rdi', 'rsi']],
    ['89c7', 'mov %eax,%edi', 'next', ['rdi']],
    ['40b701', 'mov $0x1,%dil', 'next', ['rdi']],
    ['0f8ffd010000', 'jg 0x1203', 'conditional-jump', []],
    ['7405', 'je 0x1007', 'conditional-jump', []],
    ['7505', 'jne 0x1007', 'conditional-jump', []],
    ['e900010000', 'jmp 0x1105', 'jump', []],
    ['e800010000', 'call 0x1105', 'call', ['rsp']],
    ['ffe0', 'jmp *%rax', 'indirect-jump', []],
    ['ffd0', 'call *%rax', 'indirect-call', ['rsp']],
    ['c3', 'ret', 'return', ['rsp']],
    ['0f05', 'syscall', 'interrupt', ['rcx', 'r11', 'rflags']],
    ['0f0b', 'ud2', 'exception', []],
  ])('%s: %s (%s), writes %j', (hex, text, flow, writes) => {
    const d = decodeOne(hex);
    expect(d).toMatchObject({ offset: base, length: hex.length / 2, text, flow, invalid: false });
    // The stack and flags registers only where they matter to the walk: the argument registers.
    for (const r of writes as string[]) expect(d.writes).toContain(r);
    for (const r of ['rdi', 'rsi', 'rdx']) expect(d.writes.includes(r)).toBe((writes as string[]).includes(r));
  });

  it('direct targets, the NULL test of the first argument, and je', () => {
    expect(decodeOne('7405')).toMatchObject({ target: base + 7, jumpsIfZero: true });
    expect(decodeOne('7505')).toMatchObject({ target: base + 7, jumpsIfZero: false });
    expect(decodeOne('ffe0').target).toBeUndefined();
    expect(decodeOne('4885ff').testsFirstArgForNull).toBe(true);
    expect(decodeOne('4883ff00').testsFirstArgForNull).toBe(true); // cmp $0,%rdi
    expect(decodeOne('4883ff01').testsFirstArgForNull).toBe(false);
    expect(decodeOne('4885f6').testsFirstArgForNull).toBe(false); // test %rsi,%rsi
    expect(decodeOne('85ff').testsFirstArgForNull).toBe(false); // test %edi,%edi: the low half only
  });

  it('past the detailed bytes only what does not fall through; decoding stops at a bad byte in them', () => {
    // push %rbp; mov %rdi,%rbx; then, past 4 bytes: nop, je, nop, ret.
    const all = loadNative().decodeX86!(bytes('55 4889fb 90 7401 90 c3'), base, 4);
    expect(all.map((d) => [d.offset - base, d.flow])).toEqual([
      [0, 'next'],
      [1, 'next'],
      [5, 'conditional-jump'],
      [8, 'return'],
    ]);
    const bad = loadNative().decodeX86!(bytes('55 06 c3'), base, 64); // push %es: invalid in 64-bit mode
    expect(bad.map((d) => [d.offset - base, d.invalid, d.text])).toEqual([
      [0, false, 'push %rbp'],
      [1, true, '(bad)'],
    ]);
  });
});

describe('isEmulatedByKernel: arch/x86/kernel/uprobes.c rules', () => {
  it.each([
    ['55', 'push'], // push %rbp
    ['53', 'push'], // push %rbx
    ['57', 'push'], // push %rdi
    ['4154', 'push'], // push %r12
    ['4157', 'push'], // push %r15
    ['90', 'nop'],
    ['6690', 'nop'],
    ['f390', 'nop'], // pause
    ['0f1f00', 'nop'],
    ['0f1f4000', 'nop'],
    ['0f1f440000', 'nop'],
    ['660f1f440000', 'nop'],
    ['0f1f8000000000', 'nop'],
    ['0f1f840000000000', 'nop'],
    ['eb10', 'jmp'],
    ['e900010000', 'jmp'],
    ['e800010000', 'call'],
    ['7405', 'jcc'],
    ['7f05', 'jcc'],
    ['0f84bf000000', 'jcc'],
    ['0f8ffd010000', 'jcc'],
  ])('%s is emulated (%s)', (hex, kind) => {
    expect(isEmulatedByKernel(bytes(hex))).toBe(kind);
  });

  it.each([
    ['4885ff', 'test %rdi,%rdi'],
    ['f30f1efa', 'endbr64'],
    ['4889fb', 'mov %rdi,%rbx'],
    ['803d461b140000', 'cmpb $0,x(%rip)'],
    ['4883ec10', 'sub $0x10,%rsp'],
    ['4855', 'push %rbp with REX.W: only REX 41 is emulated'],
    ['6655', 'push %bp'],
    ['4190', 'xchg %eax,%r8d, not a nop'],
    ['2e0f1f840000000000', 'nop9: the CS prefix makes the kernel refuse the probe'],
    ['660f84bf000000', '66-prefixed jcc: refused'],
    ['3e7405', 'ds-prefixed jcc: refused'],
    ['f2e900010000', 'bnd jmp: not taken, to be safe'],
    ['ffe0', 'jmp *%rax'],
    ['c3', 'ret'],
    ['0f1f4400', 'a nop with the wrong length'],
  ])('%s is not emulated (%s)', (hex) => {
    expect(isEmulatedByKernel(bytes(hex))).toBeNull();
  });
});

describe('decidePlacement on byte sequences', () => {
  it('keeps an emulated entry', () => {
    const r = decide('55 4889e5', free);
    expect(r).toMatchObject({ entryOffset: base, instruction: 'push %rbp', emulated: true });
  });

  it('moves free to the jcc after the NULL test', () => {
    const r = decide('4885ff 0f84bf000000 55', free);
    expect(r).toMatchObject({ entryOffset: base + 3, emulated: true });
    expect(r.instruction).toMatch(/^je /);
  });

  it('steps over endbr64 and a test', () => {
    const r = decide('f30f1efa 4885ff 7405 55 c3', free);
    expect(r.entryOffset).toBe(base + 7);
    expect(r.instruction).toMatch(/^je /);
  });

  it('steps over instructions that only read the arguments', () => {
    const r = decide('4889fb 488d77f0 4154', free); // mov %rdi,%rbx; lea -0x10(%rdi),%rsi; push %r12
    expect(r).toMatchObject({ entryOffset: base + 7, instruction: 'push %r12' });
  });

  it('stops at a write to an argument register, even a partial one', () => {
    for (const hex of ['31ff 55', '4831ff 55', '40b701 55', '488b3d00000000 55']) {
      // xor %edi,%edi / xor %rdi,%rdi / mov $1,%dil / mov x(%rip),%rdi
      const r = decide(hex, free);
      expect(r.entryOffset, hex).toBe(base);
      expect(r.reason).toMatch(/writes rdi/);
    }
  });

  it('counts implicit writes (mul writes rdx) for the registers the function has', () => {
    const reallocarray = placementRule('reallocarray');
    const code = '4889f0 48f7e2 4889c6 7005'; // glibc 2.36 reallocarray
    expect(decide(code, { ...reallocarray, returnProbe: false }).reason).toMatch(/`mul %rdx` at \+0x3 writes rdx/);
    // rdx is not an argument of free: the same code would be passed for it (up to mov %rax,%rsi).
    expect(decide(code, strict).entryOffset).toBe(base + 9);
  });

  it('does not step over a call, a jmp or a return', () => {
    for (const hex of ['4885ff ffd0 55', '4885ff c3 55', '4885ff ff25000000 00 55']) {
      const r = decide(hex, free);
      expect(r.entryOffset, hex).toBe(base);
      expect(r.reason).toMatch(/control flow/);
    }
  });

  it('takes an emulated call or jmp as the site itself', () => {
    expect(decide('4885ff e800010000', strict).entryOffset).toBe(base + 3);
    expect(decide('4885ff eb10', strict).entryOffset).toBe(base + 3);
  });

  it('steps over a refused jcc that leaves only for NULL, for free only', () => {
    const code = '4885ff 3e7405 55 c3'; // test %rdi,%rdi; ds je (a probe there is refused); push %rbp
    const r = decide(code, free);
    expect(r.entryOffset).toBe(base + 6);
    expect(r.reason).toMatch(/leaves before it only for NULL/);
    expect(decide(code, strict).entryOffset).toBe(base);
    expect(decide(code, { ...malloc, returnProbe: false }).entryOffset).toBe(base);
  });

  it('does not step over a jcc that is not a NULL test of the 64-bit pointer', () => {
    for (const hex of [
      '85ff 3e7405 55', // test %edi,%edi: only the low half
      '4885ff 3e7505 55', // jne: leaves for non-NULL
      '4885f6 3e7405 55', // tests %rsi
      '4883ff01 3e7405 55', // cmp $1,%rdi
    ]) {
      expect(decide(hex, free).entryOffset, hex).toBe(base);
    }
    expect(decide('4883ff00 3e7405 55', free).entryOffset).toBe(base + 7); // cmp $0,%rdi
  });

  it('keeps the entry when a branch lands in the prologue before the site', () => {
    // 0: test %rdi,%rdi; 3: je 8; 5: push %rbp; 6: jmp 3; 8: ret
    const code = '4885ff 7403 55 ebfb c3';
    const r = decide(code, free, 9);
    expect(r.entryOffset).toBe(base);
    expect(r.reason).toMatch(/jumps into the prologue/);
    // A jump back to the entry itself is a new call: allowed.
    expect(decide('4885ff 7403 55 ebf8 c3', free, 9).entryOffset).toBe(base + 3);
  });

  it('keeps the entry when the body has an indirect jump', () => {
    const r = decide('4885ff 7403 55 ffe0 c3', free, 9);
    expect(r.entryOffset).toBe(base);
    expect(r.reason).toMatch(/indirect jump/);
  });

  it('does not leave the function (its symbol size)', () => {
    expect(decide('4885ff 55', free, 3).entryOffset).toBe(base);
    expect(decide('4885ff 55', free, 4).entryOffset).toBe(base + 3);
  });

  it('gives up after the window', () => {
    const r = decide('4889c1'.repeat(22) + '55', free);
    expect(r.entryOffset).toBe(base);
    expect(r.reason).toMatch(/none in the first 64 bytes/);
    expect(decide('4889c1'.repeat(21) + '55', free).entryOffset).toBe(base + 63);
  });

  it('keeps the entry on undecodable bytes', () => {
    expect(decide('06', free)).toMatchObject({ entryOffset: base, emulated: null }); // push %es: invalid in 64-bit mode
  });

  it('keeps the entry of a function with a return probe (it shares the breakpoint)', () => {
    const r = decide('803d010214000041544989d4', placementRule('posix_memalign'));
    expect(r).toMatchObject({ entryOffset: base, emulated: false });
    expect(r.reason).toMatch(/would add a second trap/);
  });
});

/** glibc 2.36 (Debian 12, 2.36-9+deb12u*): each function's first 32 bytes. */
const glibc236: Partial<Record<AllocatorFunction, string>> = {
  malloc: '415455534889fb4883ec10803d461b1400000f84f80100004885db0f88fd0100',
  calloc: '41554889f8415455534883ec1848f7e64889c30f90c04885db0f88d90200000f',
  realloc: '4157415641554154554889f5534889fb4883ec28803d3d131400000f84570100',
  reallocarray: '4889f048f7e24889c67005e940b8f8ff488b05e985130064c7000c00000031c0',
  free: '4885ff0f84bf00000055488d77f0534883ec18488b1dd69e1300488b47f8648b',
  posix_memalign: '803d010214000041544989d4554889fd534889f3745a4889da48c1ea03488d42',
  memalign: '803d710e1400007407e932f6ffff66904883ec18488974240848893c24e8bebc',
  valloc: '803d310e140000534889fb741b488b05349813004889de5b488b7818e9dff5ff',
  pvalloc: '803d010e140000534889fb742b488b0504981300488b7818488d47ff4801d872',
};
/** Expected: offset of the entry probe from the function, and its instruction. */
const expected: Partial<Record<AllocatorFunction, [number, RegExp]>> = {
  malloc: [0, /^push %r12$/],
  calloc: [0, /^push %r13$/],
  realloc: [0, /^push %r15$/],
  reallocarray: [0, /^mov %rsi,%rax$/],
  free: [3, /^je /],
  posix_memalign: [0, /^cmpb \$0x0,/],
  memalign: [0, /^cmpb \$0x0,/],
  aligned_alloc: [0, /^cmpb \$0x0,/], // glibc's aligned_alloc is memalign: one probe, under this name
  valloc: [0, /^cmpb \$0x0,/],
  pvalloc: [0, /^cmpb \$0x0,/],
};

describe("glibc 2.36's prologues", () => {
  for (const [fn, hex] of Object.entries(glibc236) as [AllocatorFunction, string][]) {
    it(fn, () => {
      const [delta, text] = expected[fn]!;
      const r = decidePlacement(bytes(hex), base, 0, placementRule(fn));
      expect(r.entryOffset - base, r.reason).toBe(delta);
      expect(r.instruction).toMatch(text);
    });
  }
});

describe("planProbes on this machine's libc", () => {
  const libc = '/lib/x86_64-linux-gnu/libc.so.6';
  const names = Object.keys(glibc236);
  const symbols = loadNative().readElf(libc, names).symbols;
  const file = readFileSync(libc);
  const isGlibc236 = names.every((fn) => {
    const s = symbols[fn];
    return s && file.subarray(s.offset, s.offset + 32).toString('hex') === glibc236[fn as AllocatorFunction];
  });

  it.runIf(isGlibc236)('optimized: free moves to its je, everything else stays', () => {
    const plan = planProbes(libc, true, undefined);
    for (const p of plan.placements) {
      const [delta, text] = expected[p.function]!;
      expect(p.entryOffset - p.functionOffset, `${p.function}: ${p.reason}`).toBe(delta);
      expect(p.instruction).toMatch(text);
    }
    for (const probe of plan.probes) {
      const p = plan.placements.find((x) => x.functionOffset === probe.returnOffset)!;
      expect(probe.entryOffset).toBe(p.entryOffset);
    }
    // The whole body of free was scanned: nothing jumps back into its first 3 bytes.
    expect(plan.placements.find((p) => p.function === 'free')!.reason).toMatch(/probe at \+0x3/);
  });

  it('entry: every probe at its function', () => {
    const plan = planProbes(libc, true, undefined, 'entry');
    expect(plan.placements.length).toBe(plan.probes.length);
    for (const probe of plan.probes) expect(probe.entryOffset).toBe(probe.returnOffset);
    for (const p of plan.placements) expect(p.reason).toMatch(/probePlacement 'entry'/);
  });

  it('the sliced plan (what trace() uses) is the same plan', async () => {
    expect(await planProbesSliced(libc, true, undefined)).toEqual(planProbes(libc, true, undefined));
    expect(await planProbesSliced(libc, true, undefined, 'entry')).toEqual(planProbes(libc, true, undefined, 'entry'));
  });

  it('never throws: an unreadable or foreign file keeps the entry', () => {
    expect(placeEntryProbe('/nonexistent', 'free', 0x10, 10)).toMatchObject({ entryOffset: 0x10 });
    expect(placeEntryProbe('/etc/hostname', 'free', 0, 10).reason).toMatch(/not an x86-64 ELF/);
  });
});
