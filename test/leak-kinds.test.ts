// Leak kinds: the target held at its exit and its memory scanned (native/scan/) must give
// valgrind's LEAK SUMMARY exactly: every kind's bytes and blocks, and the blocks reachable only
// through a heuristic. One fixture case per thing memcheck tells apart (test/fixtures/
// leak_kinds.c, leak_kinds_cpp.cc); valgrind 3.19's numbers for them:
//   global          definite 200/1, reachable 100/1 (a global points at it)
//   owner           definite 232/2, indirect 40/1, reachable 56/2 (lost and kept owners of a block)
//   cycle           definite 232/2, indirect 64/2 (three lost blocks in a ring: one leads)
//   interior        definite 200/1, possible 64/1 (a global points 16 bytes into it)
//   thread-stack    definite 200/1, possible 288/1, reachable 88/1 (a live thread's stack holds
//                   it; the 288 is the thread's DTV, which its descriptor points into)
//   tls             definite 200/1, possible 288/1, reachable 104/2 (main's and a thread's TLS)
//   register        definite 272/2: the only pointer was in r12 at exit_group(), and valgrind
//                   does not count the registers of a thread that is exiting
//   stdstring, newarray, multipleinheritance: reachable through that heuristic only.
//   exit_status threads: exit() from a second thread while main waits in pthread_join and a third
//                   pauses: definite 32/1, possible 544/2, reachable 4,160/2 (the killed threads'
//                   stacks are read from their stack pointers, as valgrind does)
import { describe, expect, it } from 'vitest';

import { trace } from '../lib/index.js';
import type { BytesBlocks, LeakReport } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { runValgrind, valgrindEnvironment, type ValgrindLeakSummary } from './helpers/valgrind.js';
import { runValgrindTree } from './helpers/valgrind-children.js';

const base: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const { forValgrind, forTracer } = valgrindEnvironment(base);

interface Kinds {
  definitelyLost: BytesBlocks;
  indirectlyLost: BytesBlocks;
  possiblyLost: BytesBlocks;
  stillReachable: BytesBlocks;
  reachableViaHeuristic: Record<string, BytesBlocks>;
}

function fromValgrind(s: ValgrindLeakSummary): Kinds {
  return {
    definitelyLost: s.definitelyLost,
    indirectlyLost: s.indirectlyLost,
    possiblyLost: s.possiblyLost,
    stillReachable: s.stillReachable,
    reachableViaHeuristic: s.reachableViaHeuristic,
  };
}

function fromReport(r: LeakReport): Kinds {
  const s = r.summary;
  const zero = { bytes: 0, blocks: 0 };
  return {
    definitelyLost: s.definitelyLost ?? zero,
    indirectlyLost: s.indirectlyLost ?? zero,
    possiblyLost: s.possiblyLost ?? zero,
    stillReachable: s.stillReachable ?? zero,
    reachableViaHeuristic: { ...s.reachableViaHeuristic },
  };
}

export async function tracedKinds(command: string, args: string[]): Promise<LeakReport> {
  const tracer = await trace({ command, args, env: forTracer, stdio: 'ignore' });
  return tracer.done;
}

type Fixture = 'leak_kinds' | 'leak_kinds_cpp' | 'exit_status';
const cases: [fixture: Fixture, arg: string][] = [
  ['leak_kinds', 'global'],
  ['leak_kinds', 'owner'],
  ['leak_kinds', 'cycle'],
  ['leak_kinds', 'interior'],
  ['leak_kinds', 'thread-stack'],
  ['leak_kinds', 'tls'],
  ['leak_kinds', 'register'],
  ['leak_kinds_cpp', 'stdstring'],
  ['leak_kinds_cpp', 'newarray'],
  ['leak_kinds_cpp', 'multipleinheritance'],
  ['exit_status', 'threads'],
];

describe('leak kinds at exit equal valgrind LEAK SUMMARY', () => {
  it.each(cases)('%s %s', async (fixture, arg) => {
    const path = fixturePath(fixture);
    const vg = await runValgrind(path, [arg], { env: forValgrind });
    const report = await tracedKinds(path, [arg]);
    expect(report.scan).toMatchObject({ scanned: true, atExit: true });
    expect(fromReport(report)).toEqual(fromValgrind(vg.leakSummary));
    // The kinds split exactly what is in use, as valgrind's four lines add up to its HEAP SUMMARY.
    const k = fromReport(report);
    const sum = k.definitelyLost.bytes + k.indirectlyLost.bytes + k.possiblyLost.bytes + k.stillReachable.bytes;
    expect(sum).toBe(report.summary.inUseBytes);
    expect(report.summary.inUseBytes).toBe(vg.summary.inUseBytes);
    // Groups carry their kind, and the definite groups their indirect bytes, as loss records.
    for (const g of report.leaks) expect(g.kind).toBeDefined();
    const indirect = report.leaks.reduce((n, g) => n + (g.indirectBytes ?? 0), 0);
    expect(indirect).toBe(vg.lossRecords.filter((r) => r.kind === 'definitely lost').reduce((n, r) => n + r.indirectBytes, 0));
  });
});

// Threads die concurrently with the hold: the cases with threads, run again and again.
describe('leak kinds with threads at exit are exact every time', () => {
  it.each([
    ['leak_kinds', 'thread-stack'],
    ['leak_kinds', 'tls'],
    ['exit_status', 'threads'],
  ] as [Fixture, string][])('%s %s, 8 runs', async (fixture, arg) => {
    const path = fixturePath(fixture);
    const expected = fromValgrind((await runValgrind(path, [arg], { env: forValgrind })).leakSummary);
    for (let run = 0; run < 8; run++) expect(fromReport(await tracedKinds(path, [arg]))).toEqual(expected);
  }, 120_000);
});

// Real programs of the machine: the same environment for both runs (valgrind's additions too),
// stdout to /dev/null for both.
const programs: [command: string, args: string[]][] = [
  ['/usr/bin/ls', ['-la', '/usr/lib']],
  ['/usr/bin/sort', ['/etc/services']],
  ['/usr/bin/python3', ['-c', 'import json; print(json.dumps({str(i): i for i in range(1000)})[:10])']],
  ['/usr/bin/git', ['--version']],
];

describe('leak kinds of real programs equal valgrind LEAK SUMMARY', () => {
  it.each(programs)('%s %j', async (command, args) => {
    const vg = await runValgrind(command, args, { env: forValgrind });
    const report = await tracedKinds(command, args);
    expect(report.scan).toMatchObject({ scanned: true, atExit: true });
    expect(report.summary.inUseBytes).toBe(vg.summary.inUseBytes);
    expect(fromReport(report)).toEqual(fromValgrind(vg.leakSummary));
  });
});

// Following forks, each process is scanned in its own exit stop: every child and grandchild's kinds
// equal those of its own valgrind report (--trace-children=yes, one log per process).
describe('leak kinds of each followed process equal valgrind LEAK SUMMARY', () => {
  it('fork_children 2 grand: the parent, two children, two grandchildren (3 runs)', async () => {
    const path = fixturePath('fork_children');
    const vg = await runValgrindTree(path, ['2', 'grand'], { env: forValgrind });
    const key = (k: Kinds) => JSON.stringify(k);
    const theirs = [...vg.processes.values()].map((p) => key(fromValgrind(p.leakSummary))).sort();
    expect(theirs).toHaveLength(5);
    for (let run = 0; run < 3; run++) {
      const tracer = await trace({ command: path, args: ['2', 'grand'], env: forTracer, stdio: 'ignore', followForks: true });
      const report = await tracer.done;
      const processes = report.processes ?? [];
      expect(processes).toHaveLength(5);
      for (const p of processes) expect(p.scan, `process ${p.target.pid}`).toMatchObject({ scanned: true, atExit: true });
      expect(processes.map((p) => key(fromReport(p))).sort(), `run ${run + 1}`).toEqual(theirs);
    }
  });
});
