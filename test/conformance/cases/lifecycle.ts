import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockNode } from '../../../src/core/block-node.js';
import type { Stack } from '../../helpers/stacks.js';
import { collectExtents, rejectsWith, SIZE, withImage } from '../harness.js';

async function expectShutdown(node: BlockNode): Promise<void> {
  await rejectsWith(node.read(0, new Uint8Array(10)), 'ESHUTDOWN', 'read');
  await rejectsWith(node.write(0, new Uint8Array(10)), 'ESHUTDOWN', 'write');
  await rejectsWith(node.writeZeroes(0, 10), 'ESHUTDOWN', 'writeZeroes');
  await rejectsWith(node.discard(0, 4096), 'ESHUTDOWN', 'discard');
  await rejectsWith(node.flush(), 'ESHUTDOWN', 'flush');
  await rejectsWith(node.blockStatus(0, 10), 'ESHUTDOWN', 'blockStatus');
  await rejectsWith(collectExtents(node, 0, 10), 'ESHUTDOWN', 'extents');
  await rejectsWith(node.resize(SIZE), 'ESHUTDOWN', 'resize');
}

export function lifecycleCases(stack: Stack): void {
  test('after close every operation fails with ESHUTDOWN; closing again is fine', () => withImage(stack, SIZE, async (img) => {
    await img.node.close();
    await expectShutdown(img.node);
    await img.node.close();
    await img.node.close();
  }));

  test('close waits for requests in flight, also when called twice at once', () => withImage(stack, SIZE, async (img) => {
    // Issued before close(), so they are in flight: they must complete, not fail.
    const ops = [img.write(100, img.bytes(9000)), img.writeZeroes(20_000, 5000), img.read(3, 60_000)];
    const first = img.node.close();
    let firstDone = false;
    void first.then(() => (firstDone = true));
    await img.node.close();
    assert.ok(firstDone, 'the second close() returned before the first one finished');
    await first;
    await Promise.all(ops);
    await img.inst.reopen();
    await img.expectAll('contents after close and reopen');
  }));

  test('await using closes the node', () => withImage(stack, SIZE, async (img) => {
    let node: BlockNode;
    {
      await using n = img.node;
      node = n;
      await img.write(7, img.bytes(10));
    }
    await expectShutdown(node);
    await img.inst.reopen();
    await img.expectAll();
  }));

  test('a read-only open refuses writes with EROFS and leaves the data intact', () => withImage(stack, SIZE, async (img) => {
    await img.write(1000, img.bytes(10_000));
    const node = await img.inst.reopen({ readOnly: true });
    assert.equal(node.readOnly, true);
    assert.equal(node.caps.writable, false);
    assert.equal(node.caps.zero, 'none');
    assert.equal(node.caps.discard, 'none');
    await rejectsWith(node.write(0, new Uint8Array(10).fill(1)), 'EROFS', 'write');
    await rejectsWith(node.write(4096, new Uint8Array(4096).fill(1), { fua: true }), 'EROFS', 'fua write');
    await rejectsWith(node.writeZeroes(0, SIZE), 'EROFS', 'writeZeroes');
    await rejectsWith(node.writeZeroes(0, SIZE, { mayUnmap: true, noFallback: true }), 'EROFS', 'writeZeroes noFallback');
    await rejectsWith(node.discard(0, SIZE), 'EROFS', 'discard');
    await rejectsWith(node.resize(SIZE * 2), 'EROFS', 'resize');
    node.detectZeroes = 'unmap';
    await rejectsWith(node.write(0, new Uint8Array(SIZE)), 'EROFS', 'zero write with detect-zeroes');
    await node.flush();
    await img.expectAll('contents of the read-only image');
    await img.inst.reopen();
    await img.expectAll('contents after reopening read-write');
    await img.write(0, img.bytes(10));
    await img.expectAll();
  }));
}
