// The CLI the tests run, dist/cli/main.js, compiled from lib/ for test files run on their own
// (`npm test` builds it first). Type errors still emit; only a missing output is fatal here, since
// the type check has its own step.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { repoRoot } from './fixtures.js';

export const cliPath = join(repoRoot, 'dist', 'cli', 'main.js');

export function buildCli(): void {
  const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: repoRoot, stdio: 'pipe' });
  } catch (err) {
    if (!existsSync(cliPath)) {
      const out = (err as { stdout?: Buffer }).stdout?.toString() ?? String(err);
      throw new Error(`tsc -p tsconfig.build.json did not produce dist/cli/main.js:\n${out}`);
    }
  }
}
