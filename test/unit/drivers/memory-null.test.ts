import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_MEMORY_SIZE, MemoryNode } from '../../../src/drivers/protocol/memory/index.js';
import { NullNode } from '../../../src/drivers/protocol/null/index.js';
import { open } from '../../../src/registry/index.js';

test('memory images: size limits, initial data is copied, resize keeps the prefix', async () => {
  for (const bad of [-1, 1.5, MAX_MEMORY_SIZE + 1, NaN]) {
    assert.throws(() => new MemoryNode({ size: bad }), { code: 'EINVAL' }, String(bad));
  }
  const data = new Uint8Array([1, 2, 3, 4]);
  const m = new MemoryNode({ size: 3, data });
  data[0] = 9;
  assert.deepEqual(m.contents, new Uint8Array([1, 2, 3]));
  await m.resize(5);
  assert.deepEqual(m.contents, new Uint8Array([1, 2, 3, 0, 0]));
  await m.resize(2);
  assert.deepEqual(m.contents, new Uint8Array([1, 2]));
  await assert.rejects(m.resize(MAX_MEMORY_SIZE + 1), { code: 'EINVAL' });
  assert.equal(m.size, 2);
  assert.equal((await open({ driver: 'memory' })).size, 0);
});

test('null images read zeros, drop writes and report zeros', async () => {
  const n = new NullNode({ size: 1 << 20 });
  const buf = new Uint8Array(100).fill(5);
  await n.write(0, new Uint8Array(100).fill(1));
  await n.read(0, buf);
  assert.deepEqual(buf, new Uint8Array(100));
  const e = await n.blockStatus(10, 1 << 20);
  assert.deepEqual([e.offset, e.length, e.zero, e.data], [10, (1 << 20) - 10, true, false]);
  assert.equal(await n.allocatedSize(), 0);
  assert.throws(() => new NullNode({ size: -1 }), { code: 'EINVAL' });
  const viaRegistry = await open({ driver: 'null', size: '4096' });
  assert.equal(viaRegistry.size, 4096);
});

test('memory and null zero natively: noFallback and allocate succeed and zero exactly the range', async () => {
  const opts = [{}, { mayUnmap: true }, { noFallback: true }, { noFallback: true, mayUnmap: true }, { allocate: true }, { allocate: true, fua: true }];
  for (const o of opts) {
    const m = new MemoryNode({ size: 10_000, data: new Uint8Array(10_000).fill(7) });
    assert.equal(m.caps.zero, 'native');
    assert.equal(m.caps.fastZero, true);
    // noFallback/allocate leave the layer no buffer writes to fall back to: success is the hook's.
    await m.writeZeroes(1001, 4093, o);
    const want = new Uint8Array(10_000).fill(7).fill(0, 1001, 5094);
    assert.deepEqual(m.contents, want, JSON.stringify(o));
    const n = new NullNode({ size: 10_000 });
    assert.equal(n.caps.fastZero, true);
    await n.writeZeroes(1001, 4093, o);
    const buf = new Uint8Array(10_000).fill(1);
    await n.read(0, buf);
    assert.deepEqual(buf, new Uint8Array(10_000), JSON.stringify(o));
  }
  const ro = new MemoryNode({ size: 4096, readOnly: true });
  await assert.rejects(ro.writeZeroes(0, 4096, { noFallback: true }), { code: 'EROFS' });
  await assert.rejects(ro.writeZeroes(0, 4096, { allocate: true }), { code: 'EROFS' });
});
