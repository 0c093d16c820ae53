// Ends the run with one plain line, "N passed, N failed" (", N skipped" when any), which CI
// systems read without knowing vitest's own summary format.
import type { Reporter, TestModule } from 'vitest/node';

export default class PlainSummaryReporter implements Reporter {
  #line = '';

  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
      // A file that failed to load has no tests but must not read as green.
      if (module.state() === 'failed' && module.children.size === 0) failed++;
    }
    this.#line = `${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`;
  }

  // The default reporter prints its summary in onFinished, after onTestRunEnd: be the last line.
  onFinished(): void {
    if (this.#line) process.stdout.write(`\n${this.#line}\n`);
  }
}
