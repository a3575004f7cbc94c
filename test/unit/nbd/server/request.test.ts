import assert from 'node:assert/strict';
import { it } from 'node:test';
import { encodeRequest } from '../../../../src/nbd/protocol.js';
import { decodeServerRequest, offsetText } from '../../../../src/nbd/server/request.js';

it('decodes a header in place, at any offset of a chunk, with the cookie in halves', () => {
  const chunk = Buffer.alloc(40);
  encodeRequest({ flags: 1, type: 0, cookie: 0x0123456789abcdefn, offset: 0x1_0000_1000n, length: 4096 }, chunk.subarray(7));
  const r = decodeServerRequest(chunk, 7)!;
  assert.deepEqual(r, {
    flags: 1, type: 0, cookieHigh: 0x01234567, cookieLow: 0x89abcdef,
    offset: 0x1_0000_1000, offsetHigh: 1, offsetLow: 0x1000, length: 4096,
  });
});

it('a bad magic is refused', () => {
  const b = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0n, length: 1 });
  b[0] ^= 1;
  assert.equal(decodeServerRequest(b, 0), undefined);
});

it('offsets beyond 2^53 are quoted exactly in messages', () => {
  const r = decodeServerRequest(encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 2n ** 64n - 1n, length: 1 }), 0)!;
  assert.equal(offsetText(r), '18446744073709551615');
  assert.ok(r.offset > Number.MAX_SAFE_INTEGER);
  const small = decodeServerRequest(encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 12345n, length: 1 }), 0)!;
  assert.equal(offsetText(small), '12345');
});
