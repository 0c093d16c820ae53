// What a probed call costs, by counts and CPU time rather than wall time (`npm run bench -- --costs`;
// root). A busy machine (2 vCPUs shared) makes wall times swing by 2-3x; these change little.
//
// 1. Probe kinds (bench/probe_kinds.c under bench/floor.c's empty programs): CPU ns per call of a
//    function whose probed first instruction is a 5-byte nop (an optimized uprobe on kernels that
//    have them), an emulated push, or a single-stepped load; with an entry probe, and with an
//    entry probe and a return probe, and with a uprobe session whose entry keeps or declines the
//    return (kernel >= 6.13). Median of --runs runs (default 5), interleaved.
// 2. Kernel entries and BPF time per call under ebpf-leak (bench/entries.c): on bench/workload.c's
//    `pair` (malloc(64); free) and on python3 with PYTHONMALLOC=malloc (bench/peers/workload.py),
//    without and with stacks: system calls (uretprobe syscalls among them) per pair, and each
//    program's runs and ns per run (kernel.bpf_stats). Entry programs run once per breakpoint hit.

import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { programRuns } from './entries-output.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bench = join(root, 'build', 'bench');
const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf('--runs') + 1] || 5) || 5;
const log = (...a) => console.log(...a);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', env, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status ?? r.signal}\n${r.stderr}`);
  return r.stdout;
}

/** File offset of a function symbol: its address less its section's address, plus the section's offset. */
function fileOffset(path, symbol) {
  const syms = run('nm', [path]);
  const addr = parseInt(/^([0-9a-f]+) T (\S+)$/m.exec(syms.split('\n').filter((l) => l.endsWith(` ${symbol}`)).join('\n'))?.[1] ?? 'x', 16);
  const sections = run('readelf', ['-SW', path]);
  const text = /\.text\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(sections);
  if (Number.isNaN(addr) || !text) throw new Error(`no ${symbol} in ${path}`);
  return addr - parseInt(text[1], 16) + parseInt(text[2], 16);
}

function probeKinds() {
  const prog = join(bench, 'ebpf-leak-probe-kinds');
  const floor = join(bench, 'ebpf-leak-floor');
  const kinds = ['nop5', 'push', 'step'];
  const configs = ['none', 'entry', 'entry+return', 'session-keep', 'session-decline'];
  const calls = { nop5: 300_000, push: 300_000, step: 30_000 };
  const cpu = {};
  for (let r = 0; r < runs; r++) {
    for (const kind of kinds) {
      const off = '0x' + fileOffset(prog, `kind_${kind}`).toString(16);
      for (const config of configs) {
        const args = [kind, String(calls[kind])];
        const probes = {
          entry: ['--entry', off],
          'entry+return': ['--entry', off, '--return', off],
          'session-keep': ['--session-keep', off],
          'session-decline': ['--session-decline', off],
        }[config];
        const out = config === 'none' ? run(prog, args) : run(floor, ['--path', prog, ...probes, '--', prog, ...args]);
        ((cpu[kind] ??= {})[config] ??= []).push(Number(/cpuNsPerCall=([\d.]+)/.exec(out)[1]));
      }
    }
  }
  log(`Probe kinds: CPU ns per call, median of ${runs} (empty BPF programs; bench/probe_kinds.c)`);
  log('| first instruction | no probe | entry probe | entry + return probe | the return alone | session, return kept | session, return declined |');
  log('|---|---|---|---|---|---|---|');
  const result = {};
  for (const kind of kinds) {
    const m = Object.fromEntries(configs.map((c) => [c, median(cpu[kind][c])]));
    result[kind] = m;
    log(
      `| ${kind} | ${m.none.toFixed(0)} | ${m.entry.toFixed(0)} | ${m['entry+return'].toFixed(0)} | ${(m['entry+return'] - m.entry).toFixed(0)} | ` +
        `${m['session-keep'].toFixed(0)} | ${m['session-decline'].toFixed(0)} |`,
    );
  }
  return result;
}

function entriesPerCall() {
  const entries = join(bench, 'ebpf-leak-entries');
  const cli = join(root, JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).bin['ebpf-leak']);
  const pairs = 100_000;
  const workloads = [
    { name: 'pair (malloc(64); free)', comm: 'ebpf-leak-workl', cmd: [join(bench, 'ebpf-leak-workload'), 'pair', String(pairs), '--out', '/dev/null'], env: {} },
    { name: 'python, PYTHONMALLOC=malloc', comm: 'python3', cmd: ['/usr/bin/python3', join(root, 'bench', 'peers', 'workload.py'), '3000'], env: { PYTHONMALLOC: 'malloc' } },
  ];
  log('');
  log('Kernel entries and BPF time under ebpf-leak, per malloc+free pair (a pair: one malloc entry and one free entry; bench/entries.c)');
  log('With `--preload`, malloc has neither: its one probe after its call into glibc runs the "after call" program.');
  log('| workload | stacks | preload | syscalls / pair | of them uretprobe | entry program ns/run | return program ns/run | after-call program ns/run | BPF ns / pair |');
  log('|---|---|---|---|---|---|---|---|---|');
  const result = [];
  for (const w of workloads) {
    for (const [stacks, preload] of [[false, false], [true, false], [true, true]]) {
      const flags = [...(stacks ? [] : ['--no-stacks']), ...(preload ? ['--preload'] : [])];
      const out = run(entries, [w.comm, '--', process.execPath, cli, 'run', ...flags, '--', ...w.cmd], {
        ...process.env,
        ...w.env,
      });
      const count = (k) => Number(new RegExp(`^${k} (\\d+)$`, 'm').exec(out)[1]);
      const entry = programRuns(out, 'alloc_entry');
      const exit = programRuns(out, 'alloc_exit');
      const after = programRuns(out, 'alloc_preloaded');
      // A pair is a malloc and a free: two entry runs, or one entry run (the free) and one run
      // after the call.
      const n = (entry.runs + after.runs) / 2;
      const ran = (p) => (p.runs ? p.runs * p.ns : 0);
      const row = {
        workload: w.name,
        stacks,
        preload,
        syscallsPerPair: count('syscalls') / n,
        uretprobePerPair: count('uretprobe_syscalls') / n,
        entryNs: entry.ns,
        exitNs: exit.ns,
        afterCallNs: after.ns,
        bpfNsPerPair: (ran(entry) + ran(exit) + ran(after)) / n,
      };
      result.push(row);
      const ns = (x) => (Number.isNaN(x) ? '-' : x.toFixed(0));
      log(
        `| ${w.name} | ${stacks ? 'on' : 'off'} | ${preload ? 'on' : 'off'} | ${row.syscallsPerPair.toFixed(2)} | ${row.uretprobePerPair.toFixed(2)} | ${ns(row.entryNs)} | ${ns(row.exitNs)} | ${ns(row.afterCallNs)} | ${row.bpfNsPerPair.toFixed(0)} |`,
      );
    }
  }
  return result;
}

if (process.getuid?.() !== 0) throw new Error('the bench loads BPF programs: run it as root');
const r = spawnSync('cmake', ['--build', join(root, 'build'), '--target', 'ebpf-leak-bench'], { cwd: root, encoding: 'utf8' });
if (r.status !== 0) throw new Error(`building the bench targets failed:\n${r.stdout}${r.stderr}`);
const kinds = probeKinds();
const perPair = entriesPerCall();
const jsonAt = argv.indexOf('--json');
if (jsonAt >= 0) {
  writeFileSync(argv[jsonAt + 1], JSON.stringify({ date: new Date().toISOString(), probeKinds: kinds, perPair }, null, 2));
}
