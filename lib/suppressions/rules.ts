// One file by design: parsing, matching and generating rules share one rule model and its frame patterns, and a rule that does not match is understood by reading all three together.
// Suppressions: rules that say "this allocation stack is known and fine", read from valgrind
// `.supp` files and LeakSanitizer `leak:` files, matched against ebpf-leak's symbolized stacks,
// and generated from a report (`--gen-suppressions`).
//
// valgrind format (memcheck leak rules; other tools' and error kinds' rules are skipped):
//
//   {
//      rule-name
//      Memcheck:Leak
//      match-leak-kinds: definite,possible     (optional; "all" or a list; default all)
//      fun:malloc                              (function name, * and ? wildcards)
//      obj:*/libfoo.so*                        (object file path, wildcards)
//      src:parser.c:120                        (source file, optional :line; valgrind >= 3.16)
//      ...                                     (any number of frames, including none)
//      fun:main
//   }
//
// Frame lines are matched from the innermost frame outwards; the stack may be longer than the
// rule. As in valgrind, our stacks start at the allocation function (malloc, calloc, operator
// new[], ...). Where valgrind shows its replacement of one function that glibc implements with
// another (`fun:memalign` + `fun:posix_memalign`), the leading allocation-function lines of a
// rule are compared as a set with the stack's leading allocation frames (see
// allocatorPrefixMatch), so rules valgrind wrote match.
//
// valgrind writes C++ names mangled (`fun:_ZN3foo3barEv`); our stacks carry demangled names, and
// the mangled one a frame's was demangled from. A mangled name without wildcards is demangled
// (with the C++ runtime's demangler) and compared to the demangled symbol; a mangled prefix with
// wildcards (`fun:_ZN2v88internal*`) is translated to its demangled form (`v8::internal::*`);
// anything else is compared as written, to both names. `fun:(below main)` is the C library's
// code that calls main.
//
// Leak kinds: valgrind sorts leaked blocks into definite, indirect, possible and reachable by
// scanning memory for pointers to them, and so does ebpf-leak when it holds the target at exit
// (LeakGroup.kind): a rule then applies to a group only when `match-leak-kinds` lists its kind.
// A group without a kind (no scan) is taken to have any kind the rule lists (except `none`);
// narrow that with `assumeLeakKinds` (e.g. ['definite']).
//
// LeakSanitizer format: one `leak:PATTERN` per line, `#` comments. A rule matches a stack when
// PATTERN matches the function name, the source file or the module of any frame (the
// allocation function's own frame excepted, as in LSan, where it is the interceptor): a
// substring match, with `*` wildcards, `^` anchoring the start and `$` the end.
import { readFileSync } from 'node:fs';
import { forEachRange } from '../util/cooperative.js';
import { loadNative } from '../native/addon.js';
import { leakKinds, type LeakGroup, type LeakKind, type StackFrame } from '../types.js';
import { SuppressionSyntaxError } from '../errors.js';

export { leakKinds, type LeakKind };

export type FramePattern =
  | { type: 'fun' | 'obj'; pattern: string }
  | { type: 'src'; file: string; line?: number }
  | { type: '...' };

export interface ValgrindSuppression {
  format: 'valgrind';
  name: string;
  /** Kinds from `match-leak-kinds`; all four when the line is absent or says `all`. */
  leakKinds: LeakKind[];
  frames: FramePattern[];
  /** Where the rule was read from: `file:line`, `<text>:line` or `default`. */
  source: string;
  /** Applies only to groups without a kind (reports made without a scan of the target): for
   *  shipped rules whose blocks a scan finds still reachable. */
  unscannedOnly?: boolean;
}

export interface LsanSuppression {
  format: 'lsan';
  /** The pattern itself, as a name. */
  name: string;
  pattern: string;
  source: string;
}

export type SuppressionRule = ValgrindSuppression | LsanSuppression;

/** Something the harness accepts as suppressions: a file path, parsed rules, or text. */
export type SuppressionInput =
  | string
  | SuppressionRule
  | readonly SuppressionRule[]
  | { text: string; format?: 'valgrind' | 'lsan'; source?: string };

export interface ParseOptions {
  /** Default: guessed from the text (`{` blocks: valgrind; `leak:` lines: LSan). */
  format?: 'valgrind' | 'lsan';
  /** Named in each rule's `source`; default `<text>`. */
  source?: string;
}


function guessFormat(text: string): 'valgrind' | 'lsan' {
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    return line.startsWith('{') ? 'valgrind' : 'lsan';
  }
  return 'valgrind';
}

/** Parses a valgrind `.supp` or an LSan suppressions file. Only leak rules are returned:
 *  valgrind rules for other tools or error kinds (Memcheck:Cond, Helgrind:Race, ...) and LSan
 *  lines of other types are skipped. */
export function parseSuppressions(text: string, options: ParseOptions = {}): SuppressionRule[] {
  const source = options.source ?? '<text>';
  const format = options.format ?? guessFormat(text);
  return format === 'lsan' ? parseLsan(text, source) : parseValgrind(text, source);
}

function parseLsan(text: string, source: string): LsanSuppression[] {
  const out: LsanSuppression[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new SuppressionSyntaxError(`${source}:${i + 1}: expected TYPE:PATTERN, got "${line}"`);
    if (line.slice(0, colon) !== 'leak') return; // race:, called_from_lib:, ... (other sanitizers)
    const pattern = line.slice(colon + 1).trim();
    if (pattern === '') throw new SuppressionSyntaxError(`${source}:${i + 1}: empty leak: pattern`);
    out.push({ format: 'lsan', name: `leak:${pattern}`, pattern, source: `${source}:${i + 1}` });
  });
  return out;
}

function parseLeakKinds(value: string, where: string): LeakKind[] {
  const kinds = new Set<LeakKind>();
  for (const word of value.split(',').map((w) => w.trim()).filter(Boolean)) {
    if (word === 'all') leakKinds.forEach((k) => kinds.add(k));
    else if (word === 'none') continue;
    else if ((leakKinds as readonly string[]).includes(word)) kinds.add(word as LeakKind);
    else throw new SuppressionSyntaxError(`${where}: unknown leak kind "${word}" (use ${leakKinds.join(', ')}, all or none)`);
  }
  return [...kinds];
}

function parseValgrind(text: string, source: string): ValgrindSuppression[] {
  const lines = text.split('\n');
  const out: ValgrindSuppression[] = [];
  let i = 0;
  const where = (n: number) => `${source}:${n + 1}`;
  while (i < lines.length) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) {
      i++;
      continue;
    }
    if (line !== '{') throw new SuppressionSyntaxError(`${where(i)}: expected "{" to start a suppression, got "${line}"`);
    const start = i;
    const body: Array<{ text: string; at: number }> = [];
    i++;
    for (; i < lines.length; i++) {
      const l = lines[i]!.trim();
      if (l === '}') break;
      if (l === '' || l.startsWith('#')) continue;
      body.push({ text: l, at: i });
    }
    if (i >= lines.length) throw new SuppressionSyntaxError(`${where(start)}: suppression not closed with "}"`);
    i++; // past '}'
    const [nameLine, kindLine, ...rest] = body;
    if (!nameLine || !kindLine) throw new SuppressionSyntaxError(`${where(start)}: a suppression needs a name and a TOOL:KIND line`);
    // "Memcheck:Leak", or a tool list: "Memcheck,Addrcheck:Leak".
    const colon = kindLine.text.lastIndexOf(':');
    const tools = colon > 0 ? kindLine.text.slice(0, colon).split(',') : [];
    const kind = colon > 0 ? kindLine.text.slice(colon + 1) : '';
    const isLeak = tools.includes('Memcheck') && kind === 'Leak';
    let kinds: LeakKind[] = [...leakKinds];
    const frames: FramePattern[] = [];
    for (const { text: l, at } of rest) {
      if (l.startsWith('match-leak-kinds:')) {
        kinds = parseLeakKinds(l.slice('match-leak-kinds:'.length), where(at));
      } else if (l === '...') {
        frames.push({ type: '...' });
      } else if (l.startsWith('fun:') || l.startsWith('obj:')) {
        frames.push({ type: l.slice(0, 3) as 'fun' | 'obj', pattern: l.slice(4) });
      } else if (l.startsWith('src:')) {
        const spec = l.slice(4);
        const m = /^(.*):(\d+)$/.exec(spec);
        frames.push(m ? { type: 'src', file: m[1]!, line: Number(m[2]) } : { type: 'src', file: spec });
      } else if (!isLeak) {
        continue; // other tools carry extra lines (e.g. Memcheck:Param's syscall name)
      } else {
        throw new SuppressionSyntaxError(`${where(at)}: unexpected line in a leak suppression: "${l}"`);
      }
    }
    if (!isLeak) continue;
    if (frames.length === 0) throw new SuppressionSyntaxError(`${where(start)}: suppression "${nameLine.text}" has no frame lines`);
    out.push({ format: 'valgrind', name: nameLine.text, leakKinds: kinds, frames, source: where(start) });
  }
  return out;
}

/** Reads a suppressions file (format guessed from its text unless given). */
export function loadSuppressions(path: string, format?: 'valgrind' | 'lsan'): SuppressionRule[] {
  const text = readFileSync(path, 'utf8');
  return parseSuppressions(text, { source: path, ...(format ? { format } : {}) });
}

/** Rules from any mix of inputs. */
export function resolveSuppressions(inputs: SuppressionInput | readonly SuppressionInput[] | undefined): SuppressionRule[] {
  if (inputs === undefined) return [];
  const list: readonly SuppressionInput[] = Array.isArray(inputs) && !isRuleList(inputs) ? inputs : [inputs as SuppressionInput];
  const out: SuppressionRule[] = [];
  for (const input of list) {
    if (typeof input === 'string') out.push(...loadSuppressions(input));
    else if (Array.isArray(input)) out.push(...(input as SuppressionRule[]));
    else if ('format' in input && (input.format === 'valgrind' || input.format === 'lsan') && 'source' in input && !('text' in input)) out.push(input as SuppressionRule);
    else {
      const t = input as { text: string; format?: 'valgrind' | 'lsan'; source?: string };
      out.push(...parseSuppressions(t.text, { ...(t.format ? { format: t.format } : {}), ...(t.source ? { source: t.source } : {}) }));
    }
  }
  return out;
}

function isRuleList(value: readonly unknown[]): boolean {
  return value.length > 0 && value.every((v) => typeof v === 'object' && v !== null && 'format' in v && 'source' in v && !('text' in v));
}

// ---- matching

const globCache = new Map<string, RegExp>();

/** valgrind's wildcards: `*` any run of characters, `?` one character; the whole name must match. */
export function globToRegExp(glob: string): RegExp {
  let re = globCache.get(glob);
  if (!re) {
    const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[\\s\\S]*').replace(/\?/g, '[\\s\\S]');
    re = new RegExp(`^${body}$`);
    globCache.set(glob, re);
  }
  return re;
}

let demangler: ((name: string) => string | null) | null | undefined;
function demangle(name: string): string | null {
  if (demangler === undefined) {
    try {
      const fn = loadNative().Tracer.demangle;
      demangler = typeof fn === 'function' ? fn : null;
    } catch {
      demangler = null;
    }
  }
  return demangler ? demangler(name) : null;
}

/** A mangled name's prefix with wildcards, as a demangled glob: `_ZN2v88internal*` ->
 *  `v8::internal*`, `_ZN4node6Buffer3NewE*` -> `node::Buffer::New(*`, `_Z3foo*` -> `foo*`.
 *  Only names are translated (parameter encodings become "any parameters"); null when the
 *  pattern is not such a prefix. */
export function mangledGlobToDemangled(pattern: string): string | null {
  const nested = pattern.startsWith('_ZN');
  if (!nested && !pattern.startsWith('_Z')) return null;
  let at = nested ? 3 : 2;
  const parts: string[] = [];
  for (;;) {
    const m = /^\d+/.exec(pattern.slice(at));
    if (!m) break;
    const n = Number(m[0]);
    const name = pattern.slice(at + m[0].length, at + m[0].length + n);
    if (name.length < n || /[*?]/.test(name)) return null; // a wildcard inside a name: cannot translate
    parts.push(name);
    at += m[0].length + n;
    if (!nested) break;
  }
  if (parts.length === 0) return null;
  let rest = pattern.slice(at);
  let closed = !nested;
  if (nested && rest.startsWith('E')) {
    closed = true;
    rest = rest.slice(1);
  }
  const name = parts.join('::');
  if (rest === '') return closed ? `${name}(*` : name;
  if (rest === '*' && !closed) return `${name}*`;
  return `${name}(*`; // parameters (or more, unknown): any
}

const funCache = new Map<string, (symbol: string) => boolean>();
function compileFun(pattern: string): (symbol: string) => boolean {
  let test = funCache.get(pattern);
  if (test) return test;
  const glob = globToRegExp(pattern);
  let demangled: ((symbol: string) => boolean) | undefined;
  if (pattern.startsWith('_Z')) {
    if (!/[*?]/.test(pattern)) {
      const d = demangle(pattern);
      if (d !== null) demangled = (symbol) => symbol === d; // exact: '*' in it is a pointer
    } else {
      const d = mangledGlobToDemangled(pattern);
      if (d !== null) {
        const re = globToRegExp(d);
        demangled = (symbol) => re.test(symbol);
      }
    }
  }
  test = demangled ? (symbol) => glob.test(symbol) || demangled(symbol) : (symbol) => glob.test(symbol);
  funCache.set(pattern, test);
  return test;
}

/** What valgrind calls `(below main)`: the C library's code that calls main. */
const belowMain = new Set(['__libc_start_call_main', '__libc_start_main', '__libc_start_main_impl', '__libc_start_main_alias_2', 'generic_start_main']);

function frameMatches(p: Exclude<FramePattern, { type: '...' }>, f: StackFrame): boolean {
  switch (p.type) {
    case 'fun':
      if (p.pattern === '(below main)') return f.symbol !== undefined && belowMain.has(f.symbol);
      return compileFun(p.pattern)(f.symbol ?? '???') || (f.mangled !== undefined && globToRegExp(p.pattern).test(f.mangled));
    case 'obj':
      return globToRegExp(p.pattern).test(f.module ?? '???');
    case 'src': {
      if (f.file === undefined) return false;
      const base = f.file.slice(f.file.lastIndexOf('/') + 1);
      if (!globToRegExp(p.file).test(base) && !globToRegExp(p.file).test(f.file)) return false;
      return p.line === undefined || f.line === p.line;
    }
  }
}

function isWildcard(p: FramePattern): boolean {
  return p.type === '...' || ((p.type === 'obj' || p.type === 'fun') && /^\*+$/.test(p.pattern));
}

/** valgrind's matcher: patterns from the innermost frame, `...` any frames, a prefix suffices. */
function framesMatch(patterns: readonly FramePattern[], stack: readonly StackFrame[]): boolean {
  const memo = new Map<number, boolean>();
  const go = (pi: number, si: number): boolean => {
    if (pi === patterns.length) return true;
    const key = pi * (stack.length + 1) + si;
    const known = memo.get(key);
    if (known !== undefined) return known;
    const p = patterns[pi]!;
    let result: boolean;
    if (si === stack.length && patterns.slice(pi).every(isWildcard)) {
      // valgrind's stacks go on past the bottom of ours with frames it cannot name (`obj:*`).
      result = true;
    } else if (p.type === '...') {
      result = false;
      for (let s = si; s <= stack.length && !result; s++) result = go(pi + 1, s);
    } else {
      result = si < stack.length && frameMatches(p, stack[si]!) && go(pi + 1, si + 1);
    }
    memo.set(key, result);
    return result;
  };
  return go(0, 0);
}

const allocatorSymbols = new Set([
  'malloc',
  'calloc',
  'realloc',
  'reallocarray',
  'posix_memalign',
  'aligned_alloc',
  'memalign',
  'valloc',
  'pvalloc',
  '__libc_malloc',
  '__libc_calloc',
  '__libc_realloc',
  '__libc_memalign',
]);

/** Whether the stack's first frame is the allocation function (added by the tracer). */
function startsAtAllocator(stack: readonly StackFrame[]): boolean {
  const top = stack[0];
  return top !== undefined && isAllocatorFrame(top);
}

/** Allocation-function frames: the allocator's own, and libstdc++'s operator new family. */
function isAllocatorFrame(f: StackFrame): boolean {
  const name = f.symbol;
  return name !== undefined && (allocatorSymbols.has(name) || name.startsWith('operator new'));
}

/** A rule line naming an allocation function as valgrind writes them (its replacements of
 *  malloc & co. and of operator new: _Znwm, _Znam, _ZnwmRKSt9nothrow_t, ...). */
function isAllocatorPattern(p: FramePattern): boolean {
  return p.type === 'fun' && (allocatorSymbols.has(p.pattern) || /^_Zn[wa]/.test(p.pattern) || p.pattern.startsWith('operator new'));
}

/** valgrind's leak stacks start at its replacement of the allocation function; ours at glibc's,
 *  possibly below libstdc++'s operator new (`malloc, operator new(unsigned long), caller`), and
 *  valgrind shows posix_memalign as `memalign, posix_memalign`. So besides matching the whole
 *  stack, a rule that starts with allocation functions matches when one of them matches one of
 *  the stack's leading allocation frames and the rest of the rule matches the rest of the stack. */
function allocatorPrefixMatch(frames: readonly FramePattern[], stack: readonly StackFrame[]): boolean {
  let ri = 0;
  while (ri < frames.length && isAllocatorPattern(frames[ri]!)) ri++;
  let si = 0;
  while (si < stack.length && isAllocatorFrame(stack[si]!)) si++;
  if (ri === 0 || si === 0 || ri === frames.length) return false;
  const ruleAllocators = frames.slice(0, ri) as Array<Exclude<FramePattern, { type: '...' }>>;
  const overlap = ruleAllocators.some((p) => stack.slice(0, si).some((f) => frameMatches(p, f)));
  return overlap && framesMatch(frames.slice(ri), stack.slice(si));
}

const lsanCache = new Map<string, RegExp>();
function lsanRegExp(pattern: string): RegExp {
  let re = lsanCache.get(pattern);
  if (!re) {
    let p = pattern;
    const start = p.startsWith('^');
    if (start) p = p.slice(1);
    const end = p.endsWith('$');
    if (end) p = p.slice(0, -1);
    const body = p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[\\s\\S]*');
    re = new RegExp(`${start ? '^' : ''}${body}${end ? '$' : ''}`);
    lsanCache.set(pattern, re);
  }
  return re;
}

export interface MatchOptions {
  /** The kinds blocks without a scanned kind are taken to have, for `match-leak-kinds`.
   *  Default: all four (see the top of this file). */
  assumeLeakKinds?: readonly LeakKind[];
}

/** Whether `rule` suppresses an allocation with this stack (innermost first, allocation
 *  function on top, as in reports). */
export function ruleMatches(
  rule: SuppressionRule,
  stack: readonly StackFrame[],
  options: MatchOptions = {},
  kind?: LeakKind,
): boolean {
  if (rule.format === 'lsan') {
    const re = lsanRegExp(rule.pattern);
    const frames = startsAtAllocator(stack) ? stack.slice(1) : stack;
    return frames.some(
      (f) =>
        (f.symbol !== undefined && re.test(f.symbol)) ||
        (f.file !== undefined && re.test(f.file)) ||
        (f.module !== undefined && re.test(f.module)),
    );
  }
  if (rule.unscannedOnly && kind !== undefined) return false;
  const assumed = kind !== undefined ? [kind] : (options.assumeLeakKinds ?? leakKinds);
  if (!rule.leakKinds.some((k) => assumed.includes(k))) return false;
  return framesMatch(rule.frames, stack) || allocatorPrefixMatch(rule.frames, stack);
}

/** The first rule that suppresses this stack. */
export function findSuppression(
  rules: readonly SuppressionRule[],
  stack: readonly StackFrame[],
  options: MatchOptions = {},
  kind?: LeakKind,
): SuppressionRule | undefined {
  if (stack.length === 0) return undefined;
  return rules.find((r) => ruleMatches(r, stack, options, kind));
}

/** How much one rule suppressed. */
export interface SuppressionHit {
  rule: string;
  /** Where the rule came from: `file:line`, or `default` for the shipped rules. */
  source: string;
  bytes: number;
  blocks: number;
  /** Leak groups (distinct stacks) it covered. */
  groups: number;
  /** Of `bytes` and `blocks`: those lost only through the blocks it covered (a lost block's
   *  indirectly lost ones), hidden with them; absent when none. */
  owned?: { bytes: number; blocks: number };
}

export interface AppliedSuppressions<G> {
  kept: G[];
  suppressed: SuppressionHit[];
  /** The hit of each group a rule covered. */
  matched: Map<G, SuppressionHit>;
}

/** Sorts groups, one at a time, into those no rule covers and per-rule totals of the rest. */
class SuppressionSorter<G extends Pick<LeakGroup, 'bytes' | 'blocks' | 'stack' | 'kind'>> {
  readonly #rules: readonly SuppressionRule[];
  readonly #options: MatchOptions;
  readonly #kept: G[] = [];
  readonly #hits = new Map<SuppressionRule, SuppressionHit>();
  readonly #matched = new Map<G, SuppressionHit>();

  constructor(rules: readonly SuppressionRule[], options: MatchOptions) {
    this.#rules = rules;
    this.#options = options;
  }

  add(g: G): void {
    const rule = findSuppression(this.#rules, g.stack, this.#options, g.kind);
    if (!rule) {
      this.#kept.push(g);
      return;
    }
    let hit = this.#hits.get(rule);
    if (!hit) this.#hits.set(rule, (hit = { rule: rule.name, source: rule.source, bytes: 0, blocks: 0, groups: 0 }));
    hit.bytes += g.bytes;
    hit.blocks += g.blocks;
    hit.groups += 1;
    this.#matched.set(g, hit);
  }

  result(): AppliedSuppressions<G> {
    return { kept: this.#kept, suppressed: [...this.#hits.values()].sort((a, b) => b.bytes - a.bytes), matched: this.#matched };
  }
}

/** Splits groups into those no rule covers and per-rule totals of the rest. */
export function applySuppressions<G extends Pick<LeakGroup, 'bytes' | 'blocks' | 'stack' | 'kind'>>(
  groups: readonly G[],
  rules: readonly SuppressionRule[],
  options: MatchOptions = {},
): AppliedSuppressions<G> {
  const sorter = new SuppressionSorter<G>(rules, options);
  for (const g of groups) sorter.add(g);
  return sorter.result();
}

/** Groups matched between looks at the clock: a deep stack against a few dozen rules takes
 *  ~0.1 ms, so ten thousand groups are most of a second. */
const GROUPS_PER_STEP = 16;

/** applySuppressions() in slices, the event loop served between them (lib/util/cooperative.ts). */
export async function applySuppressionsSliced<G extends Pick<LeakGroup, 'bytes' | 'blocks' | 'stack' | 'kind'>>(
  groups: readonly G[],
  rules: readonly SuppressionRule[],
  options: MatchOptions = {},
): Promise<AppliedSuppressions<G>> {
  const sorter = new SuppressionSorter<G>(rules, options);
  await forEachRange(groups.length, GROUPS_PER_STEP, (start, end) => {
    for (let i = start; i < end; i++) sorter.add(groups[i]!);
  });
  return sorter.result();
}

// ---- generation

export interface GenerateOptions {
  /** Frames per rule, innermost first (valgrind's default is 12... ours: the whole stack up to
   *  this many). Default 12. */
  depth?: number;
  /** `valgrind` (default) or `lsan` (one `leak:` line per group, naming its innermost
   *  non-allocator function). */
  format?: 'valgrind' | 'lsan';
  /** Rule names: default `ebpf-leak-N`. */
  name?: (group: Pick<LeakGroup, 'bytes' | 'blocks' | 'stack'>, index: number) => string;
}

/** A frame of JavaScript: JIT code, or one of V8's `Builtins_*` (the interpreter's trampoline, the
 *  C entry stubs). What comes from there on depends on how far V8 has compiled the caller, which
 *  changes from run to run (interpreted: `Builtins_InterpreterEntryTrampoline`; compiled: code
 *  outside any file), so a rule stops before it. As measure() draws its call sites. */
function runsJavaScript(f: StackFrame): boolean {
  return f.module === undefined || f.module === '[perf-map]' || (f.symbol !== undefined && f.symbol.startsWith('Builtins_'));
}

function frameLine(f: StackFrame): string {
  if (f.symbol !== undefined && belowMain.has(f.symbol)) return 'fun:(below main)';
  if (f.mangled !== undefined) return `fun:${f.mangled}`;
  if (f.symbol !== undefined) return `fun:${f.symbol}`;
  if (f.module !== undefined && !f.module.startsWith('[')) return `obj:${f.module}`;
  return 'fun:*';
}

/** Where a generated rule ends: the program's main, and the loader's runner of constructors
 *  (what is below them is start-up code valgrind names differently, or not at all). */
const outermost = new Set(['main', '_dl_init']);

/** Runtime files: frames there are never the program's own code (an LSan rule naming one would
 *  hide every leak that passes through it). */
const runtimeModule = /\/(libc\.so|libc-[\d.]+\.so|ld-linux[^/]*|libstdc\+\+\.so|libc\+\+(abi)?\.so|libgcc_s\.so|libjemalloc\.so|libtcmalloc[^/]*|libmimalloc[^/]*)[^/]*$/;

/** The first frame of the program's own code: not an allocation function, not in a runtime
 *  file, not the C library's start-up code; with a symbol. */
function firstOwnFrame(stack: readonly StackFrame[]): StackFrame | undefined {
  return stack.find(
    (f, i) =>
      f.symbol !== undefined &&
      !(i === 0 && startsAtAllocator(stack)) &&
      !isAllocatorFrame(f) &&
      !belowMain.has(f.symbol) &&
      (f.module === undefined || !runtimeModule.test(f.module)),
  );
}

/** valgrind-format rules (or LSan lines) that suppress every group of `report`, one per group,
 *  largest first. Written as valgrind writes them, so valgrind reads them too: C++ names mangled,
 *  the C library's code that calls main as `(below main)`, and nothing after it. Frames without
 *  a symbol become `obj:` lines (or `fun:*` outside any file); JIT frames and everything after
 *  them are cut (their addresses change from run to run): a rule matches longer stacks. LSan
 *  lines name the first frame of the program's own code, anchored (`leak:^name$`): a rule
 *  naming operator new or a runtime library would hide every leak of every program. */
export function generateSuppressions(
  report: { leaks: readonly Pick<LeakGroup, 'bytes' | 'blocks' | 'stack'>[] },
  options: GenerateOptions = {},
): string {
  const depth = options.depth ?? 12;
  const out: string[] = [];
  const seen = new Set<string>();
  report.leaks.forEach((g, i) => {
    if (g.stack.length === 0) return;
    if (options.format === 'lsan') {
      const f = firstOwnFrame(g.stack);
      if (!f) return;
      const line = `leak:^${f.symbol!.replace(/[*^$]/g, '*')}$`;
      if (!seen.has(line)) out.push(`# ${g.bytes} bytes in ${g.blocks} blocks`, line);
      seen.add(line);
      return;
    }
    const lines: string[] = [];
    for (const f of g.stack) {
      if (lines.length >= depth || runsJavaScript(f)) break;
      lines.push(frameLine(f));
      if (f.symbol !== undefined && (outermost.has(f.symbol) || belowMain.has(f.symbol))) break;
    }
    const body = lines.join('\n');
    if (lines.length === 0 || seen.has(body)) return;
    seen.add(body);
    const name = options.name ? options.name(g, i) : `ebpf-leak-${i + 1}`;
    out.push(
      '{',
      `   ${name}`,
      '   Memcheck:Leak',
      '   match-leak-kinds: all',
      ...lines.map((l) => `   ${l}`),
      '}',
    );
  });
  return out.length > 0 ? out.join('\n') + '\n' : '';
}
