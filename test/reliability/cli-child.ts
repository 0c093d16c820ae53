// Run by stop-races.test.ts in a process of its own (vite-node this-file ARGS...): the CLI's
// main() with ARGS, after printing "starting".
import { main } from '../../lib/cli/main.js';

process.stdout.write('starting\n');
process.exitCode = await main(process.argv.slice(2));
