import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FileNode } from '../../../src/drivers/protocol/file/file-node.js';
import { writebackFiles, WritebackAhead } from '../../../src/jobs/writeback-ahead.js';
import { open, registry } from '../../../src/registry/index.js';
import { needNative } from '../../helpers/native.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;

test('the files written back are the image\'s own (its file and data file), not its backing chain\'s, and only cached ones', async (t) => {
  const tmp = await makeTmpDir('vdisk-writeback-ahead-');
  t.after(() => tmp.cleanup());
  const qcow2 = registry.get('qcow2');
  await qcow2.create!({ filename: tmp.path('base.qcow2'), size: MiB, options: {} });
  await qcow2.create!({ filename: tmp.path('top.qcow2'), size: MiB, options: { backing_file: 'base.qcow2', backing_fmt: 'qcow2', data_file: tmp.path('top.data') } });
  {
    await using top = await open(tmp.path('top.qcow2'), { format: 'qcow2' });
    const names = writebackFiles(top).map((f) => f.filename).sort();
    assert.deepEqual(names, [tmp.path('top.data'), tmp.path('top.qcow2')]);
    assert.ok(writebackFiles(top).every((f) => f instanceof FileNode));
  }
  {
    // O_DIRECT leaves nothing in the page cache to write back.
    await using uncached = await open(tmp.path('base.qcow2'), { format: 'qcow2', cache: 'none' });
    if ((uncached.file as FileNode).uncachedBy !== undefined) assert.deepEqual(writebackFiles(uncached), []);
  }
});

test('a failed start of writeback is the job\'s error, at settle', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir('vdisk-writeback-ahead-');
  t.after(() => tmp.cleanup());
  await registry.get('raw').create!({ filename: tmp.path('a.raw'), size: MiB, options: {} });
  const node = await open(tmp.path('a.raw'), { format: 'raw' });
  const ahead = new WritebackAhead(node, MiB);
  await node.write(0, new Uint8Array(MiB).fill(1));
  ahead.moved(MiB);
  await ahead.settle();
  // Its descriptor closed under it, the next start fails.
  await node.close();
  ahead.moved(MiB);
  await assert.rejects(ahead.settle(), (err: Error) => /write back/.test(err.message));
});
