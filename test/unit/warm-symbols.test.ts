// warmSymbols(): a command's modules opened in the native symbolizer while the probes load, one
// call after another (the native side serializes on one lock; parallel calls would only park the
// libuv pool's threads), each with no offsets, and nothing thrown at the caller.
import { describe, expect, it } from 'vitest';
import type { NativeSymbolizer } from '../../lib/native/addon.js';
import { warmSymbols } from '../../lib/report/symbolize.js';

function fakeSymbolizer(failing: string) {
  const calls: Array<{ path: string; offsets: number; options: unknown; running: number }> = [];
  let running = 0;
  const native: NativeSymbolizer = {
    async symbolize(path, offsets, options) {
      running++;
      calls.push({ path, offsets: offsets.length, options, running });
      await new Promise((r) => setTimeout(r, 5));
      running--;
      if (path === failing) throw new Error('cannot open');
      return { strings: new Uint8Array(0), stringEnds: new Uint32Array(0), entries: new Int32Array(0), frames: new Int32Array(0) } as never;
    },
    readBuildId: () => null,
  };
  return { native, calls };
}

describe('warmSymbols', () => {
  it('opens each file once, one at a time, with no offsets, past a file that fails', async () => {
    const { native, calls } = fakeSymbolizer('/b');
    await expect(warmSymbols(['/a', '/b', '/a', '/c'], [], native)).resolves.toBeUndefined();
    expect(calls.map((c) => c.path)).toEqual(['/a', '/b', '/c']);
    expect(calls.every((c) => c.offsets === 0 && c.running === 1)).toBe(true);
    expect(calls[0]!.options).toEqual({});
  });

  it("passes the debug directories, as a report's symbolization does", async () => {
    const { native, calls } = fakeSymbolizer('');
    await warmSymbols(['/a'], ['/dbg'], native);
    expect(calls[0]!.options).toEqual({ debugDirs: ['/dbg'] });
  });
});
