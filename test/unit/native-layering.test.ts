// native/: the tracing work is plain C++, the Node-API glue apart. The session's files, and every
// header they include from native/ and bpf/, never include napi.h.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const includeDirs = ['native', 'bpf'].map((d) => join(root, d));

// `file` and the files its quoted includes reach, with the system headers each names.
function includeClosure(file: string): Map<string, string[]> {
  const seen = new Map<string, string[]>();
  const visit = (path: string) => {
    if (seen.has(path)) return;
    const text = readFileSync(path, 'utf8');
    const system = [...text.matchAll(/^\s*#\s*include\s*<([^>]+)>/gm)].map((m) => m[1]!);
    seen.set(path, system);
    for (const m of text.matchAll(/^\s*#\s*include\s*"([^"]+)"/gm)) {
      const found = includeDirs.map((d) => join(d, m[1]!)).find((p) => existsSync(p));
      if (found) visit(found);
    }
  };
  visit(file);
  return seen;
}

const sessionFiles = [
  'native/tracer/trace_session.h',
  'native/tracer/trace_session.cc',
  'native/tracer/trace_session_probes.cc',
  'native/tracer/trace_session_reads.cc',
  'native/tracer/trace_session_processes.cc',
];

describe('native/tracer/: the session in plain C++', () => {
  it.each(sessionFiles)('%s reaches no napi.h', (file) => {
    const closure = includeClosure(join(root, file));
    expect(closure.size).toBeGreaterThan(1);
    const withNapi = [...closure].filter(([, system]) => system.includes('napi.h')).map(([path]) => path);
    expect(withNapi).toEqual([]);
  });

  it('the glue does include it', () => {
    const closure = includeClosure(join(root, 'native/tracer/tracer.cc'));
    expect([...closure.values()].some((system) => system.includes('napi.h'))).toBe(true);
  });
});
