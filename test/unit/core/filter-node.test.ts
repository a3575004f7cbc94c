import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FilterNode } from '../../../src/core/filter-node.js';
import { MemoryNode } from '../../../src/drivers/protocol/memory/index.js';
import { NullNode } from '../../../src/drivers/protocol/null/index.js';
import { pattern } from '../../helpers/bytes.js';
import { RecordingNode } from '../../helpers/test-nodes.js';

class Passthrough extends FilterNode {
  readonly driver = 'passthrough';
}

test('a filter forwards every operation to its child, unchanged', async () => {
  const child = new RecordingNode({ size: 65536, nativeFua: true });
  const f = new Passthrough(child);
  const data = pattern(1000, 1);
  await f.write(10, data, { fua: true });
  const back = new Uint8Array(1000);
  await f.read(10, back);
  assert.deepEqual(back, data);
  await f.writeZeroes(4096, 4096, { mayUnmap: true });
  await f.discard(8192, 4096);
  await f.flush();
  const ext = await f.blockStatus(100, 200);
  assert.deepEqual([ext.offset, ext.length], [100, 200]);
  const hooks = child.calls.map((c) => [c.hook, c.offset, c.length]);
  assert.deepEqual(hooks, [
    ['write', 10, 1000], ['read', 10, 1000], ['writeZeroes', 4096, 4096], ['discard', 8192, 4096], ['flush', undefined, undefined],
    ['blockStatus', 100, 200],
  ]);
  assert.equal(child.callsOf('write')[0]!.opts!.fua, true, 'fua reaches the child');
  assert.equal(child.callsOf('writeZeroes')[0]!.opts!.mayUnmap, true);
  await f.resize(131072);
  assert.equal(f.size, 131072);
  assert.equal(child.size, 131072);
  await f.close();
  assert.deepEqual(child.calls.at(-1), { hook: 'close' });
  await assert.rejects(child.read(0, new Uint8Array(1)), { code: 'ESHUTDOWN' }, 'closing the filter closes its child');
});

test('a filter takes its child\'s size and limits, and never advertises more than the child', async () => {
  const child = new RecordingNode({ size: 12345, limits: { requestAlignment: 512, maxTransfer: 65536 }, hooks: { discard: false, writeZeroes: false } });
  const f = new Passthrough(child);
  assert.equal(f.size, 12345);
  assert.equal(f.limits.requestAlignment, 512);
  assert.equal(f.limits.maxTransfer, 65536);
  assert.equal(f.caps.discard, 'none');
  assert.equal(f.caps.zero, child.caps.zero);
  assert.equal(f.caps.fastZero, false);
  assert.equal(f.caps.flush, child.caps.flush);
  assert.equal(f.caps.writable, true);
  // Zero writes still work: the child emulates them.
  child.bytes.fill(1);
  await f.writeZeroes(100, 1000);
  const back = new Uint8Array(1200);
  await f.read(0, back);
  assert.deepEqual(back, new Uint8Array(1200).fill(1).fill(0, 100, 1100));
  await assert.rejects(f.writeZeroes(0, 512, { noFallback: true }), { code: 'ENOTSUP' });
});

test('a filter over a read-only child, or opened read-only, refuses writes', async () => {
  const ro = new Passthrough(new MemoryNode({ size: 4096, readOnly: true }));
  assert.equal(ro.readOnly, true);
  assert.equal(ro.caps.writable, false);
  assert.equal(ro.caps.fua, 'none');
  await assert.rejects(ro.write(0, new Uint8Array(1)), { code: 'EROFS' });
  const mine = new Passthrough(new MemoryNode({ size: 4096 }), { readOnly: true });
  assert.equal(mine.caps.writable, false);
  assert.equal(mine.caps.zero, 'none');
  assert.equal(mine.caps.discard, 'none');
  await assert.rejects(mine.discard(0, 4096), { code: 'EROFS' });
  assert.equal(mine.child.caps.writable, true);
});

test('block status through a filter is the child\'s', async () => {
  const f = new Passthrough(new NullNode({ size: 8192 }));
  const exts = [];
  for await (const e of f.extents(0, 8192)) exts.push(e);
  assert.deepEqual(exts.map((e) => [e.offset, e.length, e.zero]), [[0, 8192, true]]);
});
