// A `command` target run as another user (options.user; the CLI passes the invoking user under
// sudo): the launcher switches uid, gid and supplementary groups right before exec, sets HOME,
// USER and LOGNAME, and the program is still traced.
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { trace } from '../lib/index.js';
import { fixturePath } from './helpers/fixtures.js';

async function readAll(stream: Readable | null): Promise<string> {
  let text = '';
  stream!.setEncoding('utf8');
  for await (const chunk of stream!) text += chunk;
  return text;
}

/** A user of this machine with a supplementary group, from /etc/passwd and /etc/group. */
function userWithSupplementaryGroup(): { name: string; uid: number; gid: number; home: string; group: number } {
  const users = readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':'));
  for (const g of readFileSync('/etc/group', 'utf8').split('\n').map((l) => l.split(':'))) {
    for (const member of (g[3] ?? '').split(',').filter(Boolean)) {
      const u = users.find((f) => f[0] === member);
      if (u && Number(u[2]) !== 0 && Number(u[3]) !== Number(g[2])) {
        return { name: u[0]!, uid: Number(u[2]), gid: Number(u[3]), home: u[5]!, group: Number(g[2]) };
      }
    }
  }
  throw new Error('this machine has no user with a supplementary group (/etc/group): add one to run this test');
}

const script = 'id -u; id -g; id -G; echo "$HOME"; echo "$USER"; echo "$LOGNAME"; echo "${EBPF_LEAK_EXEC_USER-unset}"';

describe('options.user', () => {
  it('runs the program as the user, with the groups and HOME of the user database', async () => {
    const user = userWithSupplementaryGroup();
    const tracer = await trace({
      command: 'sh',
      args: ['-c', script],
      stdio: 'pipe',
      user: { uid: user.uid, gid: user.gid },
      env: { PATH: process.env.PATH, HOME: '/root', USER: 'root', LOGNAME: 'root' },
    });
    const out = readAll(tracer.process!.stdout);
    const report = await tracer.done;
    const [uid, gid, groups, home, name, logname, variable] = (await out).trim().split('\n');
    expect(report.target.exitCode).toBe(0);
    expect(Number(uid)).toBe(user.uid);
    expect(Number(gid)).toBe(user.gid);
    expect(groups!.split(' ').map(Number).sort()).toEqual([user.gid, user.group].sort());
    expect(home).toBe(user.home);
    expect(name).toBe(user.name);
    expect(logname).toBe(user.name);
    expect(variable).toBe('unset');
    // and it was traced: the shell's own allocations were seen
    expect(report.summary.allocs).toBeGreaterThan(0);
  });

  it('without it, the program runs as this process', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'id -u; id -G'], stdio: 'pipe' });
    const out = readAll(tracer.process!.stdout);
    await tracer.done;
    const [uid] = (await out).trim().split('\n');
    expect(Number(uid)).toBe(process.getuid!());
  });

  it('a uid with no passwd entry gets just the gid as its group', async () => {
    const tracer = await trace({ command: 'sh', args: ['-c', 'id -u; id -g; id -G'], stdio: 'pipe', user: { uid: 54321, gid: 54322 } });
    const out = readAll(tracer.process!.stdout);
    await tracer.done;
    expect((await out).trim().split('\n')).toEqual(['54321', '54322', '54322']);
  });

  it("counts the program's blocks exactly as under root", async () => {
    const user = userWithSupplementaryGroup();
    const asRoot = await (await trace({ command: fixturePath('seed'), stdio: 'ignore' })).done;
    const asUser = await (await trace({ command: fixturePath('seed'), stdio: 'ignore', user: { uid: user.uid, gid: user.gid } })).done;
    expect(asUser.summary).toMatchObject({ inUseBlocks: asRoot.summary.inUseBlocks, inUseBytes: asRoot.summary.inUseBytes });
    expect(asUser.summary.inUseBlocks).toBeGreaterThan(0);
  });

  it('rejects a malformed user', async () => {
    await expect(trace({ command: 'true', user: { uid: -1, gid: 0 } })).rejects.toMatchObject({ code: 'ELEAK_OPTION' });
    await expect(trace({ command: 'true', user: 'me' as never })).rejects.toMatchObject({ code: 'ELEAK_OPTION' });
  });
});
