// Suppressions: valgrind .supp and LSan files parsed, matched against our stacks (valgrind's
// mangled names and replacement functions included), applied to real programs (a fixture .supp
// suppresses what it names and nothing else), the shipped defaults, and generated rules.
import { describe, expect, it } from 'vitest';
import {
  applySuppressions,
  checkLeaks,
  defaultSuppressions,
  generateSuppressions,
  loadSuppressions,
  parseSuppressions,
  ruleMatches,
  SuppressionSyntaxError,
  type SuppressionRule,
} from '../lib/harness/index.js';
import { applySuppressionsSliced, mangledGlobToDemangled } from '../lib/suppressions/rules.js';
import type { StackFrame } from '../lib/types.js';
import { fixturePath, fixtureSource } from './helpers/fixtures.js';

const libc = '/usr/lib/x86_64-linux-gnu/libc.so.6';
const libstdcxx = '/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30';
const frame = (symbol: string | undefined, module = '/work/prog', extra: Partial<StackFrame> = {}): StackFrame => ({
  address: '0x1',
  module,
  ...(symbol !== undefined ? { symbol } : {}),
  ...extra,
});
const one = (text: string): SuppressionRule => {
  const rules = parseSuppressions(text);
  expect(rules).toHaveLength(1);
  return rules[0]!;
};

describe('parsing', () => {
  it('reads valgrind rules: name, leak kinds, fun/obj/src frames and ... wildcards', () => {
    const rules = parseSuppressions(
      `# a comment
{
   first
   Memcheck:Leak
   match-leak-kinds: definite,possible
   fun:malloc
   obj:/usr/lib/*/libfoo.so*
   ...
   src:parser.c:120
   fun:main
}

{
   second
   Memcheck:Leak
   fun:calloc
   src:util.c
}
{
   not-a-leak-rule
   Memcheck:Param
   write(buf)
   fun:write
}`,
      { source: 'my.supp' },
    );
    expect(rules).toEqual([
      {
        format: 'valgrind',
        name: 'first',
        leakKinds: ['definite', 'possible'],
        frames: [
          { type: 'fun', pattern: 'malloc' },
          { type: 'obj', pattern: '/usr/lib/*/libfoo.so*' },
          { type: '...' },
          { type: 'src', file: 'parser.c', line: 120 },
          { type: 'fun', pattern: 'main' },
        ],
        source: 'my.supp:2',
      },
      {
        format: 'valgrind',
        name: 'second',
        leakKinds: ['definite', 'indirect', 'possible', 'reachable'],
        frames: [
          { type: 'fun', pattern: 'calloc' },
          { type: 'src', file: 'util.c' },
        ],
        source: 'my.supp:13',
      },
    ]);
  });

  it('reads LSan files: leak: lines only', () => {
    expect(parseSuppressions('# c\nleak:libfoo.so\n\nrace:bar\nleak:^Parse*Tree$\n', { source: 'lsan.txt' })).toEqual([
      { format: 'lsan', name: 'leak:libfoo.so', pattern: 'libfoo.so', source: 'lsan.txt:2' },
      { format: 'lsan', name: 'leak:^Parse*Tree$', pattern: '^Parse*Tree$', source: 'lsan.txt:5' },
    ]);
  });

  it('says where a file is malformed', () => {
    expect(() => parseSuppressions('{\n  name\n  Memcheck:Leak\n  fun:malloc\n', { source: 'x.supp' })).toThrow(
      /x\.supp:1: suppression not closed/,
    );
    expect(() => parseSuppressions('{\n  name\n  Memcheck:Leak\n  match-leak-kinds: lost\n fun:a\n}')).toThrow(
      SuppressionSyntaxError,
    );
    expect(() => parseSuppressions('{\n  name\n  Memcheck:Leak\n  bogus line\n}')).toThrow(/unexpected line/);
    expect(() => parseSuppressions('leak\n', { format: 'lsan' })).toThrow(/expected TYPE:PATTERN/);
  });
});

describe('matching', () => {
  const cStack = [frame('malloc', libc), frame('parse_config'), frame('main'), frame('__libc_start_call_main', libc)];

  it('matches frame by frame from the innermost, with * and ? wildcards; a prefix suffices', () => {
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:parse_*\n}'), cStack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:parse_confi?\n fun:main\n}'), cStack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:main\n}'), cStack)).toBe(false);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n ...\n fun:main\n}'), cStack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n ...\n fun:parse_config\n}'), cStack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:calloc\n ...\n}'), cStack)).toBe(false);
  });

  it('matches obj: against the module path and src: against file and line', () => {
    const stack = [frame('malloc', libc), frame(undefined, '/opt/lib/libplugin.so'), frame('main', '/work/prog', { file: '/src/main.c', line: 9 })];
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n obj:*/libc.so.6\n obj:*/libplugin.so\n}'), stack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:*\n src:main.c:9\n}'), stack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:*\n src:main.c:10\n}'), stack)).toBe(false);
  });

  it('matches valgrind-written C++ rules: mangled names, operator new replaced by valgrind', () => {
    // As valgrind wrote it for cpp_containers' `new Widget(42)` in leak_some().
    const rule = one('{\n n\n Memcheck:Leak\n match-leak-kinds: definite\n fun:_Znwm\n fun:_ZL9leak_somev\n fun:main\n}');
    const stack = [frame('malloc', libc), frame('operator new(unsigned long)', libstdcxx), frame('leak_some()'), frame('main')];
    expect(ruleMatches(rule, stack)).toBe(true);
    // new[] is a different replacement: _Znam does not match operator new(unsigned long).
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:_Znam\n fun:_ZL9leak_somev\n}'), stack)).toBe(false);
    // A mangled prefix with a wildcard.
    expect(mangledGlobToDemangled('_ZN2v88internal*')).toBe('v8::internal*');
    expect(mangledGlobToDemangled('_ZN4node6Buffer3NewE*')).toBe('node::Buffer::New(*');
    const v8Stack = [frame('malloc', libc), frame('v8::internal::Zone::New(unsigned long)', '/usr/bin/node')];
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:_ZN2v88internal*\n}'), v8Stack)).toBe(true);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n fun:malloc\n fun:_ZN4node*\n}'), v8Stack)).toBe(false);
  });

  it('honours match-leak-kinds against the kinds blocks are assumed to have', () => {
    const reachable = one('{\n n\n Memcheck:Leak\n match-leak-kinds: reachable\n fun:malloc\n}');
    expect(ruleMatches(reachable, cStack)).toBe(true); // default: we cannot tell kinds apart
    expect(ruleMatches(reachable, cStack, { assumeLeakKinds: ['definite'] })).toBe(false);
    expect(ruleMatches(one('{\n n\n Memcheck:Leak\n match-leak-kinds: none\n fun:malloc\n}'), cStack)).toBe(false);
  });

  it('matches LSan patterns against any frame but the allocator: substring, *, ^ and $', () => {
    const lsan = (p: string) => parseSuppressions(`leak:${p}`)[0]!;
    expect(ruleMatches(lsan('parse_config'), cStack)).toBe(true);
    expect(ruleMatches(lsan('parse'), cStack)).toBe(true);
    expect(ruleMatches(lsan('^parse*fig$'), cStack)).toBe(true);
    expect(ruleMatches(lsan('^config'), cStack)).toBe(false);
    expect(ruleMatches(lsan('libc.so'), [frame('malloc', libc), frame('main')])).toBe(false); // the allocator frame is not looked at
    expect(ruleMatches(lsan('malloc'), [frame('malloc', libc), frame('main')])).toBe(false);
    expect(ruleMatches(lsan('/prog'), cStack)).toBe(true); // module
  });

  it('the default rules name V8, libuv and libstdc++ one-time allocations, not user code', () => {
    const node = '/usr/bin/node';
    const name = (stack: StackFrame[]) => defaultSuppressions().find((r) => ruleMatches(r, stack))?.name;
    expect(name([frame('malloc', libc), frame('v8::internal::AccountingAllocator::AllocateSegment(unsigned long, bool)', node), frame('v8::internal::Zone::Expand(unsigned long)', node)])).toBe('v8-zone-memory');
    expect(name([frame('realloc', libc), frame('uv__realloc', node), frame('maybe_resize', node), frame('uv__io_start', node)])).toBe('libuv-io-watchers');
    expect(name([frame('calloc', libc), frame('v8::internal::SlotSet::Allocate(unsigned long)', node)])).toBe('v8-gc-slot-sets');
    expect(name([frame('malloc', libc), frame('(anonymous namespace)::pool::pool()', libstdcxx)])).toBe('libstdc++-emergency-exception-pool');
    const ldso = '/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2';
    expect(name([frame('malloc', libc), frame(undefined, libstdcxx), frame('call_init', ldso)])).toBe('libstdc++-static-init');
    // C++ code's own `new` goes through libstdc++ too, and must never be suppressed.
    expect(name([frame('malloc', libc), frame('operator new(unsigned long)', libstdcxx), frame('MyParser::parse()', '/work/addon.node')])).toBeUndefined();
    expect(name([frame('malloc', libc), frame('operator new(unsigned long)', libstdcxx), frame('Global::Global()', '/work/prog'), frame('call_init', ldso)])).toBeUndefined();
    expect(name([frame('malloc', libc), frame('example::FormatGreeting()', '/work/addon.node'), frame('v8::internal::Builtin_HandleApiCall', node)])).toBeUndefined();
  });

  it('with a scan, only the rules for blocks the scan calls lost apply; the others only to groups without a kind', () => {
    const stdio = [frame('malloc', libc), frame('_IO_file_doallocate', libc), frame('_IO_doallocbuf', libc)];
    const dtv = [frame('calloc', libc), frame('calloc', '/usr/lib64/ld-linux-x86-64.so.2'), frame('allocate_dtv', '/usr/lib64/ld-linux-x86-64.so.2'), frame('_dl_allocate_tls', '/usr/lib64/ld-linux-x86-64.so.2')];
    const name = (stack: StackFrame[], kind?: 'definite' | 'possible' | 'reachable') =>
      defaultSuppressions().find((r) => ruleMatches(r, stack, {}, kind))?.name;
    expect(name(stdio)).toBe('glibc-stdio-buffer');
    expect(name(stdio, 'reachable')).toBeUndefined();
    expect(name(stdio, 'definite')).toBeUndefined();
    expect(name(dtv, 'possible')).toBe('ld.so-thread-dtv');
    expect(name(dtv, 'reachable')).toBeUndefined();
    expect(name(dtv)).toBe('ld.so-thread-dtv');
    expect(name(dtv, 'definite')).toBeUndefined();
  });

  it('applySuppressions keeps what no rule covers and totals the rest per rule', () => {
    const rules = parseSuppressions('leak:parse_config\nleak:never', { source: 's' });
    const groups = [
      { bytes: 10, blocks: 2, stack: cStack },
      { bytes: 5, blocks: 1, stack: [frame('malloc', libc), frame('main')] },
      { bytes: 7, blocks: 1, stack: [] }, // no stack: never suppressed
    ];
    const { kept, suppressed } = applySuppressions(groups, rules);
    expect(kept.map((g) => g.bytes)).toEqual([5, 7]);
    expect(suppressed).toEqual([{ rule: 'leak:parse_config', source: 's:1', bytes: 10, blocks: 2, groups: 1 }]);
  });

  it('generated rules stop where JavaScript starts: they hold whether V8 has compiled the caller or not', () => {
    const node = '/usr/bin/node';
    const native = [frame('malloc', libc), frame('example::FormatGreeting()', '/work/addon.node'), frame('v8::internal::Builtin_HandleApiCall', node)];
    const interpreted = [...native, frame('Builtins_CEntry_Return1_ArgvOnStack_BuiltinExit', node), frame('Builtins_InterpreterEntryTrampoline', node)];
    const compiled = [...native, frame('Builtins_CEntry_Return1_ArgvOnStack_BuiltinExit', node), { address: '0x7f0000001000' }];
    const text = generateSuppressions({ leaks: [{ bytes: 64, blocks: 1, stack: interpreted }] });
    expect(text).toContain('   fun:v8::internal::Builtin_HandleApiCall\n}');
    const [rule] = parseSuppressions(text);
    expect(ruleMatches(rule!, interpreted) && ruleMatches(rule!, compiled)).toBe(true);
  });

  it('applySuppressionsSliced (checkLeaks, the CLI) sorts groups as applySuppressions does', async () => {
    const rules = [...defaultSuppressions(), ...parseSuppressions('leak:parse_config', { source: 's' })];
    const groups = Array.from({ length: 500 }, (_, i) => ({
      bytes: 500 - i,
      blocks: 1 + (i % 3),
      stack: i % 4 === 0 ? cStack : [frame('malloc', libc), frame(`f${i}`), frame('main')],
    }));
    const sliced = await applySuppressionsSliced(groups, rules);
    expect(sliced).toEqual(applySuppressions(groups, rules));
    expect(sliced.kept).toHaveLength(375);
  });
});

describe('on real programs', () => {
  it('a valgrind .supp from the fixtures suppresses what it names and nothing else', async () => {
    const without = await checkLeaks(fixturePath('entry_points'), { leakKinds: false, stdio: 'ignore', defaultSuppressions: false });
    const supp = fixtureSource('suppressions/entry_points.supp');
    const withSupp = await checkLeaks(fixturePath('entry_points'), { leakKinds: false, stdio: 'ignore', defaultSuppressions: false, suppressions: supp });
    expect(without.suppressed).toEqual([]);
    expect(without.leaks).toHaveLength(11);
    expect(withSupp.suppressed.map(({ rule, bytes, blocks, groups }) => ({ rule, bytes, blocks, groups }))).toEqual([
      { rule: 'entry-points-calloc', bytes: 300, blocks: 1, groups: 1 },
      { rule: 'entry-points-posix-memalign', bytes: 100, blocks: 1, groups: 1 },
    ]);
    expect(withSupp.suppressed.every((h) => h.source.startsWith(`${supp}:`))).toBe(true);
    // Exactly those two groups are gone; the nine others are untouched.
    const top = (g: { stack: StackFrame[] }) => g.stack[0]?.symbol;
    const expected = without.leaks.filter((g) => !(top(g) === 'calloc' || top(g) === 'posix_memalign'));
    expect(expected).toHaveLength(9);
    expect(withSupp.leaks.map((g) => [g.bytes, g.blocks, top(g)])).toEqual(expected.map((g) => [g.bytes, g.blocks, top(g)]));
    expect(withSupp.leakedBytes).toBe(without.leakedBytes - 400);
    // The summary is the program's, suppressions or not.
    expect(withSupp.summary.inUseBytes).toBe(1778);
  });

  it('an LSan file suppresses what it names', async () => {
    const report = await checkLeaks(fixturePath('seed'), {
      stdio: 'ignore',
      defaultSuppressions: false,
      suppressions: fixtureSource('suppressions/seed.lsan'),
    });
    expect(report.suppressed.map((h) => [h.rule, h.bytes, h.blocks])).toEqual([['leak:_IO_file_doallocate', 4096, 1]]);
    expect(report.leaks.map((g) => g.bytes)).toEqual([8]); // main's leak: not named
  });

  it('ships default rules for one-time glibc/loader/libstdc++ allocations, and says which applied', async () => {
    const seed = await checkLeaks(fixturePath('seed'), { leakKinds: false, stdio: 'ignore' });
    expect(seed.suppressed.map((h) => [h.rule, h.source, h.bytes])).toEqual([['glibc-stdio-buffer', 'default', 4096]]);
    expect(seed.leaks.map((g) => g.bytes)).toEqual([8]);
    const dl = await checkLeaks(fixturePath('dlopen_main'), { leakKinds: false, args: [fixturePath('dlopen_plugin')], stdio: 'ignore' });
    expect(dl.suppressed.map((h) => h.rule)).toContain('ld.so-dl-find-object');
    expect(dl.leaks.map((g) => [g.bytes, g.blocks])).toEqual([[192, 3]]); // plugin_work's, not the loader's
    // libstdc++'s emergency exception pool; what is left is what valgrind reports (689 bytes:
    // its definitely, indirectly lost and still reachable blocks), new'd by the program.
    const cpp = await checkLeaks(fixturePath('cpp_containers'), { leakKinds: false, stdio: 'ignore' });
    expect(cpp.suppressed.map((h) => [h.rule, h.bytes])).toEqual([['libstdc++-static-init', 72_704]]);
    expect(cpp.leakedBytes).toBe(689);
    const threads = await checkLeaks(fixturePath('threads'), { leakKinds: false, stdio: 'ignore' });
    expect(threads.suppressed.map((h) => h.rule)).toContain('ld.so-thread-dtv'); // TLS of threads
    expect(threads.leaks.every((g) => g.stack.some((f) => f.symbol === 'work'))).toBe(true);
    expect(defaultSuppressions().every((r) => r.source === 'default')).toBe(true);
  });

  it('generateSuppressions writes rules that suppress what was found', async () => {
    const first = await checkLeaks(fixturePath('entry_points'), { leakKinds: false, stdio: 'ignore', defaultSuppressions: false });
    const text = generateSuppressions(first);
    expect(text).toMatch(/^\{\n {3}ebpf-leak-1\n {3}Memcheck:Leak\n {3}match-leak-kinds: all\n {3}fun:aligned_alloc\n {3}fun:main\n/);
    const rules = parseSuppressions(text);
    expect(rules.length).toBeGreaterThan(0);
    const second = await checkLeaks(fixturePath('entry_points'), { leakKinds: false, stdio: 'ignore', defaultSuppressions: false, suppressions: rules });
    expect(second.leaks.filter((g) => g.stack.length > 0)).toEqual([]);
    // LSan flavour: one line per distinct innermost function.
    expect(generateSuppressions(first, { format: 'lsan' })).toMatch(/^# .*\nleak:\^main\$\n$/);
    expect(loadSuppressions(fixtureSource('suppressions/entry_points.supp'))).toHaveLength(3);
  });
});
