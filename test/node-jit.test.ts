// A Node process, started with --perf-basic-prof, calling a leaking native addon: the leak's stack
// runs from the C++ function and line, through N-API and V8, to the JavaScript callers, named
// from the /tmp/perf-PID.map file V8 writes.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { trace } from '../lib/index.js';
import { buildExampleAddon } from '../examples/native-addon/build.js';

let addonPath: string;
beforeAll(async () => {
  addonPath = await buildExampleAddon();
});

describe('JIT frames', () => {
  it('names the JavaScript functions that called into a leaking addon', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-jit-'));
    const script = join(dir, 'app.cjs');
    writeFileSync(
      script,
      `const addon = require(${JSON.stringify(addonPath)});\n` +
        'function handleRequest(name) { return addon.greetLeaky(name); }\n' +
        "function serve() { for (let i = 0; i < 500; i++) handleRequest('user' + (i % 7)); }\n" +
        'serve();\n',
    );
    const tracer = await trace({
      command: process.execPath,
      args: ['--perf-basic-prof', '--interpreted-frames-native-stack', script],
      stdio: 'ignore',
      cwd: dir, // --perf-basic-prof also writes isolate-*-v8.log files into the working directory
    });
    const report = await tracer.done;
    expect(report.target.exitCode).toBe(0);
    // One loss record per kind the scan at exit found (V8's heap holds stale copies of some).
    const groups = report.leaks.filter((g) => g.stack.some((f) => f.symbol?.startsWith('example::FormatGreeting')));
    const leak = groups[0];
    expect(leak, 'no group with the addon frame').toBeDefined();
    const blocks = groups.reduce((n, g) => n + g.blocks, 0);
    expect(blocks).toBeGreaterThanOrEqual(490); // 500 calls, each leaking one 64-byte block
    expect(groups.reduce((n, g) => n + g.bytes, 0)).toBe(blocks * 64);
    const symbols = leak!.stack.map((f) => f.symbol ?? '');
    const at = (s: RegExp) => symbols.findIndex((x) => s.test(x));
    const formatGreeting = leak!.stack[at(/^example::FormatGreeting/)]!;
    expect(formatGreeting.file).toMatch(/examples\/native-addon\/addon\.cc$/);
    expect(formatGreeting.line).toBe(21);
    // JS frames come from the perf map, innermost caller first.
    const handleRequest = at(/^JS:.*handleRequest .*app\.cjs:2/);
    const serve = at(/^JS:.*serve .*app\.cjs:3/);
    expect(handleRequest, symbols.join('\n')).toBeGreaterThan(at(/^example::GreetLeaky/));
    expect(serve).toBeGreaterThan(handleRequest);
    expect(leak!.stack[handleRequest]!.module).toBe('[perf-map]');
  });
});
