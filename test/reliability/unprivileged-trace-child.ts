// Run by unprivileged.test.ts as another user (vite-node this-file COMMAND ARGS...): traces the
// command and prints its report's summary and target, or the error trace() threw, as JSON.
import { trace } from '../../lib/index.js';

const [command, ...args] = process.argv.slice(2);
let out: unknown;
try {
  const tracer = await trace({ command: command!, args, stdio: 'ignore', env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/nonexistent' } });
  const report = await tracer.done;
  out = { summary: report.summary, target: report.target, uid: process.getuid?.() };
} catch (e) {
  const err = e as Error & { code?: string };
  out = { error: { name: err.name, code: err.code, message: err.message } };
}
process.stdout.write(JSON.stringify(out));
