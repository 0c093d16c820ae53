// A real third-party addon from npm, used correctly: better-sqlite3@12 (built from source by
// build.ts). Its statements and databases hold V8 global handles for a while; V8 keeps the blocks
// those handles live in, and reuses them, so a correct program leaves blocks behind from the
// iterations the pool grew in. That is not a leak, and measure() must not call it one, while an
// addon that really leaks a global handle per call (global_handle_leak.cc) is still caught.
import { createRequire } from 'node:module';
import { beforeAll, describe, expect, it } from 'vitest';
import { measure, type LeakSite } from '../../lib/harness/index.js';
import { skipIfUnsupported } from '../../lib/harness/vitest.js';
import { buildBetterSqlite, loadGlobalHandleLeak, type GlobalHandleLeak } from './build.js';

skipIfUnsupported();

interface Statement {
  run(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  iterate(...params: unknown[]): IterableIterator<unknown>;
}
interface Database {
  exec(sql: string): void;
  prepare(sql: string): Statement;
  transaction<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void;
  close(): void;
}
type DatabaseClass = new (file: string) => Database;

let Sqlite: DatabaseClass;
let handles: GlobalHandleLeak;

beforeAll(async () => {
  Sqlite = createRequire(import.meta.url)(await buildBetterSqlite((line) => console.log(line))) as DatabaseClass;
  handles = await loadGlobalHandleLeak();
}, 1_200_000);

/** The workload of a correct program: open, insert in a transaction, all(), iterate() with a
 *  break, close. */
function useSqlite(i: number): void {
  const db = new Sqlite(':memory:');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)');
  const insert = db.prepare('INSERT INTO t (name, n) VALUES (?, ?)');
  db.transaction((rows: number) => {
    for (let k = 0; k < rows; k++) insert.run(`row ${i} ${k}`, k);
  })(10);
  expect(db.prepare('SELECT * FROM t WHERE n >= ?').all(0)).toHaveLength(10);
  for (const row of db.prepare('SELECT name FROM t').iterate()) {
    expect(row).toBeDefined();
    break;
  }
  db.close();
}

const inV8Pool = (site: LeakSite) => site.stack.some((f) => /v8::internal::GlobalHandles::/.test(f.symbol ?? ''));

// First, while V8 has few free global handles.
describe('an addon that leaks one global handle per call, first', () => {
  it('is caught at the global-handle blocks when the pool has to grow', async () => {
    const report = await measure((i) => handles.keep({ i }), { iterations: 2000 });
    expect(report.globalHandlesGrowth).toBeGreaterThanOrEqual(2000 * 32);
    const sites = report.leaks.filter(inV8Pool);
    expect(sites.length).toBeGreaterThan(0);
    expect(sites.every((s) => s.reason === undefined && s.growing)).toBe(true);
    expect(sites[0]!.stack.some((f) => /Keep/.test(f.symbol ?? ''))).toBe(true);
  }, 300_000);

});

describe('better-sqlite3@12 used correctly', () => {
  it('leaks nothing over 1,000 iterations', async () => {
    const report = await measure(useSqlite, { iterations: 1000 });
    expect(report.inconclusive).toEqual([]);
    expect(report.leaks).toEqual([]);
    expect(report.bytesPerIteration).toBe(0);
    // The pool of global handles grew during the iterations: the sites that look like growth are
    // reported as what they are.
    const grew = report.oneTime.filter((s) => inV8Pool(s) && s.reason !== undefined);
    expect(grew.length).toBeGreaterThan(0);
    for (const site of grew) expect(site.reason).toMatch(/^V8's global-handle blocks, allocated as more handles were alive at once/);
    expect(report.globalHandlesGrowth).toBeLessThan(1000 * 8);
  }, 300_000);

  it('leaks nothing over 1,000 iterations, with the module filter on better_sqlite3.node', async () => {
    const report = await measure(useSqlite, { iterations: 1000, module: /better_sqlite3\.node$/ });
    expect(report.inconclusive).toEqual([]);
    expect(report.leaks).toEqual([]);
    expect(report.globalHandlesGrowth).toBeLessThan(1000 * 8);
  }, 300_000);
});

describe('an addon that leaks one global handle per call', () => {
  // The tests above left V8 with thousands of free handles: these handles allocate nothing.
  it('is caught when its handles fit in free ones: by the growth of live handles', async () => {
    const report = await measure((i) => handles.keep({ i }), { iterations: 1000 });
    expect(report.globalHandlesGrowth).toBeGreaterThanOrEqual(1000 * 32);
    expect(report.leaks).toHaveLength(1);
    expect(report.leaks[0]).toMatchObject({ bytesPerIteration: report.globalHandlesGrowth / 1000, growing: true, stack: [] });
    expect(report.leaks[0]!.reason).toMatch(/^V8's live global handles grew by 10\d\d \(\d+ bytes\) over 1000 iterations/);
  }, 300_000);

  it('is caught beside better-sqlite3 used correctly', async () => {
    const report = await measure(
      (i) => {
        useSqlite(i);
        handles.keep({ i });
      },
      { iterations: 1000 },
    );
    // At the pool's blocks when it had to grow, else as the growth of live handles.
    expect(report.leaks.some((s) => inV8Pool(s) || /^V8's live global handles grew by/.test(s.reason ?? ''))).toBe(true);
    expect(report.bytesPerIteration).toBeGreaterThanOrEqual(32);
  }, 300_000);
});
