// One file by design: one script that runs every (workload, tool) pair the same way, in rotated rounds, and prints one table; each workload and each tool is a case of its loop.
// ebpf-leak against its peers on real programs (`npm run bench -- --peers [--json FILE]`; root).
//
// Workloads (inputs made once, deterministically, under /var/tmp/ebpf-leak-bench, outside the repo):
//   map         C++ std::map<std::string,int> with 500,000 keys (bench/peers/map.cc)
//   git         `git log -p --stat` over a generated history of 3,000 commits
//   python      python3 with PYTHONMALLOC=malloc (how Python is leak-checked) on bench/peers/workload.py
//   sort, gzip, python-pymalloc
//               few mallocs: sort and gzip of a 24 MB text, the Python script with its own allocator
// Configs: every workload untraced; under ebpf-leak as a user runs it (`ebpf-leak run`, from dist/:
// no stacks, stacks, allocation stacks only (--keep-stacktraces=alloc), both with its entry points preloaded
// (--preload), sampling with stacks); heaptrack; valgrind (memcheck, --leak-check=full);
// BCC's memleak (bpfcc-tools; the program is held before exec until memleak's probes are in);
// and the seed article's bpftrace script (printf on every malloc, @[retval] = 1, @[arg0] = 0).
// Wall time from the tool's start to its exit: start-up, tracing and report, as a user waits.
//
// A round runs every (workload, config) once, in an order rotated from round to round. A run during
// which other processes used more than --max-other-cpu CPUs (/proc/stat's busy time less this
// process's and its children's) marks its round disturbed; disturbed rounds are left out while at
// least --rounds clean ones can be had within --max-rounds. The hypervisor's steal time is reported.
// Peers missing are installed with apt-get (bench-only: heaptrack, valgrind, bpfcc-tools, bpftrace).
//
// BCC 0.26's memleak registers its uprobes with a nonzero ref_ctr_offset on kernel 6.18; the kernel
// keeps one per (file, offset), so while memleak runs every other uprobe on libc's malloc, free, ...
// fails with EINVAL ("ref_ctr_offset mismatch" in the kernel log), and memleak fails while another
// tracer holds one. On a machine shared with other tracers, leave it out (--configs without it).
//
// Options: --rounds N (clean rounds wanted, default 5), --max-rounds N (default 3 x rounds),
// --workloads a,b --configs a,b (subsets), --max-other-cpu X (default 0.15), --json FILE,
// --from FILE (print the tables of a JSON written earlier).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
/** The CLI as installed: package.json's bin. */
const cli = join(root, JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).bin['ebpf-leak']);
const cacheDir = '/var/tmp/ebpf-leak-bench';
const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const libc = '/lib/x86_64-linux-gnu/libc.so.6';

const argv = process.argv.slice(2);
const option = (name) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const wantedRounds = Number(option('--rounds') ?? 5);
const maxRounds = Number(option('--max-rounds') ?? wantedRounds * 3);
const maxOtherCpu = Number(option('--max-other-cpu') ?? 0.15);
const jsonFile = option('--json');
const allWorkloads = ['map', 'git', 'python', 'sort', 'gzip', 'python-pymalloc'];
const allConfigs = ['untraced', 'leak-no-stacks', 'leak-stacks', 'leak-alloc-stacks', 'leak-preload-stacks', 'leak-preload-entry-stacks', 'leak-preload-alloc-stacks', 'leak-sampling', 'heaptrack', 'valgrind', 'memleak', 'bpftrace-seed'];
const workloads = option('--workloads')?.split(',') ?? allWorkloads;
const configs = option('--configs')?.split(',') ?? allConfigs;
for (const w of workloads) if (!allWorkloads.includes(w)) throw new Error(`unknown workload '${w}' (${allWorkloads.join(', ')})`);
for (const c of configs) if (!allConfigs.includes(c)) throw new Error(`unknown config '${c}' (${allConfigs.join(', ')})`);

const log = (...a) => console.log(...a);
const median = (all) => {
  const s = all.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const haveCommand = (name) => spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;

// ---------------------------------------------------------------------------------------------
// Tools and inputs

/** The peers, from Debian, when missing: a bench-only step (CI's setup does not install them). */
function ensurePeers() {
  const wanted = [
    ['heaptrack', 'heaptrack'],
    ['valgrind', 'valgrind'],
    ['memleak-bpfcc', 'bpfcc-tools'],
    ['bpftrace', 'bpftrace'],
  ].filter(([cmd]) => !haveCommand(cmd));
  if (wanted.length === 0) return;
  const packages = wanted.map(([, p]) => p);
  log(`Installing ${packages.join(', ')} (apt-get install -y)...`);
  let r = spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore' });
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'ignore' });
    r = spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore' });
  }
  for (const [cmd, p] of wanted) if (!haveCommand(cmd)) log(`  ${p} could not be installed: its rows are skipped`);
}

/** BCC compiles memleak's program at start-up against the running kernel's headers, which a
 *  kernel without a Debian headers package (nor CONFIG_IKHEADERS) lacks: Debian's newest amd64
 *  headers stand in (memleak's probes use only pt_regs, the same on every x86-64 kernel). */
function ensureKernelHeadersForBcc() {
  const modules = `/lib/modules/${os.release()}`;
  if (!haveCommand('memleak-bpfcc') || existsSync(join(modules, 'build')) || existsSync('/sys/kernel/kheaders.tar.xz')) return;
  const find = () =>
    existsSync('/usr/src')
      ? readdirSync('/usr/src')
          .filter((d) => /^linux-headers-.*-amd64$/.test(d))
          .sort()
      : [];
  if (find().length === 0) {
    log('Installing linux-headers-amd64 for BCC (apt-get install -y)...');
    spawnSync('apt-get', ['install', '-y', 'linux-headers-amd64'], { stdio: 'ignore' });
  }
  const headers = find().pop();
  if (!headers) return log('  no kernel headers: the memleak rows will fail');
  log(`  ${modules}/build -> /usr/src/${headers} (for BCC)`);
  mkdirSync(modules, { recursive: true });
  symlinkSync(`/usr/src/${headers}`, join(modules, 'build'));
  const common = headers.replace(/-amd64$/, '-common');
  if (existsSync(`/usr/src/${common}`) && !existsSync(join(modules, 'source'))) symlinkSync(`/usr/src/${common}`, join(modules, 'source'));
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})`);
  return r;
}

function buildEbpfLeak() {
  if (!existsSync(cli) || !existsSync(join(root, 'build', 'Release', 'ebpf_leak.node'))) {
    log('Building ebpf-leak (npm run build)...');
    run('npm', ['run', 'build']);
  }
}

/** A 32-bit xorshift generator: the same inputs on every machine. */
function generator(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const words = (() => {
  const next = generator(7);
  const syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'xe', 'zu', 'pa', 'qi', 'do', 'fe', 'gu', 'ho'];
  return Array.from({ length: 4096 }, () => {
    let w = '';
    for (let k = 2 + (next() % 4); k > 0; k--) w += syllables[next() % syllables.length];
    return w;
  });
})();

/** A git history made once with fast-import: 3,000 commits, each changing a few of 300 files. */
function ensureGitHistory() {
  const dir = join(cacheDir, 'git-history-v1');
  if (existsSync(join(dir, 'done'))) return dir;
  log(`Generating the git history (${dir}, once)...`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: dir, GIT_CONFIG_GLOBAL: '/dev/null' };
  run('git', ['init', '-q', '-b', 'main', join(dir, 'repo')], { env });
  const next = generator(12345);
  const files = Array.from({ length: 300 }, (_, f) =>
    Array.from({ length: 80 }, () => Array.from({ length: 6 }, () => words[next() % words.length]).join(' ')),
  );
  const chunks = [];
  let mark = 0;
  for (let c = 0; c < 3000; c++) {
    const touched = new Set();
    for (let k = 1 + (next() % 4); k > 0; k--) touched.add(next() % files.length);
    const modifies = [];
    for (const f of touched) {
      const lines = files[f];
      for (let e = 1 + (next() % 6); e > 0; e--) {
        const at = next() % lines.length;
        const line = Array.from({ length: 6 }, () => words[next() % words.length]).join(' ');
        if (next() % 3 === 0 && lines.length > 20) lines.splice(at, 1);
        else if (next() % 2 === 0) lines.splice(at, 0, line);
        else lines[at] = line;
      }
      const body = lines.join('\n') + '\n';
      chunks.push(`blob\nmark :${++mark}\ndata ${Buffer.byteLength(body)}\n${body}\n`);
      modifies.push(`M 100644 :${mark} src/dir${f % 12}/file${f}.txt\n`);
    }
    const msg = `change ${c}: ${words[next() % words.length]} ${words[next() % words.length]}\n`;
    const when = 1_600_000_000 + c * 3600;
    chunks.push(
      `commit refs/heads/main\nmark :${++mark}\nauthor Bench <bench@example.org> ${when} +0000\n` +
        `committer Bench <bench@example.org> ${when} +0000\ndata ${Buffer.byteLength(msg)}\n${msg}` +
        modifies.join('') + '\n',
    );
  }
  run('git', ['-C', join(dir, 'repo'), 'fast-import', '--quiet'], { env, input: chunks.join(''), stdio: ['pipe', 'inherit', 'inherit'] });
  run('git', ['-C', join(dir, 'repo'), 'gc', '-q', '--aggressive'], { env });
  writeFileSync(join(dir, 'done'), '');
  return dir;
}

/** A 24 MB text of words, once: the input of sort and gzip. */
function ensureText() {
  const file = join(cacheDir, 'text-v1.txt');
  if (existsSync(file)) return file;
  mkdirSync(cacheDir, { recursive: true });
  const next = generator(99);
  const lines = [];
  for (let i = 0; i < 600_000; i++) lines.push(Array.from({ length: 6 }, () => words[next() % words.length]).join(' '));
  writeFileSync(file + '.tmp', lines.join('\n') + '\n');
  spawnSync('mv', [file + '.tmp', file]);
  return file;
}

function buildMap() {
  const out = join(root, 'build', 'bench', 'ebpf-leak-peers-map');
  mkdirSync(join(root, 'build', 'bench'), { recursive: true });
  run('g++', ['-O2', '-g', '-o', out, join(root, 'bench', 'peers', 'map.cc')]);
  return out;
}

/** Each workload: the command, its arguments, its environment. */
function workloadCommands() {
  const w = {};
  const script = join(root, 'bench', 'peers', 'workload.py');
  const env = { ...process.env, LC_ALL: 'C' };
  delete env.PYTHONMALLOC;
  if (workloads.includes('map')) w.map = { cmd: buildMap(), args: ['500000'], env };
  if (workloads.includes('git')) {
    const repo = join(ensureGitHistory(), 'repo');
    w.git = {
      cmd: '/usr/bin/git',
      args: ['-C', repo, '--no-pager', 'log', '-p', '--stat'],
      env: { ...env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' },
    };
  }
  if (workloads.includes('python')) w.python = { cmd: python, args: [script, '10000'], env: { ...env, PYTHONMALLOC: 'malloc' } };
  if (workloads.includes('sort') || workloads.includes('gzip')) {
    const text = ensureText();
    w.sort = { cmd: '/usr/bin/sort', args: [text], env };
    w.gzip = { cmd: '/usr/bin/gzip', args: ['-c', '-6', text], env };
  }
  if (workloads.includes('python-pymalloc')) w['python-pymalloc'] = { cmd: python, args: [script, '80000'], env };
  return w;
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

const clockTicks = 100; // USER_HZ

/** /proc/stat's first line: busy (user..softirq, guest counted in user) and steal, ms. */
function machineCpu() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return { busyMs: ((user + nice + system + irq + softirq) * 1000) / clockTicks, stealMs: (steal * 1000) / clockTicks };
}

/** This process's CPU and its waited-for children's (and theirs), ms: /proc/self/stat fields 14-17. */
function ourCpuMs({ childrenOnly = false } = {}) {
  const s = readFileSync('/proc/self/stat', 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ').map(Number);
  return (((childrenOnly ? 0 : f[11] + f[12]) + f[13] + f[14]) * 1000) / clockTicks;
}

/** CPU time of every process now, ms by pid (with its name). */
function processCpu() {
  const out = new Map();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ').map(Number);
      out.set(pid, { name, ppid: f[1], ms: ((f[11] + f[12]) * 1000) / clockTicks });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Pids of this process and its descendants now. */
function ourPids(procs) {
  const ours = new Set([String(process.pid)]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, p] of procs) if (!ours.has(pid) && ours.has(String(p.ppid))) (ours.add(pid), (grew = true));
  }
  return ours;
}

/** Watches one run: how much CPU others used meanwhile (in CPUs), who, and the steal time. */
function cpuWatch() {
  const m0 = machineCpu();
  const o0 = ourCpuMs();
  const c0 = ourCpuMs({ childrenOnly: true });
  const p0 = processCpu();
  const t0 = performance.now();
  return () => {
    const wallMs = performance.now() - t0;
    const m1 = machineCpu();
    const p1 = processCpu();
    const ours = ourPids(p1);
    const ourMs = ourCpuMs() - o0;
    // Processes seen at both ends that are not ours: named. Short-lived ones show only in the
    // machine's total, less ours (and our descendants still alive, not yet in cutime).
    let ourLiveMs = 0;
    const others = [];
    for (const [pid, p] of p1) {
      const before = p0.get(pid)?.ms ?? 0;
      if (ours.has(pid)) ourLiveMs += p.ms - before;
      else if (p.ms - before > 0) others.push({ name: p.name, ms: p.ms - before });
    }
    const otherMs = Math.max(0, m1.busyMs - m0.busyMs - ourMs - ourLiveMs);
    others.sort((a, b) => b.ms - a.ms);
    // The run's own CPU: the tool's and the program's (the BPF programs run in the program's
    // context, as its system time). Less sensitive to a busy machine than wall time.
    const cpuMs = ourCpuMs({ childrenOnly: true }) - c0;
    return { wallMs, cpuMs, otherCpus: otherMs / wallMs, stealMs: m1.stealMs - m0.stealMs, top: others.slice(0, 3) };
  };
}

// ---------------------------------------------------------------------------------------------
// One run

const tmp = mkdtempSync(join(os.tmpdir(), 'ebpf-leak-peers-'));
let counter = 0;
const devNull = openSync('/dev/null', 'w');

/** Spawns, resolves when it exits with { code, stderr }. */
function start(cmd, args, env, { stdout = devNull, onStdout } = {}) {
  const child = spawn(cmd, args, { env, stdio: ['ignore', onStdout ? 'pipe' : stdout, 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4096)));
  if (onStdout) child.stdout.on('data', onStdout);
  const exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code: code ?? `signal ${signal}`, stderr }));
  });
  return { child, exited };
}

/** perf_event fds of a process (BCC attaches each uprobe as one). */
function perfEventFds(pid) {
  let n = 0;
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).includes('perf_event')) n++;
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // exited
  }
  return n;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** BCC's memleak with -c starts the program before its probes are compiled and attached, and
 *  never exits; so the program is held before exec (a shell waiting on a FIFO), memleak attached
 *  to its pid, and the program released once memleak's 20 uprobes are in. SIGINT ends memleak
 *  when the program exits. */
async function runMemleak(w) {
  const fifo = join(tmp, `hold-${counter++}`);
  run('mkfifo', [fifo]);
  const held = start('sh', ['-c', 'read _ < "$0"; exec "$@"', fifo, w.cmd, ...w.args], w.env);
  let announced = false;
  const tool = start('memleak-bpfcc', ['-p', String(held.child.pid)], { ...process.env, PYTHONUNBUFFERED: '1' }, {
    onStdout: (d) => (announced ||= String(d).includes('Attaching to pid')),
  });
  let toolDone = false;
  tool.exited.then(() => (toolDone = true));
  let last = -1;
  let stableSince = performance.now();
  for (;;) {
    if (toolDone) {
      held.child.kill('SIGKILL'); // never released: it must not wait on the FIFO forever
      rmSync(fifo, { force: true });
      throw new Error(`memleak exited before attaching: ${(await tool.exited).stderr}`);
    }
    const n = announced ? perfEventFds(tool.child.pid) : 0;
    if (n !== last) (last = n), (stableSince = performance.now());
    if (n >= 20 || (n > 0 && performance.now() - stableSince > 500)) break;
    await sleep(5);
  }
  writeFileSync(fifo, '\n');
  const program = await held.exited;
  tool.child.kill('SIGINT');
  await tool.exited;
  rmSync(fifo, { force: true });
  return program;
}

function seedScript() {
  // The article's script, its pid filter on the program bpftrace starts (-c).
  return (
    `uprobe:${libc}:__libc_malloc /pid == cpid/ { printf("call malloc size: %d\\n", arg0); }\n` +
    `uretprobe:${libc}:__libc_malloc /pid == cpid/ { printf("alloc memory %p\\n", retval); @[retval] = 1; }\n` +
    `uprobe:${libc}:__libc_free /pid == cpid/ { @[arg0] = 0; }\n`
  );
}

async function runOnce(config, w) {
  const leak = (flags) => start(process.execPath, [cli, 'run', ...flags, '--', w.cmd, ...w.args], w.env).exited;
  let r;
  switch (config) {
    case 'untraced':
      r = await start(w.cmd, w.args, w.env).exited;
      break;
    case 'leak-no-stacks':
      r = await leak(['--no-stacks']);
      break;
    case 'leak-stacks':
      r = await leak([]);
      break;
    case 'leak-alloc-stacks':
      r = await leak(['--keep-stacktraces', 'alloc']);
      break;
    case 'leak-preload-stacks':
      r = await leak(['--preload']);
      break;
    case 'leak-preload-entry-stacks':
      r = await leak(['--preload', '--probe-placement', 'entry']);
      break;
    case 'leak-preload-alloc-stacks':
      r = await leak(['--preload', '--keep-stacktraces', 'alloc']);
      break;
    case 'leak-sampling':
      r = await leak(['--sample-every', String(512 * 1024)]);
      break;
    case 'heaptrack': {
      const out = join(tmp, `heaptrack-${counter++}`);
      r = await start('heaptrack', ['-o', out, w.cmd, ...w.args], w.env).exited;
      for (const f of readdirSync(tmp)) if (f.startsWith(`heaptrack-${counter - 1}`)) rmSync(join(tmp, f), { force: true });
      break;
    }
    case 'valgrind':
      r = await start('valgrind', ['--leak-check=full', `--log-file=${join(tmp, 'valgrind.log')}`, w.cmd, ...w.args], w.env).exited;
      break;
    case 'memleak':
      r = await runMemleak(w);
      break;
    case 'bpftrace-seed':
      r = await start('bpftrace', ['-e', seedScript(), '-c', [w.cmd, ...w.args].join(' ')], {
        ...w.env,
        BPFTRACE_MAP_KEYS_MAX: '4194304',
      }).exited;
      break;
  }
  if (r.code !== 0) throw new Error(`${config} on ${w.cmd}: exit ${r.code}\n${r.stderr}`);
}

function available(config) {
  const need = { heaptrack: 'heaptrack', valgrind: 'valgrind', memleak: 'memleak-bpfcc', 'bpftrace-seed': 'bpftrace' }[config];
  return !need || haveCommand(need);
}

// ---------------------------------------------------------------------------------------------
// Rounds and the table

function table(results, clean, metric = 'wallMs') {
  const cols = configs.filter((c) => c !== 'untraced');
  const header = ['workload', 'untraced', ...cols];
  const rows = [header, header.map(() => '---')];
  for (const w of workloads) {
    const base = median((results[w].untraced ?? []).map((r) => r[metric]).filter((_, i) => clean[i]));
    const cells = [w, `${(base / 1000).toFixed(2)} s`];
    for (const c of cols) {
      const t = median((results[w][c] ?? []).map((r) => r[metric]).filter((_, i) => clean[i]));
      cells.push(Number.isNaN(t) ? '-' : `${(t / base).toFixed(t / base < 10 ? 2 : 0)}×`);
    }
    rows.push(cells);
  }
  return rows.map((r) => `| ${r.join(' | ')} |`).join('\n');
}

/** --from FILE: the tables of a JSON written earlier (also a partial one, after any round). */
function printSaved(file) {
  const saved = JSON.parse(readFileSync(file, 'utf8'));
  const clean = saved.rounds.map((r) => saved.disturbedRoundsIncluded || r.clean || saved.cleanRounds === 0);
  const results = saved.runs;
  for (const w of Object.keys(results)) for (const c of Object.keys(results[w])) results[w][c] = results[w][c].map((r) => ({ wallMs: r?.wallMs ?? NaN, cpuMs: r?.cpuMs ?? NaN }));
  workloads.splice(0, workloads.length, ...Object.keys(results));
  configs.splice(0, configs.length, ...Object.keys(results[workloads[0]]));
  log(`${file}: ${saved.rounds.length} rounds${saved.partial ? ' (partial)' : ''}, ${saved.cleanRounds} clean; steal ${(saved.stealMs / 1000).toFixed(1)} s`);
  log(table(results, clean));
  log('');
  log(table(results, clean, 'cpuMs'));
}

async function main() {
  if (option('--from')) return printSaved(option('--from'));
  if (process.getuid?.() !== 0) throw new Error('the bench traces with eBPF: run it as root');
  ensurePeers();
  ensureKernelHeadersForBcc();
  buildEbpfLeak();
  const commands = workloadCommands();
  const usable = configs.filter(available);
  const pairs = workloads.flatMap((w) => usable.map((c) => [w, c]));
  const results = Object.fromEntries(workloads.map((w) => [w, Object.fromEntries(usable.map((c) => [c, []]))]));
  const rounds = [];
  const steal0 = machineCpu().stealMs;
  const t0 = performance.now();
  log(`${pairs.length} runs a round; ${wantedRounds} clean rounds wanted, at most ${maxRounds} (a run is disturbed when others use > ${maxOtherCpu} CPUs)`);
  for (let round = 0; round < maxRounds && rounds.filter((r) => r.clean).length < wantedRounds; round++) {
    // Rotated: each round starts further along, so no config always follows the same one.
    const shift = Math.round((round * pairs.length) / Math.max(wantedRounds, 1)) % pairs.length;
    const order = [...pairs.slice(shift), ...pairs.slice(0, shift)];
    const info = { round, clean: true, stealMs: 0, disturbed: [] };
    for (const [w, c] of order) {
      const watch = cpuWatch();
      let failed;
      try {
        await runOnce(c, commands[w]);
      } catch (e) {
        // One failed run (a peer's own failure) leaves a hole in its cell, not the whole bench.
        failed = String(e.message).split('\n').slice(0, 3).join(' / ');
        log(`  ${w}/${c} failed: ${failed}`);
      }
      const r = watch();
      if (failed) (r.failed = failed), (r.wallMs = NaN), (r.cpuMs = NaN);
      results[w][c][round] = r;
      info.stealMs += r.stealMs;
      if (r.otherCpus > maxOtherCpu) {
        info.clean = false;
        info.disturbed.push(`${w}/${c}: ${r.otherCpus.toFixed(2)} CPUs (${r.top.map((p) => `${p.name} ${Math.round(p.ms)} ms`).join(', ')})`);
      }
    }
    rounds.push(info);
    if (jsonFile) writeResults(results, rounds, usable, steal0, true);
    log(
      `round ${round + 1}: ${info.clean ? 'clean' : `disturbed in ${info.disturbed.length} runs, e.g. ${info.disturbed[0]}`}; steal ${Math.round(info.stealMs)} ms`,
    );
  }
  const cleanCount = rounds.filter((r) => r.clean).length;
  // Too few clean rounds: every round counts, and the table says so.
  const useAll = cleanCount < Math.min(wantedRounds, rounds.length);
  const clean = rounds.map((r) => useAll || r.clean);
  const stealMs = machineCpu().stealMs - steal0;
  const minutes = (performance.now() - t0) / 60000;
  log('');
  log(`Median wall time untraced, and slowdown against it (${clean.filter(Boolean).length} rounds${useAll ? `, only ${cleanCount} clean: disturbed rounds included` : ', undisturbed'}):`);
  log(table(results, clean));
  log('');
  log('The same by CPU time (the tool and the program, user + system; what a busy machine changes least):');
  log(table(results, clean, 'cpuMs'));
  log('');
  log(`${rounds.length} rounds in ${minutes.toFixed(1)} min; hypervisor steal ${(stealMs / 1000).toFixed(1)} s (${((stealMs / (minutes * 60000 * os.cpus().length)) * 100).toFixed(1)}% of the CPUs' time)`);
  if (jsonFile) {
    writeResults(results, rounds, usable, steal0, false, clean, useAll);
    log(`wrote ${jsonFile}`);
  }
  closeSync(devNull);
  rmSync(tmp, { recursive: true, force: true });
}

/** The JSON file: after each round (partial: true) and at the end. */
function writeResults(results, rounds, usable, steal0, partial, clean = rounds.map((r) => r.clean), useAll = false) {
  {
    const cleanCount = rounds.filter((r) => r.clean).length;
    const stealMs = machineCpu().stealMs - steal0;
    const medians = {};
    for (const w of workloads) {
      medians[w] = {};
      for (const c of usable) {
        const pick = (k) => median(results[w][c].map((r) => r[k]).filter((_, i) => clean[i]));
        medians[w][c] = { wallMs: pick('wallMs'), cpuMs: pick('cpuMs') };
      }
    }
    writeFileSync(
      jsonFile,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, kernel: os.release() },
          maxOtherCpu,
          rounds,
          cleanRounds: cleanCount,
          disturbedRoundsIncluded: useAll,
          stealMs,
          medians,
          runs: results,
          partial,
        },
        null,
        2,
      ),
    );
  }
}

await main();
