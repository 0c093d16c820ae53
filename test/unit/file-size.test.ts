// Small files with one purpose: a source file past about 500 lines says at its top why it stays
// whole ("One file by design: ..."), or is split.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const folders = ['lib', 'native', 'bpf', 'bench', 'scripts', 'test', 'examples'];
const skipped = new Set(['node_modules', '.build', 'build', 'dist', 'fixtures']);
const source = /\.(ts|js|mjs|cjs|cc|h|c)$/;
const maxLines = 500;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (!skipped.has(entry.name)) out.push(...sourceFiles(join(dir, entry.name)));
    } else if (source.test(entry.name) && !entry.name.endsWith('.d.ts')) {
      out.push(join(dir, entry.name));
    }
  }
  return out;
}

describe('source files', () => {
  const files = folders.flatMap((f) => sourceFiles(join(root, f)));

  it('finds the sources', () => {
    expect(files.length).toBeGreaterThan(100);
  });

  it(`are at most ${maxLines} lines, or say at their top why they stay whole`, () => {
    const unexplained = files.filter((file) => {
      const lines = readFileSync(file, 'utf8').split('\n');
      if (lines.length <= maxLines) return false;
      return !lines.slice(0, 4).some((line) => line.includes('One file by design:'));
    });
    expect(unexplained.map((f) => relative(root, f))).toEqual([]);
  });
});
