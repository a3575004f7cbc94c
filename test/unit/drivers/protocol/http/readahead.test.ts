import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReadaheadCache } from '../../../../../src/drivers/protocol/http/readahead.js';

/** The file the cache reads: byte i is i mod 251; every fetch is recorded. */
function source(length: number) {
  const fetches: [number, number][] = [];
  const fetch = async (offset: number, into: Uint8Array) => {
    assert.ok(offset + into.byteLength <= length, 'never fetches past the file');
    fetches.push([offset, into.byteLength]);
    await new Promise((r) => setImmediate(r));
    for (let i = 0; i < into.byteLength; i++) into[i] = (offset + i) % 251;
  };
  return { fetches, fetch };
}

function expected(offset: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (offset + i) % 251);
}

describe('readahead cache', () => {
  it('small sequential reads cost one fetch per readahead', async () => {
    const { fetches, fetch } = source(1 << 20);
    const cache = new ReadaheadCache(fetch, 65536, 1 << 20);
    for (let off = 0; off < 262144; off += 4096) {
      const buf = new Uint8Array(4096);
      await cache.read(off, buf);
      assert.deepEqual(buf, expected(off, 4096));
    }
    assert.deepEqual(fetches, [[0, 65536], [65536, 65536], [131072, 65536], [196608, 65536]]);
  });

  it('concurrent reads inside a range in flight wait for it instead of fetching again', async () => {
    const { fetches, fetch } = source(1 << 20);
    const cache = new ReadaheadCache(fetch, 65536, 1 << 20);
    const bufs = Array.from({ length: 16 }, () => new Uint8Array(4096));
    await Promise.all(bufs.map((b, i) => cache.read(i * 4096, b)));
    bufs.forEach((b, i) => assert.deepEqual(b, expected(i * 4096, 4096)));
    assert.deepEqual(fetches, [[0, 65536]]);
  });

  it('a read as large as the readahead goes straight through; the tail of the file clamps the fetch', async () => {
    const { fetches, fetch } = source(100000);
    const cache = new ReadaheadCache(fetch, 65536, 100000);
    const big = new Uint8Array(65536);
    await cache.read(0, big);
    const tail = new Uint8Array(1000);
    await cache.read(90000, tail);
    assert.deepEqual(tail, expected(90000, 1000));
    assert.deepEqual(fetches, [[0, 65536], [90000, 10000]]);
  });

  it('keeps eight buffers, dropping the least recently used; a failed fetch is not kept', async () => {
    const { fetches, fetch } = source(1 << 24);
    let fail = false;
    const cache = new ReadaheadCache(async (o, b) => {
      if (fail) throw new Error('boom');
      await fetch(o, b);
    }, 4096, 1 << 24);
    const read = (off: number) => cache.read(off, new Uint8Array(512));
    for (let i = 0; i < 9; i++) await read(i * 65536);
    await read(65536); // still kept
    await read(0); // was dropped by the ninth
    assert.equal(fetches.length, 10);
    fail = true;
    await assert.rejects(read(20 * 65536), /boom/);
    fail = false;
    await read(20 * 65536);
    assert.equal(fetches.length, 11);
  });
});
