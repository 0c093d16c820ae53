// options.preload: the command starts with ebpf-leak's allocator entry points in LD_PRELOAD
// (native/preload/preload.c), each a 5-byte nop and a jump to glibc's function, and the probes go
// on those nops, which the kernel turns into calls into its uprobe trampoline. Everything the
// reports say must stay what the same run says without it, and what valgrind says.
import { once } from 'node:events';
import { chmodSync, chownSync, copyFileSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { trace } from '../lib/index.js';
import { preloadLibraryPath } from '../lib/native/addon.js';
import { leakFunctions } from '../lib/native/layout.js';
import { planProbes } from '../lib/probes/plan.js';
import { formatHeapError } from '../lib/report/text-format.js';
import type { ScopedLeakReport } from '../lib/index.js';
import type { LeakReport, StackFrame, TraceOptions } from '../lib/types.js';
import { fixturePath } from './helpers/fixtures.js';
import { codeByte } from './helpers/process-memory.js';
import { kinds } from './helpers/attached-target.js';
import { runValgrind, valgrindKinds } from './helpers/valgrind.js';

const env: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TZ: 'UTC', HOME: '/nonexistent' };
const library = preloadLibraryPath()!;
/** With C++'s operator delete too, for programs whose operators are all libstdc++'s. */
const cxxLibrary = preloadLibraryPath('cxx')!;
const valgrindPreloadLength = '/usr/libexec/valgrind/vgpreload_core-amd64-linux.so:/usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so'.length;
/** Ours first, then separators the loader skips: the program's LD_PRELOAD is as long as the one
 *  valgrind gives it, for programs that copy their environment. */
const preloadEnv = { ...env, LD_PRELOAD: ':'.repeat(valgrindPreloadLength - library.length - 1) };
const cxxPreloadEnv = { ...env, LD_PRELOAD: ':'.repeat(valgrindPreloadLength - cxxLibrary.length - 1) };

/** A top frame at its address in the process (the mapping's start plus its file offset), in the
 *  file named: not a bare file offset, which is what a frame gets whose mapping is unknown. */
function expectMappedTop(frame: StackFrame | undefined, file: string, what: string): void {
  expect(frame?.module, what).toBe(realpathSync(file));
  const address = BigInt(frame!.address);
  const offset = BigInt(frame!.offset!);
  expect(address - offset, what).toBeGreaterThan(0x10000n);
  expect((address - offset) % 4096n, what).toBe(0n);
}

function heap(r: LeakReport) {
  const s = r.summary;
  return { inUseBytes: s.inUseBytes, inUseBlocks: s.inUseBlocks, allocs: s.allocs, frees: s.frees, bytesAllocated: s.bytesAllocated };
}

/** A run with `preload`, which must get `expected`: C++ programs the library with operator delete. */
async function traced(command: string, args: string[], expected = library, options: Partial<TraceOptions> = {}): Promise<ScopedLeakReport> {
  const env = expected === cxxLibrary ? cxxPreloadEnv : preloadEnv;
  const tracer = await trace({ command, args, env, stdio: 'ignore', preload: true, ...options } as TraceOptions);
  expect(tracer.info.preload).toBe(expected);
  expect(tracer.info.allocator).toBe(realpathSync(expected));
  return tracer.done;
}

describe('preload: the entry points in LD_PRELOAD', () => {
  it('is built beside the addon on x86-64', () => {
    expect(library).toMatch(/libebpf-leak-preload\.so$/);
    expect(cxxLibrary).toMatch(/libebpf-leak-preload-cxx\.so$/);
  });

  it('probes the nops, which the kernel turns into calls into its trampoline', async () => {
    const tracer = await trace({ command: fixturePath('gate'), env: preloadEnv, stdio: 'pipe', preload: true });
    try {
      // Every probe is on a nop the library has for it: the function's first byte, or for malloc
      // and calloc the one after their call into glibc. None is moved.
      const afterCall = new Map<string, number>();
      for (const p of tracer.info.placements) {
        if (p.function === 'malloc' || p.function === 'calloc') {
          afterCall.set(p.function, p.entryOffset);
          expect(p.entryOffset - p.functionOffset, p.function).toBeGreaterThan(5);
          expect(p.entryOffset - p.functionOffset, p.function).toBeLessThan(32);
        } else {
          expect(p.entryOffset, p.function).toBe(p.functionOffset);
        }
      }
      expect([...afterCall.keys()].sort()).toEqual(['calloc', 'malloc']);
      // Their program is attached as the others are: one multi-uprobe link per kind of probe.
      expect(tracer.info.attachMode).toBe('uprobe_multi');
      expect(Object.keys(tracer.info.probes).sort()).toEqual(
        ['aligned_alloc', 'calloc', 'free', 'malloc', 'memalign', 'posix_memalign', 'pvalloc', 'realloc', 'reallocarray', 'valloc'],
      );
      await once(tracer.process!.stdout!, 'data'); // "ready": malloc was called once
      const malloc = tracer.info.functionOffsets.malloc!;
      const returned = afterCall.get('malloc')!;
      // 0xe8: a call into the trampoline where the nop was. A breakpoint would be 0xcc.
      expect(codeByte(tracer.pid, library, returned)).toBe(0xe8);
      expect(codeByte(tracer.pid, library, returned + 5)).toBe(0x48); // the lea after it is untouched
      expect(codeByte(tracer.pid, library, malloc)).toBe(0x0f); // the entry's nop has no probe
      tracer.process!.stdout!.resume();
      tracer.process!.stdin!.end('go\n');
      const report = await tracer.done;
      // gate's own counts (test/fixtures/gate.c): all of it seen from exec.
      expect(report.summary).toMatchObject({ allocs: 1002, frees: 991, unknownFrees: 0, droppedAllocations: 0, lostEvents: 0 });
    } finally {
      tracer.process?.kill('SIGKILL');
    }
  });

  for (const name of ['entry_points', 'cpp_containers', 'threads', 'leak_kinds'] as const) {
    it(`${name}: the heap and leak summaries are valgrind's`, async () => {
      const vg = await runValgrind(fixturePath(name), [], { env });
      const report = await traced(fixturePath(name), [], name === 'cpp_containers' ? cxxLibrary : library);
      expect(heap(report)).toEqual(vg.summary);
      expect(kinds(report)).toEqual(valgrindKinds(vg));
      expect([report.summary.lostEvents, report.summary.droppedAllocations]).toEqual([0, 0]);
    });
  }

  it('python, which copies its environment: valgrind\'s numbers with an LD_PRELOAD as long', async () => {
    const args = ['-c', 'import json; d={str(i):[i]*(i%7) for i in range(2000)}; print(len(json.dumps(d)))'];
    const vg = await runValgrind('/usr/bin/python3', args, { env });
    const report = await traced('/usr/bin/python3', args);
    expect(heap(report)).toEqual(vg.summary);
  });

  it('heap errors and their stacks are those of the run without it, but for the top frame\'s file', async () => {
    const format = (r: LeakReport) =>
      (r.errors ?? []).map((e) =>
        formatHeapError(e)
          .join('\n')
          .replace(/0x[0-9a-f]+|tid \d+/g, '')
          .replace(/\[[^\]]*(libc\.so\.6|libstdc\+\+\.so\.6[.\d]*|libebpf-leak-preload(-cxx)?\.so)\]/g, '[allocator]'),
      );
    for (const scenario of ['mismatch', 'stack']) {
      const plain = await (await trace({ command: fixturePath('heap_errors'), args: [scenario], env, stdio: 'ignore' })).done;
      const preloaded = await traced(fixturePath('heap_errors'), [scenario], cxxLibrary);
      expect(format(plain).length).toBeGreaterThan(0);
      expect(format(preloaded)).toEqual(format(plain));
      for (const e of preloaded.errors ?? []) {
        if (e.releasedBy === 'free' || e.releasedBy === 'operator delete') expectMappedTop(e.stack[0], cxxLibrary, `${scenario} ${e.kind}`);
      }
      expect(heap(preloaded)).toEqual(heap(plain));
    }
  });

  // malloc and calloc are probed after their call into glibc, where the stack is walked from the
  // return address above their frame: every leak's stack must be the plain run's, frame for frame
  // below the allocating function (whose file is the library).
  it('the stacks of the leaks are those of the run without it', async () => {
    const stacks = (r: LeakReport) =>
      r.leaks
        .map((g) => [g.bytes, g.blocks, g.kind, ...g.stack.slice(1).map((f) => `${f.symbol} ${f.file}:${f.line} ${f.module}`)].join('\n'))
        .sort();
    for (const name of ['entry_points', 'cpp_containers', 'leak_kinds'] as const) {
      const plain = await (await trace({ command: fixturePath(name), env, stdio: 'ignore' })).done;
      const preloaded = await traced(fixturePath(name), [], name === 'cpp_containers' ? cxxLibrary : library);
      expect(plain.leaks.length, name).toBeGreaterThan(0);
      expect(stacks(preloaded), name).toEqual(stacks(plain));
      // glibc's memalign and aligned_alloc are one function, named by one of its symbols; the
      // library's are two.
      const tops = (r: LeakReport) => r.leaks.map((g) => (g.stack[0]?.symbol === 'memalign' ? 'aligned_alloc' : g.stack[0]?.symbol)).sort();
      expect(tops(preloaded), name).toEqual(tops(plain));
      expect(preloaded.counters.stackFailures, name).toBe(0);
      // The library is in none of the walked frames: its mapping is recorded for the top frame.
      const expected = name === 'cpp_containers' ? cxxLibrary : library;
      for (const g of preloaded.leaks) {
        if (g.stack[0]?.module === realpathSync(expected) || g.stack[0]?.symbol === 'malloc') expectMappedTop(g.stack[0], expected, `${name} ${g.stack[0]?.symbol}`);
      }
      expect(preloaded.leaks.filter((g) => g.stack[0]?.module === realpathSync(expected)).length, name).toBeGreaterThan(0);
    }
  });

  // Kernels before 6.6 run the programs from classic uprobes, one per function and kind of probe.
  it('with classic uprobes, malloc and calloc are probed after their call too', async () => {
    const vg = await runValgrind(fixturePath('entry_points'), [], { env });
    const before = process.env.EBPF_LEAK_ATTACH;
    process.env.EBPF_LEAK_ATTACH = 'uprobe';
    try {
      const tracer = await trace({ command: fixturePath('entry_points'), env: preloadEnv, stdio: 'ignore', preload: true });
      expect(tracer.info.attachMode).toBe('uprobe');
      const malloc = tracer.info.placements.find((p) => p.function === 'malloc')!;
      expect(malloc.entryOffset).toBeGreaterThan(malloc.functionOffset);
      const report = await tracer.done;
      expect(heap(report)).toEqual(vg.summary);
      expect(kinds(report)).toEqual(valgrindKinds(vg));
    } finally {
      if (before === undefined) delete process.env.EBPF_LEAK_ATTACH;
      else process.env.EBPF_LEAK_ATTACH = before;
    }
  });

  // The frame-pointer walk cannot start from a return address up the stack, and 'entry' keeps
  // every probe on a first instruction: there malloc and calloc keep an entry and a return probe,
  // on the entry's nop.
  it('with the frame-pointer walk or probePlacement \'entry\', malloc and calloc keep their entry and return probes', async () => {
    const vg = await runValgrind(fixturePath('entry_points'), [], { env });
    for (const options of [{ unwind: 'fp' }, { probePlacement: 'entry' }] as const) {
      const tracer = await trace({ command: fixturePath('entry_points'), env: preloadEnv, stdio: 'ignore', preload: true, ...options });
      for (const p of tracer.info.placements) expect(p.entryOffset, `${p.function} ${JSON.stringify(options)}`).toBe(p.functionOffset);
      const report = await tracer.done;
      expect(heap(report), JSON.stringify(options)).toEqual(vg.summary);
    }
  });

  it('64 threads realloc, move and free each other\'s blocks: 5 runs equal valgrind', async () => {
    const command = fixturePath('realloc_stress');
    const vg = (await runValgrind(command, ['256'], { env })).summary;
    expect(vg.inUseBlocks).toBe(384);
    for (let run = 0; run < 5; run++) {
      const report = await traced(command, ['256']);
      expect({ ...heap(report), unknownFrees: report.summary.unknownFrees }, `run ${run + 1}`).toEqual({ ...vg, unknownFrees: 0 });
    }
  });

  it('C++: every overload of new and delete, with delete preloaded, equals valgrind', async () => {
    const path = fixturePath('cxx_operators');
    const vg = await runValgrind(path, ['shapes'], { env });
    const tracer = await trace({ command: path, args: ['shapes'], env: cxxPreloadEnv, stdio: 'ignore', preload: true });
    // Each operator delete overload is the library's, probed at its nop; new stays libstdc++'s.
    const deletes = [...(tracer.info.overloads?.['operator delete'] ?? []), ...(tracer.info.overloads?.['operator delete[]'] ?? [])];
    expect(deletes).toHaveLength(12);
    for (const d of deletes) expect([d.path, d.entryOffset]).toEqual([realpathSync(cxxLibrary), d.offset]);
    expect(tracer.info.sites?.['operator new']?.path).toMatch(/libstdc\+\+\.so/);
    const report = await tracer.done;
    expect(heap(report)).toEqual(vg.summary);
    expect(kinds(report)).toEqual(valgrindKinds(vg));
    expect(report.errors ?? []).toEqual([]);
  });

  it('C++: 4 threads of new and delete at once, 5 runs equal valgrind', async () => {
    const path = fixturePath('cxx_operators');
    const args = ['threads', '4', '20000'];
    const vg = await runValgrind(path, args, { env });
    expect(vg.summary.allocs).toBeGreaterThan(80_000);
    for (let run = 0; run < 5; run++) {
      const report = await traced(path, args, cxxLibrary);
      expect(heap(report), `run ${run + 1}`).toEqual(vg.summary);
      expect(kinds(report).definitelyLost, `run ${run + 1}`).toEqual(vg.leakSummary.definitelyLost);
      expect(report.errors ?? [], `run ${run + 1}`).toEqual([]);
      expect(report.counters.inflightFailures, `run ${run + 1}`).toBe(0);
    }
  });

  // custom_operators.so's delete gives back the block 16 bytes before the pointer: the library's
  // deletes, which call free() on the pointer itself, must not stand in for it.
  it('C++ with operators of its own: the library without operator delete', async () => {
    const path = fixturePath('cxx_operators');
    const own = { ...env, LD_PRELOAD: fixturePath('custom_operators') };
    const plain = await (await trace({ command: path, args: ['shapes'], env: own, stdio: 'ignore' })).done;
    const tracer = await trace({ command: path, args: ['shapes'], env: own, stdio: 'ignore', preload: true });
    expect(tracer.info.preload).toBe(library);
    expect(tracer.info.sites?.['operator delete']?.path).toBe(realpathSync(fixturePath('custom_operators')));
    const report = await tracer.done;
    expect(report.target.exitCode).toBe(0);
    expect(heap(report)).toEqual(heap(plain));
  });

  // An image exec'd with the C++ library inherited (here through env, which keeps it first) whose
  // own operators the library's deletes would bypass: reported as not traced, saying why.
  it('C++: an exec\'d program with operators of its own under the inherited library is reported untraced', async () => {
    const path = fixturePath('cxx_operators');
    const preloads = `${cxxLibrary}:${fixturePath('custom_operators')}`;
    const tracer = await trace({ command: path, args: ['exec', '/usr/bin/env', `LD_PRELOAD=${preloads}`, path, 'shapes'], env, stdio: 'ignore', preload: true });
    expect(tracer.info.preload).toBe(cxxLibrary);
    const report = await tracer.done;
    expect(report.untraced).toMatch(/inherited ebpf-leak's C\+\+ entry points in LD_PRELOAD .* defines C\+\+ operators of its own.*Trace it without preload/);
    expect(report.previousImages?.length).toBe(2);
  });

  // The loader ignores LD_PRELOAD paths in a secure exec (AT_SECURE: here a set-group-ID program
  // run by root), so the program it execs allocates through glibc, where it must be traced.
  it('a set-group-ID program exec\'d with the variable set is traced at glibc', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebpf-leak-setgid-'));
    try {
      const program = join(dir, 'seed');
      copyFileSync(fixturePath('seed'), program);
      chownSync(program, 0, 65534);
      chmodSync(program, 0o2755);
      const tracer = await trace({ command: '/bin/sh', args: ['-c', `exec ${program}`], env: preloadEnv, stdio: 'ignore', preload: true });
      expect(tracer.info.preload).toBe(library);
      const report = await tracer.done;
      expect(report.target.exitCode).toBe(0);
      // seed's own: 10 blocks of 8 bytes, 9 freed, and stdout's 4,096-byte buffer.
      expect(report.summary).toMatchObject({ allocs: 11, frees: 9, inUseBlocks: 2, inUseBytes: 4104 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Without `preload`, an image may still get the library from its own LD_PRELOAD. The tracer then
// loaded no program for probes after a call, and libc, the first image's allocator, is probed: the
// library's calls, each handed on to libc, are counted there once, or the image is reported.
describe('preload: the library in an exec\'d image\'s LD_PRELOAD', () => {
  it('the plan without probes after a call gives malloc and calloc an entry and a return probe', () => {
    const withProgram = planProbes(library, true, undefined);
    expect(withProgram.probes.filter((p) => p.afterCall).map((p) => leakFunctions[p.fn]).sort()).toEqual(['calloc', 'malloc']);
    const without = planProbes(library, true, undefined, 'optimized', undefined, 'auto', false);
    expect(without.probes.filter((p) => p.afterCall)).toEqual([]);
    expect(without.probes).toHaveLength(withProgram.probes.length);
  });

  it('a C program is counted once, at libc\'s probes: valgrind\'s heap and leak summaries', async () => {
    const vg = await runValgrind(fixturePath('leak_kinds'), [], { env });
    const tracer = await trace({ command: '/usr/bin/env', args: [`LD_PRELOAD=${library}`, fixturePath('leak_kinds')], env, stdio: 'ignore' });
    expect(tracer.info.preload).toBeUndefined();
    const report = await tracer.done;
    expect(report.untraced).toBeUndefined();
    expect(report.errors ?? []).toEqual([]);
    expect(heap(report)).toEqual(vg.summary);
    expect(kinds(report)).toEqual(valgrindKinds(vg));
  });

  // The first image allocates through jemalloc: libc has no probe, and the library gets its own,
  // with an entry and a return probe on malloc and calloc (no program after a call was loaded).
  it('after an image traced at another allocator, every one of the ten functions: valgrind\'s heap summary', async () => {
    const vg = await runValgrind(fixturePath('entry_points'), [], { env });
    const tracer = await trace({
      command: '/usr/bin/env',
      args: [`LD_PRELOAD=${library}`, fixturePath('entry_points')],
      env: { ...env, LD_PRELOAD: '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2' },
      stdio: 'ignore',
    });
    expect(tracer.info.allocator).toBe('/usr/lib/x86_64-linux-gnu/libjemalloc.so.2');
    const report = await tracer.done;
    expect(report.previousImages?.length).toBe(1);
    expect(report.untraced).toBeUndefined();
    expect(report.errors ?? []).toEqual([]);
    expect(heap(report)).toEqual(vg.summary);
  });

  it('a C++ program, whose operators libc\'s probes would tell apart from free() no more, is reported untraced', async () => {
    const tracer = await trace({ command: '/usr/bin/env', args: [`LD_PRELOAD=${library}`, fixturePath('cpp_containers')], env, stdio: 'ignore' });
    const report = await tracer.done;
    expect(report.untraced).toMatch(/preloaded entry points .* counted twice or as the wrong function/);
  });

  it('with preload, back in LD_PRELOAD after an image without it: reported untraced', async () => {
    const tracer = await trace({
      command: '/usr/bin/env',
      args: ['-u', 'LD_PRELOAD', '/usr/bin/env', `LD_PRELOAD=${library}`, fixturePath('leak_kinds')],
      env: preloadEnv,
      stdio: 'ignore',
      preload: true,
    });
    expect(tracer.info.preload).toBe(library);
    const report = await tracer.done;
    expect(report.previousImages?.length).toBe(2);
    expect(report.untraced).toMatch(/preloaded entry points .* counted twice or as the wrong function/);
  });
});

describe('preload: refused where it cannot work', () => {
  it('a running process', async () => {
    await expect(trace({ pid: process.pid, preload: true } as unknown as TraceOptions)).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
      message: expect.stringContaining('options.preload is for a command'),
    });
  });

  // The kernel keeps the trampolines of optimized uprobes per address space and does not carry
  // them into a forked child's copy: its calls through them would not run the probes.
  it('with followForks', async () => {
    await expect(trace({ command: fixturePath('fork_children'), env, stdio: 'ignore', preload: true, followForks: true })).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
      message: expect.stringContaining('options.preload cannot be used with followForks'),
    });
  });

  it('a value that is not a boolean', async () => {
    await expect(trace({ command: fixturePath('seed'), preload: 'yes' } as unknown as TraceOptions)).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
      message: expect.stringContaining('options.preload must be a boolean'),
    });
  });

  it('a program that does not allocate through glibc\'s shared libc', async () => {
    await expect(trace({ command: fixturePath('alloc_count_static'), env, stdio: 'ignore', preload: true })).rejects.toMatchObject({
      code: 'ELEAK_OPTION',
      message: expect.stringMatching(/not glibc's shared libc\.so\.6.*Leave preload off/),
    });
  });
});
