// Run by test/exit-hold.test.ts as a process of its own (vite-node this-file FIXTURE): traces the
// fixture with the exit scan on, prints the target's pid, and waits for the report. The test
// kills this process while the target is held (EBPF_LEAK_TEST_HOLD_DELAY_MS makes the hold last).
import { trace } from '../../lib/index.js';

const fixture = process.argv[2];
if (!fixture) throw new Error('usage: hold-tracer.ts FIXTURE [ARGS...]');
const tracer = await trace({ command: fixture, args: process.argv.slice(3), stdio: 'ignore' });
process.stdout.write(`${JSON.stringify({ pid: tracer.pid })}\n`);
const report = await tracer.done;
process.stdout.write(`${JSON.stringify({ scan: report.scan ?? null })}\n`);
