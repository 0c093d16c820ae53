// A process's code as it runs it: the bytes at a file's offset in the process's mapping of that
// file, breakpoints (int3) of attached uprobes included.
import { closeSync, openSync, readFileSync, readSync, realpathSync } from 'node:fs';

/** The byte at file offset `offset` of `path` as process `pid` has it mapped. */
export function codeByte(pid: number, path: string, offset: number): number {
  const real = realpathSync(path);
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(\S.*)$/.exec(line);
    if (!m || m[4] !== real) continue;
    const [start, end, at] = [BigInt('0x' + m[1]), BigInt('0x' + m[2]), BigInt('0x' + m[3])];
    const address = start + BigInt(offset) - at;
    if (BigInt(offset) < at || address >= end) continue;
    const fd = openSync(`/proc/${pid}/mem`, 'r');
    try {
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, address);
      return b[0]!;
    } finally {
      closeSync(fd);
    }
  }
  throw new Error(`${path} offset ${offset} is not mapped in ${pid}`);
}
