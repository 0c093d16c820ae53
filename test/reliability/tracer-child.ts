// Run by tracer-killed.test.ts in a process of its own (vite-node this-file PID): traces PID,
// prints "attached", then takes a snapshot every 50 ms until it is killed.
import { trace } from '../../lib/index.js';

const tracer = await trace({ pid: Number(process.argv[2]) });
process.stdout.write('attached\n');
setInterval(() => {
  tracer.snapshot().catch(() => undefined);
}, 50);
