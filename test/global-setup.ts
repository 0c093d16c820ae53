// vitest globalSetup: build the C/C++ fixtures once per run, before any test file starts, and let
// the unprivileged user some tests run as reach this checkout.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildFixtures } from './helpers/fixtures.js';
import { makeReachableByOthers } from './helpers/reachable-by-others.js';

let undoReachable: (() => void) | undefined;

export async function setup(): Promise<void> {
  undoReachable = makeReachableByOthers(join(dirname(fileURLToPath(import.meta.url)), '..'));
  await buildFixtures({ log: (line) => console.log(line) });
}

export function teardown(): void {
  undoReachable?.();
}
