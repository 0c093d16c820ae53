import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'examples/**/*.test.ts'],
    reporters: ['default', './test/plain-summary-reporter.ts'],
    // Compiles test/fixtures/ into test/.build/ once (skipped when up to date).
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // BPF tests load programs and attach uprobes system-wide; on 2 cores, and for exact counts,
    // test files must not run at the same time.
    fileParallelism: false,
  },
});
