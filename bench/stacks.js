// What stacks cost on malloc-heavy programs, by CPU time rather than wall time
// (`npm run bench -- --stacks`; root). A busy machine makes wall times swing by 2-3x; the BPF
// programs' own run time (kernel.bpf_stats) and the CPU time of the run change far less.
//
//   npm run bench -- --stacks [--runs 5] [--workloads map,git,python] [--configs A,B] [--json F]
//
// Workloads (as in bench/peers.js): `map` (C++ std::map<std::string,int>, 500,000 keys), `git`
// (`git log -p --stat` over the generated history bench/peers.js makes), `python` (python3 with
// PYTHONMALLOC=malloc on bench/peers/workload.py). Configs: `no-stacks` (--no-stacks), `stacks`
// (the default), NAME=--FLAG[=VALUE][+--FLAG...] to run `stacks` with more CLI flags (e.g.
// `alloc=--keep-stacktraces=alloc`), NAME=VAR=VALUE[+VAR=VALUE] to run it with environment
// variables set, and NAME@DIR to run
// `stacks` with the build of another checkout in DIR (a before/after comparison). Runs are
// interleaved, the order rotated each round. Per run, through bench/entries.c: the entry and return programs' runs and
// ns per run, the BPF time per traced return (an allocation), and the CPU time of the whole run
// (node, the tracer and the program; start-up included).

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { programRuns } from './entries-output.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bench = join(root, 'build', 'bench');
const argv = process.argv.slice(2);
const option = (name) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
const runs = Number(option('--runs') ?? 5) || 5;
const workloads = (option('--workloads') ?? 'map,git,python').split(',');
const configs = (option('--configs') ?? 'no-stacks,stacks').split(',').map((c) => {
  if (c === 'no-stacks') return { name: c, args: ['--no-stacks'], env: {} };
  if (c === 'stacks') return { name: c, args: [], env: {} };
  if (c.includes('@')) {
    const [name, checkout] = c.split('@');
    return { name, args: [], env: {}, checkout };
  }
  const [name, ...rest] = c.split('=');
  if (rest[0]?.startsWith('--')) return { name, args: rest.join('=').split('+'), env: {} };
  const env = {};
  for (const kv of rest.join('=').split('+')) {
    const [k, v] = kv.split('=');
    if (!k || v === undefined) throw new Error(`--configs: ${c} is not NAME=VAR=VALUE[+VAR=VALUE]`);
    env[k] = v;
  }
  return { name, args: [], env };
});
const log = (...a) => console.log(...a);
const median = (xs) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 1 << 26, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status ?? r.signal}\n${r.stderr}`);
  return r.stdout;
}

function commands() {
  const env = { ...process.env, LC_ALL: 'C' };
  delete env.PYTHONMALLOC;
  const w = {};
  if (workloads.includes('map')) {
    const out = join(bench, 'ebpf-leak-peers-map');
    mkdirSync(bench, { recursive: true });
    run('g++', ['-O2', '-g', '-o', out, join(root, 'bench', 'peers', 'map.cc')]);
    w.map = { comm: 'ebpf-leak-peers', cmd: [out, '500000'], env };
  }
  if (workloads.includes('git')) {
    const repo = '/var/tmp/ebpf-leak-bench/git-history-v1/repo';
    if (!existsSync(repo)) throw new Error(`no ${repo}: run \`npm run bench -- --peers --workloads git --configs untraced --rounds 1\` once`);
    w.git = {
      comm: 'git',
      cmd: ['/usr/bin/git', '-C', repo, '--no-pager', 'log', '-p', '--stat', '--output=/dev/null'],
      env: { ...env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' },
    };
  }
  if (workloads.includes('python')) {
    w.python = { comm: 'python3', cmd: ['/usr/bin/python3', join(root, 'bench', 'peers', 'workload.py'), '3000'], env: { ...env, PYTHONMALLOC: 'malloc' } };
  }
  return w;
}

function once(w, config) {
  const checkout = config.checkout ?? root;
  const cli = join(checkout, JSON.parse(readFileSync(join(checkout, 'package.json'), 'utf8')).bin['ebpf-leak']);
  const out = run(join(bench, 'ebpf-leak-entries'), [w.comm, '--', process.execPath, cli, 'run', '--top', '1', ...config.args, '--', ...w.cmd], {
    env: { ...w.env, ...config.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const entry = programRuns(out, 'alloc_entry');
  const exit = programRuns(out, 'alloc_exit');
  return {
    entryNs: entry.ns,
    exitNs: exit.ns,
    returns: exit.runs,
    bpfNsPerReturn: (entry.runs * entry.ns + exit.runs * exit.ns) / exit.runs,
    cpuMs: Number(/^cpu_ms ([\d.]+)$/m.exec(out)?.[1] ?? NaN),
  };
}

if (process.getuid?.() !== 0) throw new Error('the bench loads BPF programs: run it as root');
run('cmake', ['--build', join(root, 'build'), '--target', 'ebpf-leak-bench']);
const w = commands();
const pairs = Object.keys(w).flatMap((name) => configs.map((c) => [name, c]));
const results = {};
for (let r = 0; r < runs; r++) {
  const order = pairs.slice(r % pairs.length).concat(pairs.slice(0, r % pairs.length));
  for (const [name, c] of order) {
    const res = once(w[name], c);
    ((results[name] ??= {})[c.name] ??= []).push(res);
    const line = `round ${r + 1} ${name} ${c.name}: exit ${res.exitNs.toFixed(0)} ns, entry ${res.entryNs.toFixed(0)} ns, cpu ${res.cpuMs.toFixed(0)} ms\n`;
    process.stderr.write(line);
    if (option('--json')) writeFileSync(option('--json') + '.partial', JSON.stringify(results));
  }
}
log(`Medians of ${runs} runs (load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`);
log('| workload | config | returns | entry program ns/run | return program ns/run | BPF ns per return | CPU ms per run |');
log('|---|---|---|---|---|---|---|');
const table = {};
for (const name of Object.keys(results)) {
  for (const c of configs) {
    const rs = results[name][c.name];
    const m = (k) => median(rs.map((x) => x[k]));
    const row = { returns: m('returns'), entryNs: m('entryNs'), exitNs: m('exitNs'), bpfNsPerReturn: m('bpfNsPerReturn'), cpuMs: m('cpuMs') };
    (table[name] ??= {})[c.name] = row;
    log(`| ${name} | ${c.name} | ${row.returns} | ${row.entryNs.toFixed(0)} | ${row.exitNs.toFixed(0)} | ${row.bpfNsPerReturn.toFixed(0)} | ${row.cpuMs.toFixed(0)} |`);
  }
}
if (option('--json')) writeFileSync(option('--json'), JSON.stringify({ date: new Date().toISOString(), runs, table, results }, null, 2));
