import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { RecordingNode } from '../../helpers/test-nodes.js';

const SIZE = 64 * 1024;

function node(opts: Partial<ConstructorParameters<typeof RecordingNode>[0]> = {}): RecordingNode {
  const n = new RecordingNode({ size: SIZE, ...opts });
  n.bytes.set(pattern(SIZE, 42));
  return n;
}

async function readAll(n: RecordingNode): Promise<Uint8Array> {
  const buf = new Uint8Array(n.size);
  await n.read(0, buf);
  return buf;
}

test('without a zero hook, zero writes become buffer writes and caps say emulate', async () => {
  const n = node({ hooks: { writeZeroes: false }, limits: { requestAlignment: 512 } });
  assert.equal(n.caps.zero, 'emulate');
  assert.equal(n.caps.fastZero, false);
  await n.writeZeroes(100, 5000);
  const want = pattern(SIZE, 42).fill(0, 100, 5100);
  assert.deepEqual(await readAll(n), want);
  assert.ok(n.callsOf('write').length > 0);
  for (const c of n.callsOf('write')) assert.equal(c.offset! % 512, 0);
});

test('without a zero hook, noFallback and allocate fail with ENOTSUP before touching anything', async () => {
  const n = node({ hooks: { writeZeroes: false } });
  for (const opts of [{ noFallback: true }, { allocate: true }]) {
    await assert.rejects(n.writeZeroes(100, 5000, opts), { code: 'ENOTSUP' });
  }
  assert.equal(n.callsOf('write').length, 0);
  assert.deepEqual(n.bytes, pattern(SIZE, 42));
});

test('a zero hook that refuses is replaced by buffer writes, unless noFallback', async () => {
  const n = node({ refuseZero: () => true, limits: { requestAlignment: 4096 } });
  assert.equal(n.caps.zero, 'native');
  await n.writeZeroes(8192, 8192);
  assert.deepEqual((await readAll(n)).subarray(8192, 16384), new Uint8Array(8192));
  assert.ok(n.callsOf('write').some((c) => c.offset === 8192));
});

// NBD FAST_ZERO: a refused fast zero SHOULD NOT modify the export. The partial blocks at the
// ends of an unaligned request are written as data, so they must wait until the hook agreed.
test('a refused noFallback zero write of an unaligned range leaves every byte intact', async () => {
  for (const opts of [{ noFallback: true }, { noFallback: true, mayUnmap: true }, { allocate: true }]) {
    const n = node({ refuseZero: () => true, limits: { requestAlignment: 4096 } });
    await assert.rejects(n.writeZeroes(1000, 20_000, opts), { code: 'ENOTSUP' });
    assert.deepEqual(n.bytes, pattern(SIZE, 42), `after a refused writeZeroes ${JSON.stringify(opts)}`);
    assert.equal(n.callsOf('write').length, 0);
  }
});

test('zero hooks get whole blocks; partial blocks are written as data', async () => {
  const n = node({ limits: { requestAlignment: 4096 } });
  await n.writeZeroes(1000, 20_000);
  for (const c of n.callsOf('writeZeroes')) {
    assert.equal(c.offset! % 4096, 0);
    assert.equal(c.length! % 4096, 0);
  }
  assert.deepEqual(await readAll(n), pattern(SIZE, 42).fill(0, 1000, 21_000));
});

test('zero hooks are split at maxWriteZeroes and zeroAlignment', async () => {
  const n = node({ limits: { zeroAlignment: 4096, maxWriteZeroes: 8192 } });
  await n.writeZeroes(1000, 30_000);
  const calls = n.callsOf('writeZeroes');
  // A head fragment up to the first zero block, whole blocks of at most 8 KiB, a tail fragment.
  assert.deepEqual(calls[0], { hook: 'writeZeroes', offset: 1000, length: 3096, opts: calls[0]!.opts });
  for (const c of calls.slice(1, -1)) {
    assert.equal(c.offset! % 4096, 0);
    assert.ok(c.length! <= 8192 && c.length! % 4096 === 0);
  }
  const last = calls[calls.length - 1]!;
  assert.equal(last.offset! + last.length!, 31_000);
  let pos = 1000;
  for (const c of calls) {
    assert.equal(c.offset, pos);
    pos += c.length!;
  }
  assert.deepEqual(await readAll(n), pattern(SIZE, 42).fill(0, 1000, 31_000));
});

test('a refused head fragment falls back to buffers for that fragment only', async () => {
  const n = node({ limits: { zeroAlignment: 4096 }, refuseZero: (o, l) => o % 4096 !== 0 || l % 4096 !== 0 });
  await n.writeZeroes(1000, 30_000);
  assert.deepEqual(await readAll(n), pattern(SIZE, 42).fill(0, 1000, 31_000));
  const writes = n.callsOf('write').map((c) => [c.offset, c.length]);
  assert.deepEqual(writes, [[1000, 3096], [28672, 2328]]);
});
