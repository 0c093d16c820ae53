// readableBy(): whether the user a command runs as can open a file of ours (the preload library),
// by the mode bits of the file and of each directory above it.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readableBy } from '../../lib/util/readable-by.js';

const top = mkdtempSync(join(tmpdir(), 'ebpf-leak-readable-'));
const inner = join(top, 'inner');
const file = join(inner, 'lib.so');
mkdirSync(inner);
writeFileSync(file, '');
/** Neither the files' owner nor in their group. */
const other = { uid: (process.getuid?.() ?? 0) + 4242, gid: (process.getgid?.() ?? 0) + 4242 };

afterAll(() => rmSync(top, { recursive: true, force: true }));

describe('readableBy', () => {
  it('every directory searchable and the file readable by others', () => {
    chmodSync(top, 0o755);
    chmodSync(inner, 0o711);
    chmodSync(file, 0o644);
    expect(readableBy(file, other.uid, other.gid)).toBe(true);
  });

  it('a directory above it closed to others, as mkdtemp makes them', () => {
    chmodSync(top, 0o700);
    chmodSync(inner, 0o755);
    chmodSync(file, 0o644);
    expect(readableBy(file, other.uid, other.gid)).toBe(false);
  });

  it('the file readable by its group only, for the group and for others', () => {
    chmodSync(top, 0o755);
    chmodSync(file, 0o640);
    expect(readableBy(file, other.uid, process.getgid?.() ?? 0)).toBe(true);
    expect(readableBy(file, other.uid, other.gid)).toBe(false);
  });

  it('root reads anything', () => {
    chmodSync(top, 0o700);
    expect(readableBy(file, 0, 0)).toBe(true);
  });
});
