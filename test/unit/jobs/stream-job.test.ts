import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Qcow2Node } from '../../../src/drivers/format/qcow2/qcow2-node.js';
import { StreamJob } from '../../../src/jobs/stream-job.js';
import { open } from '../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { chain, readAll, SIZE } from './job-chain.js';

const KiB = 1024;

test('a stream job pauses between requests, takes guest writes through its node meanwhile, and drops the link at the end', async (t) => {
  const tmp = await makeTmpDir('vdisk-stream-job-');
  t.after(() => tmp.cleanup());
  const { top, contents } = await chain(tmp.dir);
  const image = await open(top, { format: 'qcow2' });
  try {
    const job = new StreamJob({ image, layers: 1, bufferSize: 64 * KiB, inFlight: 1 });
    const running = job.start();
    for await (const e of job.events()) if (e.type === 'progress' && e.done >= 256 * KiB) break;
    job.pause();
    assert.equal(job.state, 'paused');
    const held = job.progress.done;
    // A guest write while the job waits: it must survive the copies that follow.
    const guest = pattern(100 * KiB, 9);
    await job.node.write(1000 * KiB, guest);
    contents.set(guest, 1000 * KiB);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(job.progress.done <= held + 64 * KiB, 'at most the request in flight finished while paused');
    job.resume();
    await running;
    assert.deepEqual(job.progress, { done: SIZE, total: SIZE });
    assertBytesEqual(await readAll(job.node), contents, 'the image through the job\'s node');
  } finally {
    await image.close();
  }
  // Reopened as the header now says: no backing file, and everything there.
  await using again = await open(top, { format: 'qcow2', readOnly: true });
  assert.ok(again instanceof Qcow2Node);
  assert.equal(again.header.backingFile, undefined);
  assertBytesEqual(await readAll(again), contents, 'the image on its own');
});

test('a cancelled stream keeps the backing link and reads as before', async (t) => {
  const tmp = await makeTmpDir('vdisk-stream-job-');
  t.after(() => tmp.cleanup());
  const { top, contents } = await chain(tmp.dir);
  const ac = new AbortController();
  {
    await using image = await open(top, { format: 'qcow2' });
    const job = new StreamJob({ image, layers: 1, bufferSize: 64 * KiB, inFlight: 2, signal: ac.signal });
    const running = job.start();
    for await (const e of job.events()) if (e.type === 'progress' && e.done >= 512 * KiB) break;
    ac.abort(new Error('enough'));
    await assert.rejects(running, { code: 'E_ABORTED', message: 'The job was cancelled: enough' });
    assert.ok(job.progress.done < SIZE);
  }
  await using again = await open(top, { format: 'qcow2', readOnly: true });
  assert.equal((again as Qcow2Node).header.backingFile, 'base.qcow2');
  assertBytesEqual(await readAll(again), contents, 'the chain');
});
