import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { FileNode } from '../../../src/drivers/protocol/file/index.js';
import { MemoryNode } from '../../../src/drivers/protocol/memory/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const isRange = (err: unknown) => err instanceof BlockError && err.code === 'ERANGE';

test('a write issued while the image shrinks is checked against the new size', async () => {
  const m = new MemoryNode({ size: 65536 });
  const r = m.resize(32768);
  await assert.rejects(m.write(60_000, new Uint8Array(100).fill(1)), isRange);
  await assert.rejects(m.read(40_000, new Uint8Array(10)), isRange);
  await r;
  assert.equal(m.size, 32768);
});

test('a request in flight when resize() is called finishes first, against the old size', async () => {
  const m = new MemoryNode({ size: 65536 });
  const w = m.write(60_000, new Uint8Array(100).fill(1));
  const r = m.resize(70_000);
  await Promise.all([w, r]);
  assert.equal(m.contents[60_099], 1);
  assert.equal(m.size, 70_000);
});

test('a write issued while the image grows may use the new space', async () => {
  const m = new MemoryNode({ size: 4096 });
  const r = m.resize(8192);
  await m.write(5000, new Uint8Array([7]));
  await r;
  assert.equal(m.contents[5000], 7);
});

test('a file never grows back past a shrink because of a racing write', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.img');
  await writeFile(path, new Uint8Array(65536));
  await using f = await FileNode.open({ filename: path });
  const r = f.resize(32768);
  const results = await Promise.allSettled([f.write(60_000, new Uint8Array(100).fill(1)), f.writeZeroes(50_000, 100), f.discard(40_960, 4096)]);
  await r;
  for (const res of results) assert.ok(res.status === 'rejected' && isRange(res.reason), String((res as PromiseRejectedResult).reason));
  assert.equal(f.size, 32768);
  assert.equal((await stat(path)).size, 32768);
});

test('concurrent resizes run one after the other', async () => {
  const m = new MemoryNode({ size: 100 });
  await Promise.all([m.resize(200), m.resize(50), m.resize(300)]);
  assert.equal(m.size, 300);
  assert.equal(m.contents.byteLength, 300);
});
