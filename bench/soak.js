// The soak bench (`npm run bench -- --soak SECONDS`; root): bench/soak_workload.c for SECONDS at
// a high allocation rate (2 threads replacing blocks in level pools of 20,000 each, from 16 call
// sites) under `ebpf-leak attach --interval 1`, the tracer's RSS (VmRSS of its process) sampled
// every second. Prints the samples' least-squares slope (MB per minute) after the warm-up (the
// first WARMUP_S seconds, or the first tenth of a shorter run: the tables filling, the code
// warming, the allocator's arenas reaching their size) and over the whole run, the RSS first,
// after the warm-up, last and at most, and the rate. A tracer that keeps nothing per tick has a
// slope near 0 however long it runs. Not a test.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Seconds of warm-up left out of the main slope (at most a tenth of the run). */
const WARMUP_S = 120;

function rssMb(pid) {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Least-squares slope of y over x. */
function slope(points) {
  const n = points.length;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export async function soak({ root, buildDir, seconds, log }) {
  const workload = join(buildDir, 'ebpf-leak-soak-workload');
  const cc = spawnSync('gcc', ['-O2', '-g', '-fno-builtin', '-pthread', '-o', workload, join(root, 'bench', 'soak_workload.c')], {
    encoding: 'utf8',
  });
  if (cc.status !== 0) throw new Error(`building the soak workload failed:\n${cc.stderr}`);

  const target = spawn(workload, [String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let rounds = '';
  target.stdout.setEncoding('utf8').on('data', (d) => (rounds += d));
  const tracer = spawn(process.execPath, [join(root, 'dist', 'cli', 'main.js'), 'attach', '-p', String(target.pid), '--interval', '1'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let ticks = 0;
  let tail = '';
  tracer.stderr.setEncoding('utf8').on('data', (d) => {
    ticks += (d.match(/with outstanding allocations:/g) ?? []).length;
    tail = (tail + d).slice(-4000);
  });
  const targetExit = once(target, 'exit');
  const samples = [];
  const started = performance.now();
  log(`soak: ${seconds} s, tracer pid ${tracer.pid}, target pid ${target.pid}`);
  while (target.exitCode === null && target.signalCode === null) {
    await sleep(1000);
    if (tracer.exitCode !== null) break;
    const t = (performance.now() - started) / 1000;
    const y = rssMb(tracer.pid);
    if (Number.isFinite(y)) samples.push({ x: t / 60, y });
    if (samples.length % 60 === 0) log(`soak: ${t.toFixed(0)} s, tracer RSS ${y.toFixed(1)} MB`);
  }
  await targetExit;
  const [code, signal] = tracer.exitCode !== null ? [tracer.exitCode, tracer.signalCode] : await once(tracer, 'exit');
  const warmupS = Math.min(WARMUP_S, seconds / 10);
  const kept = samples.filter((p) => p.x * 60 >= warmupS);
  const result = {
    seconds,
    samples: samples.length,
    warmupSeconds: warmupS,
    rssFirstMb: samples[0]?.y,
    rssAfterWarmupMb: kept[0]?.y,
    rssLastMb: samples.at(-1)?.y,
    rssMaxMb: Math.max(...samples.map((s) => s.y)),
    rssMaxAfterWarmupMb: Math.max(...kept.map((s) => s.y)),
    rssMinAfterWarmupMb: Math.min(...kept.map((s) => s.y)),
    rssSlopeMbPerMin: kept.length >= 2 ? slope(kept) : NaN,
    rssSlopeWholeRunMbPerMin: samples.length >= 2 ? slope(samples) : NaN,
    callsPerSecond: (Number(rounds.trim()) * 2) / seconds, // a round is a free and an allocation
    ticks,
    tracerExit: code ?? signal,
  };
  log(
    `soak: tracer RSS ${result.rssFirstMb?.toFixed(1)} MB first, ${result.rssAfterWarmupMb?.toFixed(1)} MB at ${warmupS.toFixed(0)} s, ` +
      `${result.rssLastMb?.toFixed(1)} MB last (max ${result.rssMaxMb.toFixed(1)}; ${result.rssMinAfterWarmupMb.toFixed(1)}-` +
      `${result.rssMaxAfterWarmupMb.toFixed(1)} MB after ${warmupS.toFixed(0)} s); slope ${result.rssSlopeMbPerMin.toFixed(3)} MB/min ` +
      `after ${warmupS.toFixed(0)} s (${kept.length} samples), ${result.rssSlopeWholeRunMbPerMin.toFixed(3)} MB/min over the whole run; ` +
      `${(result.callsPerSecond / 1e6).toFixed(2)} M calls/s traced; ${ticks} periodic reports; tracer exit ${result.tracerExit}`,
  );
  if (code !== 0) process.stderr.write(`tracer's last output:\n${tail}\n`);
  return result;
}
