/**
 * The copying half of a safe rebase on real qcow2 images (vdisk's own driver, files in a temp
 * directory): the image reads the same before and after, and gains exactly the ranges where its
 * old and new backing chains read differently. The interop tests compare the whole command
 * with qemu-img.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { BlockNode } from '../../../src/core/block-node.js';
import type { JobEvent } from '../../../src/jobs/job.js';
import { RebaseJob } from '../../../src/jobs/rebase.js';
import { open } from '../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-rebase-job-');
});
after(() => tmp.cleanup());

async function create(name: string, ...args: string[]): Promise<string> {
  const file = tmp.path(name);
  const r = await vdisk(['create', '-q', '-f', 'qcow2', ...args, file, String(SIZE)]);
  assert.equal(r.code, 0, r.stderr);
  return file;
}

async function write(file: string, offset: number, data: Uint8Array): Promise<void> {
  const node = await open(file);
  try {
    await node.write(offset, data);
  } finally {
    await node.close();
  }
}

async function readAll(node: BlockNode): Promise<Uint8Array> {
  const buf = new Uint8Array(node.size);
  await node.read(0, buf);
  return buf;
}

/** [offset, end) ranges the image allocates itself. */
async function ownRanges(node: BlockNode): Promise<[number, number][]> {
  const out: [number, number][] = [];
  for await (const e of node.extents(0, node.size)) {
    if (e.depth !== 0 || !e.present) continue;
    const last = out[out.length - 1];
    if (last && last[1] === e.offset) last[1] = e.offset + e.length;
    else out.push([e.offset, e.offset + e.length]);
  }
  return out;
}

test('the image reads the same afterwards and gains only the ranges that read differently', async () => {
  const base = await create('base.qcow2');
  await write(base, 0, pattern(MiB, 1));
  const other = await create('other.qcow2');
  await write(other, MiB, pattern(MiB, 2));
  // Both backing files hold the same bytes at 2.5 MiB: nothing to copy there.
  await write(base, 2.5 * MiB, pattern(64 * 1024, 3));
  await write(other, 2.5 * MiB, pattern(64 * 1024, 3));
  const image = await create('image.qcow2', '-b', 'base.qcow2', '-F', 'qcow2');
  await write(image, 3 * MiB, pattern(64 * 1024, 4));

  const node = await open(image);
  const fresh = await open(other, { readOnly: true });
  try {
    const before = await readAll(node);
    const job = new RebaseJob({ image: node, newBacking: fresh });
    const events: JobEvent[] = [];
    const seen = (async () => { for await (const e of job.events()) events.push(e); })();
    await job.start();
    await seen;
    assert.deepEqual(job.progress, { done: SIZE, total: SIZE });
    assert.ok(events.some((e) => e.type === 'progress'));
    assertBytesEqual(await readAll(node), before, 'the image through its old chain');
    // [0, 1M): base's data, other has zeros; [1M, 2M): zeros over other's data; 3M: the image's own.
    assert.deepEqual(await ownRanges(node), [[0, 2 * MiB], [3 * MiB, 3 * MiB + 64 * 1024]]);
  } finally {
    await fresh.close();
    await node.close();
  }
  // Through the new backing file, which the link will name next, it reads the same too.
  const relinked = await open({ driver: 'qcow2', file: image, backing: { driver: 'qcow2', file: other } });
  try {
    const expected = new Uint8Array(SIZE);
    expected.set(pattern(MiB, 1), 0);
    expected.set(pattern(64 * 1024, 3), 2.5 * MiB);
    expected.set(pattern(64 * 1024, 4), 3 * MiB);
    assertBytesEqual(await readAll(relinked), expected, 'the image through the new chain');
  } finally {
    await relinked.close();
  }
});

test('onto no backing file: everything the old chain shows is copied, zeros are not', async () => {
  const base = await create('base2.qcow2');
  await write(base, MiB, pattern(MiB, 5));
  const image = await create('image2.qcow2', '-b', 'base2.qcow2', '-F', 'qcow2');
  const node = await open(image);
  try {
    const before = await readAll(node);
    await new RebaseJob({ image: node, newBacking: undefined }).start();
    assert.deepEqual(await ownRanges(node), [[MiB, 2 * MiB]]);
    assertBytesEqual(await readAll(node), before, 'the image');
  } finally {
    await node.close();
  }
});
