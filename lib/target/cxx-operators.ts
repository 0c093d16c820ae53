// Which files define C++'s operators: a preloaded operator delete may stand in for libstdc++'s
// only where no other file defines one (lib/tracer/preload.ts, lib/target/image.ts).
import { realpathSync } from 'node:fs';
import { basename } from 'node:path';
import { loadNative } from '../native/addon.js';

/** Every overload of C++'s operators new and delete (Itanium ABI, 64-bit size_t). */
export const cxxOperatorNames: readonly string[] = ['_Znw', '_Zna', '_Zdl', '_Zda'].flatMap((op) =>
  op.startsWith('_Zn')
    ? ['m', 'mRKSt9nothrow_t', 'mSt11align_val_t', 'mSt11align_val_tRKSt9nothrow_t'].map((s) => op + s)
    : ['Pv', 'Pvm', 'PvRKSt9nothrow_t', 'PvSt11align_val_t', 'PvmSt11align_val_t', 'PvSt11align_val_tRKSt9nothrow_t'].map((s) => op + s),
);

const LIBSTDCXX = /^libstdc\+\+\.so\.6(\.|$)/;

/** Whether every C++ operator the dynamic loader can bind among `files` (a program's objects at
 *  start) is libstdc++'s: no other file defines one. Files that cannot be read define none. */
export function operatorsAllLibstdcxx(files: readonly string[]): boolean {
  return files.every((file) => {
    try {
      if (LIBSTDCXX.test(basename(realpathSync(file)))) return true;
      const info = loadNative().readElf(file, cxxOperatorNames);
      return cxxOperatorNames.every((symbol) => info.symbols[symbol] === undefined);
    } catch {
      return true;
    }
  });
}
