// The tracer's memory per finished process under followForks: traces fork_children with N
// children (default 1,000), each leaking two blocks, and prints the tracer's RSS and JS heap
// (after a full GC) before the trace and once its report is built, per child. Run it at several
// N (200, 1000, 2000): what each extra child costs is the growth between two of them.
//   sudo node --expose-gc bench/processes-memory.mjs [N]
// Needs `npm run build` and the test fixtures (test/.build/fork_children: any vitest run).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { trace } = await import(join(root, 'dist/index.js'));
const n = Number(process.argv[2] ?? 1000);
const program = join(root, 'test/.build/fork_children');
if (!existsSync(program)) throw new Error(`${program} is missing: run a vitest file first (test/global-setup.ts builds it)`);
if (typeof gc !== 'function') throw new Error('run with node --expose-gc');

// The finalizers of external buffers run after the collection that found them dead: collected
// again once they have, as external memory counts them until then.
const measure = async () => {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed + m.external + m.arrayBuffers, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external };
};
// A first, small trace: the addon and the modules loaded before the baseline.
await (await trace({ command: program, args: ['2'], followForks: true, stdio: 'ignore' })).done;
const before = await measure();
const tracer = await trace({ command: program, args: [String(n)], followForks: true, stdio: 'ignore', stacks: process.env.STACKS !== '0', ...(process.env.UNWIND ? { unwind: process.env.UNWIND } : {}) });
const report = await tracer.done;
const after = await measure();
const kb = (bytes) => `${Math.round(bytes / 1024)} KB`;
console.log(
  JSON.stringify({
    children: n,
    processes: report.processes.length,
    untracedChildren: report.untracedChildren ?? 0,
    rssGrowth: kb(after.rss - before.rss),
    heapUsedGrowth: kb(after.heapUsed - before.heapUsed),
    externalGrowth: kb(after.external - before.external),
    heapGrowth: kb(after.heap - before.heap),
    rssPerProcess: kb((after.rss - before.rss) / report.processes.length),
    heapPerProcess: kb((after.heap - before.heap) / report.processes.length),
    heapTotalGrowth: kb(after.heapTotal - before.heapTotal),
  }),
);
