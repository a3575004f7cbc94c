import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { NullNode } from '../../../src/drivers/protocol/null/null-node.js';
import { copyImage, type CopyOptions } from '../../../src/jobs/copy-engine.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { RecordingTarget, ScriptedSource, turns, type Run } from './copy-nodes.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function copy(sources: ScriptedSource[], target: RecordingTarget | NullNode, over: Partial<CopyOptions> = {}): Promise<void> {
  return copyImage({ sources, target, targetIsZero: false, sparseSize: 4 * KiB, inFlight: 8, outOfOrder: false, ...over });
}

/** Data with a zero 4 KiB block at 8 KiB and a zero 1 KiB piece at 20 KiB. */
function holeyData(): Uint8Array {
  const d = pattern(32 * KiB, 7);
  d.fill(0, 8 * KiB, 12 * KiB);
  d.fill(0, 20 * KiB, 21 * KiB);
  return d;
}

const RUNS: Run[] = [{ data: holeyData() }, { zero: 3 * MiB }, { data: pattern(5 * MiB + 512, 9) }, { zero: 64 * KiB }];

test('a copy reproduces the source; zero extents become write-zeroes (may unmap) on a target not known zero', async () => {
  const src = new ScriptedSource(RUNS);
  const dst = new RecordingTarget(src.size, { initial: 0xee });
  await copy([src], dst);
  assertBytesEqual(dst.bytes, src.contents(), 'target');
  const zeroes = dst.callsOf('writeZeroes');
  for (const [offset, length] of [[32 * KiB, 3 * MiB], [src.size - 64 * KiB, 64 * KiB]] as const) {
    assert.ok(zeroes.some((c) => c.offset === offset && c.length === length && c.mayUnmap), `zero write ${offset}+${length}`);
  }
  assert.equal(dst.callsOf('flush').length, 1, 'the target is flushed once at the end');
});

test('on a target known zero, zero extents and zero blocks in data cost no request at all', async () => {
  const src = new ScriptedSource(RUNS);
  const dst = new RecordingTarget(src.size);
  await copy([src], dst, { targetIsZero: true });
  assertBytesEqual(dst.bytes, src.contents(), 'target');
  assert.deepEqual(dst.callsOf('writeZeroes'), []);
  // The aligned zero block at 8 KiB is left out; the 1 KiB zero piece at 20 KiB is shorter than -S and is written.
  const first = dst.callsOf('write').filter((c) => c.offset! < 32 * KiB).map((c) => [c.offset, c.length]);
  assert.deepEqual(first, [[0, 8 * KiB], [12 * KiB, 20 * KiB]]);
  const written = dst.callsOf('write').reduce((n, c) => n + c.length!, 0);
  assert.equal(written, 28 * KiB + 5 * MiB + 512);
});

test('-S 0 writes every byte as data, zeros included, and never a write-zeroes', async () => {
  const src = new ScriptedSource(RUNS);
  const dst = new RecordingTarget(src.size, { initial: 0xee });
  await copy([src], dst, { sparseSize: 0, targetIsZero: true });
  assertBytesEqual(dst.bytes, src.contents(), 'target');
  assert.deepEqual(dst.callsOf('writeZeroes'), []);
  assert.equal(dst.callsOf('write').reduce((n, c) => n + c.length!, 0), src.size);
});

test('a larger -S looks at blocks of its power of two and leaves only long zero runs sparse, or runs at a buffer end', async () => {
  // -S 24k: zero detection in aligned 16 KiB blocks; inside the buffer only runs of 24 KiB or more stay sparse.
  const data = pattern(256 * KiB, 3);
  data.fill(0, 0, 16 * KiB); // one block at the start of the buffer: left sparse
  data.fill(0, 64 * KiB, 80 * KiB); // one block inside: shorter than -S, written
  data.fill(0, 128 * KiB, 160 * KiB); // two blocks inside: left sparse
  data.fill(0, 200 * KiB, 204 * KiB); // not a whole block: written
  const src = new ScriptedSource([{ data }]);
  const dst = new RecordingTarget(src.size);
  await copy([src], dst, { sparseSize: 24 * KiB, targetIsZero: true });
  assert.deepEqual(dst.callsOf('write').map((c) => [c.offset, c.length]), [[16 * KiB, 112 * KiB], [160 * KiB, 96 * KiB]]);
  assertBytesEqual(dst.bytes, data, 'target');
});

test('several sources are laid end to end', async () => {
  const a = new ScriptedSource([{ data: pattern(3 * KiB, 1) }, { zero: 1 * KiB }]);
  const b = new ScriptedSource([{ zero: 512 }, { data: pattern(700 * KiB, 2) }]);
  const c = new ScriptedSource([{ data: pattern(2 * MiB + 1 * KiB, 3) }]);
  const dst = new RecordingTarget(a.size + b.size + c.size + 4 * KiB, { initial: 0xee });
  await copy([a, b, c], dst);
  const expected = new Uint8Array(a.size + b.size + c.size);
  expected.set(a.contents(), 0);
  expected.set(b.contents(), a.size);
  expected.set(c.contents(), a.size + b.size);
  assertBytesEqual(dst.bytes.subarray(0, expected.byteLength), expected, 'target');
  assert.ok(dst.bytes.subarray(expected.byteLength).every((x) => x === 0xee), 'the target past the input is left alone');
});

test('a target smaller than the input is refused before anything is written', async () => {
  const src = new ScriptedSource([{ data: pattern(8 * KiB, 1) }]);
  const dst = new RecordingTarget(4 * KiB);
  await assert.rejects(copy([src], dst), (err: BlockError) => err.code === 'EINVAL' && /smaller than the input/.test(err.message));
  assert.deepEqual(dst.calls, []);
});

/** Eight 1 MiB data requests whose reads finish in reverse order: the last one first. */
function reverseReads(): ScriptedSource {
  return new ScriptedSource([{ data: pattern(8 * MiB, 5) }], { readDelay: (offset) => turns(40 - 4 * (offset / MiB)) });
}

test('without -W, writes reach the target in target order even when reads finish out of order', async () => {
  const src = reverseReads();
  const dst = new RecordingTarget(src.size);
  await copy([src], dst, { bufferSize: 1 * MiB, targetIsZero: true });
  const offsets = dst.callsOf('write').map((c) => c.offset!);
  assert.deepEqual(offsets, [...offsets].sort((x, y) => x - y));
  assert.equal(offsets.length, 8);
  assert.equal(dst.maxBusy, 1, 'in-order writes go one at a time');
});

test('with -W, writes go out as reads finish: out of order and several at once', async () => {
  const src = reverseReads();
  const dst = new RecordingTarget(src.size, { writeDelay: () => turns(20) });
  await copy([src], dst, { bufferSize: 1 * MiB, targetIsZero: true, outOfOrder: true });
  const offsets = dst.callsOf('write').map((c) => c.offset!);
  assert.notDeepEqual(offsets, [...offsets].sort((x, y) => x - y));
  assert.ok(dst.maxBusy > 1, `at most ${dst.maxBusy} write in flight`);
  assertBytesEqual(dst.bytes, src.contents(), 'target');
});

test('-m bounds the requests in flight', async () => {
  const src = new ScriptedSource([{ data: pattern(16 * MiB, 5) }]);
  for (const inFlight of [1, 3]) {
    const dst = new RecordingTarget(src.size, { writeDelay: () => turns(5) });
    await copy([src], dst, { bufferSize: 1 * MiB, outOfOrder: true, inFlight });
    assert.equal(dst.maxBusy, inFlight);
  }
});

test('the first error wins: the copy stops, nothing stays in flight, the message names the byte', async () => {
  const src = new ScriptedSource([{ data: pattern(16 * MiB, 5) }]);
  const dst = new RecordingTarget(src.size, { failWriteAt: 3 * MiB, writeDelay: () => turns(3) });
  await assert.rejects(copy([src], dst, { bufferSize: 1 * MiB, outOfOrder: true }), (err: BlockError) => {
    assert.equal(err.code, 'ENOSPC');
    assert.equal(err.message, `error while writing at byte ${3 * MiB}: No space left on device`);
    return true;
  });
  assert.equal(dst.busy, 0);
  // Requests already taken finish, but no new one starts after the failure: at most -m more.
  assert.ok(dst.callsOf('write').length <= 4 + 8, `${dst.callsOf('write').length} writes`);
  assert.equal(dst.callsOf('flush').length, 1, 'what was written is flushed even after a failure');
});

test('a read error is reported with its byte offset and stops the copy', async () => {
  const src = new ScriptedSource([{ data: pattern(8 * MiB, 5) }], { failReadAt: 5 * MiB });
  const dst = new RecordingTarget(src.size);
  await assert.rejects(copy([src], dst, { bufferSize: 1 * MiB }), /^BlockError: error while reading at byte 5242880: Input\/output error$/);
  // In order, nothing after the failed request can have been written.
  assert.ok(dst.callsOf('write').every((c) => c.offset! < 5 * MiB));
});

test('block status is walked batch by batch: the first data moves long before the end is known', async () => {
  // 16 GiB of alternating 64 KiB data and 1 MiB zero runs, 16 extents per block-status call.
  const runs: Run[] = [];
  for (let pos = 0; pos < 16 * 1024 * MiB; pos += 64 * KiB + MiB) runs.push({ byte: 1, length: 64 * KiB }, { zero: MiB });
  let reachAtFirstRead = -1;
  const src: ScriptedSource = new ScriptedSource(runs, { batch: 16, readDelay: async () => void (reachAtFirstRead < 0 && (reachAtFirstRead = src.statusReach)) });
  const ac = new AbortController();
  const dst = new NullNode({ size: src.size });
  let done = 0;
  await assert.rejects(copyImage({
    sources: [src], target: dst, targetIsZero: true, sparseSize: 4 * KiB, inFlight: 8, outOfOrder: false,
    checkpoint: async () => { if (ac.signal.aborted) throw new BlockError('E_ABORTED', 'cancelled'); },
    onProgress: (n) => { if ((done += n) > 64 * MiB) ac.abort(); },
  }), /cancelled/);
  assert.ok(reachAtFirstRead > 0 && reachAtFirstRead < 64 * MiB, `block status had reached ${reachAtFirstRead} at the first read`);
  assert.ok(src.statusReach < 256 * MiB, `block status reached ${src.statusReach} of ${src.size}`);
});

test('an overlay target (-B) gets what the source allocates itself; the backing file serves the rest', async () => {
  const top = pattern(64 * KiB, 4);
  const src = new ScriptedSource([
    { data: top },
    { zero: 64 * KiB, depth: 1 }, // in the source's backing chain: left to the target's backing
    { zero: 64 * KiB }, // a zero cluster of the source itself: must hide the backing
    { zero: 64 * KiB, present: false }, // past the source backing's end, within the target's: zeroed
    { zero: 128 * KiB, present: false }, // past the target backing's end (256 KiB + 64 KiB): reads zero there anyway
  ]);
  const dst = new RecordingTarget(src.size, { initial: 0xbb });
  await copy([src], dst, { targetBacking: { size: 256 * KiB + 64 * KiB } });
  assert.deepEqual(dst.callsOf('write').map((c) => [c.offset, c.length]), [[0, 64 * KiB]]);
  assert.deepEqual(dst.callsOf('writeZeroes').map((c) => [c.offset, c.length]), [[128 * KiB, 192 * KiB]]);
});
