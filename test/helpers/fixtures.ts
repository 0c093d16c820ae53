// Builds the C/C++ test programs in test/fixtures/ into test/.build/ (gitignored).
//
// Every fixture is compiled -O0 -g -fno-builtin -fno-omit-frame-pointer (so each malloc/free call in
// the source is a real call, and frame-pointer stacks work), except cpp_containers_nofp: the same
// source as cpp_containers at -O2 -fomit-frame-pointer, for the stack tests.
//
// A build is skipped when its stamp file (`<output>.stamp`) holds the hash of everything that went
// into it: compiler, its version, flags and the sources' contents. Outputs are written under a
// temporary name and renamed, so a reader never sees a half-written executable.
//
// Use from vitest's globalSetup (test/global-setup.ts builds them all once per run); a test then
// only needs fixturePath(name).

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const fixturesDir = join(repoRoot, 'test', 'fixtures');
export const buildDir = join(repoRoot, 'test', '.build');

const cFlags = ['-O0', '-g', '-fno-builtin', '-fno-omit-frame-pointer', '-Wall'];
const optimizedFlags = ['-O2', '-g', '-fno-builtin', '-fomit-frame-pointer', '-Wall'];

export interface FixtureSpec {
  /** Name for fixturePath(). */
  name: string;
  compiler: 'gcc' | 'g++';
  /** Files in test/fixtures/. */
  sources: string[];
  /** Flags before the sources. */
  flags: string[];
  /** Flags after the sources (libraries). */
  libs?: string[];
  /** Output file name in test/.build/ (default: name). */
  output?: string;
}

export const fixtureSpecs: readonly FixtureSpec[] = [
  { name: 'seed', compiler: 'gcc', sources: ['seed.c'], flags: cFlags },
  { name: 'entry_points', compiler: 'gcc', sources: ['entry_points.c'], flags: cFlags },
  { name: 'pvalloc', compiler: 'gcc', sources: ['pvalloc.c'], flags: cFlags },
  { name: 'cpp_containers', compiler: 'g++', sources: ['cpp_containers.cc'], flags: cFlags },
  { name: 'cpp_containers_nofp', compiler: 'g++', sources: ['cpp_containers.cc'], flags: optimizedFlags },
  { name: 'threads', compiler: 'gcc', sources: ['threads.c'], flags: [...cFlags, '-pthread'] },
  { name: 'many_outstanding', compiler: 'gcc', sources: ['many_outstanding.c'], flags: cFlags },
  { name: 'freed_blocks', compiler: 'gcc', sources: ['freed_blocks.c'], flags: [...cFlags, '-pthread'] },
  { name: 'bump_alloc', compiler: 'gcc', sources: ['bump_alloc.c'], flags: [...cFlags, '-fPIC', '-shared'], output: 'bump_alloc.so' },
  {
    name: 'dlopen_plugin',
    compiler: 'gcc',
    sources: ['dlopen_plugin.c'],
    flags: [...cFlags, '-fPIC', '-shared'],
    output: 'dlopen_plugin.so',
  },
  // Looks for dlopen_plugin.so next to itself unless given a path as argv[1].
  { name: 'dlopen_main', compiler: 'gcc', sources: ['dlopen_main.c'], flags: cFlags, libs: ['-ldl'] },
  { name: 'exit_immediately', compiler: 'gcc', sources: ['exit_immediately.c'], flags: cFlags },
  { name: 'forever', compiler: 'gcc', sources: ['forever.c'], flags: cFlags },
  { name: 'sampling', compiler: 'gcc', sources: ['sampling.c'], flags: cFlags },
  { name: 'realloc_race', compiler: 'gcc', sources: ['realloc_race.c'], flags: [...cFlags, '-pthread'] },
  { name: 'realloc_stress', compiler: 'gcc', sources: ['realloc_stress.c'], flags: [...cFlags, '-pthread'] },
  { name: 'realloc_fail', compiler: 'gcc', sources: ['realloc_fail.c'], flags: cFlags },
  { name: 'crash', compiler: 'gcc', sources: ['crash.c'], flags: cFlags },
  { name: 'new_root', compiler: 'gcc', sources: ['new_root.c'], flags: cFlags },
  { name: 'gate', compiler: 'gcc', sources: ['gate.c'], flags: cFlags },
  { name: 'heap_errors', compiler: 'g++', sources: ['heap_errors.cc'], flags: [...cFlags, '-Wno-mismatched-new-delete'] },
  // The same program on each allocator: plain (for LD_PRELOAD), linked with one, static.
  { name: 'alloc_count', compiler: 'g++', sources: ['alloc_count.cc'], flags: cFlags },
  { name: 'alloc_count_jemalloc', compiler: 'g++', sources: ['alloc_count.cc'], flags: cFlags, libs: ['-l:libjemalloc.so.2'] },
  { name: 'alloc_count_tcmalloc', compiler: 'g++', sources: ['alloc_count.cc'], flags: cFlags, libs: ['-l:libtcmalloc_minimal.so.4'] },
  { name: 'alloc_count_mimalloc', compiler: 'g++', sources: ['alloc_count.cc'], flags: cFlags, libs: ['-l:libmimalloc.so.2'] },
  { name: 'alloc_count_static', compiler: 'g++', sources: ['alloc_count.cc'], flags: [...cFlags, '-static'] },
  { name: 'malloc_exec', compiler: 'gcc', sources: ['malloc_exec.c'], flags: cFlags },
  { name: 'fork_children', compiler: 'gcc', sources: ['fork_children.c'], flags: cFlags },
  { name: 'prefork_server', compiler: 'gcc', sources: ['prefork_server.c'], flags: cFlags },
  { name: 'exit_status', compiler: 'gcc', sources: ['exit_status.c'], flags: [...cFlags, '-pthread'] },
  { name: 'leak_kinds', compiler: 'gcc', sources: ['leak_kinds.c', 'lost_block.c'], flags: [...cFlags, '-pthread'] },
  { name: 'owned_blocks', compiler: 'gcc', sources: ['owned_blocks.c'], flags: cFlags },
  { name: 'cpp_iostream', compiler: 'g++', sources: ['cpp_iostream.cc'], flags: cFlags },
  // The old (copy-on-write) std::string: the layout memcheck's stdstring heuristic knows.
  {
    name: 'leak_kinds_cpp',
    compiler: 'g++',
    sources: ['leak_kinds_cpp.cc'],
    flags: [...cFlags, '-D_GLIBCXX_USE_CXX11_ABI=0'],
  },
  { name: 'attach_exec', compiler: 'gcc', sources: ['attach_exec.c'], flags: cFlags },
  { name: 'fork_wait', compiler: 'gcc', sources: ['fork_wait.c'], flags: cFlags },
  { name: 'vfork_exec', compiler: 'gcc', sources: ['vfork_exec.c'], flags: cFlags },
  { name: 'spawn_children', compiler: 'gcc', sources: ['spawn_children.c'], flags: cFlags },
  { name: 'seized_child', compiler: 'gcc', sources: ['seized_child.c'], flags: cFlags },
  { name: 'fork_kinds', compiler: 'gcc', sources: ['fork_kinds.c', 'lost_block.c'], flags: cFlags },
  { name: 'cxx_operators', compiler: 'g++', sources: ['cxx_operators.cc'], flags: [...cFlags, '-pthread'] },
  { name: 'operator_site_twin', compiler: 'g++', sources: ['operator_site_twin.cc'], flags: cFlags },
  {
    name: 'custom_operators',
    compiler: 'g++',
    sources: ['custom_operators.cc'],
    flags: [...cFlags, '-fPIC', '-shared'],
    output: 'custom_operators.so',
  },
];

export type FixtureName =
  | 'seed'
  | 'entry_points'
  | 'pvalloc'
  | 'cpp_containers'
  | 'cpp_containers_nofp'
  | 'threads'
  | 'many_outstanding'
  | 'dlopen_plugin'
  | 'dlopen_main'
  | 'exit_immediately'
  | 'forever'
  | 'sampling'
  | 'realloc_race'
  | 'realloc_stress'
  | 'realloc_fail'
  | 'crash'
  | 'new_root'
  | 'gate'
  | 'heap_errors'
  | 'alloc_count'
  | 'alloc_count_jemalloc'
  | 'alloc_count_tcmalloc'
  | 'alloc_count_mimalloc'
  | 'alloc_count_static'
  | 'malloc_exec'
  | 'fork_children'
  | 'prefork_server'
  | 'exit_status'
  | 'leak_kinds'
  | 'owned_blocks'
  | 'cpp_iostream'
  | 'leak_kinds_cpp'
  | 'attach_exec'
  | 'fork_wait'
  | 'vfork_exec'
  | 'spawn_children'
  | 'seized_child'
  | 'fork_kinds'
  | 'cxx_operators'
  | 'operator_site_twin'
  | 'custom_operators';

function specFor(name: string): FixtureSpec {
  const spec = fixtureSpecs.find((s) => s.name === name);
  if (!spec) {
    throw new Error(`unknown fixture '${name}' (known: ${fixtureSpecs.map((s) => s.name).join(', ')})`);
  }
  return spec;
}

/** Absolute path of a built fixture (it exists once buildFixtures() has run). */
export function fixturePath(name: FixtureName | (string & {})): string {
  const spec = specFor(name);
  return join(buildDir, spec.output ?? spec.name);
}

const compilerVersions = new Map<string, Promise<string>>();

function compilerVersion(compiler: string): Promise<string> {
  let v = compilerVersions.get(compiler);
  if (!v) {
    v = execFileAsync(compiler, ['--version']).then(
      (r) => r.stdout.split('\n')[0] ?? '',
      (err: unknown) => {
        throw new Error(`cannot run ${compiler} to build the test fixtures: ${String(err)}`);
      },
    );
    compilerVersions.set(compiler, v);
  }
  return v;
}

function compileArgs(spec: FixtureSpec, output: string): string[] {
  return [...spec.flags, '-o', output, ...spec.sources.map((s) => join(fixturesDir, s)), ...(spec.libs ?? [])];
}

async function buildOne(spec: FixtureSpec): Promise<{ path: string; built: boolean }> {
  const out = join(buildDir, spec.output ?? spec.name);
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ compiler: spec.compiler, version: await compilerVersion(spec.compiler) }));
  hash.update(JSON.stringify(compileArgs(spec, '<out>')));
  for (const src of spec.sources) {
    hash.update(`\0${src}\0`);
    hash.update(readFileSync(join(fixturesDir, src)));
  }
  const digest = hash.digest('hex');
  const stamp = `${out}.stamp`;
  if (existsSync(out) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === digest) {
    return { path: out, built: false };
  }
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    await execFileAsync(spec.compiler, compileArgs(spec, tmp), { cwd: buildDir, maxBuffer: 16 << 20 });
  } catch (err) {
    rmSync(tmp, { force: true });
    const e = err as { stderr?: string; message?: string };
    throw new Error(
      `building fixture ${spec.name} failed: ${spec.compiler} ${compileArgs(spec, out).join(' ')}\n${e.stderr ?? e.message ?? String(err)}`,
    );
  }
  renameSync(tmp, out);
  writeFileSync(stamp, `${digest}\n`);
  return { path: out, built: true };
}

/**
 * Compiles every fixture that is missing or out of date into test/.build/. Returns name -> path.
 * Safe to call more than once (and from several processes: outputs are renamed into place).
 */
export async function buildFixtures(options: { log?: (line: string) => void } = {}): Promise<Record<string, string>> {
  mkdirSync(buildDir, { recursive: true });
  const specs = [...fixtureSpecs];
  const result: Record<string, string> = {};
  const workers = Math.max(1, Math.min(availableParallelism(), specs.length));
  let next = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      for (let spec = specs[next++]; spec !== undefined; spec = specs[next++]) {
        const { path, built } = await buildOne(spec);
        result[spec.name] = path;
        if (built) options.log?.(`built fixture ${spec.name} -> ${path}`);
      }
    }),
  );
  return Object.fromEntries(specs.map((s) => [s.name, result[s.name]!]));
}

/** Absolute path of a fixture's source file in test/fixtures/. */
export function fixtureSource(file: string): string {
  return join(fixturesDir, file);
}
