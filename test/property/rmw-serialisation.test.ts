import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pattern } from '../helpers/bytes.js';
import { stack } from '../helpers/stacks.js';
import { nextTurn, RecordingNode } from '../helpers/test-nodes.js';

/** Two unaligned writes to disjoint bytes of one 4 KiB block, issued together. */
async function twoWritesInOneBlock(node: { write(o: number, d: Uint8Array): Promise<void>; read(o: number, d: Uint8Array): Promise<void> }) {
  const a = pattern(100, 1);
  const b = pattern(100, 2);
  await Promise.all([node.write(4096 + 10, a), node.write(4096 + 3000, b)]);
  const block = new Uint8Array(4096);
  await node.read(4096, block);
  return { a: block.subarray(10, 110), b: block.subarray(3000, 3100), wantA: a, wantB: b };
}

// A driver whose I/O yields to the event loop, so both read-modify-writes would read the block
// before either writes it back, were they not serialised.
const slowNode = () => new RecordingNode({ size: 65536, limits: { requestAlignment: 4096 }, delay: nextTurn });

test('two concurrent unaligned writes into one block both land (slow driver)', async () => {
  const r = await twoWritesInOneBlock(slowNode());
  assert.deepEqual(r.a, r.wantA);
  assert.deepEqual(r.b, r.wantB);
});

test('control: without request serialisation the same two writes lose one of them', async () => {
  const node = slowNode();
  // Knock out the tracker: this is what the test above would see if the layer did not serialise.
  (node as unknown as { tracker: { begin(): Promise<{ release(): void }> } }).tracker.begin = async () => ({ release() {} });
  const r = await twoWritesInOneBlock(node);
  const aLanded = r.a.every((v, i) => v === r.wantA[i]);
  const bLanded = r.b.every((v, i) => v === r.wantB[i]);
  assert.ok(!(aLanded && bLanded), 'both writes landed even without serialisation: the test above proves nothing');
});

test('two concurrent unaligned writes into one block both land (raw over a 4 KiB-aligned file)', async () => {
  const inst = await stack('raw-over-file-4k').create(65536);
  try {
    assert.equal(inst.node.limits.requestAlignment, 4096);
    for (let i = 0; i < 50; i++) {
      const r = await twoWritesInOneBlock(inst.node);
      assert.deepEqual(r.a, r.wantA, `round ${i}: first write lost`);
      assert.deepEqual(r.b, r.wantB, `round ${i}: second write lost`);
      await inst.node.writeZeroes(4096, 4096);
    }
  } finally {
    await inst.dispose();
  }
});
