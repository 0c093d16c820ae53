// Builds examples/native-addon with cmake-js, without a package.json of its own: called from the
// tests before they load the addon. The build is skipped when its stamp (a hash of the sources,
// the compiler and the Node.js version) matches.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const exampleDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(exampleDir, '..', '..');
/** Where the build goes (gitignored with the other test builds). */
export const defaultOutDir = join(repoRoot, 'test', '.build', 'native-addon');
const config = 'RelWithDebInfo';
const sources = ['addon.cc', 'CMakeLists.txt'];

interface CmakeJsBuildSystem {
  options: Record<string, unknown>;
  build(): Promise<void>;
}
interface CmakeJs {
  BuildSystem: new (options: Record<string, unknown>) => CmakeJsBuildSystem;
}

function stampOf(): string {
  const hash = createHash('sha256');
  for (const s of sources) hash.update(`\0${s}\0`).update(readFileSync(join(exampleDir, s)));
  let cxx = '';
  try {
    cxx = execFileSync('c++', ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  } catch {
    // no compiler: the build will say so
  }
  hash.update(`${cxx}\0${process.version}\0${config}`);
  return hash.digest('hex');
}

/** Builds the addon if it is missing or out of date; returns the path of native_addon.node. */
export async function buildExampleAddon(options: { outDir?: string; log?: (line: string) => void } = {}): Promise<string> {
  const outDir = options.outDir ?? defaultOutDir;
  const output = join(outDir, config, 'native_addon.node');
  const stampFile = join(outDir, 'native_addon.stamp');
  const stamp = stampOf();
  if (existsSync(output) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === stamp) return output;
  mkdirSync(outDir, { recursive: true });
  const require = createRequire(join(repoRoot, 'package.json'));
  const cmakeJs = require('cmake-js') as CmakeJs;
  const build = new cmakeJs.BuildSystem({ directory: exampleDir, out: outDir, config, logLevel: 'warn' });
  // cmake-js decides "Node-API module, no Node.js headers to download" from a package.json's
  // binary.napi_versions; this example has no package.json, so say it here.
  build.options.isNodeApi = true;
  await build.build();
  if (!existsSync(output)) throw new Error(`cmake-js finished but ${output} does not exist`);
  writeFileSync(stampFile, `${stamp}\n`);
  options.log?.(`built the example addon -> ${output}`);
  return output;
}

/** The example's exports. */
export interface ExampleAddon {
  greetLeaky(name: string): string;
  greet(name: string): string;
  checksum(data: string): number;
  startBackgroundLeak(): void;
  stopBackgroundLeak(): void;
}

/** Builds (if needed) and loads the addon. */
export async function loadExampleAddon(options: { outDir?: string } = {}): Promise<{ addon: ExampleAddon; path: string }> {
  const path = await buildExampleAddon(options);
  const require = createRequire(import.meta.url);
  return { addon: require(path) as ExampleAddon, path };
}
