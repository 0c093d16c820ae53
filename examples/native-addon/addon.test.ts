// What a project with a native addon writes to keep it leak-free, run against this example's
// addon (addon.cc): greet() passes, greetLeaky() is caught, naming the C++ function and line that
// leaks, and checksum()'s one-time table is not mistaken for a leak.
//
// In your own project the first import is `import 'ebpf-leak/vitest';` (and
// `import { skipIfUnsupported } from 'ebpf-leak/vitest';`): it registers the matchers.
import { beforeAll, describe, expect, it } from 'vitest';
import { skipIfUnsupported } from '../../lib/harness/vitest.js';
import { loadExampleAddon, type ExampleAddon } from './build.js';

// Machines that cannot trace (no root / CAP_BPF + CAP_PERFMON, no BTF) skip, saying why.
skipIfUnsupported();

let addon: ExampleAddon;
beforeAll(async () => {
  ({ addon } = await loadExampleAddon()); // cmake-js build, skipped when up to date
});

describe('native_addon', () => {
  it('greet() does not leak', async () => {
    await expect(() => addon.greet('World')).not.toLeakNativeMemory({ iterations: 1000 });
  });

  it('greetLeaky() leaks 64 bytes per call, and the failure names the function and line', async () => {
    // The bug this example keeps on purpose, pinned down:
    await expect(() => addon.greetLeaky('World')).toLeakNativeMemory({ iterations: 1000 });
    await expect(() => addon.greetLeaky('World')).toLeakAtMost(64, { iterations: 1000 });

    // What `expect(...).not.toLeakNativeMemory()` reports for it.
    const failure = (await expect(() => addon.greetLeaky('World'))
      .not.toLeakNativeMemory({ iterations: 1000, module: /native_addon\.node$/ })
      .catch((e: unknown) => e)) as Error;
    expect(failure).toBeInstanceOf(Error);
    expect(failure.message).toContain('native memory grew by 64 bytes per iteration over 1,000 iterations');
    expect(failure.message).toMatch(/by 0x[0-9a-f]+: example::FormatGreeting\(.*\) \(.*\/addon\.cc:21\)/);
    expect(failure.message).toMatch(/by 0x[0-9a-f]+: example::GreetLeaky\(Napi::CallbackInfo const&\) \(.*\/addon\.cc:29\)/);
  });

  it('checksum() builds its table once: not a leak', async () => {
    await expect(() => addon.checksum('hello')).not.toLeakNativeMemory({ iterations: 1000, warmup: 0 });
  });
});
