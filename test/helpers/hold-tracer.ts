// Run by test/exit-hold.test.ts and test/attach-hold.test.ts as a process of its own (vite-node
// this-file FIXTURE [ARGS...], or this-file --pid PID): traces the fixture (or attaches to PID)
// with the exit scan on, prints the target's pid, and waits for the report. The tests kill this
// process while the target is traced, or stop it (SIGSTOP) before the target exits, so that the
// target waits in its exit stop for a tracer that never lets it go, and kill it there.
import { trace } from '../../lib/index.js';

const fixture = process.argv[2];
if (!fixture) throw new Error('usage: hold-tracer.ts FIXTURE [ARGS...] | --pid PID');
const tracer =
  fixture === '--pid'
    ? await trace({ pid: Number(process.argv[3]), leakKinds: true })
    : await trace({ command: fixture, args: process.argv.slice(3), stdio: 'ignore' });
process.stdout.write(`${JSON.stringify({ pid: tracer.pid })}\n`);
const report = await tracer.done;
process.stdout.write(`${JSON.stringify({ scan: report.scan ?? null })}\n`);
