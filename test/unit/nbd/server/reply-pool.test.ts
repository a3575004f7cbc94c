import assert from 'node:assert/strict';
import { it } from 'node:test';
import { REPLY_HEADROOM, ReplyPool } from '../../../../src/nbd/server/reply-pool.js';

it('a released buffer serves the next request of its class, at the size asked', () => {
  const pool = new ReplyPool();
  const a = pool.acquire(16 + 4096, 4096);
  assert.equal(a.length, 16 + 4096);
  assert.ok(a.buffer.byteLength >= 4096 + REPLY_HEADROOM);
  pool.release(a);
  const b = pool.acquire(28 + 3000, 3000);
  assert.equal(b.buffer, a.buffer, 'same memory, reused');
  assert.equal(b.length, 28 + 3000);
  // Taken: the next one is new.
  assert.notEqual(pool.acquire(16 + 4096, 4096).buffer, a.buffer);
});

it('classes are powers of two: a 5000-byte read does not get a 4 KiB buffer', () => {
  const pool = new ReplyPool();
  pool.release(pool.acquire(16 + 4096, 4096));
  const b = pool.acquire(16 + 5000, 5000);
  assert.ok(b.buffer.byteLength >= 16 + 5000);
  assert.equal(b.buffer.byteLength, 8192 + REPLY_HEADROOM);
});

it('ignores buffers it did not make, and views that do not start its memory', () => {
  const pool = new ReplyPool();
  pool.release(Buffer.allocUnsafeSlow(4096 + REPLY_HEADROOM));
  const mine = pool.acquire(100, 64);
  pool.release(mine.subarray(16));
  assert.notEqual(pool.acquire(100, 64).buffer, mine.buffer);
});

it('large reads are not pooled, and each class keeps a bounded number of free buffers', () => {
  const pool = new ReplyPool();
  const big = pool.acquire(16 + 8 * 1024 * 1024, 8 * 1024 * 1024);
  pool.release(big);
  assert.notEqual(pool.acquire(16 + 8 * 1024 * 1024, 8 * 1024 * 1024).buffer, big.buffer);
  // 1 MiB buffers: a burst of 100 leaves at most 16 of them behind.
  const burst = Array.from({ length: 100 }, () => pool.acquire(1024 * 1024, 1024 * 1024));
  for (const b of burst) pool.release(b);
  const kept = new Set(burst.map((b) => b.buffer));
  let reused = 0;
  for (let i = 0; i < 100; i++) if (kept.has(pool.acquire(1024 * 1024, 1024 * 1024).buffer)) reused++;
  assert.ok(reused > 0 && reused <= 16, `${reused} buffers kept`);
});
