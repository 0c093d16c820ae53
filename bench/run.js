#!/usr/bin/env node
// One file by design: one script that runs every configuration the same way and prints one table; each configuration is a case of its loop.
// ebpf-leak's bench (`npm run bench [-- --json FILE]`; root, like ebpf-leak itself; ~4 minutes).
//
// Runs bench/workload.c's workloads (pair, batch, mixed, threads: see the header of workload.c)
// under each config, RUNS times each (default 5, runs interleaved), and prints the median ns per
// pair (min-max), then the overheads (traced minus untraced) as ratios against the performance targets,
// then the tracer's own costs:
//   untraced         the workload alone
//   floor            empty BPF programs at exactly the sites ebpf-leak uses (bench/floor.c):
//                    entry probes where lib/probes/placement.ts puts them, return probes at the entries
//   entry-floor      empty BPF programs, every entry probe at its function's first instruction
//   bpftrace         the seed's script: uprobe malloc records the size by tid, uretprobe malloc
//                    stores @[retval] = size, uprobe free deletes @[arg0]
//   bpftrace-ustack  the same, the uretprobe also storing ustack under the address (@stack[retval],
//                    deleted by free)
//   stacks-off       ebpf-leak (dist/), trace({ stacks: false })
//   stacks-on        ebpf-leak, default stack depth
//   events           ebpf-leak with the per-event stream on (stacks off), with alloc/free listeners
// Also measured: attach time, snapshot time with 1,000,000 outstanding blocks, symbolization time
// for 10,000 distinct frames, the tracer's CPU and RSS, and the longest event-loop stall of this
// Node process in every phase (perf_hooks.monitorEventLoopDelay; "own": less the time its event
// loop thread waited for a CPU), beside the same workloads run untraced for as long as the traced
// configs ran them together (the stalls the machine makes with no tracer), and the hypervisor's
// steal time over the run. Not a test: numbers from one run.
//
// With --peers: bench/peers.js instead, ebpf-leak against heaptrack, valgrind, BCC's memleak and
// bpftrace on real programs (see its header). With --costs: bench/costs.js, the cost of each kind
// of probe and the kernel entries and BPF time per malloc+free, counted rather than timed.
//
// Options: --json FILE (write the results), --runs N, --quick (fewer iterations and 2 runs: a
// smoke run), --workloads a,b --configs a,b (a subset), --no-extras (skip the extra measurements),
// --extras-only (only the extra measurements: 1,000,000 outstanding blocks, leak-kind scans,
// symbolization), --scan-only (only the leak-kind scans, printed as JSON),
// --machine-stalls SECONDS (no tracer at all: the event-loop stalls this machine makes while each
// workload runs untraced for SECONDS, and with nothing running), --soak SECONDS (only the soak:
// the tracer's RSS slope under `attach --interval 1` for SECONDS, bench/soak.js).
// Builds what it needs (npm run build if dist/ or the addon is missing; the CMake bench targets),
// and installs bpftrace with apt-get when it is missing (its rows are skipped if that fails).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

const root = fileURLToPath(new URL('..', import.meta.url));
const benchBuild = join(root, 'build', 'bench');
const workloadPath = join(benchBuild, 'ebpf-leak-workload');
const floorPath = join(benchBuild, 'ebpf-leak-floor');

// ---------------------------------------------------------------------------------------------
// Options

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const option = (name) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = flag('--quick');
const runs = Number(option('--runs') ?? (quick ? 2 : 5));
const jsonFile = option('--json');
const allWorkloads = ['pair', 'batch', 'mixed', 'threads'];
const allConfigs = ['untraced', 'floor', 'entry-floor', 'bpftrace', 'bpftrace-ustack', 'stacks-off', 'stacks-on', 'events'];
const extrasOnly = flag('--extras-only');
const workloads = extrasOnly ? [] : (option('--workloads')?.split(',') ?? allWorkloads);
const configs = extrasOnly ? [] : (option('--configs')?.split(',') ?? allConfigs);
const extras = !flag('--no-extras');
const machineStallsSeconds = option('--machine-stalls');
const soakSeconds = option('--soak');
/** Internal: measure 1,000,000 outstanding blocks in this (fresh) process and print JSON. */
const outstandingChild = option('--outstanding-child');

// The single-threaded workloads run on the last CPU (bench/workload.c, pin_to_bench_cpu).
if (os.cpus().length > 1) process.env.EBPF_LEAK_BENCH_CPU = String(os.cpus().length - 1);

// Collected between runs, so one config's garbage (the events config makes millions of objects)
// does not stall the next one's event loop.
v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

/** Pairs per run: about 0.3 s of loop time for each kind of config. A `mixed` round makes three
 *  probed calls (malloc, realloc, free) where a pair makes two. */
function iterations(config, workload) {
  const untraced = config === 'untraced';
  const slow = ['entry-floor', 'bpftrace', 'bpftrace-ustack'].includes(config);
  let n = untraced ? 5_000_000 : slow ? 25_000 : 100_000;
  if (workload === 'mixed') n = untraced ? 2_000_000 : Math.round(n / 1.5);
  if (quick) n = Math.round(n / 5);
  return n;
}

const log = (...a) => console.log(...a);
const fmt = (n, d = 0) => (n === undefined || Number.isNaN(n) ? '-' : n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// ---------------------------------------------------------------------------------------------
// Build and tools

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})`);
}

function build() {
  if (!existsSync(join(root, 'dist', 'index.js')) || !existsSync(join(root, 'build', 'Release', 'ebpf_leak.node'))) {
    log('Building ebpf-leak (npm run build)...');
    run('npm', ['run', 'build']);
  }
  const r = spawnSync('cmake', ['--build', join(root, 'build'), '--target', 'ebpf-leak-bench'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(r.stdout + r.stderr);
    throw new Error('building the bench targets failed (cmake --build build --target ebpf-leak-bench)');
  }
}

function haveCommand(name) {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

function ensureBpftrace() {
  if (haveCommand('bpftrace')) return true;
  if (!haveCommand('apt-get') || process.getuid?.() !== 0) return false;
  log('Installing bpftrace (apt-get install -y bpftrace)...');
  let r = spawnSync('apt-get', ['install', '-y', 'bpftrace'], { stdio: 'ignore' });
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'ignore' });
    r = spawnSync('apt-get', ['install', '-y', 'bpftrace'], { stdio: 'ignore' });
  }
  return haveCommand('bpftrace');
}

// ---------------------------------------------------------------------------------------------
// The machine's own stalls (--machine-stalls SECONDS)

/** No tracer at all: this process's event loop watched while nothing runs, then while each
 *  workload runs untraced, SECONDS each. What a stall target can be held to on this machine. */
async function machineStalls(durationMs) {
  build();
  log(`event-loop stalls with no tracer, ${fmt(durationMs / 1000)} s each (monitorEventLoopDelay, 1 ms resolution; own: less the waits for a CPU)`);
  const report = (name, stallMs, ownMs, steal) =>
    log(`  ${name.padEnd(8)} longest stall ${fmt(stallMs, 1)} ms (own ${fmt(ownMs, 1)}), hypervisor steal ${fmt(steal)} ms`);
  let steal = stealMs();
  const probe = stallProbe();
  await new Promise((resolve) => setTimeout(resolve, durationMs));
  const idle = await probe.lap();
  probe.stop();
  report('idle', idle.stallMs, idle.ownMs, stealMs() - steal);
  for (const workload of workloads) {
    const nsPerPair = await runOnce('untraced', workload);
    steal = stealMs();
    const untraced = await measureUntracedStalls(workload, durationMs, nsPerPair);
    report(workload, untraced.stallMs, untraced.ownStallMs, stealMs() - steal);
  }
}

// ---------------------------------------------------------------------------------------------
// One run of one config

const tmp = mkdtempSync(join(os.tmpdir(), 'ebpf-leak-bench-'));
let outCounter = 0;

function parseResult(file) {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const m = /nsPerPair=([\d.]+)/.exec(text);
  if (!m) throw new Error(`the workload wrote no result (${file}: ${JSON.stringify(text)})`);
  return Number(m[1]);
}

/** Runs a command to completion; resolves with its exit code. Its stderr is shown only when it
 *  fails (bpftrace 0.17 complains about RLIMIT_MEMLOCK on every start, harmlessly). */
function runChild(cmd, args, env = process.env, timeoutMs = 120_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-8192)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) process.stderr.write(stderr);
      resolve(code ?? `signal ${signal}`);
    });
  });
}

let ctx; // { libc, plan, leak: the dist/ module }

/** monitorEventLoopDelay records a stall when its timer next runs: give it the chance before
 *  reading the histogram (a continuation after an await runs in the stalled task itself). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

/** This thread's time waiting for a CPU (runnable, not running), ms: /proc/.../schedstat field 2.
 *  On 2 vCPUs a traced program that keeps both busy makes the event loop wait for a CPU for ~10 ms
 *  at times; that wait is the scheduler's, not work this process does. */
const runQueueWaitMs = (() => {
  // Read every millisecond while tracing, so without garbage: readFileSync would allocate a
  // 64 KB buffer each time (the file's size is unknown), ~64 MB/s, and the scavenges that
  // follow were part of the stalls measured.
  const fd = openSync(`/proc/self/task/${process.pid}/schedstat`, 'r');
  const bytes = Buffer.alloc(128);
  return () => {
    const n = readSync(fd, bytes, 0, bytes.length, 0);
    // "<on-cpu ns> <waiting ns> <timeslices>": the second number.
    let i = 0;
    while (i < n && bytes[i] !== 0x20) i++;
    let ns = 0;
    for (i++; i < n && bytes[i] >= 0x30 && bytes[i] <= 0x39; i++) ns = ns * 10 + (bytes[i] - 0x30);
    return ns / 1e6;
  };
})();

/** The event loop's stalls, phase by phase. `lap()` returns, for the time since the last lap (or
 *  the start), ms:
 *    stallMs  the longest stall monitorEventLoopDelay saw (1 ms resolution): what an application
 *             sees, waits for a CPU included;
 *    ownMs    the longest gap between the ticks of a 1 ms timer less the run-queue wait within
 *             it: how long this process itself held the event loop (JS, GC, native calls).
 *  The difference is the scheduler's: on 2 vCPUs with HZ=250, a thread woken while the CPUs are
 *  busy waits for the next tick, 4 ms, and one tick more for each task queued before it; the
 *  untraced baseline (measureUntracedStalls) shows what the machine does with no tracer. */
function stallProbe() {
  const monitor = monitorEventLoopDelay({ resolution: 1 });
  monitor.enable();
  let last = performance.now();
  let lastWait = runQueueWaitMs();
  let ownMax = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    const wait = runQueueWaitMs();
    ownMax = Math.max(ownMax, now - last - (wait - lastWait));
    last = now;
    lastWait = wait;
  }, 1);
  return {
    async lap() {
      await settle();
      const lap = { stallMs: monitor.max / 1e6, ownMs: ownMax };
      monitor.reset();
      ownMax = 0;
      return lap;
    },
    stop() {
      clearInterval(timer);
      monitor.disable();
    },
  };
}

function bpftraceScript(withStack) {
  const lib = ctx.libc;
  return (
    `uprobe:${lib}:malloc { @size[tid] = arg0; } ` +
    `uretprobe:${lib}:malloc { @[retval] = @size[tid]; delete(@size[tid]);${withStack ? ' @stack[retval] = ustack;' : ''} } ` +
    `uprobe:${lib}:free { delete(@[arg0]);${withStack ? ' delete(@stack[arg0]);' : ''} } ` +
    // Nothing printed at exit: bpftrace 0.17 prints every map then, and can abort resolving the
    // stacks of processes that are gone (its probes are system-wide). After the measured loop.
    `END { clear(@); clear(@size);${withStack ? ' clear(@stack);' : ''} }`
  );
}

/** ebpf-leak's own numbers, per config: attach, CPU, RSS, event-loop stalls, event counts. */
const leakStats = {};

async function runLeak(config, args) {
  gc();
  const probe = stallProbe();
  let rss = process.memoryUsage.rss();
  const sampler = setInterval(() => (rss = Math.max(rss, process.memoryUsage.rss())), 20);
  const t0 = performance.now();
  const tracer = await ctx.leak.trace({
    command: workloadPath,
    args,
    stdio: 'inherit',
    stacks: config === 'stacks-on',
    events: config === 'events',
  });
  const traceMs = performance.now() - t0;
  const setup = await probe.lap();
  // Steady state: from trace()'s return to the workload's exit.
  const cpu0 = process.cpuUsage();
  const t1 = performance.now();
  let events = 0;
  if (config === 'events') {
    tracer.on('alloc', () => events++);
    tracer.on('free', () => events++);
  }
  const child = tracer.process;
  const exited =
    child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', resolve));
  await exited;
  const cpu = process.cpuUsage(cpu0);
  const tracingMs = performance.now() - t1;
  const tracing = await probe.lap();
  const report = await tracer.done;
  const final = await probe.lap();
  probe.stop();
  clearInterval(sampler);
  const s = (leakStats[config] ??= {
    attachMs: [], traceMs: [], cpuPercent: [], rssMb: [], stallMs: [], ownStallMs: [], setupStallMs: [], reportStallMs: [],
    events: [], lostEvents: [], allocs: [], stallByWorkload: {}, ownStallByWorkload: {}, tracingMsByWorkload: {},
  });
  // Per workload: the longest of the three stalls (trace(), while tracing, final report).
  const workload = args[0];
  s.stallByWorkload[workload] = Math.max(s.stallByWorkload[workload] ?? 0, setup.stallMs, tracing.stallMs, final.stallMs);
  s.ownStallByWorkload[workload] = Math.max(s.ownStallByWorkload[workload] ?? 0, setup.ownMs, tracing.ownMs, final.ownMs);
  s.tracingMsByWorkload[workload] = (s.tracingMsByWorkload[workload] ?? 0) + tracingMs;
  s.attachMs.push(tracer.info.attachMs);
  s.traceMs.push(traceMs);
  s.cpuPercent.push(((cpu.user + cpu.system) / 1000 / tracingMs) * 100);
  s.rssMb.push(rss / 2 ** 20);
  s.stallMs.push(tracing.stallMs);
  s.ownStallMs.push(Math.max(setup.ownMs, tracing.ownMs, final.ownMs));
  s.setupStallMs.push(setup.stallMs);
  s.reportStallMs.push(final.stallMs);
  s.events.push(events);
  s.lostEvents.push(report.summary.lostEvents);
  s.allocs.push(report.summary.allocs);
  if (report.target.exitCode !== 0) throw new Error(`${config}: the workload exited with ${report.target.exitCode ?? report.target.signal}`);
}

/** Time the hypervisor ran something else while this VM's vCPUs had work (/proc/stat "steal",
 *  all CPUs), ms. A vCPU that is not running stalls whatever this VM runs on it, the event loop
 *  included, and nothing inside the VM can tell that apart from work. */
function stealMs() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/);
  return ((Number(fields[8]) || 0) * 1000) / 100; // USER_HZ is 100 on Linux
}

/** The machine's own stalls: the workload untraced, for as long as the traced configs ran it
 *  (all configs and runs together: the longest stall of a longer watch is longer), with this
 *  process's event loop watched the same way. Without a tracer, the event loop still waits for a
 *  CPU while the workload keeps them busy. */
async function measureUntracedStalls(workload, durationMs, nsPerPair) {
  gc();
  const probe = stallProbe();
  const t0 = performance.now();
  // nsPerPair is per thread's pair for `threads`: the first run tells how long n pairs take here.
  let n = Math.max(1, Math.round((durationMs * 1e6) / nsPerPair));
  for (let ranMs = 0; ranMs < durationMs * 0.95; ranMs = performance.now() - t0) {
    const r0 = performance.now();
    const code = await runChild(workloadPath, [workload, String(n), '--out', join(tmp, `out-${outCounter++}`)]);
    if (code !== 0) throw new Error(`untraced ${workload}: exit ${code}`);
    const left = durationMs - (performance.now() - t0);
    n = Math.max(1, Math.round((n * left) / Math.max(1, performance.now() - r0)));
  }
  const ranMs = performance.now() - t0;
  const lap = await probe.lap();
  probe.stop();
  return { durationMs: ranMs, stallMs: lap.stallMs, ownStallMs: lap.ownMs };
}

async function runOnce(config, workload) {
  const n = iterations(config, workload);
  const out = join(tmp, `out-${outCounter++}`);
  const args = [workload, String(n), '--out', out];
  let code;
  switch (config) {
    case 'untraced':
      code = await runChild(workloadPath, args);
      break;
    case 'floor':
    case 'entry-floor': {
      const plan = config === 'floor' ? ctx.plan : ctx.entryPlan;
      const entries = plan.probes.map((p) => '0x' + p.entryOffset.toString(16));
      const returns = plan.probes.filter((p) => p.fn !== ctx.freeIndex).map((p) => '0x' + p.returnOffset.toString(16));
      code = await runChild(floorPath, ['--path', ctx.libc, '--entry', entries.join(','), '--return', returns.join(','), '--', workloadPath, ...args]);
      break;
    }
    case 'bpftrace':
    case 'bpftrace-ustack':
      code = await runChild(
        'bpftrace',
        ['-e', bpftraceScript(config === 'bpftrace-ustack'), '-c', [workloadPath, ...args].join(' ')],
        { ...process.env, BPFTRACE_MAP_KEYS_MAX: '1048576' },
      );
      break;
    default:
      await runLeak(config, args);
      code = 0;
  }
  if (code !== 0) throw new Error(`${config} ${workload}: exit ${code}`);
  return parseResult(out);
}

// ---------------------------------------------------------------------------------------------
// Extra measurements

/** 1,000,000 blocks outstanding (stacks on, the default): snapshot time, final report time,
 *  RSS, event-loop stalls. */
async function measureOutstanding(blocks) {
  const rssBefore = process.memoryUsage.rss();
  const ready = join(tmp, 'hold-ready');
  rmSync(ready, { force: true });
  let rss = process.memoryUsage.rss();
  const sampler = setInterval(() => (rss = Math.max(rss, process.memoryUsage.rss())), 10);
  const probe = stallProbe();
  const tracer = await ctx.leak.trace({
    command: workloadPath,
    args: ['hold', String(blocks), '--out', ready],
    stdio: 'inherit',
    maxAllocations: Math.round(blocks * 1.2),
  });
  const t0 = performance.now();
  while (!existsSync(ready) || !readFileSync(ready, 'utf8').includes('ready')) {
    if (performance.now() - t0 > 120_000) throw new Error('the hold workload did not get ready');
    await new Promise((r) => setTimeout(r, 20));
  }
  const allocMs = performance.now() - t0;
  const rssOutstanding = process.memoryUsage.rss();
  const allocating = await probe.lap();
  const s0 = performance.now();
  const snap = await tracer.snapshot();
  const snapshotMs = performance.now() - s0;
  const snapshot = await probe.lap();
  const count = snap.allocations.length;
  const rssAfterSnapshot = process.memoryUsage.rss();
  const r0 = performance.now();
  tracer.process?.kill('SIGTERM');
  const report = await tracer.done;
  const reportMs = performance.now() - r0;
  const final = await probe.lap();
  probe.stop();
  clearInterval(sampler);
  return {
    blocks: count,
    allocateMs: allocMs,
    allocateStallMs: allocating.stallMs,
    allocateOwnStallMs: allocating.ownMs,
    snapshotMs,
    snapshotStallMs: snapshot.stallMs,
    snapshotOwnStallMs: snapshot.ownMs,
    finalReportMs: reportMs,
    finalReportStallMs: final.stallMs,
    finalReportOwnStallMs: final.ownMs,
    leakedBlocks: report.summary.inUseBlocks,
    rssMbBefore: rssBefore / 2 ** 20,
    rssMbOutstanding: rssOutstanding / 2 ** 20,
    rssMbAfterSnapshot: rssAfterSnapshot / 2 ** 20,
    maxRssMb: rss / 2 ** 20,
  };
}

/** Leak-kind scans: `mode` 'heap' (N blocks making 1 GiB, all reachable through a chain) or
 *  'waiters' (N threads each holding a block from its stack). Three scans on demand while it
 *  waits (tracer.scan(): every thread stopped, the memory scanned, resumed), then the scan when
 *  it exits (held at exit). Pause: how long its threads stood still; scan: the scan's own time. */
async function measureScan(mode, n) {
  const ready = join(tmp, `scan-ready-${mode}`);
  rmSync(ready, { force: true });
  const tracer = await ctx.leak.trace({
    command: workloadPath,
    args: [mode, String(n), '--out', ready],
    stdio: 'inherit',
    stacks: false,
    maxAllocations: Math.max(1000, Math.round(n * 1.3)),
  });
  const t0 = performance.now();
  while (!existsSync(ready) || !readFileSync(ready, 'utf8').includes('ready')) {
    if (performance.now() - t0 > 300_000) throw new Error(`the ${mode} workload did not get ready`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const probe = stallProbe();
  const onDemand = [];
  let last;
  for (let i = 0; i < 3; i++) {
    const w0 = performance.now();
    last = await tracer.scan();
    onDemand.push({ pauseMs: last.scan.pauseMs, scanMs: last.scan.scanMs, wallMs: performance.now() - w0 });
  }
  const stall = await probe.lap();
  probe.stop();
  tracer.process?.kill('SIGTERM');
  const report = await tracer.done;
  const best = (key) => Math.min(...onDemand.map((s) => s[key]));
  return {
    mode,
    n,
    blocks: last.summary.inUseBlocks,
    heapBytes: last.scan.heapBytes,
    rootBytes: last.scan.rootBytes,
    threads: last.scan.threads,
    stillReachableBlocks: last.summary.stillReachable?.blocks,
    onDemand,
    bestPauseMs: best('pauseMs'),
    bestScanMs: best('scanMs'),
    onDemandStallMs: stall.stallMs,
    atExit: report.scan,
  };
}

/** The executable PT_LOAD segment of an ELF64 file: { offset, vaddr, size }. */
function textSegment(path) {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(64);
    readSync(fd, h, 0, 64, 0);
    const phoff = Number(h.readBigUInt64LE(0x20));
    const phentsize = h.readUInt16LE(0x36);
    const phnum = h.readUInt16LE(0x38);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      const p = ph.subarray(i * phentsize);
      if (p.readUInt32LE(0) === 1 && p.readUInt32LE(4) & 1) {
        return { offset: p.readBigUInt64LE(8), vaddr: p.readBigUInt64LE(16), size: p.readBigUInt64LE(32) };
      }
    }
  } finally {
    closeSync(fd);
  }
  throw new Error(`${path}: no executable segment`);
}

/** 10,000 distinct addresses spread over a file's code, symbolized as 100 stacks of 100 frames. */
async function measureSymbolization(path, frames = 10_000) {
  const { symbolizeStacks } = await import('../dist/report/symbolize.js');
  const seg = textSegment(path);
  const start = 0x7f0000000000n + (seg.offset & ~0xfffn);
  const mapping = {
    start,
    end: start + seg.size + 0x1000n,
    offset: seg.offset & ~0xfffn,
    perms: 'r-xp',
    dev: '00:00',
    inode: 0n,
    path,
    deleted: false,
    hostPath: path,
  };
  const step = seg.size / BigInt(frames + 1);
  const addresses = Array.from({ length: frames }, (_, i) => start + (seg.offset & 0xfffn) + step * BigInt(i + 1));
  const stacks = [];
  for (let i = 0; i < frames; i += 100) stacks.push(addresses.slice(i, i + 100));
  const probe = stallProbe();
  const t0 = performance.now();
  const out = await symbolizeStacks(stacks, [mapping], { returnAddresses: false });
  const ms = performance.now() - t0;
  const lap = await probe.lap();
  probe.stop();
  const named = out.flat().filter((f) => f.symbol).length;
  return { file: path, frames, ms, named, stallMs: lap.stallMs, ownStallMs: lap.ownMs };
}

// ---------------------------------------------------------------------------------------------
// Main

function machineInfo() {
  const cpus = os.cpus();
  const glibc = spawnSync('getconf', ['GNU_LIBC_VERSION'], { encoding: 'utf8' }).stdout?.trim();
  const bpftrace = haveCommand('bpftrace') ? spawnSync('bpftrace', ['--version'], { encoding: 'utf8' }).stdout?.trim() : null;
  return {
    cpu: cpus[0]?.model,
    cores: cpus.length,
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    glibc,
    node: process.version,
    bpftrace,
  };
}

async function main() {
  if (process.getuid?.() !== 0) log('note: not root; ebpf-leak and the floor need CAP_BPF + CAP_PERFMON');
  build();
  const bpftraceOk = configs.some((c) => c.startsWith('bpftrace')) ? ensureBpftrace() : false;
  const leak = await import('../dist/index.js');
  const { planProbes } = await import('../dist/probes/plan.js');
  const { resolveCommandTarget } = await import('../dist/target/resolve.js');
  const { leakFunctions } = await import('../dist/native/layout.js');
  const libc = (await resolveCommandTarget(workloadPath, process.env, root, undefined)).allocator.path;
  const plan = planProbes(libc, true, undefined, 'optimized');
  const entryPlan = planProbes(libc, true, undefined, 'entry');
  ctx = { libc, plan, entryPlan, leak, freeIndex: leakFunctions.indexOf('free') };

  const machine = machineInfo();
  log(`ebpf-leak bench: ${machine.cpu}, ${machine.cores} cores, kernel ${os.release()}, ${machine.glibc}, node ${machine.node}` +
    `${machine.bpftrace ? `, ${machine.bpftrace}` : ''}; ${runs} runs per cell, median (min-max) ns per pair`);
  log(`allocator ${libc}; entry probes (lib/probes/placement.ts):`);
  for (const p of plan.placements) {
    const moved = p.entryOffset !== p.functionOffset;
    log(`  ${p.function.padEnd(15)} ${moved ? `+0x${(p.entryOffset - p.functionOffset).toString(16)}` : 'entry'} ${p.instruction.padEnd(22)} ${p.emulated ? 'emulated' : 'single-stepped'}`);
  }

  const floorOk = existsSync(floorPath);
  const active = configs.filter((c) => (bpftraceOk || !c.startsWith('bpftrace')) && (floorOk || !c.endsWith('floor')));
  if (!bpftraceOk && configs.some((c) => c.startsWith('bpftrace'))) log('bpftrace is not available: its rows are skipped');
  if (!floorOk) log('ebpf-leak-floor was not built (no libbpf.pc): the floor rows are skipped');
  const samples = {};
  const started = performance.now();
  const stealAtStart = stealMs();
  // Warm-up: the first trace() in a process loads the addon and the x86 decoder.
  if (active.some((c) => ['stacks-off', 'stacks-on', 'events'].includes(c))) {
    const t = await leak.trace({ command: workloadPath, args: ['pair', '10', '--out', join(tmp, 'warm-up')], stdio: 'inherit', stacks: false });
    await t.done;
  }
  /** Per workload: the machine's own stalls (measureUntracedStalls). */
  const untracedStalls = {};
  for (const workload of workloads) {
    for (let r = 0; r < runs; r++) {
      for (const config of active) {
        const ns = await runOnce(config, workload);
        (samples[`${config}/${workload}`] ??= []).push(ns);
      }
    }
    const tracedMs = Object.values(leakStats).reduce((sum, s) => sum + (s.tracingMsByWorkload[workload] ?? 0), 0);
    const untraced = samples[`untraced/${workload}`];
    if (tracedMs > 0 && untraced) untracedStalls[workload] = await measureUntracedStalls(workload, tracedMs, median(untraced));
    process.stdout.write(`  ${workload} done (${fmt((performance.now() - started) / 1000, 0)} s)\n`);
  }

  // Table
  const results = [];
  const cell = {};
  for (const config of active) {
    for (const workload of workloads) {
      const xs = samples[`${config}/${workload}`];
      if (!xs) continue;
      const r = { config, workload, nsPerPair: median(xs), min: Math.min(...xs), max: Math.max(...xs), runs: xs.length, iterations: iterations(config, workload) };
      results.push(r);
      cell[`${config}/${workload}`] = r;
    }
  }
  const widths = [28, ...workloads.map(() => 24)];
  const row = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('');
  if (active.length > 0) log('');
  if (active.length > 0) log(row(['ns per pair', ...workloads]));
  for (const config of active) {
    log(
      row([
        config,
        ...workloads.map((w) => {
          const r = cell[`${config}/${w}`];
          if (!r) return '-';
          const d = r.nsPerPair < 100 ? 1 : 0;
          return `${fmt(r.nsPerPair, d)} (${fmt(r.min, d)}-${fmt(r.max, d)})`;
        }),
      ]),
    );
  }

  // Ratios of overheads
  const overhead = (config, w) => {
    const a = cell[`${config}/${w}`];
    const b = cell[`untraced/${w}`];
    return a && b ? a.nsPerPair - b.nsPerPair : undefined;
  };
  const ratioDefs = [
    ['stacks-off', 'floor', 1.15],
    ['stacks-off', 'bpftrace', 0.25],
    ['stacks-on', 'bpftrace-ustack', 0.35],
    ['floor', 'entry-floor', undefined],
    ['stacks-on', 'stacks-off', undefined],
    ['events', 'stacks-off', undefined],
  ];
  const ratios = [];
  if (active.length > 0) log('');
  if (active.length > 0) log(row(['overhead ratio', ...workloads]) + '   target (pair)');
  for (const [a, b, target] of ratioDefs) {
    const values = workloads.map((w) => {
      const x = overhead(a, w);
      const y = overhead(b, w);
      return x !== undefined && y !== undefined && y > 0 ? x / y : undefined;
    });
    if (values.every((v) => v === undefined)) continue;
    workloads.forEach((w, i) => ratios.push({ ratio: `${a} / ${b}`, workload: w, value: values[i] ?? null, target: target ?? null }));
    const pair = values[workloads.indexOf('pair')];
    const verdict = target === undefined || pair === undefined ? '' : `   <= ${target}: ${pair <= target ? 'met' : 'NOT met'}`;
    log(row([`${a} / ${b}`, ...values.map((v) => (v === undefined ? '-' : fmt(v, 3)))]) + verdict);
  }

  // ebpf-leak's own costs
  const measurements = { tracer: {} };
  log('');
  for (const [config, s] of Object.entries(leakStats)) {
    const m = {
      attachMs: median(s.attachMs),
      traceCallMs: median(s.traceMs),
      cpuPercent: median(s.cpuPercent),
      maxRssMb: Math.max(...s.rssMb),
      maxEventLoopStallMs: Math.max(...s.stallMs),
      maxOwnStallMs: Math.max(...s.ownStallMs),
      maxOwnStallByWorkloadMs: s.ownStallByWorkload,
      maxStallInTraceCallMs: Math.max(...s.setupStallMs),
      maxStallInFinalReportMs: Math.max(...s.reportStallMs),
      lostEvents: s.lostEvents.reduce((a, b) => a + b, 0),
      maxStallByWorkloadMs: s.stallByWorkload,
      ...(config === 'events' ? { eventsDelivered: s.events.reduce((a, b) => a + b, 0) } : {}),
    };
    measurements.tracer[config] = m;
    log(
      `${config.padEnd(11)} attach ${fmt(m.attachMs)} ms (trace() ${fmt(m.traceCallMs)} ms), tracer CPU ${fmt(m.cpuPercent, 1)}% of wall, ` +
        `RSS max ${fmt(m.maxRssMb)} MB, longest event-loop stall ${fmt(m.maxEventLoopStallMs, 1)} ms while tracing ` +
        `(own ${fmt(m.maxOwnStallMs, 1)} ms; ${fmt(m.maxStallInTraceCallMs, 1)} ms in trace(), ${fmt(m.maxStallInFinalReportMs, 1)} ms in the final report)` +
        (m.eventsDelivered !== undefined ? `, ${fmt(m.eventsDelivered)} events, ${fmt(m.lostEvents)} lost` : '') +
        `; longest stall by workload: ${Object.entries(m.maxStallByWorkloadMs).map(([w, v]) => `${w} ${fmt(v, 1)} ms (own ${fmt(m.maxOwnStallByWorkloadMs[w], 1)})`).join(', ')}`,
    );
  }
  if (Object.keys(untracedStalls).length > 0) {
    measurements.untracedStalls = untracedStalls;
    log(
      `untraced, each workload as long as the traced configs ran it altogether (the machine's own stalls): ` +
        Object.entries(untracedStalls)
          .map(([w, u]) => `${w} ${fmt(u.stallMs, 1)} ms (own ${fmt(u.ownStallMs, 1)}) over ${fmt(u.durationMs / 1000, 1)} s`)
          .join(', '),
    );
  }
  if (extras) {
    // In a fresh Node process, so its RSS is the tracer's and not this bench's history.
    const blocks = quick ? 100_000 : 1_000_000;
    const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--outstanding-child', String(blocks)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      timeout: 300_000,
    });
    const last = child.stdout?.trim().split('\n').pop() ?? '';
    if (child.status !== 0 || !last.startsWith('{')) throw new Error(`the outstanding-blocks measurement failed (${child.status ?? child.signal}): ${child.stdout}`);
    const o = JSON.parse(last);
    measurements.outstanding = o;
    log(
      `first trace() in a fresh process (loads the addon, decodes the allocator's prologues): ` +
        `${fmt(o.firstTraceCallMs)} ms (event-loop stall ${fmt(o.firstTraceStallMs, 1)} ms, own ${fmt(o.firstTraceOwnStallMs, 1)})`,
    );
    log(
      `${fmt(o.blocks)} outstanding (fresh process, stacks on): RSS ${fmt(o.rssMbBefore)} MB before tracing, ${fmt(o.rssMbOutstanding)} MB with them outstanding ` +
        `(stall while they were allocated ${fmt(o.allocateStallMs, 1)} ms, own ${fmt(o.allocateOwnStallMs, 1)}); ` +
        `snapshot ${fmt(o.snapshotMs)} ms (stall ${fmt(o.snapshotStallMs, 1)} ms, own ${fmt(o.snapshotOwnStallMs, 1)}), ` +
        `final report ${fmt(o.finalReportMs)} ms (stall ${fmt(o.finalReportStallMs, 1)} ms, own ${fmt(o.finalReportOwnStallMs, 1)}), ` +
        `RSS ${fmt(o.rssMbAfterSnapshot)} MB after the snapshot, max ${fmt(o.maxRssMb)} MB`,
    );
    measurements.scan = {};
    for (const [mode, n] of [['heap', quick ? 100_000 : 1_000_000], ['waiters', 64]]) {
      const r = await measureScan(mode, n);
      measurements.scan[mode] = r;
      log(
        `leak-kind scan, ${mode === 'heap' ? `${fmt(r.blocks)} live blocks in ${fmt(r.heapBytes / 2 ** 20)} MiB` : `${fmt(r.threads)} threads`}: ` +
          `on demand pause ${r.onDemand.map((s) => fmt(s.pauseMs)).join(', ')} ms (scan ${r.onDemand.map((s) => fmt(s.scanMs)).join(', ')} ms; ` +
          `event-loop stall ${fmt(r.onDemandStallMs, 1)} ms); at exit: held ${fmt(r.atExit?.pauseMs)} ms, scan ${fmt(r.atExit?.scanMs)} ms`,
      );
    }
    measurements.symbolization = [];
    for (const file of [libc, process.execPath]) {
      try {
        const s = await measureSymbolization(file);
        measurements.symbolization.push(s);
        log(
          `symbolization of ${fmt(s.frames)} distinct frames in ${file}: ${fmt(s.ms)} ms (${fmt(s.named)} named, ` +
            `event-loop stall ${fmt(s.stallMs, 1)} ms, own ${fmt(s.ownStallMs, 1)} ms)`,
        );
      } catch (error) {
        log(`symbolization in ${file} failed: ${error.message}`);
      }
    }
  }

  // Targets
  const pairRatio = (name) => ratios.find((r) => r.ratio === name && r.workload === 'pair')?.value ?? undefined;
  const stalls = Object.values(measurements.tracer).flatMap((m) => [m.maxEventLoopStallMs, m.maxStallInTraceCallMs, m.maxStallInFinalReportMs]);
  // The same, with the tracing stalls of the pair workload only (the workload the issue's targets
  // name); the others saturate more of the 2 vCPUs (threads: both).
  const pairStalls = Object.values(measurements.tracer).map((m) => m.maxStallByWorkloadMs.pair).filter((v) => v !== undefined);
  const extraStalls = [];
  const o = measurements.outstanding;
  if (o) extraStalls.push(o.firstTraceStallMs, o.allocateStallMs, o.snapshotStallMs, o.finalReportStallMs);
  for (const s of measurements.symbolization ?? []) extraStalls.push(s.stallMs);
  stalls.push(...extraStalls);
  pairStalls.push(...extraStalls);
  // What this process held the event loop for, every phase: trace(), tracing, the final report,
  // and each extra.
  const ownStalls = Object.values(measurements.tracer).map((m) => m.maxOwnStallMs);
  if (o) ownStalls.push(o.firstTraceOwnStallMs, o.allocateOwnStallMs, o.snapshotOwnStallMs, o.finalReportOwnStallMs);
  for (const s of measurements.symbolization ?? []) ownStalls.push(s.ownStallMs);
  const untracedStallMax = Math.max(0, ...Object.values(untracedStalls).map((u) => u.stallMs));
  const attach = Object.values(measurements.tracer).map((m) => m.attachMs);
  const targets = [
    ['stacks-off overhead <= 1.15x floor (pair)', pairRatio('stacks-off / floor'), (v) => v <= 1.15, (v) => `${fmt(v, 3)}x`],
    ['stacks-off overhead <= 0.25x bpftrace (pair)', pairRatio('stacks-off / bpftrace'), (v) => v <= 0.25, (v) => `${fmt(v, 3)}x`],
    ['stacks-on overhead <= 0.35x bpftrace-ustack (pair)', pairRatio('stacks-on / bpftrace-ustack'), (v) => v <= 0.35, (v) => `${fmt(v, 3)}x`],
    ['snapshot of 1,000,000 blocks < 1 s', measurements.outstanding?.snapshotMs, (v) => v < 1000, (v) => `${fmt(v)} ms`],
    ['leak-kind scan of 1,000,000 live blocks in 1 GiB < 1 s (at exit)', measurements.scan?.heap?.atExit?.scanMs, (v) => v < 1000, (v) => `${fmt(v)} ms`],
    ['leak-kind scan of 1,000,000 live blocks in 1 GiB < 1 s (on demand, best of 3)', measurements.scan?.heap?.bestScanMs, (v) => v < 1000, (v) => `${fmt(v)} ms`],
    ['event loop held by this process < 10 ms (every phase, workload and extra; waits for a CPU left out)', ownStalls.length ? Math.max(...ownStalls) : undefined, (v) => v < 10, (v) => `${fmt(v, 1)} ms`],
    ['event-loop stalls < 10 ms as monitorEventLoopDelay sees them (every workload, and the extras)', stalls.length ? Math.max(...stalls) : undefined, (v) => v < 10, (v) => `${fmt(v, 1)} ms` + (untracedStallMax > 0 ? ` (the same workloads untraced: ${fmt(untracedStallMax, 1)} ms)` : '')],
    ['event-loop stalls < 10 ms as monitorEventLoopDelay sees them (pair workload, and the extras)', pairStalls.length && workloads.includes('pair') ? Math.max(...pairStalls) : undefined, (v) => v < 10, (v) => `${fmt(v, 1)} ms` + (untracedStalls.pair ? ` (untraced: ${fmt(untracedStalls.pair.stallMs, 1)} ms)` : '')],
    ['tracer RSS < 200 MB with 1,000,000 outstanding (no snapshot held)', measurements.outstanding?.rssMbOutstanding, (v) => v < 200, (v) => `${fmt(v)} MB`],
    ['tracer RSS < 200 MB with 1,000,000 outstanding (max, snapshot and final report included)', measurements.outstanding?.maxRssMb, (v) => v < 200, (v) => `${fmt(v)} MB`],
    ['attach < 300 ms', attach.length ? Math.max(...attach) : undefined, (v) => v < 300, (v) => `${fmt(v)} ms`],
  ];
  log('');
  log('targets, from this one run:');
  const targetResults = [];
  for (const [name, value, ok, show] of targets) {
    if (value === undefined) continue;
    targetResults.push({ target: name, value, met: ok(value) });
    log(`  ${ok(value) ? 'met    ' : 'NOT met'}  ${name}: ${show(value)}`);
  }
  log(
    '(CPU: this Node process, all threads, while the workload ran; stalls: monitorEventLoopDelay, 1 ms resolution; ' +
      "own / held by this process: a 1 ms timer's longest gap less the event loop thread's wait for a CPU)",
  );
  measurements.hypervisorStealMs = stealMs() - stealAtStart;
  log(
    `total ${fmt((performance.now() - started) / 1000)} s; the hypervisor ran something else for ${fmt(measurements.hypervisorStealMs)} ms ` +
      'of it while this VM had work (/proc/stat steal, all vCPUs)',
  );

  if (jsonFile) {
    const json = {
      machine: { ...machine, hostname: os.hostname() },
      kernel: os.release(),
      allocator: libc,
      placements: plan.placements,
      runs,
      results,
      ratios,
      measurements,
      targets: targetResults,
    };
    writeFileSync(jsonFile, JSON.stringify(json, null, 2) + '\n');
    log(`wrote ${jsonFile}`);
  }
}

try {
  if (outstandingChild) {
    ctx = { leak: await import('../dist/index.js') };
    // The addon and the decoder are loaded before the baseline RSS is taken.
    const probe = stallProbe();
    const t0 = performance.now();
    const warm = await ctx.leak.trace({ command: workloadPath, args: ['pair', '10', '--out', join(tmp, 'warm-up')], stdio: 'ignore', stacks: false });
    const firstTraceCallMs = performance.now() - t0;
    const first = await probe.lap();
    probe.stop();
    await warm.done;
    gc();
    console.log(
      JSON.stringify({
        firstTraceCallMs,
        firstTraceStallMs: first.stallMs,
        firstTraceOwnStallMs: first.ownMs,
        ...(await measureOutstanding(Number(outstandingChild))),
      }),
    );
  } else if (flag('--scan-only')) {
    build();
    ctx = { leak: await import('../dist/index.js') };
    const scan = {};
    for (const [mode, n] of [['heap', quick ? 100_000 : 1_000_000], ['waiters', 64]]) scan[mode] = await measureScan(mode, n);
    console.log(JSON.stringify({ measurements: { scan } }, null, 2));
  } else if (flag('--peers')) {
    await import('./peers.js');
  } else if (flag('--costs')) {
    await import('./costs.js');
  } else if (flag('--stacks')) {
    await import('./stacks.js');
  } else if (machineStallsSeconds) {
    await machineStalls(Number(machineStallsSeconds) * 1000);
  } else if (soakSeconds) {
    build();
    const { soak } = await import('./soak.js');
    const result = await soak({ root, buildDir: benchBuild, seconds: Number(soakSeconds), log });
    if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ soak: result }, null, 2) + '\n');
  } else {
    await main();
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
