// lib/ is arranged by stage of the data flow, and imports run one way: each folder imports only
// from itself and from the stages below it. The CLI and the test harness both stand on report/,
// and neither imports the other.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const lib = fileURLToPath(new URL('../../lib', import.meta.url));

/** Lower imports nothing higher. Files at lib/'s top level: the shared vocabulary (types.ts,
 *  errors.ts) sits at the bottom, the package entry (index.ts) at the top. */
const rank: Record<string, number> = {
  '.': 0,
  util: 0,
  native: 1,
  target: 2,
  probes: 3,
  suppressions: 4,
  report: 5,
  tracer: 6,
  harness: 7,
  cli: 7,
};

function stage(file: string): string {
  const rel = relative(lib, file);
  if (rel === 'index.ts') return 'index';
  return rel.includes('/') ? rel.split('/')[0]! : '.';
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

interface Edge {
  from: string;
  to: string;
}

/** Every relative import of lib/'s files, static, re-export and dynamic. */
function edges(): Edge[] {
  const out: Edge[] = [];
  for (const file of sources(lib)) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'(\.[^']+)'/g)) {
      const target = resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts');
      out.push({ from: file, to: target });
    }
  }
  return out;
}

const show = (e: Edge) => `${relative(lib, e.from)} -> ${relative(lib, e.to)}`;

describe('lib/ imports run downward', () => {
  const all = edges();

  it('reads the imports of every stage', () => {
    expect(all.length).toBeGreaterThan(100);
    const importing = new Set(all.map((e) => stage(e.from)));
    for (const s of Object.keys(rank).filter((s) => rank[s]! > 0)) expect(importing, s).toContain(s);
  });

  it('every import resolves inside lib/ to a stage', () => {
    const outside = all.filter((e) => relative(lib, e.to).startsWith('..') || (stage(e.to) !== 'index' && rank[stage(e.to)] === undefined));
    expect(outside.map(show)).toEqual([]);
  });

  it('no stage imports a stage above it, and nothing imports the package entry', () => {
    const upward = all.filter((e) => {
      const from = stage(e.from);
      const to = stage(e.to);
      if (to === 'index') return true;
      if (from === 'index' || from === to) return false;
      return rank[to]! >= rank[from]!;
    });
    expect(upward.map(show)).toEqual([]);
  });

  it('report/ never imports the harness or the CLI', () => {
    const bad = all.filter((e) => stage(e.from) === 'report' && ['harness', 'cli'].includes(stage(e.to)));
    expect(bad.map(show)).toEqual([]);
  });

  it('the harness and the CLI do not import each other', () => {
    const bad = all.filter(
      (e) => (stage(e.from) === 'harness' && stage(e.to) === 'cli') || (stage(e.from) === 'cli' && stage(e.to) === 'harness'),
    );
    expect(bad.map(show)).toEqual([]);
  });

  it("tracer/ never imports report/'s text and JSON formats", () => {
    const bad = all.filter((e) => stage(e.from) === 'tracer' && /^report\/.*format\.ts$/.test(relative(lib, e.to)));
    expect(bad.map(show)).toEqual([]);
  });
});
