// The dynamic loader's `_dl_debug_state()`, the debugger interface of <link.h>: the loader calls
// it once the objects of a dlopen() are mapped, before their code runs. Probed in supervised
// processes, it stops the thread there until the new objects' unwind tables are loaded
// (bpf/leak.bpf.c's loader_changed), so that a library's first stacks are whole.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { loadNative } from '../native/addon.js';
import { LOADER_NAME } from '../target/resolve.js';

export interface LoaderProbe {
  path: string;
  /** File offset of `_dl_debug_state`. */
  offset: number;
}

/** The loader among `files` (a command's), or else the one process `pid` maps; undefined when
 *  there is none to probe (a static program, a loader without the symbol). */
export function loaderProbe(files: readonly string[], pid?: number): LoaderProbe | undefined {
  const path = files.find((f) => LOADER_NAME.test(basename(f))) ?? (pid !== undefined ? mappedLoader(pid) : undefined);
  if (path === undefined) return undefined;
  try {
    const symbol = loadNative().readElf(path, ['_dl_debug_state']).symbols._dl_debug_state;
    return symbol ? { path, offset: symbol.offset } : undefined;
  } catch {
    return undefined;
  }
}

function mappedLoader(pid: number): string | undefined {
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const path = line.slice(line.indexOf('/'));
      if (line.includes('/') && LOADER_NAME.test(basename(path))) return path;
    }
  } catch {
    // gone, or not ours to read: not probed
  }
  return undefined;
}
