import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RecordingNode } from '../../helpers/test-nodes.js';

test('without native FUA, a FUA write is a plain write followed by a flush', async () => {
  const node = new RecordingNode({ size: 65536 });
  assert.equal(node.caps.fua, 'emulate');
  await node.write(0, new Uint8Array(4096), { fua: true });
  await node.write(5, new Uint8Array(10), { fua: true });
  await node.writeZeroes(8192, 8192, { fua: true });
  assert.deepEqual(node.calls.map((c) => c.hook), ['write', 'flush', 'write', 'flush', 'writeZeroes', 'flush']);
  for (const c of node.calls) if (c.opts) assert.equal(c.opts.fua, false, `${c.hook} hook got fua`);
  node.calls.length = 0;
  await node.write(0, new Uint8Array(10));
  assert.deepEqual(node.calls.map((c) => c.hook), ['write'], 'no flush without fua');
});

test('with native FUA, the hooks get the flag and the layer does not flush', async () => {
  const node = new RecordingNode({ size: 65536, nativeFua: true, limits: { requestAlignment: 512 } });
  assert.equal(node.caps.fua, 'native');
  await node.write(5, new Uint8Array(10), { fua: true });
  await node.writeZeroes(100, 10_000, { fua: true });
  assert.equal(node.callsOf('flush').length, 0);
  for (const c of [...node.callsOf('write'), ...node.callsOf('writeZeroes')]) assert.equal(c.opts!.fua, true, JSON.stringify(c));
});

test('a driver without flush writes stably: FUA is native and flush a no-op', async () => {
  const node = new RecordingNode({ size: 4096, hooks: { flush: false } });
  assert.equal(node.caps.flush, false);
  assert.equal(node.caps.fua, 'native');
  await node.flush();
  await node.write(0, new Uint8Array(1), { fua: true });
  assert.deepEqual(node.calls.map((c) => c.hook), ['write']);
});
