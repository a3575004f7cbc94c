import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { ConvertJob } from '../../../src/jobs/convert-job.js';
import type { JobEvent } from '../../../src/jobs/job.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { RecordingTarget, ScriptedSource, turns } from './copy-nodes.js';

const MiB = 1024 * 1024;

function job(src: ScriptedSource, dst: RecordingTarget, signal?: AbortSignal): ConvertJob {
  return new ConvertJob({ sources: [src], target: dst, targetIsZero: true, sparseSize: 4096, inFlight: 4, outOfOrder: true, bufferSize: MiB, signal });
}

test('a convert job reports its states and progress up to the total, then concludes', async () => {
  const src = new ScriptedSource([{ data: pattern(3 * MiB, 1) }, { zero: 5 * MiB }, { data: pattern(MiB + 512, 2) }]);
  const dst = new RecordingTarget(src.size);
  const j = job(src, dst);
  const events: JobEvent[] = [];
  const seen = (async () => { for await (const e of j.events()) events.push(e); })();
  await j.start();
  await seen;
  assertBytesEqual(dst.bytes, src.contents(), 'target');
  assert.equal(j.state, 'concluded');
  assert.deepEqual(j.progress, { done: src.size, total: src.size });
  const states = events.filter((e) => e.type === 'state').map((e) => (e as { state: string }).state);
  assert.deepEqual(states, ['running', 'concluded']);
  const progress = events.filter((e) => e.type === 'progress').map((e) => (e as { done: number }).done);
  assert.ok(progress.length > 3 && progress.every((d, i) => i === 0 || d >= progress[i - 1]!), 'progress only grows');
  assert.deepEqual(events[events.length - 1], { type: 'concluded', error: undefined });
});

test('cancelling a job stops it at the next request, with nothing in flight and the target flushed', async () => {
  const src = new ScriptedSource([{ data: pattern(32 * MiB, 1) }]);
  const dst = new RecordingTarget(src.size, { writeDelay: () => turns(2) });
  const ac = new AbortController();
  const j = job(src, dst, ac.signal);
  j.start().catch(() => {});
  for await (const e of j.events()) if (e.type === 'progress' && e.done >= 4 * MiB) break;
  ac.abort();
  await assert.rejects(j.start(), (err: BlockError) => err.code === 'E_ABORTED');
  assert.equal(j.state, 'concluded');
  assert.equal(j.error?.code, 'E_ABORTED');
  assert.equal(dst.busy, 0, 'no request is left running on the target');
  assert.equal(dst.callsOf('flush').length, 1);
  const written = dst.callsOf('write').length;
  assert.ok(written >= 4 && written < 32, `${written} of 32 requests written`);
  // Everything written is the source's bytes, whole requests only.
  for (const c of dst.callsOf('write')) assertBytesEqual(dst.bytes.subarray(c.offset!, c.offset! + c.length!), src.contents().subarray(c.offset!, c.offset! + c.length!), `request at ${c.offset}`);
});

test('a job cancelled before it starts does nothing', async () => {
  const src = new ScriptedSource([{ data: pattern(MiB, 1) }]);
  const dst = new RecordingTarget(src.size);
  const j = job(src, dst, AbortSignal.abort());
  await assert.rejects(j.start(), (err: BlockError) => err.code === 'E_ABORTED');
  assert.deepEqual(dst.calls, []);
});

test('a paused job issues no new request until resumed', async () => {
  const src = new ScriptedSource([{ data: pattern(16 * MiB, 1) }]);
  const dst = new RecordingTarget(src.size, { writeDelay: () => turns(1) });
  const j = job(src, dst);
  const done = j.start();
  for await (const e of j.events()) if (e.type === 'progress' && e.done >= 2 * MiB) break;
  j.pause();
  assert.equal(j.state, 'paused');
  await turns(50);
  const held = dst.callsOf('write').length;
  await turns(200);
  assert.equal(dst.callsOf('write').length, held, 'no write while paused');
  assert.ok(held < 16);
  j.resume();
  await done;
  assert.equal(dst.callsOf('write').length, 16);
  assertBytesEqual(dst.bytes, src.contents(), 'target');
});
