// Builds what the third-party addon test loads, into test/.build/third-party-addon/ (gitignored):
//
// - better-sqlite3@12 from the npm registry, compiled from source against this Node.js's headers
//   (its prebuilt binaries come from GitHub, and a source build is what a project's CI does when
//   there is none for its Node.js);
// - global_handle_leak.node (global_handle_leak.cc here): a V8-API addon that leaks one global
//   handle per call and allocates nothing else, the leak the global-handle rule must still catch.
//
// Each is skipped when its stamp (what went into it) matches. The npm build runs asynchronously:
// blocking a vitest worker for minutes times out its calls to the main process.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const exampleDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(exampleDir, '..', '..');
export const outDir = join(repoRoot, 'test', '.build', 'third-party-addon');
export const betterSqliteVersion = '12';

/** Node.js's headers (node.h, v8.h): beside the running node, as Debian and the official
 *  tarballs install them. */
function nodeHeaders(): string {
  const prefix = dirname(dirname(process.execPath));
  const include = join(prefix, 'include', 'node');
  if (!existsSync(join(include, 'v8.h'))) {
    throw new Error(`the Node.js headers are not in ${include}: install them (Debian: libnode-dev / nodejs-dev)`);
  }
  return prefix;
}

async function stamped(file: string, stamp: string, build: () => void | Promise<void>): Promise<void> {
  const stampFile = `${file}.stamp`;
  if (existsSync(file) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === stamp) return;
  await build();
  if (!existsSync(file)) throw new Error(`the build finished but ${file} does not exist`);
  writeFileSync(stampFile, `${stamp}\n`);
}

/** Installs better-sqlite3 (a source build: several minutes on two cores). Returns its module. */
export async function buildBetterSqlite(log: (line: string) => void = () => {}): Promise<string> {
  const dir = join(outDir, 'sqlite');
  const output = join(dir, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node');
  const stamp = `better-sqlite3@${betterSqliteVersion} ${process.version}`;
  await stamped(output, stamp, async () => {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'package.json'), '{ "name": "third-party-addon-test", "private": true }\n');
    log(`building better-sqlite3@${betterSqliteVersion} from source (npm install --build-from-source)`);
    const npm = promisify(execFile)(
      'npm',
      ['install', '--no-audit', '--no-fund', '--no-save', `better-sqlite3@${betterSqliteVersion}`],
      {
        cwd: dir,
        maxBuffer: 64 * 1024 * 1024,
        env: { ...process.env, npm_config_nodedir: nodeHeaders(), npm_config_build_from_source: 'true' },
      },
    );
    try {
      await npm;
    } catch (err) {
      const { stderr } = err as { stderr?: string };
      throw new Error(`npm install better-sqlite3@${betterSqliteVersion} failed:\n${stderr ?? String(err)}`);
    }
  });
  return join(dir, 'node_modules', 'better-sqlite3');
}

/** Compiles global_handle_leak.cc. Returns the .node file. */
export async function buildGlobalHandleLeak(): Promise<string> {
  const source = join(exampleDir, 'global_handle_leak.cc');
  const output = join(outDir, 'global_handle_leak.node');
  const stamp = createHash('sha256').update(readFileSync(source)).update(process.version).digest('hex');
  await stamped(output, stamp, async () => {
    mkdirSync(outDir, { recursive: true });
    await promisify(execFile)('c++', [
      '-std=c++20', '-shared', '-fPIC', '-g', '-O1', '-fno-omit-frame-pointer',
      `-I${join(nodeHeaders(), 'include', 'node')}`, '-o', output, source,
    ]);
  });
  return output;
}

export interface GlobalHandleLeak {
  /** Keeps a new global handle to `value` for ever; allocates nothing itself. */
  keep(value: unknown): number;
}

export async function loadGlobalHandleLeak(): Promise<GlobalHandleLeak> {
  return createRequire(import.meta.url)(await buildGlobalHandleLeak()) as GlobalHandleLeak;
}
