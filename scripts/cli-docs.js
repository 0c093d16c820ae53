// Rewrites the options table of docs/cli.md from the CLI's option table (lib/cli/options.ts),
// through the built dist/: `npm run build:ts && node scripts/cli-docs.js`.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { optionsMarkdown } = await import(join(root, 'dist', 'cli', 'help.js'));
const file = join(root, 'docs', 'cli.md');
const begin = '<!-- options: generated from lib/cli/options.ts -->\n';
const end = '<!-- end of options -->';
const doc = readFileSync(file, 'utf8');
const at = doc.indexOf(begin);
const stop = doc.indexOf(end);
if (at < 0 || stop < at) throw new Error(`${file}: the options markers are missing`);
writeFileSync(file, doc.slice(0, at + begin.length) + optionsMarkdown() + doc.slice(stop));
