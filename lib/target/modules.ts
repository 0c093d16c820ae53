// Kernel-recorded mappings (struct leak_module) -> mappings the symbolizer can open. The kernel
// gives the path inside the file's filesystem and the filesystem's device; the mount table says
// where that filesystem is mounted here. Each candidate is checked by inode, so a path is never
// guessed.
import { readFileSync, statSync } from 'node:fs';
import type { KernelModule } from '../native/layout.js';
import type { ProcMapping } from './proc-maps.js';

interface Mount {
  dev: number; // kernel dev_t encoding
  root: string; // path inside the filesystem that is mounted
  mountPoint: string;
}

export function parseMountInfo(text: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of text.split('\n')) {
    // id parent major:minor root mount-point options ... - fstype source super-options
    const f = line.split(' ');
    if (f.length < 5) continue;
    const [major, minor] = f[2]!.split(':').map(Number);
    mounts.push({ dev: (major! << 20) | minor!, root: unescape(f[3]!), mountPoint: unescape(f[4]!) });
  }
  return mounts;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** stat's st_dev (glibc's encoding) -> the kernel's dev_t encoding. */
export function kernelDev(statDev: number): number {
  const major = ((statDev >>> 8) & 0xfff) | (Math.floor(statDev / 2 ** 32) & ~0xfff);
  const minor = (statDev & 0xff) | ((statDev >>> 12) & ~0xff);
  return (major << 20) | minor;
}

function fileMatches(path: string, module: KernelModule): boolean {
  try {
    const st = statSync(path, { bigint: true });
    return st.ino === module.inode && kernelDev(Number(st.dev)) === module.dev;
  } catch {
    return false;
  }
}

/** Where each recorded mapping's file is, from our mount namespace; `extraRoots` (e.g.
 *  /proc/PID/root of the target, while it lives) are tried first. */
export function resolveModules(
  modules: readonly KernelModule[],
  options: { mountInfo?: string; extraRoots?: string[] } = {},
): ProcMapping[] {
  const mounts = parseMountInfo(options.mountInfo ?? readFileSync('/proc/self/mountinfo', 'utf8'));
  const resolved = new Map<string, string | undefined>();
  return modules.map((m) => {
    const key = `${m.dev}:${m.inode}`;
    if (!resolved.has(key)) {
      const candidates: string[] = [];
      for (const root of options.extraRoots ?? []) candidates.push(`${root}${m.pathInFs}`);
      for (const mount of mounts) {
        if (mount.dev !== m.dev) continue;
        const rel = mount.root === '/' ? m.pathInFs : m.pathInFs.startsWith(`${mount.root}/`) ? m.pathInFs.slice(mount.root.length) : null;
        if (rel !== null) candidates.push(mount.mountPoint === '/' ? rel : `${mount.mountPoint}${rel}`);
      }
      resolved.set(key, candidates.find((c) => fileMatches(c, m)));
    }
    const hostPath = resolved.get(key);
    return {
      start: m.start,
      end: m.end,
      offset: m.fileOffset,
      perms: 'r-xp',
      dev: `${(m.dev >>> 20).toString(16)}:${(m.dev & 0xfffff).toString(16)}`,
      inode: m.inode,
      path: hostPath ?? m.pathInFs,
      deleted: hostPath === undefined,
      ...(hostPath !== undefined ? { hostPath } : {}),
    };
  });
}
