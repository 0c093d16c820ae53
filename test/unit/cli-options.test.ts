// The CLI's option table (lib/cli/options.ts) drives its parser, its help and docs/cli.md, and
// maps to trace()'s options within the library's own limits.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { parseCliArgs, type RunCommand } from '../../lib/cli/args.js';
import { ATTACH_HELP, optionsMarkdown, optionSpelling, RUN_HELP } from '../../lib/cli/help.js';
import { cliOptions } from '../../lib/cli/options.js';
import { traceOptions } from '../../lib/cli/trace-options.js';
import { defaults, limits } from '../../lib/tracer/options.js';

describe('the option table', () => {
  it('every option is in the help of each command it belongs to, and only there', () => {
    for (const o of cliOptions) {
      const spelling = `  ${optionSpelling(o)}`;
      expect(RUN_HELP.includes(spelling), o.name).toBe(o.commands.includes('run'));
      expect(ATTACH_HELP.includes(spelling), o.name).toBe(o.commands.includes('attach'));
    }
  });

  it('docs/cli.md lists the table as it is (regenerate with `node scripts/cli-docs.js`)', () => {
    const doc = readFileSync(new URL('../../docs/cli.md', import.meta.url), 'utf8');
    const begin = '<!-- options: generated from lib/cli/options.ts -->\n';
    const end = '<!-- end of options -->';
    const at = doc.indexOf(begin);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(doc.slice(at + begin.length, doc.indexOf(end))).toBe(optionsMarkdown());
  });

  it("prints the library's defaults and takes the library's limits", () => {
    expect(RUN_HELP).toContain(`Default: ${defaults.maxAllocations}.`);
    const over = (flag: string, n: number) => parseCliArgs(['run', `--${flag}`, String(n), 'p']);
    expect(over('max-allocations', limits.maxAllocations.max)).toMatchObject({ maxAllocations: limits.maxAllocations.max });
    expect(over('max-allocations', limits.maxAllocations.max + 1)).toMatchObject({ kind: 'usage-error' });
    expect(over('stack-depth', limits.stackDepth.max)).toMatchObject({ stackDepth: limits.stackDepth.max });
    expect(over('stack-depth', limits.stackDepth.max + 1)).toMatchObject({ kind: 'usage-error' });
    expect(over('sample-every', limits.sampleEveryBytes.max + 1)).toMatchObject({ kind: 'usage-error' });
    expect(parseCliArgs(['attach', '-p', String(limits.pid.max + 1)])).toMatchObject({ kind: 'usage-error' });
  });

  it('maps every flag with a library option onto trace() options', () => {
    const cmd = parseCliArgs([
      'run',
      '--max-allocations', '5000',
      '--event-buffer', '64K',
      '--events',
      '--no-stacks',
      '--stack-depth', '7',
      '--keep-stacktraces', 'alloc',
      '--sample-every', '4096',
      '--unwind', 'fp',
      '--allocator', '/lib/x.so',
      '--allocator-symbol', 'malloc=x_malloc',
      '--probe-placement', 'entry',
      '--debug-dir', '/d1',
      '--follow-forks',
      '--preload',
      '--no-leak-kinds',
      '--show-leak-kinds', 'all',
      '--errors-for-leak-kinds', 'definite',
      '--',
      'prog',
    ]) as RunCommand;
    // Report options, not trace() options: valgrind's lists of kinds.
    expect(cmd).toMatchObject({ showLeakKinds: ['definite', 'indirect', 'possible', 'reachable'], errorsForLeakKinds: ['definite'] });
    expect(traceOptions(cmd)).toEqual({
      maxAllocations: 5000,
      eventBufferBytes: 65536,
      events: true,
      stacks: false,
      stackDepth: 7,
      keepStacktraces: 'alloc',
      sampleEveryBytes: 4096,
      unwind: 'fp',
      allocator: { path: '/lib/x.so', symbols: { malloc: 'x_malloc' } },
      probePlacement: 'entry',
      debugDirs: ['/d1'],
      followForks: true,
      preload: true,
      leakKinds: false,
    });
    const mapped = cliOptions.filter((o) => o.traceOption !== undefined).map((o) => o.traceOption);
    expect(new Set(Object.keys(traceOptions(cmd)))).toEqual(new Set(mapped));
    expect(traceOptions(parseCliArgs(['run', 'prog']) as RunCommand)).toEqual({ events: false, stacks: true });
    // attach --scan asks for the scan a pid target does not get by default.
    expect(traceOptions(parseCliArgs(['attach', '-p', '1', '--scan']) as RunCommand)).toEqual({ events: false, stacks: true, leakKinds: true });
    expect(parseCliArgs(['run', '--show-leak-kinds', 'definite,lost', 'prog'])).toMatchObject({ kind: 'usage-error' });
  });
});
