import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TableCache } from '../../../../../src/drivers/format/qcow2/table-cache.js';

const SIZE = 16;

/** A cache over a fake disk where the table at offset N is filled with the byte N & 0xff. */
function cacheOf(capacity: number, opts: { gate?: Promise<void>; fail?: Set<number> } = {}) {
  const loads: number[] = [];
  const cache = new TableCache(SIZE, capacity, async (offset, into) => {
    loads.push(offset);
    await opts.gate;
    if (opts.fail?.has(offset)) throw new Error(`cannot read ${offset}`);
    into.fill(offset & 0xff);
  });
  return { cache, loads };
}

const first = (t: Uint8Array) => t[0];
const bufferOf = (cache: TableCache, offset: number) => cache.use(offset, (t) => t.buffer);

describe('TableCache', () => {
  it('keeps the most recently used tables and loads a table once while it stays', async () => {
    const { cache, loads } = cacheOf(2);
    assert.equal(await cache.use(1, first), 1);
    assert.equal(await cache.use(2, first), 2);
    assert.equal(await cache.use(1, first), 1); // 1 is now the most recent
    assert.equal(await cache.use(3, first), 3); // evicts 2
    assert.equal(await cache.use(1, first), 1);
    assert.equal(await cache.use(2, first), 2);
    assert.deepEqual(loads, [1, 2, 3, 2]);
    assert.equal(cache.size, 2);
  });

  it('a miss on a full cache reads into the evicted table\'s buffer instead of allocating', async () => {
    const { cache } = cacheOf(2);
    const seen = new Set<ArrayBufferLike>();
    for (let i = 0; i < 100; i++) seen.add(await bufferOf(cache, i));
    assert.equal(seen.size, 2, 'two buffers serve a hundred tables');
    assert.equal(await cache.use(99, first), 99);
    assert.equal(await cache.use(98, first), 98);
  });

  it('peek answers hits without a promise and misses with undefined', async () => {
    const { cache, loads } = cacheOf(2);
    assert.equal(cache.peek(5), undefined);
    await cache.use(5, first);
    assert.equal(cache.peek(5)?.[0], 5);
    assert.deepEqual(loads, [5]);
  });

  it('concurrent misses on one table share one load', async () => {
    let open!: () => void;
    const { cache, loads } = cacheOf(4, { gate: new Promise((r) => (open = r)) });
    const results = Promise.all([cache.use(7, first), cache.use(7, first), cache.modify(7)]);
    open();
    const [a, b, modified] = await results;
    assert.deepEqual([a, b, modified[0]], [7, 7, 7]);
    assert.deepEqual(loads, [7]);
  });

  it('a table being loaded or used is never handed to another load', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const { cache } = cacheOf(1, { gate });
    const slow = cache.use(1, (t) => t);
    const other = cache.use(2, (t) => t);
    open();
    const [one, two] = await Promise.all([slow, other]);
    assert.notEqual(one.buffer, two.buffer);
    assert.equal(one[0], 1);
    assert.equal(two[0], 2);
  });

  it('dirty tables are never evicted; trim() evicts down to the capacity once they are clean', async () => {
    const { cache, loads } = cacheOf(2);
    const a = await cache.modify(1);
    a[1] = 0xaa;
    const b = cache.create(2);
    const c = cache.create(3);
    for (let i = 10; i < 20; i++) await cache.use(i, first);
    assert.equal(cache.dirtyCount, 3);
    assert.deepEqual(cache.dirty().map(([offset]) => offset), [1, 2, 3]);
    assert.equal(cache.peek(1), a, 'a dirty table keeps its buffer');
    assert.equal(a[1], 0xaa);
    assert.deepEqual([...b, ...c].filter((x) => x !== 0), [], 'created tables start as zeros');
    // peek() made table 1 the most recently used; 2 and 3 are now the least.
    for (const [offset] of cache.dirty()) cache.markClean(offset);
    cache.trim();
    assert.equal(cache.dirtyCount, 0);
    assert.equal(cache.size, 2);
    loads.length = 0;
    await cache.use(1, first);
    await cache.use(2, first);
    assert.deepEqual(loads, [2], 'trim evicted the least recently used table');
  });

  it('create() zeroes a reused buffer', async () => {
    const { cache } = cacheOf(1);
    await cache.use(9, first);
    const t = cache.create(4);
    assert.deepEqual([...t], new Array(SIZE).fill(0));
  });

  it('cleanUnused() drops clean tables unused since the previous pass, and only those', async () => {
    const { cache, loads } = cacheOf(8);
    await cache.use(1, first);
    await cache.use(2, first);
    (await cache.modify(3))[0] = 33;
    assert.equal(cache.cleanUnused(), 0, 'everything was used since the start');
    await cache.use(2, first);
    assert.equal(cache.cleanUnused(), 1, 'table 1 sat unused for a whole interval');
    assert.equal(cache.size, 2);
    assert.equal(cache.cleanUnused(), 1, 'table 2 now did; the dirty table 3 stays');
    assert.equal(cache.size, 1);
    assert.equal(cache.peek(3)?.[0], 33);
    loads.length = 0;
    await cache.use(1, first);
    await cache.use(2, first);
    assert.deepEqual(loads, [1, 2]);
  });

  it('drop() and clear() forget clean tables, and a load in flight across them is not cached', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const { cache, loads } = cacheOf(4, { gate });
    const pending = cache.use(5, first);
    cache.clear();
    open();
    assert.equal(await pending, 5, 'the caller still gets what was read');
    assert.equal(cache.peek(5), undefined);
    await cache.use(6, first);
    cache.drop(6);
    assert.equal(cache.peek(6), undefined);
    assert.deepEqual(loads, [5, 6]);
  });

  it('a failed load reaches every waiter, is not cached, and is tried again next time', async () => {
    const fail = new Set([3]);
    const { cache, loads } = cacheOf(2, { fail });
    const results = await Promise.allSettled([cache.use(3, first), cache.use(3, first)]);
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected']);
    assert.equal(cache.size, 0);
    fail.clear();
    assert.equal(await cache.use(3, first), 3);
    assert.deepEqual(loads, [3, 3]);
  });
});
