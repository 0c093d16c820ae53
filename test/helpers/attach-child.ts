// Run by test/user-errors.test.ts under setpriv (another uid, chosen capabilities): attaches to
// the pid in argv and prints the error trace() throws, as JSON.
import { trace } from '../../lib/index.js';

const pid = Number(process.argv[2]);
let error: { name: string; code?: string; message: string } | null = null;
try {
  const tracer = await trace({ pid });
  await tracer.stop();
} catch (e) {
  const err = e as Error & { code?: string };
  error = { name: err.name, code: err.code, message: err.message };
}
process.stdout.write(JSON.stringify({ error }));
