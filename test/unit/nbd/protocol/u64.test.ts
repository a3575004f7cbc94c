import assert from 'node:assert/strict';
import { test } from 'node:test';
import { high32, joinU64, low32, readU64, u64Text, writeU64 } from '../../../../src/nbd/protocol.js';

test('numbers below 2^53 cross the wire as u64 exactly', () => {
  const b = Buffer.alloc(8);
  for (const n of [0, 1, 0xffffffff, 2 ** 32, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER]) {
    writeU64(b, 0, n);
    assert.equal(b.readBigUInt64BE(0), BigInt(n));
    assert.equal(readU64(b, 0), n);
    assert.equal(joinU64(high32(n), low32(n)), n);
  }
});

test('values past 2^53 read as numbers at least 2^53, and are quoted exactly', () => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(2n ** 64n - 1n);
  assert.ok(readU64(b, 0) >= 2 ** 53);
  assert.equal(u64Text(b.readUInt32BE(0), b.readUInt32BE(4)), '18446744073709551615');
  assert.equal(u64Text(0, 12345), '12345');
});
