#!/usr/bin/env node
// Cost of the CFI stack walker (bpf/unwind.bpf.h) against the frame-pointer walk, per allocation.
//
//   node bench/unwind.mjs [--runs N] [--pairs N]     (root; needs `npm run build`)
//
// Builds bench/unwind_workload.cc twice (-O2 with and without frame pointers) into build/bench/,
// then runs it untraced and traced with unwind 'fp', 'auto' and 'dwarf' (the unwind option), at
// two stack depths; and with the per-stack totals on and off (the stackTotals option), one and
// two threads allocating from one call site. RUNS times each, interleaved. Reports medians of:
//   wall         ns per new+delete pair of the timed loop (the workload's own clock): uprobe traps
//                and everything else included, so noisy when other uprobes are attached to libc;
//   alloc_exit   ns per run of the return-probe program (stack capture, recording the block),
//                from the kernel's BPF stats (kernel.bpf_stats_enabled, switched on for the
//                measurement and restored after);
//   alloc_entry  ns per run of the entry program (malloc's entry, and free: removing the block).
// --only REGEX keeps the configs whose build/depth/threads/mode/totals matches (e.g. '/20/1/').
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const out = join(root, 'build', 'bench');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const runs = opt('--runs', 5);
const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined;
const pairs = opt('--pairs', 300000);

spawnSync('mkdir', ['-p', out]);
for (const [name, flags] of [
  ['nofp', ['-fomit-frame-pointer']],
  ['fp', ['-fno-omit-frame-pointer']],
]) {
  const r = spawnSync('g++', ['-O2', '-g', ...flags, '-o', join(out, `unwind-workload-${name}`), join(root, 'bench', 'unwind_workload.cc')], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}

const { trace } = await import(join(root, 'dist', 'index.js'));
const statsPath = '/proc/sys/kernel/bpf_stats_enabled';
const statsBefore = readFileSync(statsPath, 'utf8').trim();

function programs() {
  const r = spawnSync('bpftool', ['prog', 'show', '-j'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) return [];
  return JSON.parse(r.stdout).filter((p) => p.name === 'alloc_exit' || p.name === 'alloc_entry');
}

async function runOnce(c) {
  const exe = join(out, `unwind-workload-${c.build}`);
  const args = [String(pairs), String(c.depth), String(c.threads)];
  if (c.mode === 'untraced') {
    const r = spawnSync(exe, args, { encoding: 'utf8' });
    return { wall: Number(/nsPerPair=([\d.]+)/.exec(r.stdout)[1]) };
  }

  // Ours are the programs that were not there before (another tracer's may come and go).
  const before = new Set(programs().map((p) => p.id));
  const tracer = await trace({ command: exe, args, stdio: 'pipe', unwind: c.mode, stackTotals: c.totals });
  const mine = programs().filter((p) => !before.has(p.id));
  const ids = { exit: mine.filter((p) => p.name === 'alloc_exit'), entry: mine.filter((p) => p.name === 'alloc_entry') };
  const exitId = ids.exit.length === 1 ? ids.exit[0].id : undefined;
  const entryId = ids.entry.length === 1 ? ids.entry[0].id : undefined;
  let text = '';
  tracer.process.stdout.on('data', (d) => (text += d));
  const last = {};
  const timer = setInterval(() => {
    for (const p of programs()) {
      if (p.id === exitId && p.run_cnt) last.exit = p;
      if (p.id === entryId && p.run_cnt) last.entry = p;
    }
  }, 50);
  const report = await tracer.done;
  clearInterval(timer);
  return {
    wall: Number(/nsPerPair=([\d.]+)/.exec(text)?.[1]),
    exit: last.exit ? last.exit.run_time_ns / last.exit.run_cnt : NaN,
    entry: last.entry ? last.entry.run_time_ns / last.entry.run_cnt : NaN,
    groups: report.leaks.length,
  };
}

const median = (xs) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const configs = [];
// The walker against the frame-pointer walk, at two depths, per-stack totals on.
for (const build of ['nofp', 'fp'])
  for (const depth of [0, 20])
    for (const mode of ['untraced', 'fp', 'auto', 'dwarf']) configs.push({ build, depth, threads: 1, mode, totals: true });
// What the per-stack totals cost, one thread and two threads allocating from one call site.
for (const threads of [1, 2])
  for (const mode of ['fp', 'auto'])
    for (const totals of [true, false]) configs.push({ build: 'nofp', depth: 0, threads, mode, totals, block: 'totals' });
if (only) configs.splice(0, configs.length, ...configs.filter((c) => `${c.build}/${c.depth}/${c.threads}/${c.mode}/${c.totals ? 'on' : 'off'}`.match(new RegExp(only))));
const results = new Map(configs.map((c) => [c, []]));
writeFileSync(statsPath, '1');
try {
  for (let i = 0; i < runs; i++) {
    for (const c of configs) results.get(c).push(await runOnce(c));
  }
} finally {
  writeFileSync(statsPath, statsBefore);
}
console.log(`pairs ${pairs} per thread, runs ${runs}; medians, ns`);
console.log('build  depth  threads  mode      totals  wall/pair  alloc_exit/run  alloc_entry/run');
const f = (x) => (Number.isNaN(x) ? '-' : x.toFixed(0));
for (const c of configs) {
  const r = results.get(c);
  const row = [
    c.build.padEnd(5),
    String(c.depth).padStart(5),
    String(c.threads).padStart(7),
    c.mode.padEnd(8),
    (c.mode === 'untraced' ? '' : c.totals ? 'on' : 'off').padEnd(6),
    f(median(r.map((x) => x.wall))).padStart(9),
    f(median(r.map((x) => x.exit ?? NaN))).padStart(14),
    f(median(r.map((x) => x.entry ?? NaN))).padStart(15),
  ];
  console.log(row.join('  '));
}
