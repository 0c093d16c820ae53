// Run without capabilities by test/measure.test.ts (setpriv ... vite-node this-file): prints
// what the harness says about support, the node:test skip option, and the error a measurement
// throws, as JSON.
import { measure, tracingSupport } from '../../lib/harness/index.js';
import { skipIfUnsupported } from '../../lib/harness/node-test.js';

const support = tracingSupport();
let error: { name: string; code?: string; message: string } | null = null;
try {
  await measure(() => {}, { iterations: 1 });
} catch (e) {
  const err = e as Error & { code?: string };
  error = { name: err.name, code: err.code, message: err.message };
}
process.stdout.write(
  JSON.stringify({
    support: support.supported ? support : { supported: false, reason: support.reason },
    skip: skipIfUnsupported(),
    error,
  }),
);
