import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CommitJob } from '../../../src/jobs/commit-job.js';
import { open } from '../../../src/registry/index.js';
import { assertBytesEqual } from '../../helpers/bytes.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { chain, readAll } from './job-chain.js';

const KiB = 1024;

test('a commit cancelled before it runs leaves both images as they were (the top not emptied)', async (t) => {
  const tmp = await makeTmpDir('vdisk-commit-job-');
  t.after(() => tmp.cleanup());
  const { top, contents } = await chain(tmp.dir);
  // The top with its chain cut above the base, and the base on its own, as the CLI opens them.
  const image = await open(`json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: top }, backing: null })}`);
  const base = await open(`${tmp.dir}/base.qcow2`, { format: 'qcow2' });
  const job = new CommitJob({ top: image, base, layers: 1 });
  job.cancel(new Error('at once'));
  await assert.rejects(job.start(), { code: 'E_ABORTED' });
  await image.close();
  await base.close();
  await using again = await open(top, { format: 'qcow2', readOnly: true });
  assertBytesEqual(await readAll(again), contents, 'the chain');
  const own = [];
  for await (const e of again.extents(0, again.size)) if (e.depth === 0 && e.data) own.push(e.length);
  assert.deepEqual(own, [64 * KiB], 'the top keeps its data');
});
