// Which library of allocator entry points a `preload` command gets (native/preload/preload.c), or
// why it can get none.
import { statSync } from 'node:fs';
import { InvalidOptionError } from '../errors.js';
import { preloadLibraryPath } from '../native/addon.js';
import { operatorsAllLibstdcxx } from '../target/cxx-operators.js';
import type { ResolvedCommand } from '../target/resolve.js';
import { readableBy } from '../util/readable-by.js';
import type { ResolvedOptions } from './options.js';

/** Whether the program's C++ runtime is libstdc++ and no other file it loads at start defines an
 *  operator. Then its operator delete overloads all end in free(), as the C++ variant's do; a
 *  program replacing operator delete(void*) alone would lose the sized deletes libstdc++ forwards
 *  to it. */
function allCxxOperatorsInRuntime(target: ResolvedCommand): boolean {
  const runtime = target.allocator.cxxRuntime;
  return runtime !== undefined && operatorsAllLibstdcxx([runtime, ...target.files]);
}

/** The library of entry points for a `preload` command, when its program allocates through
 *  glibc's shared libc: the entry points forward to glibc's functions, and the loader ignores
 *  LD_PRELOAD paths for a set-user-ID or set-group-ID program run by another user. */
export function preloadLibrary(o: Extract<ResolvedOptions, { kind: 'command' }>, target: ResolvedCommand): string {
  // Both variants are built together, on x86-64 only.
  if (preloadLibraryPath() === null) {
    throw new InvalidOptionError(
      `options.preload needs x86-64, where the kernel optimizes uprobes on 5-byte nops; this is ${process.arch}. Leave preload off.`,
    );
  }
  if (o.allocator !== undefined || target.allocator.name !== 'glibc') {
    throw new InvalidOptionError(
      `options.preload: ${o.command} allocates through ${target.allocator.path} (${o.allocator ? 'named with allocator' : target.allocator.name}), ` +
        `not glibc's shared libc.so.6, and the preloaded entry points only forward to glibc's functions. Leave preload off for this program.`,
    );
  }
  const program = target.files[0] ?? target.exe;
  if ((statSync(program).mode & 0o6000) !== 0) {
    throw new InvalidOptionError(
      `options.preload: ${program} is set-user-ID or set-group-ID, and the dynamic loader ignores LD_PRELOAD ` +
        `paths for such a program run by another user. Leave preload off for this program.`,
    );
  }
  // Read last: it reads the symbols of every file the program loads.
  const library = preloadLibraryPath(allCxxOperatorsInRuntime(target) ? 'cxx' : 'c')!;
  if (o.user !== undefined && !readableBy(library, o.user.uid, o.user.gid)) {
    throw new InvalidOptionError(
      `options.preload: ${library} cannot be read by uid ${o.user.uid} (gid ${o.user.gid}), which runs the program, ` +
        `and the dynamic loader would skip it. Install ebpf-leak where that user can read it, or leave preload off.`,
    );
  }
  return library;
}
