import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SourceSpan } from '../../../src/jobs/source-span.js';
import { assertBytesEqual } from '../../helpers/bytes.js';
import { ScriptedSource } from './copy-nodes.js';

test('sources laid end to end: offsets map to the source that holds them, empty sources included, and reads run across', async () => {
  const a = new ScriptedSource([{ byte: 1, length: 1000 }]);
  const empty = new ScriptedSource([]);
  const b = new ScriptedSource([{ byte: 2, length: 24 }, { zero: 76 }]);
  const c = new ScriptedSource([{ byte: 3, length: 50 }]);
  const span = new SourceSpan([a, empty, b, empty, c]);
  assert.equal(span.size, 1150);
  const names = new Map([[a, 'a'], [b, 'b'], [c, 'c']]);
  const where = (o: number) => {
    const at = span.locate(o);
    return `${names.get(at.source as ScriptedSource)}${at.sourceOffset}`;
  };
  assert.deepEqual([0, 999, 1000, 1099, 1100, 1149].map(where), ['a0', 'a999', 'b0', 'b99', 'c0', 'c49']);
  const buf = new Uint8Array(160);
  await span.read(990, buf);
  const expected = new Uint8Array(160);
  expected.fill(1, 0, 10).fill(2, 10, 34).fill(3, 110, 160);
  assertBytesEqual(buf, expected, 'across sources');
});
