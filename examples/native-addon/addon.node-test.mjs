// The same checks with node:test (`node --test examples/native-addon/addon.node-test.mjs`, after
// `npm run build` and a build of the addon: the vitest suite builds it into test/.build/).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { assertNativeLeaksAtMost, assertNoNativeLeaks, LeakError, skipIfUnsupported } from 'ebpf-leak/node-test';

const addon = createRequire(import.meta.url)('../../test/.build/native-addon/RelWithDebInfo/native_addon.node');

test('greet() does not leak', skipIfUnsupported(), async () => {
  await assertNoNativeLeaks(() => addon.greet('World'), { iterations: 1000 });
});

test('greetLeaky() leaks 64 bytes per call', skipIfUnsupported(), async () => {
  await assert.rejects(assertNoNativeLeaks(() => addon.greetLeaky('World'), { iterations: 1000 }), (error) => {
    assert.ok(error instanceof LeakError);
    assert.match(error.message, /example::GreetLeaky\(Napi::CallbackInfo const&\) \(.*addon\.cc:29\)/);
    return true;
  });
  await assertNativeLeaksAtMost(() => addon.greetLeaky('World'), 64, { iterations: 1000 });
});

test('checksum() builds its table once: not a leak', skipIfUnsupported(), async () => {
  await assertNoNativeLeaks(() => addon.checksum('hello'), { iterations: 1000, warmup: 0 });
});
