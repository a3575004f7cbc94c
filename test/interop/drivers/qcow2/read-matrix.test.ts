/**
 * The qcow2 read matrix: for every fixture variant (and every internal snapshot), vdisk must read
 * exactly the bytes that `qemu-img convert -O raw` produces. Whole-image walks in several chunk
 * sizes, unaligned ones included, so cluster, subcluster, L2-table, compressed-cluster and
 * backing-end boundaries fall inside requests as well as on their edges.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { BlockNode } from '../../../../src/core/block-node.js';
import { open, type NodeSpec } from '../../../../src/registry/index.js';
import { assertBytesEqual } from '../../../helpers/bytes.js';
import { needTools, runOk } from '../../../helpers/oracles.js';
import { QCOW2_VARIANTS, buildVariant, type Qcow2Image } from '../../../helpers/qcow2-images.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/**
 * How each walk reads the image. 12289 and 1000003 bytes are neither sector- nor cluster-aligned,
 * so after the first request every offset is unaligned; the parallel walk keeps several requests
 * in flight at once, as a guest or a copy job would.
 */
const WALKS: { name: string; chunk: (size: number) => number; inFlight: number }[] = [
  { name: 'one read of the whole image', chunk: (size) => size, inFlight: 1 },
  { name: '64 KiB reads', chunk: () => 64 * 1024, inFlight: 1 },
  { name: '12289-byte reads', chunk: () => 12289, inFlight: 1 },
  { name: '1000003-byte reads', chunk: () => 1000003, inFlight: 1 },
  { name: '4609-byte reads, 8 in flight', chunk: () => 4609, inFlight: 8 },
];

/** Reads [0, size) in `chunk`-byte requests, `inFlight` at a time, and compares each with `ref`. */
async function walk(node: BlockNode, ref: Uint8Array, chunk: number, inFlight: number, what: string): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < ref.byteLength) {
      const offset = next;
      const length = Math.min(chunk, ref.byteLength - offset);
      next += length;
      const buf = new Uint8Array(length);
      await node.read(offset, buf);
      assertBytesEqual(buf, ref.subarray(offset, offset + length), what, offset);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

/** QEMU's view of the guest disk (of one snapshot if given), as raw bytes. */
async function qemuRaw(tmp: TmpDir, img: Qcow2Image, name: string, snapshot?: string): Promise<Uint8Array> {
  const out = tmp.path(`${name}.raw`);
  const args = ['convert', '-f', 'qcow2', '-O', 'raw'];
  if (snapshot !== undefined) args.push('-l', `snapshot.name=${snapshot}`);
  await runOk('qemu-img', [...args, img.path, out]);
  return new Uint8Array(await readFile(out));
}

/** Every walk over a freshly opened node, so each starts with cold metadata caches. */
async function readAllWays(spec: string | NodeSpec, ref: Uint8Array, what: string): Promise<void> {
  for (const w of WALKS) {
    // Read-only like qemu-img convert: a writable open of the dirty fixture would repair it.
    const node = await open(spec, { readOnly: true });
    try {
      assert.equal(node.driver, 'qcow2', `${what}: probed driver`);
      assert.equal(node.size, ref.byteLength, `${what}: size`);
      await walk(node, ref, w.chunk(ref.byteLength), w.inFlight, `${what}, ${w.name}`);
    } finally {
      await node.close();
    }
  }
}

describe('qcow2 read matrix: vdisk reads what qemu-img convert -O raw reads', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-read-')));
  after(async () => tmp.cleanup());

  for (const variant of QCOW2_VARIANTS) {
    it(variant.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const img = await buildVariant(tmp.dir, variant);
      await readAllWays(img.path, await qemuRaw(tmp, img, variant.name), `${variant.name} (${img.description})`);

      // A snapshot opens by ID or by name, as QEMU's snapshot.id / snapshot.name do.
      for (const snap of img.snapshots ?? []) {
        const ref = await qemuRaw(tmp, img, `${variant.name}-${snap.name}`, snap.name);
        for (const key of [snap.name, snap.id]) {
          const spec: NodeSpec = { driver: 'qcow2', file: { driver: 'file', filename: img.path }, snapshot: key, 'read-only': true };
          await readAllWays(spec, ref, `${variant.name}, snapshot '${key}'`);
        }
      }
    });
  }
});
