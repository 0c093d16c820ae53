// Leak stacks symbolized end to end, from the kernel's record of the target's mappings: after the
// process is gone, and through separate debug files found by build-id.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { trace, type LeakGroup } from '../lib/index.js';
import { fixturePath, fixturesDir } from './helpers/fixtures.js';

const work = mkdtempSync(join(tmpdir(), 'ebpf-leak-symbols-'));
const symbols = (g: LeakGroup) => g.stack.map((f) => f.symbol);

/** Line of the first source line containing `text`. */
function lineOf(file: string, text: string): number {
  return readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes(text)) + 1;
}

describe('symbolized leak stacks', () => {
  it('a program that exits at once is fully symbolized afterwards', async () => {
    const tracer = await trace({ command: fixturePath('exit_immediately'), stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.leaks).toHaveLength(1);
    const [leak] = report.leaks;
    expect(leak!.bytes).toBe(24);
    expect(leak!.stack[0]).toMatchObject({ symbol: 'malloc' });
    const main = leak!.stack.find((f) => f.symbol === 'main')!;
    expect(main.file).toBe(join(fixturesDir, 'exit_immediately.c'));
    expect(main.line).toBe(lineOf(join(fixturesDir, 'exit_immediately.c'), 'malloc('));
    expect(main.module).toBe(fixturePath('exit_immediately'));
    expect(main.buildId).toMatch(/^[0-9a-f]{40}$/);
  });

  it('names plugin_work in a library that was dlclose()d before exit', async () => {
    const tracer = await trace({
      command: fixturePath('dlopen_main'),
      args: [fixturePath('dlopen_plugin')],
      stdio: 'ignore',
    });
    const report = await tracer.done;
    const plugin = report.leaks.find((g) => symbols(g).includes('plugin_work'));
    expect(plugin, JSON.stringify(report.leaks.map(symbols))).toBeDefined();
    expect(plugin!.blocks).toBe(3);
    const frame = plugin!.stack.find((f) => f.symbol === 'plugin_work')!;
    expect(frame.module).toBe(fixturePath('dlopen_plugin'));
    expect(frame.file).toBe(join(fixturesDir, 'dlopen_plugin.c'));
    expect(symbols(plugin!)).toContain('main');
  });

  it('a stripped binary is symbolized from its debug file, found by build-id', async () => {
    const src = join(work, 'stripped.c');
    writeFileSync(
      src,
      '#include <stdlib.h>\n' +
        'void *keep;\n' +
        '__attribute__((noinline)) void make_leak(void) { keep = malloc(48); }\n' +
        'int main(void) { make_leak(); return 0; }\n',
    );
    const exe = join(work, 'stripped');
    execFileSync('gcc', ['-O0', '-g', '-fno-omit-frame-pointer', '-Wl,--build-id', '-o', exe, src]);
    const buildId = /Build ID: ([0-9a-f]+)/.exec(execFileSync('readelf', ['-n', exe], { encoding: 'utf8' }))![1]!;
    const debugRoot = join(work, 'debug');
    const debugFile = join(debugRoot, '.build-id', buildId.slice(0, 2), `${buildId.slice(2)}.debug`);
    mkdirSync(join(debugRoot, '.build-id', buildId.slice(0, 2)), { recursive: true });
    execFileSync('objcopy', ['--only-keep-debug', exe, debugFile]);
    execFileSync('strip', ['--strip-all', exe]);
    expect(execFileSync('nm', [exe], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).toString()).toBe('');

    // Without the debug directory: no name for the function, but the frame is still placed.
    const bare = await (await trace({ command: exe, stdio: 'ignore' })).done;
    const bareLeak = bare.leaks.find((g) => g.bytes === 48)!;
    expect(symbols(bareLeak)).not.toContain('make_leak');
    expect(bareLeak.stack[1]).toMatchObject({ module: exe, buildId });

    const report = await (await trace({ command: exe, stdio: 'ignore', debugDirs: [debugRoot] })).done;
    const leak = report.leaks.find((g) => g.bytes === 48)!;
    const frame = leak.stack.find((f) => f.symbol === 'make_leak');
    expect(frame, JSON.stringify(leak.stack, null, 1)).toBeDefined();
    expect(frame).toMatchObject({ file: src, line: 3, module: exe, buildId });
    expect(symbols(leak)).toContain('main');
  });
});
