import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RawNode } from '../../../src/drivers/format/raw/index.js';
import { MemoryNode } from '../../../src/drivers/protocol/memory/index.js';
import { pattern } from '../../helpers/bytes.js';
import { RecordingNode } from '../../helpers/test-nodes.js';

const mem = (size = 65536) => new MemoryNode({ size, data: pattern(size, 9) });

test('raw slice options are checked against the file', () => {
  for (const [opts, re] of [
    [{ offset: -1 }, /offset/], [{ offset: 1.5 }, /offset/], [{ offset: 65537 }, /offset/],
    [{ size: -1 }, /size/], [{ offset: 1000, size: 65000 }, /past the end/], [{ size: 65537 }, /past the end/],
  ] as const) {
    assert.throws(() => new RawNode(mem(), opts), (err: any) => err.code === 'EINVAL' && re.test(err.message), JSON.stringify(opts));
  }
  assert.equal(new RawNode(mem(), { offset: 65536 }).size, 0, 'an empty slice at the very end is fine');
  assert.equal(new RawNode(mem(), { offset: 1000 }).size, 64536);
  assert.equal(new RawNode(mem(), { offset: 1000, size: 10 }).size, 10);
});

test('a slice reads and writes the file at its offset, and nothing outside it', async () => {
  const file = mem();
  const raw = new RawNode(file, { offset: 1000, size: 5000 });
  const buf = new Uint8Array(5000);
  await raw.read(0, buf);
  assert.deepEqual(buf, pattern(65536, 9).subarray(1000, 6000));
  await raw.writeZeroes(0, 5000);
  await raw.write(4999, new Uint8Array([7]));
  const want = pattern(65536, 9).fill(0, 1000, 6000);
  want[5999] = 7;
  assert.deepEqual(file.contents, want);
  await assert.rejects(raw.write(4999, new Uint8Array(2)), { code: 'ERANGE' });
});

test('the slice keeps the file\'s alignment only when it starts on it', () => {
  const file = new RecordingNode({ size: 65536, limits: { requestAlignment: 4096, maxTransfer: 65536 } });
  assert.equal(new RawNode(file, { offset: 8192 }).limits.requestAlignment, 4096);
  assert.equal(new RawNode(file, { offset: 8192 + 512 }).limits.requestAlignment, 1);
  assert.equal(new RawNode(file).limits.maxTransfer, 65536);
});

test('block status of a slice is in slice offsets, with the host offset in the file', async () => {
  const file = new RecordingNode({ size: 65536, status: (o, l) => ({ offset: o, length: Math.min(l, 4096 - (o % 4096)), data: true, zero: false, present: true, depth: 0, hostOffset: o }) });
  const raw = new RawNode(file, { offset: 1000, size: 10_000 });
  const exts = [];
  for await (const e of raw.extents(0, 10_000)) exts.push([e.offset, e.length, e.hostOffset]);
  assert.deepEqual(exts, [[0, 3096, 1000], [3096, 4096, 4096], [7192, 2808, 8192]]);
});

test('resize: refused for slices, forwarded otherwise', async () => {
  await assert.rejects(new RawNode(mem(), { offset: 4096 }).resize(4096), { code: 'ENOTSUP' });
  await assert.rejects(new RawNode(mem(), { size: 4096 }).resize(8192), { code: 'ENOTSUP' });
  const file = mem();
  const raw = new RawNode(file);
  await raw.resize(100_000);
  assert.equal(raw.size, 100_000);
  assert.equal(file.size, 100_000);
});

test('raw over a read-only file is read-only; closing raw closes the file', async () => {
  const file = new MemoryNode({ size: 4096, readOnly: true });
  const raw = new RawNode(file);
  assert.equal(raw.readOnly, true);
  await assert.rejects(raw.write(0, new Uint8Array(1)), { code: 'EROFS' });
  await raw.close();
  await assert.rejects(file.read(0, new Uint8Array(1)), { code: 'ESHUTDOWN' });
});

test('FUA through raw reaches the file as one flush', async () => {
  const file = new RecordingNode({ size: 65536 });
  const raw = new RawNode(file);
  await raw.write(10, new Uint8Array(10), { fua: true });
  assert.deepEqual(file.calls.map((c) => c.hook), ['write', 'flush']);
});
