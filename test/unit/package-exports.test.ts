// The package's entry points as users import them, by name (resolved through package.json
// "exports" to the built dist/, which `npm test` builds before it runs the tests).
import 'ebpf-leak/vitest';
import { describe, expect, it } from 'vitest';

describe('package exports', () => {
  it("'ebpf-leak/vitest' registers the matchers with one import", () => {
    const matchers = expect(() => {}) as unknown as Record<string, unknown>;
    expect(typeof matchers.toLeakNativeMemory).toBe('function');
    expect(typeof matchers.toLeakAtMost).toBe('function');
  });

  it("'ebpf-leak' and 'ebpf-leak/node-test' resolve to the library", async () => {
    const main = await import('ebpf-leak');
    const nodeTest = await import('ebpf-leak/node-test');
    expect(typeof main.trace).toBe('function');
    expect(typeof main.assertNoLeaks).toBe('function');
    expect(typeof nodeTest.assertNoNativeLeaks).toBe('function');
    expect(typeof nodeTest.skipIfUnsupported).toBe('function');
  });
});
