// vitest globalSetup: build the C/C++ fixtures once per run, before any test file starts.
import { buildFixtures } from './helpers/fixtures.js';

export async function setup(): Promise<void> {
  await buildFixtures({ log: (line) => console.log(line) });
}
