// A target that moves into another root while traced (run, and attach -p): plain chroot(2), and pivot_root(2) in a
// mount namespace of its own with the old root detached. Blocks allocated before and after the
// move are all counted as valgrind counts them, and stacks are symbolized from the files the
// process mapped, not from what the new root holds at the same paths: here a decoy executable and
// a decoy libc.so.6 (another library) wait there.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { trace } from '../../lib/index.js';
import { checkReport, formatCheckedReport } from '../../lib/report/checked.js';
import { fixturePath } from '../helpers/fixtures.js';
import { formatHeapSummary, runValgrind } from '../helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' };
const libc = '/usr/lib/x86_64-linux-gnu/libc.so.6';

describe('a target that changes its root during the trace', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'ebpf-leak-new-root-'));
    const decoys: Array<[string, string]> = [
      ['/usr/bin/true', fixturePath('new_root')],
      ['/usr/lib/x86_64-linux-gnu/libm.so.6', libc],
    ];
    for (const [from, to] of decoys) {
      mkdirSync(join(root, dirname(to)), { recursive: true });
      copyFileSync(from, join(root, to));
    }
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  for (const mode of ['chroot', 'pivot'] as const) {
    it(`${mode}: the heap as valgrind saw it, and stacks from the files the process mapped`, async () => {
      const command = fixturePath('new_root');
      const vg = await runValgrind(command, [mode, root], { env });
      expect(vg.exitCode).toBe(0);
      const tracer = await trace({ command, args: [mode, root], env, stdio: 'ignore' });
      const report = await tracer.done;
      expect(report.target.exitCode).toBe(0);
      const s = report.summary;
      const pick = (x: typeof vg.summary) => [x.inUseBlocks, x.inUseBytes, x.allocs, x.frees, x.bytesAllocated];
      expect(pick(s), `valgrind: ${formatHeapSummary(vg.summary)}`).toEqual(pick(vg.summary));
      expect(report.untraced).toBeUndefined();
      const checked = checkReport(report, []);
      expect(checked.inconclusive).toEqual([]);
      const text = formatCheckedReport(checked);
      for (const [bytes, fn] of [
        [111, 'leak_before'],
        [222, 'leak_after'],
      ] as const) {
        const group = report.leaks.find((g) => g.bytes === bytes);
        expect(group, text).toBeDefined();
        expect(group!.stack[0], text).toMatchObject({ symbol: 'malloc', module: libc });
        expect(group!.stack[1], text).toMatchObject({ symbol: fn, module: command, file: expect.stringContaining('new_root.c') });
        expect(group!.stack[2], text).toMatchObject({ symbol: 'main', module: command });
      }
    });

    it(`${mode}, attached before the move: every block, symbolized from the files the process mapped`, async () => {
      const command = fixturePath('new_root');
      const child = spawn(command, [mode, root, 'wait'], { env, stdio: ['pipe', 'pipe', 'inherit'] });
      const exited = once(child, 'exit');
      try {
        await once(child.stdout!, 'data'); // loaded and waiting
        const tracer = await trace({ pid: child.pid! });
        child.stdin!.end('x');
        const [code] = await exited;
        expect(code).toBe(0);
        const report = await tracer.done;
        expect(report.summary).toMatchObject({ allocs: 3, frees: 1, inUseBlocks: 2, inUseBytes: 333, unknownFrees: 0 });
        const text = formatCheckedReport(checkReport(report, []));
        for (const [bytes, fn] of [
          [111, 'leak_before'],
          [222, 'leak_after'],
        ] as const) {
          const group = report.leaks.find((g) => g.bytes === bytes);
          expect(group, text).toBeDefined();
          expect(group!.stack.slice(0, 3).map((f) => f.symbol), text).toEqual(['malloc', fn, 'main']);
          expect(group!.stack[1]!.file, text).toContain('new_root.c');
        }
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});
