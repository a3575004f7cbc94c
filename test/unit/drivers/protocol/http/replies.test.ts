import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parseContentRange } from '../../../../../src/drivers/protocol/http/replies.js';

it('Content-Range: one satisfied byte range, strictly', () => {
  assert.deepEqual(parseContentRange('bytes 0-511/1000'), { first: 0, last: 511, total: 1000 });
  assert.deepEqual(parseContentRange('bytes 512-999/*'), { first: 512, last: 999, total: undefined });
  for (const bad of [undefined, '', 'bytes */1000', 'bytes 5-4/1000', 'bytes 0-1000/1000', 'items 0-1/2', 'bytes 0-1/2, 3-4/5',
    'bytes -1-5/10', 'bytes 0-99999999999999999/*', 'bytes 0x0-1/2']) {
    assert.equal(parseContentRange(bad), undefined, String(bad));
  }
});
