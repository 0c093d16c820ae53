// Whether another user can read a file of ours, before a program running as that user is told to.
import { realpathSync, statSync } from 'node:fs';

/** Whether `uid`/`gid` may open `path` for reading, by the mode bits of the file and of every
 *  directory above it (supplementary groups not counted). */
export function readableBy(path: string, uid: number, gid: number): boolean {
  if (uid === 0) return true;
  const allows = (p: string, bits: number) => {
    const st = statSync(p);
    const shift = st.uid === uid ? 6 : st.gid === gid ? 3 : 0;
    return ((st.mode >> shift) & bits) === bits;
  };
  const parts = realpathSync(path).split('/').slice(1);
  for (let i = 0; i < parts.length - 1; i++) {
    if (!allows(`/${parts.slice(0, i + 1).join('/')}`, 1)) return false;
  }
  return allows(realpathSync(path), 4);
}
