// The BPF objects a process holds, from its fds' fdinfo, and whether the kernel still has them
// (bpftool). An object stays alive while any fd, link or program refers to it.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

export type BpfKind = 'prog' | 'map' | 'link';

export interface BpfObject {
  kind: BpfKind;
  id: number;
}

const idField: Record<BpfKind, string> = { prog: 'prog_id', map: 'map_id', link: 'link_id' };
const anonInode: Record<BpfKind, string> = { prog: 'anon_inode:bpf-prog', map: 'anon_inode:bpf-map', link: 'anon_inode:bpf_link' };

/** The BPF programs, maps and links `pid` holds fds of. */
export function bpfObjectsOf(pid: number): BpfObject[] {
  const objects: BpfObject[] = [];
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return objects;
  }
  for (const fd of fds) {
    let target: string;
    let info: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const kind = (['prog', 'map', 'link'] as const).find((k) => target === anonInode[k]);
    if (!kind) continue;
    const m = new RegExp(`^${idField[kind]}:\\s*(\\d+)`, 'm').exec(info);
    if (m) objects.push({ kind, id: Number(m[1]) });
  }
  return objects;
}

/** Whether bpftool still finds the object. */
export function bpfObjectExists(o: BpfObject): boolean {
  return spawnSync('bpftool', [o.kind, 'show', 'id', String(o.id)], { stdio: 'ignore' }).status === 0;
}

/** bpftool's version line: the suite needs it. */
export function bpftoolVersion(): string {
  return execFileSync('bpftool', ['version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
}
