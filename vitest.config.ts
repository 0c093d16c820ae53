import { configDefaults, defineConfig } from 'vitest/config';

// Two projects. `unit`: test/unit/, pure logic on synthetic data (no kernel, no root, no fixtures),
// seconds. `kernel`: everything else, real BPF against real processes. `npm test` runs both, unit
// first; `npx vitest run --project unit` runs the fast ones alone.
export default defineConfig({
  test: {
    reporters: ['default', './test/plain-summary-reporter.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // BPF tests load programs and attach uprobes system-wide; on 2 cores, and for exact counts,
    // test files must not run at the same time. A run of the unit project alone may.
    fileParallelism: unitOnly(),
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['test/unit/**/*.test.ts'], sequence: { groupOrder: 0 } },
      },
      {
        extends: true,
        test: {
          name: 'kernel',
          include: ['test/**/*.test.ts', 'examples/**/*.test.ts'],
          exclude: [...configDefaults.exclude, 'test/unit/**'],
          // Compiles test/fixtures/ into test/.build/ once (skipped when up to date).
          globalSetup: ['test/global-setup.ts'],
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});

/** Whether this run selects the unit project and nothing else (`--project unit`). */
function unitOnly(): boolean {
  const args = process.argv.slice(2);
  const projects: string[] = [];
  args.forEach((arg, i) => {
    if (arg === '--project' && args[i + 1] !== undefined) projects.push(args[i + 1]!);
    else if (arg.startsWith('--project=')) projects.push(arg.slice('--project='.length));
  });
  return projects.length > 0 && projects.every((p) => p === 'unit');
}
