import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { nextTurn, RecordingNode } from '../../helpers/test-nodes.js';

/** A delay the test releases by hand. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { wait: () => opened, open };
}

test('caps follow the hooks a driver has', () => {
  const full = new RecordingNode({ size: 4096 });
  assert.deepEqual(full.caps, {
    writable: true, flush: true, fua: 'emulate', zero: 'native', discard: 'native', fastZero: true,
    blockStatus: true, multiConn: true, resize: true,
  });
  const bare = new RecordingNode({ size: 4096, hooks: { write: false, writeZeroes: false, discard: false, flush: false, blockStatus: false, resize: false } });
  assert.deepEqual(bare.caps, {
    writable: false, flush: false, fua: 'none', zero: 'none', discard: 'none', fastZero: false,
    blockStatus: false, multiConn: true, resize: false,
  });
  const ro = new RecordingNode({ size: 4096, readOnly: true });
  assert.equal(ro.caps.writable, false);
  assert.equal(ro.caps.resize, false);
});

test('a node without a write hook refuses writes with EROFS', async () => {
  const node = new RecordingNode({ size: 4096, hooks: { write: false } });
  await assert.rejects(node.write(0, new Uint8Array(1)), { code: 'EROFS' });
  await assert.rejects(node.writeZeroes(0, 1), { code: 'EROFS' });
});

test('without a block-status hook every range is data', async () => {
  const node = new RecordingNode({ size: 10_000, hooks: { blockStatus: false } });
  const exts = [];
  for await (const e of node.extents(0, 10_000)) exts.push(e);
  assert.deepEqual(exts, [{ offset: 0, length: 10_000, data: true, zero: false, present: true, depth: 0 }]);
});

test('a block-status hook that answers outside the request is an EIO', async () => {
  for (const bad of [
    (o: number, l: number) => ({ offset: o + 1, length: l - 1 }),
    (o: number, l: number) => ({ offset: o, length: l + 1 }),
    (o: number) => ({ offset: o, length: 0 }),
  ]) {
    const node = new RecordingNode({ size: 8192, status: (o, l) => ({ ...bad(o, l), data: true, zero: false, present: true, depth: 0 }) });
    await assert.rejects(node.blockStatus(0, 4096), (err: unknown) => err instanceof BlockError && err.code === 'EIO');
  }
});

test('resize changes the size through the hook', async () => {
  const node = new RecordingNode({ size: 4096 });
  await node.resize(8192);
  assert.equal(node.size, 8192);
  await assert.rejects(node.resize(-1), { code: 'EINVAL' });
  await assert.rejects(node.resize(1.5), { code: 'EINVAL' });
  await assert.rejects(new RecordingNode({ size: 1, hooks: { resize: false } }).resize(2), { code: 'ENOTSUP' });
});

test('drain waits for every request in flight; close drains, then refuses new requests', async () => {
  const g = gate();
  const node = new RecordingNode({ size: 65536, delay: g.wait });
  const w = node.write(0, new Uint8Array(100).fill(1));
  const r = node.read(4096, new Uint8Array(10));
  let drained = false;
  const d = node.drain().then(() => (drained = true));
  let closed = false;
  const c = node.close().then(() => (closed = true));
  await nextTurn();
  assert.equal(drained, false);
  assert.equal(closed, false);
  await assert.rejects(node.read(0, new Uint8Array(1)), { code: 'ESHUTDOWN' }, 'a closing node takes no new requests');
  g.open();
  await Promise.all([w, r, d, c]);
  assert.ok(drained && closed);
  assert.equal(node.bytes[99], 1, 'the write in flight completed');
  assert.deepEqual(node.calls.at(-1), { hook: 'close' });
  assert.equal(node.callsOf('close').length, 1);
  await node.close();
  assert.equal(node.callsOf('close').length, 1, 'close runs the hook once');
});

test('an aborted signal fails the request before it starts', async () => {
  const node = new RecordingNode({ size: 4096 });
  const signal = AbortSignal.abort();
  await assert.rejects(node.read(0, new Uint8Array(1), { signal }), { code: 'E_ABORTED' });
  await assert.rejects(node.write(0, new Uint8Array(1), { signal }), { code: 'E_ABORTED' });
  await assert.rejects(node.flush({ signal }), { code: 'E_ABORTED' });
  assert.equal(node.calls.length, 0);
});
