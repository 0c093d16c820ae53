// A user other than root: with CAP_BPF + CAP_PERFMON (ambient, as `setcap` on node gives) a
// traced run equals valgrind's; without them, trace() refuses with ELEAK_PERM, saying which
// capabilities to give and how.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { fixturePath, repoRoot } from '../helpers/fixtures.js';
import { runValgrind } from '../helpers/valgrind.js';

const viteNode = join(repoRoot, 'node_modules', '.bin', 'vite-node');
const child = join(repoRoot, 'test', 'reliability', 'unprivileged-trace-child.ts');
const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };

/** The child as user nobody, with `caps` (setpriv's list) inheritable and ambient. */
function asNobody(caps: string | null, command: string): Record<string, unknown> {
  const capArgs = caps ? [`--inh-caps=${caps}`, `--ambient-caps=${caps}`] : ['--inh-caps=-all'];
  const r = spawnSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', ...capArgs, 'env', 'HOME=/tmp', viteNode, child, command],
    { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 },
  );
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe('as an unprivileged user', () => {
  it('with CAP_BPF + CAP_PERFMON: traces, equal to valgrind', async () => {
    const seed = fixturePath('seed');
    const vg = (await runValgrind(seed, [], { env })).summary;
    const out = asNobody('+bpf,+perfmon', seed) as { uid: number; summary: Record<string, number>; target: { exitCode: number } };
    expect(out.uid).toBe(65534);
    expect(out.target.exitCode).toBe(0);
    const { inUseBytes, inUseBlocks, allocs, frees, bytesAllocated } = out.summary;
    expect({ inUseBytes, inUseBlocks, allocs, frees, bytesAllocated }).toEqual({
      inUseBytes: vg.inUseBytes,
      inUseBlocks: vg.inUseBlocks,
      allocs: vg.allocs,
      frees: vg.frees,
      bytesAllocated: vg.bytesAllocated,
    });
  });

  it('without capabilities: ELEAK_PERM, naming them and the way to give them', () => {
    const out = asNobody(null, fixturePath('seed')) as { error: { name: string; code: string; message: string } };
    expect(out.error).toMatchObject({ name: 'PermissionError', code: 'ELEAK_PERM' });
    expect(out.error.message).toMatch(/CAP_BPF \+ CAP_PERFMON/);
    expect(out.error.message).toMatch(/setcap cap_bpf,cap_perfmon/);
  });
});
