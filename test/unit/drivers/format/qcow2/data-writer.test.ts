import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { open } from '../../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../../helpers/bytes.js';
import { vdisk } from '../../../../helpers/cli.js';
import { needNative } from '../../../../helpers/native.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Counts the writes in flight on `file` at once, as the qcow2 driver issues them. */
function countOverlap(file: BlockNode): { max: () => number } {
  const write = file.write.bind(file);
  let now = 0;
  let max = 0;
  file.write = async (...args: Parameters<BlockNode['write']>) => {
    max = Math.max(max, ++now);
    try {
      return await write(...args);
    } finally {
      now--;
    }
  };
  return { max: () => max };
}

/*
 * Allocating writes of whole clusters on a file whose writes wait for the device (O_DIRECT):
 * each allocates under the metadata lock, writes its data outside it and links under it again,
 * so writers in flight overlap at the device (a commit's requests). Into the page cache they
 * keep the one pass under the lock.
 */
test('whole-cluster allocating writes overlap on an O_DIRECT file, and land as written', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir('vdisk-data-writer-');
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.qcow2');
  assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', path, '64M'])).code, 0);

  for (const cache of ['none', 'writeback'] as const) {
    const node = await open(path, { format: 'qcow2', cache });
    if (cache === 'none' && !node.writesWaitForDevice) {
      await node.close();
      t.skip('this file system takes no O_DIRECT');
      return;
    }
    const overlap = countOverlap(node.file!);
    const base = cache === 'none' ? 0 : 32 * MiB;
    // Eight writers at once, 2 MiB each, into clusters nothing holds yet.
    const writes = Array.from({ length: 8 }, (_, i) => ({ at: base + i * 3 * MiB, data: pattern(2 * MiB, i + 1 + (base ? 8 : 0)) }));
    await Promise.all(writes.map((w) => node.write(w.at, w.data)));
    if (cache === 'none') assert.ok(overlap.max() > 1, `data writes in flight at once: ${overlap.max()}`);
    else assert.equal(overlap.max(), 1, 'into the page cache, allocating writes take turns');
    for (const w of writes) {
      const back = new Uint8Array(w.data.byteLength);
      await node.read(w.at, back);
      assertBytesEqual(back, w.data, `${cache}: ${w.at}`);
    }
    await node.close();
  }
  const check = await vdisk(['check', path]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});
