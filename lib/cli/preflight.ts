// What the CLI checks or decides before it starts the program or attaches: a failure found only
// after tracing would lose the run and the program's exit status.
import { accessSync, constants, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** Why `--json FILE` cannot be written, or undefined when it can ('-' is standard output). */
export function jsonDestinationProblem(path: string, cwd = process.cwd()): string | undefined {
  if (path === '-') return undefined;
  const file = resolve(cwd, path);
  const dir = dirname(file);
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    return `directory ${dir} does not exist`;
  }
  if (!isDir) return `${dir} is not a directory`;
  try {
    if (statSync(file).isDirectory()) return `${file} is a directory`;
  } catch {
    // not there yet: it will be created
  }
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    return `directory ${dir} is not writable`;
  }
  return undefined;
}

/** Under `sudo`, the user who ran it (SUDO_UID, SUDO_GID), whom the program should run as;
 *  undefined when not root, not under sudo, or sudo was run by root. */
export function invokingUser(env: NodeJS.ProcessEnv, uid: number | undefined): { uid: number; gid: number } | undefined {
  if (uid !== 0 || env.SUDO_UID === undefined || !/^\d+$/.test(env.SUDO_UID)) return undefined;
  const user = Number(env.SUDO_UID);
  if (user === 0) return undefined;
  const gid = env.SUDO_GID !== undefined && /^\d+$/.test(env.SUDO_GID) ? Number(env.SUDO_GID) : user;
  return { uid: user, gid };
}
