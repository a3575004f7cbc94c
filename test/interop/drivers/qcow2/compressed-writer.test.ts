/**
 * Compressed clusters written by vdisk, judged by QEMU: images made by `qemu-img create`, written
 * through the qcow2 node's compressed writes, then `qemu-img check` must find them clean, count
 * the compressed clusters we wrote, and QEMU must read back the bytes (`qemu-img convert -O raw`),
 * for deflate and zstd and the cluster layouts that change where the bytes go.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { MapEntry } from '../../../../src/cli/map.js';
import type { Qcow2Node } from '../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../helpers/bytes.js';
import { needTools, runOk } from '../../../helpers/oracles.js';
import { textBytes } from '../../../helpers/text-bytes.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

const KiB = 1024;

const LAYOUTS: { name: string; options: string; cluster: number }[] = [
  { name: '64 KiB clusters', options: '', cluster: 64 * KiB },
  { name: '512-byte clusters', options: 'cluster_size=512', cluster: 512 },
  { name: '2 MiB clusters', options: 'cluster_size=2M', cluster: 2048 * KiB },
  { name: 'extended L2', options: 'extended_l2=on', cluster: 64 * KiB },
  { name: '1-bit refcounts', options: 'refcount_bits=1', cluster: 64 * KiB },
  { name: 'compat=0.10', options: 'compat=0.10', cluster: 64 * KiB },
];

describe('compressed clusters vdisk writes, as QEMU reads and checks them', () => {
  let tmp: TmpDir;
  before(async () => {
    tmp = await makeTmpDir('vdisk-cwrite-interop-');
  });
  after(() => tmp.cleanup());

  for (const type of ['zlib', 'zstd'] as const) {
    for (const layout of LAYOUTS) {
      if (type === 'zstd' && layout.options === 'compat=0.10') continue; // zstd needs compat=1.1
      it(`${type}, ${layout.name}`, async (t) => {
        if (!needTools(t, 'qemu-img')) return;
        const cs = layout.cluster;
        // Text clusters, one random (written uncompressed), a gap, and a short last cluster.
        const size = 10 * cs + 3 * 512;
        const file = tmp.path(`${type}-${layout.name.replace(/\W+/g, '-')}.qcow2`);
        const options = [layout.options, type === 'zstd' ? 'compression_type=zstd' : ''].filter(Boolean).join(',');
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...(options ? ['-o', options] : []), file, String(size)]);
        const expected = new Uint8Array(size);
        expected.set(textBytes(4 * cs, 1), 0);
        expected.set(pattern(cs, 2), 4 * cs);
        expected.set(textBytes(size - 7 * cs, 3), 7 * cs);
        const node = (await open(file, { format: 'qcow2' })) as Qcow2Node;
        await node.writeCompressed(0, expected.subarray(0, 5 * cs));
        await node.writeCompressed(7 * cs, expected.subarray(7 * cs));
        await node.close();

        const check = JSON.parse(await runOk('qemu-img', ['check', '--output=json', file])) as Record<string, number>;
        assert.equal(check.corruptions ?? 0, 0);
        assert.equal(check.leaks ?? 0, 0);
        assert.equal(check['check-errors'], 0);
        // Every written cluster but the random one is compressed.
        assert.equal(check['compressed-clusters'], 4 + Math.ceil((size - 7 * cs) / cs));
        // QEMU 7.2's map gives compressed clusters no offset; the random one has one.
        const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', file])) as MapEntry[];
        const at = (offset: number) => map.find((e) => e.start <= offset && offset < e.start + e.length)!;
        assert.equal(at(0).data, true);
        assert.equal(at(0).offset, undefined, 'a compressed cluster has no host offset in the map');
        assert.equal(typeof at(4 * cs).offset, 'number', 'the random cluster is stored as it is');
        assert.equal(at(5 * cs).data, false);

        await runOk('qemu-img', ['convert', '-O', 'raw', file, `${file}.raw`]);
        assertBytesEqual(await readFile(`${file}.raw`), expected, 'what QEMU reads');
      });
    }
  }
});
