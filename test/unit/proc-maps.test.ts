// /proc/PID/maps and perf map parsing (lib/target/proc-maps.ts), on text written here.
import { describe, expect, it } from 'vitest';
import { PerfMap, findMapping, parsePerfMap, parseProcMaps } from '../../lib/target/proc-maps.js';

describe('parseProcMaps', () => {
  const text = [
    '55d0c8a3c000-55d0c8a5e000 r--p 00000000 fd:01 1234 /usr/bin/prog',
    '55d0c8a5e000-55d0c8b00000 r-xp 00022000 fd:01 1234 /usr/bin/prog',
    '7f00aa000000-7f00aa100000 r-xp 00001000 08:02 99 /opt/my lib/libspace.so',
    '7f00ab000000-7f00ab010000 r-xp 00000000 00:1f 777 /tmp/old.so (deleted)',
    '7f00ac000000-7f00ac001000 rwxp 00000000 00:00 0 ',
    '7ffc1c7e5000-7ffc1c7e7000 r-xp 00000000 00:00 0                          [vdso]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
    'garbage line',
    '',
  ].join('\n');

  it('keeps executable mappings with numbers as bigints and host paths through /proc/PID/root', () => {
    const maps = parseProcMaps(text, { pid: 4321 });
    expect(maps.map((m) => m.path)).toEqual(['/usr/bin/prog', '/opt/my lib/libspace.so', '/tmp/old.so', '', '[vdso]', '[vsyscall]']);
    expect(maps[0]).toEqual({
      start: 0x55d0c8a5e000n,
      end: 0x55d0c8b00000n,
      offset: 0x22000n,
      perms: 'r-xp',
      dev: 'fd:01',
      inode: 1234n,
      path: '/usr/bin/prog',
      deleted: false,
      hostPath: '/proc/4321/root/usr/bin/prog',
    });
    expect(maps[1]!.hostPath).toBe('/proc/4321/root/opt/my lib/libspace.so');
    expect(maps[2]).toMatchObject({ deleted: true, hostPath: '/proc/4321/map_files/7f00ab000000-7f00ab010000' });
    expect(maps[3]!.hostPath).toBeUndefined();
    expect(maps[4]!.hostPath).toBeUndefined();
    expect(maps[5]!.end).toBe(0xffffffffff601000n);
  });

  it('keeps everything with all: true, and uses paths as is without a pid', () => {
    const maps = parseProcMaps(text, { all: true });
    expect(maps).toHaveLength(7);
    expect(maps[0]).toMatchObject({ perms: 'r--p', hostPath: '/usr/bin/prog' });
  });

  it('finds mappings by address', () => {
    const maps = parseProcMaps(text);
    expect(findMapping(maps, 0x55d0c8a5e000n)?.path).toBe('/usr/bin/prog');
    expect(findMapping(maps, 0x55d0c8afffffn)?.path).toBe('/usr/bin/prog');
    expect(findMapping(maps, 0x55d0c8b00000n)).toBeUndefined();
    expect(findMapping(maps, 0x7f00aa0fffffn)?.path).toBe('/opt/my lib/libspace.so');
  });
});

describe('perf map', () => {
  it('parses START SIZE name lines, hex with or without 0x, names with spaces', () => {
    const entries = parsePerfMap('1000 10 a\n0x2000 0x20 b c d\nzz 1 bad\n3000 0 empty\n4000 8\n');
    expect(entries).toEqual([
      { start: 0x1000n, end: 0x1010n, symbol: 'a' },
      { start: 0x2000n, end: 0x2020n, symbol: 'b c d' },
    ]);
  });

  it('looks addresses up; later entries win where they overlap', () => {
    const map = new PerfMap(parsePerfMap('1000 100 old\n2000 10 x\n1080 10 new\n'));
    expect(map.size).toBe(3);
    expect(map.lookup(0x1000n)?.symbol).toBe('old');
    expect(map.lookup(0x1085n)?.symbol).toBe('new');
    expect(map.lookup(0x10a0n)?.symbol).toBe('old');
    expect(map.lookup(0x1100n)).toBeUndefined();
    expect(map.lookup(0x200fn)?.symbol).toBe('x');
    expect(map.lookup(0xfffn)).toBeUndefined();
  });
});
