import assert from 'node:assert/strict';
import { it } from 'node:test';
import { ByteQueue } from '../../../../src/nbd/server/byte-queue.js';

it('takes runs inside one chunk as views and runs across chunks as copies', () => {
  const q = new ByteQueue();
  const a = Buffer.from([1, 2, 3, 4]);
  q.push(a);
  q.push(Buffer.alloc(0));
  q.push(Buffer.from([5, 6]));
  q.push(Buffer.from([7, 8, 9]));
  assert.equal(q.length, 9);
  const view = q.take(2);
  assert.deepEqual([...view], [1, 2]);
  assert.equal(view.buffer, a.buffer, 'no copy within a chunk');
  assert.deepEqual([...q.take(5)], [3, 4, 5, 6, 7]);
  assert.equal(q.skip(10), 2);
  assert.equal(q.length, 0);
  assert.deepEqual([...q.take(0)], []);
  assert.throws(() => q.take(1), RangeError);
});

it('drain empties the queue', () => {
  const q = new ByteQueue();
  q.push(Buffer.from('ab'));
  q.push(Buffer.from('cd'));
  q.skip(1);
  assert.equal(q.drain().toString(), 'bcd');
  assert.equal(q.length, 0);
});

it('contiguous joins a run that straddles chunks, leaving the queue as it was', () => {
  const q = new ByteQueue();
  q.push(Buffer.from([1, 2, 3]));
  q.push(Buffer.from([4, 5]));
  q.push(Buffer.from([6, 7, 8]));
  q.skip(1);
  // Inside the first chunk: that chunk itself, no copy.
  const first = q.contiguous(2);
  assert.deepEqual([...first.subarray(q.headOffset, q.headOffset + 2)], [2, 3]);
  // Across three chunks, from the middle of the first.
  const joined = q.contiguous(5);
  assert.deepEqual([...joined.subarray(q.headOffset, q.headOffset + 5)], [2, 3, 4, 5, 6]);
  assert.equal(q.length, 7);
  assert.deepEqual([...q.drain()], [2, 3, 4, 5, 6, 7, 8]);
});
