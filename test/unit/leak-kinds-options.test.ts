// Which traces scan for the leak kinds by default, and the combination a scan cannot make sense
// of: a clear option error, never a report whose kinds are wrong.
import { describe, expect, it } from 'vitest';

import { InvalidOptionError } from '../../lib/errors.js';
import { resolveOptions } from '../../lib/tracer/options.js';

describe('leakKinds', () => {
  it('is on for a command (each process, following forks), off for a pid, and off by default when sampling', () => {
    expect(resolveOptions({ command: 'x' }).leakKinds).toBe(true);
    expect(resolveOptions({ pid: 1 }).leakKinds).toBe(false);
    expect(resolveOptions({ pid: 1, leakKinds: true }).leakKinds).toBe(true);
    expect(resolveOptions({ command: 'x', leakKinds: false }).leakKinds).toBe(false);
    expect(resolveOptions({ command: 'x', sampleEveryBytes: 4096 }).leakKinds).toBe(false);
    expect(resolveOptions({ command: 'x', followForks: true }).leakKinds).toBe(true);
    expect(resolveOptions({ pid: 1, followForks: true, leakKinds: true }).leakKinds).toBe(true);
  });

  it('cannot be asked for with sampling', () => {
    expect(() => resolveOptions({ command: 'x', sampleEveryBytes: 4096, leakKinds: true })).toThrow(InvalidOptionError);
    expect(() => resolveOptions({ command: 'x', sampleEveryBytes: 4096, leakKinds: true })).toThrow(
      'options.leakKinds needs every block recorded: it cannot be used with sampleEveryBytes',
    );
  });
});
