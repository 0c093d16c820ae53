// Some tests run the CLI and fixtures as uid 65534 from this checkout. A checkout under a private
// folder (`mktemp -d` makes it 0700) cannot be reached by that user, so for the run every folder
// above it gets search permission for others, and its own mode back afterwards.
import { chmodSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

/** Adds o+x to each folder from `dir` up to `/` that lacks it. Returns what undoes it. */
export function makeReachableByOthers(dir: string): () => void {
  const changed: { path: string; mode: number }[] = [];
  for (let path = dir; ; path = dirname(path)) {
    const mode = statSync(path).mode & 0o7777;
    if ((mode & 0o001) === 0) {
      chmodSync(path, mode | 0o001);
      changed.push({ path, mode });
    }
    if (path === dirname(path)) break;
  }
  return () => {
    for (const { path, mode } of changed.reverse()) {
      try {
        chmodSync(path, mode);
      } catch {
        // Gone already: nothing to give back.
      }
    }
  };
}
