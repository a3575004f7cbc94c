import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { open } from '../../../src/registry/index.js';
import { pattern } from '../../helpers/bytes.js';
import { needNative } from '../../helpers/native.js';
import { run } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;

/** A loop device over a file (root only); skipped where loop devices cannot be set up. */
async function loopDevice(t: TestContext, backing: string): Promise<string | undefined> {
  const r = await run('losetup', ['-f', '--show', backing]).catch(() => undefined);
  if (!r || r.code !== 0) {
    t.skip(`loop devices are not available here (${r?.stderr.trim() ?? 'no losetup'})`);
    return undefined;
  }
  return r.stdout.trim();
}

describe('file protocol on a block device (loop)', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir()));
  after(async () => tmp.cleanup());

  it('sizes, reads, writes, zeroes and discards through the device', async (t) => {
    if (!needNative(t)) return;
    const backing = tmp.path('loop.img');
    await writeFile(backing, pattern(16 * MiB, 11));
    const dev = await loopDevice(t, backing);
    if (!dev) return;
    try {
      const node = await open(dev, { format: 'raw', cache: 'none' });
      try {
        assert.equal(node.size, 16 * MiB);
        const data = pattern(8192, 3);
        await node.write(1000, data);
        await node.writeZeroes(MiB, MiB);
        await node.writeZeroes(4 * MiB, MiB, { mayUnmap: true });
        await node.discard(8 * MiB, MiB);
        await node.flush();
        const back = new Uint8Array(8192);
        await node.read(1000, back);
        assert.deepEqual(back, data);
      } finally {
        await node.close();
      }
      await run('losetup', ['-d', dev]);
      const host = new Uint8Array(await readFile(backing));
      assert.deepEqual(host.subarray(1000, 1000 + 8192), pattern(8192, 3));
      assert.ok(host.subarray(MiB, 2 * MiB).every((b) => b === 0), 'write-zeroes zeroed the device');
      assert.ok(host.subarray(4 * MiB, 5 * MiB).every((b) => b === 0), 'write-zeroes with unmap zeroed the device');
      const expected = pattern(16 * MiB, 11);
      assert.deepEqual(host.subarray(2 * MiB, 4 * MiB), expected.subarray(2 * MiB, 4 * MiB), 'nothing else changed');
    } finally {
      await run('losetup', ['-d', dev]).catch(() => undefined);
    }
  });
});
