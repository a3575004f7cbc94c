import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { pattern } from '../../helpers/bytes.js';
import { RecordingNode, type HookCall } from '../../helpers/test-nodes.js';

const LIMITS = { requestAlignment: 512, maxTransfer: 4096, zeroAlignment: 2048, maxWriteZeroes: 8192, discardAlignment: 1024, maxDiscard: 4096 };

/** What the generic layer promises every hook: aligned, in range, no longer than the limits. */
function checkPreconditions(calls: HookCall[], size: number): void {
  for (const c of calls) {
    if (c.offset === undefined || c.hook === 'resize') continue;
    const what = JSON.stringify(c);
    const end = c.offset + c.length!;
    assert.ok(c.offset >= 0 && end <= size && c.length! > 0, `${what}: out of range`);
    if (c.hook === 'blockStatus') continue;
    assert.equal(c.offset % LIMITS.requestAlignment, 0, `${what}: unaligned offset`);
    assert.ok(end % LIMITS.requestAlignment === 0 || end === size, `${what}: unaligned end`);
    if (c.hook === 'read' || c.hook === 'write') assert.ok(c.length! <= LIMITS.maxTransfer, `${what}: over maxTransfer`);
    if (c.hook === 'writeZeroes') assert.ok(c.length! <= LIMITS.maxWriteZeroes, `${what}: over maxWriteZeroes`);
    if (c.hook === 'discard') {
      assert.ok(c.length! <= LIMITS.maxDiscard, `${what}: over maxDiscard`);
      assert.equal(c.offset % LIMITS.discardAlignment, 0, `${what}: discard not aligned`);
      assert.ok(end % LIMITS.discardAlignment === 0 || end === size, `${what}: discard end not aligned`);
    }
  }
}

const opArb = (size: number) => fc.record({
  kind: fc.constantFrom('read', 'write', 'zero', 'discard'),
  offset: fc.integer({ min: 0, max: size - 1 }),
  length: fc.integer({ min: 1, max: 12_000 }),
}).map((o) => ({ ...o, length: Math.min(o.length, size - o.offset) }));

for (const size of [64 * 1024, 64 * 1024 - 300]) {
  test(`hooks only ever see aligned, in-range requests within the limits (size ${size})`, async () => {
    await fc.assert(fc.asyncProperty(fc.array(opArb(size), { minLength: 1, maxLength: 12 }), async (ops) => {
      const node = new RecordingNode({ size, limits: LIMITS });
      const model = pattern(size, 5);
      node.bytes.set(model);
      for (const [i, op] of ops.entries()) {
        if (op.kind === 'read') {
          const buf = new Uint8Array(op.length);
          await node.read(op.offset, buf);
          assert.deepEqual(buf, model.subarray(op.offset, op.offset + op.length));
        } else if (op.kind === 'write') {
          const data = pattern(op.length, i + 100);
          await node.write(op.offset, data);
          model.set(data, op.offset);
        } else if (op.kind === 'zero') {
          await node.writeZeroes(op.offset, op.length);
          model.fill(0, op.offset, op.offset + op.length);
        } else {
          await node.discard(op.offset, op.length);
          // The test driver zeroes what it is asked to discard; partial blocks stay.
          for (const c of node.callsOf('discard')) model.fill(0, c.offset!, c.offset! + c.length!);
          node.calls.length = 0;
        }
        checkPreconditions(node.calls, size);
        node.calls.length = 0;
        assert.deepEqual(node.bytes, model);
      }
    }), { numRuns: 200 });
  });
}

test('discard leaves partial discard blocks at either end alone', async () => {
  const node = new RecordingNode({ size: 65536, limits: { discardAlignment: 4096 } });
  node.bytes.fill(1);
  await node.discard(1000, 10_000);
  assert.deepEqual(node.callsOf('discard').map((c) => [c.offset, c.length]), [[4096, 4096]]);
  await node.discard(100, 200);
  await node.discard(4097, 4095);
  assert.equal(node.callsOf('discard').length, 1, 'no whole discard block: nothing to do');
  // The image end counts as a block boundary.
  await node.discard(60_000, 5536);
  assert.deepEqual(node.callsOf('discard').at(-1), { hook: 'discard', offset: 61_440, length: 4096 });
});

test('reads and writes are split at maxTransfer', async () => {
  const node = new RecordingNode({ size: 65536, limits: { maxTransfer: 8192 } });
  await node.write(100, new Uint8Array(30_000).fill(2));
  assert.deepEqual(node.callsOf('write').map((c) => [c.offset, c.length]), [[100, 8192], [8292, 8192], [16_484, 8192], [24_676, 5424]]);
  await node.read(0, new Uint8Array(20_000));
  assert.deepEqual(node.callsOf('read').map((c) => c.length), [8192, 8192, 3616]);
});
