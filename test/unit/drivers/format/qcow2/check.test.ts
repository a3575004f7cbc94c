/**
 * vdisk's qcow2 check as a library call: what a repair leaves behind for the open image that
 * made it. (test/interop/drivers/qcow2/check.test.ts holds the checker to qemu-img check on a
 * corpus of damaged images; these cases are about the node going on after a repair.) Images are
 * made by vdisk and damaged with the independent byte editor of test/helpers/qcow2-damage.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { BlockError } from '../../../../../src/core/errors.js';
import type { CheckResult } from '../../../../../src/drivers/format/qcow2/check.js';
import { INCOMPAT } from '../../../../../src/drivers/format/qcow2/constants.js';
import { createQcow2 } from '../../../../../src/drivers/format/qcow2/create.js';
import { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../../../../src/registry/index.js';
import { COPIED, Qcow2Bytes } from '../../../../helpers/qcow2-damage.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

const K = 1024;

function filled(length: number, byte: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}

async function openQcow2(file: string, opts: { check?: boolean } = {}): Promise<Qcow2Node> {
  const node = await open(file, { check: opts.check ?? false });
  assert.ok(node instanceof Qcow2Node);
  return node;
}

/** A 1 MiB image with 4 KiB clusters and data in its first 16 KiB (0x11). */
async function imageWithData(file: string, options: Record<string, string> = {}): Promise<void> {
  await createQcow2({ filename: file, size: 1024 * K, options: { cluster_size: '4096', ...options } });
  const node = await openQcow2(file);
  await node.write(0, filled(16 * K, 0x11));
  await node.close();
}

async function readBack(node: Qcow2Node, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await node.read(offset, buf);
  return buf;
}

async function assertRefusedAsCorrupt(p: Promise<unknown>): Promise<void> {
  await assert.rejects(p, (err: any) => {
    assert.equal(err?.code, 'E_CORRUPT', String(err));
    assert.match(err.message, /is marked corrupt and cannot be written/);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

describe('qcow2 check: the open image after a repair', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-check-unit-')));
  after(async () => tmp.cleanup());

  it('-r all rebuilds the refcount structures, and the same open image then allocates by the new ones', async () => {
    const file = tmp.path('rebuild.qcow2');
    await imageWithData(file);
    const q = await Qcow2Bytes.load(file);
    const oldTable = q.refcountTableOffset;
    q.setRefcount(q.dataEntries()[1]!.host / q.clusterSize, 0);
    await q.save();

    const node = await openQcow2(file, { check: true });
    try {
      const result = await node.check('all');
      assert.ok(result.messages.includes('Rebuilding refcount structure'), result.messages.join('\n'));
      assert.equal(result.corruptions, 0);
      assert.equal(result.corruptionsFixed, 1);
      assert.notEqual(node.header.refcountTableOffset, oldTable);
      // New clusters, an L2 table among them: allocated through the refcounts the check left.
      await node.write(512 * K, filled(64 * K, 0x22));
      await node.write(20 * K, filled(8 * K, 0x33));
      await node.flush();
    } finally {
      await node.close();
    }

    const after = await Qcow2Bytes.load(file);
    assert.notEqual(after.refcountTableOffset, oldTable);
    for (const d of after.dataEntries()) assert.equal(after.refcount(d.host / after.clusterSize), 1, `data cluster at 0x${d.host.toString(16)}`);
    for (const t of after.l2Tables()) assert.equal(after.refcount(t.offset / after.clusterSize), 1, `L2 table at 0x${t.offset.toString(16)}`);
    const reopened = await openQcow2(file, { check: true });
    try {
      const again = await reopened.check('none');
      assert.deepEqual([again.corruptions, again.leaks, again.checkErrors], [0, 0, 0], again.messages.join('\n'));
      assert.deepEqual(await readBack(reopened, 0, 16 * K), filled(16 * K, 0x11));
      assert.deepEqual(await readBack(reopened, 20 * K, 8 * K), filled(8 * K, 0x33));
      assert.deepEqual(await readBack(reopened, 512 * K, 64 * K), filled(64 * K, 0x22));
    } finally {
      await reopened.close();
    }
  });

  it('a repair whose refcount block is also an L2 table is counted, not written, and the image is marked corrupt', async () => {
    // With 1-bit refcounts the block doubling as an L2 table counts once (an overflow), so no
    // rebuild is due and the leaks are repaired in place: into the block QEMU refuses to write.
    const file = tmp.path('refused.qcow2');
    await imageWithData(file, { refcount_bits: '1' });
    const q = await Qcow2Bytes.load(file);
    const table = q.l2Tables()[0]!;
    q.setL1Entry(table.l1Index, COPIED | BigInt(q.refcountBlocks()[0]!));
    await q.save();
    const before = await Qcow2Bytes.load(file);

    const node = await openQcow2(file, { check: true });
    let leaks: number;
    try {
      const repaired = await node.check('leaks');
      leaks = repaired.leaksFixed;
      assert.ok(leaks > 0, repaired.messages.join('\n'));
      assert.ok(repaired.messages.some((m) => /^qcow2: Marking image as corrupt: .*overlaps with active L2 table/.test(m)), repaired.messages.join('\n'));
      assert.ok(node.header.incompatibleFeatures & INCOMPAT.CORRUPT);
      // Like QEMU's refcount cache, the open image remembers what it could not write.
      const double = await node.check('none');
      assert.equal(double.leaks, 0, double.messages.join('\n'));
      // Marked corrupt, the open image writes nothing more (QEMU makes the node unusable).
      await assertRefusedAsCorrupt(node.write(0, filled(4 * K, 0x44)));
      await assertRefusedAsCorrupt(node.writeZeroes(600 * K, 4 * K));
      await assertRefusedAsCorrupt(node.discard(0, 4 * K));
    } finally {
      await node.close();
    }

    const after = await Qcow2Bytes.load(file);
    assert.ok(after.incompatible & INCOMPAT.CORRUPT);
    assert.deepEqual(after.buf.subarray(before.refcountBlocks()[0]!, before.refcountBlocks()[0]! + before.clusterSize),
      before.buf.subarray(before.refcountBlocks()[0]!, before.refcountBlocks()[0]! + before.clusterSize), 'the refcount block (and L2 table) is unchanged');
    const reopened = await openQcow2(file, { check: true });
    try {
      assert.equal((await reopened.check('none')).leaks, leaks);
    } finally {
      await reopened.close();
    }
  });
  it('a write the overlap guard refuses marks the image corrupt, and the open image then refuses every write', async () => {
    const file = tmp.path('overlap.qcow2');
    await imageWithData(file);
    const q = await Qcow2Bytes.load(file);
    // Guest cluster 1 now maps onto the L1 table (COPIED: an in-place write would go there).
    const d = q.dataEntries()[1]!;
    q.setU64(d.at, COPIED | BigInt(q.l1Offset));
    await q.save();
    const l1Before = (await Qcow2Bytes.load(file)).buf.subarray(q.l1Offset, q.l1Offset + q.clusterSize);

    const node = await openQcow2(file);
    try {
      await assert.rejects(node.write(4 * K, filled(4 * K, 0x55)), (err: any) => err?.code === 'E_CORRUPT' && /Preventing invalid write on metadata/.test(err.message));
      assert.ok(node.header.incompatibleFeatures & INCOMPAT.CORRUPT);
      // Writes that would have been harmless are refused too: in place, allocating, zeroes, resize.
      await assertRefusedAsCorrupt(node.write(0, filled(4 * K, 0x66)));
      await assertRefusedAsCorrupt(node.write(512 * K, filled(4 * K, 0x66)));
      await assertRefusedAsCorrupt(node.writeZeroes(0, 4 * K));
      await assertRefusedAsCorrupt(node.resize(2048 * K));
      assert.deepEqual(await readBack(node, 0, 4 * K), filled(4 * K, 0x11));
    } finally {
      await node.close();
    }
    const after = await Qcow2Bytes.load(file);
    assert.ok(after.incompatible & INCOMPAT.CORRUPT, 'the corrupt bit is on disk');
    assert.deepEqual(after.buf.subarray(q.l1Offset, q.l1Offset + q.clusterSize), l1Before, 'the L1 table is untouched');
    assert.equal(after.u64(after.dataEntries()[0]!.host), 0x1111111111111111n, 'guest cluster 0 keeps its data');
  });

  it('a refcount block offset that is misaligned opens; the allocation that needs it fails and marks the image corrupt', async () => {
    const file = tmp.path('refblock-misaligned.qcow2');
    await imageWithData(file);
    const q = await Qcow2Bytes.load(file);
    q.setU64(q.refcountTableOffset, q.u64(q.refcountTableOffset) + 0x200n);
    await q.save();

    const node = await openQcow2(file);
    try {
      await node.write(0, filled(4 * K, 0x22)); // in place: no refcount needed
      await assert.rejects(node.write(512 * K, filled(4 * K, 0x33)), (err: any) => {
        assert.equal(err?.code, 'E_CORRUPT');
        assert.match(err.message, /Refblock offset 0x[0-9a-f]+200 unaligned \(reftable index: 0\); the image is now marked corrupt$/);
        return true;
      });
      await assertRefusedAsCorrupt(node.write(0, filled(4 * K, 0x44)));
      assert.deepEqual(await readBack(node, 0, 4 * K), filled(4 * K, 0x22));
    } finally {
      await node.close();
    }
    assert.ok((await Qcow2Bytes.load(file)).incompatible & INCOMPAT.CORRUPT);
  });

  /**
   * An image whose first L2 table holds misaligned preallocated zero entries in two runs,
   * 10..29 and 40..44, which -r all repairs one table at a time: the runs written, then one
   * flush. No real tool makes only these writes fail (QEMU cannot be made to either, to compare
   * with), so the image's file node fails them here; what is reported follows QEMU's
   * fix_l2_entry_by_zero for an entry whose bdrv_pwrite_sync failed: the "Repairing" line, then
   * "ERROR: Failed to overwrite L2 table entry", a check error, and the entry left as it was.
   */
  async function preallocatedRuns(file: string): Promise<{ table: number; bad: number[] }> {
    await imageWithData(file);
    const q = await Qcow2Bytes.load(file);
    const table = q.l2Tables()[0]!.offset;
    const host = Number(q.u64(table) & 0x00fffffffffffe00n);
    const bad = [...Array.from({ length: 20 }, (_, i) => 10 + i), 40, 41, 42, 43, 44];
    for (const i of bad) q.setU64(table + i * 8, BigInt(host + 0x200) | 1n);
    await q.save();
    return { table, bad };
  }

  /** check('all') of `file` with its file node's I/O made to fail by `inject`. */
  async function checkAllFailing(file: string, inject: (raw: BlockNode) => void): Promise<CheckResult> {
    const node = await openQcow2(file);
    try {
      inject(node.file!);
      return await node.check('all');
    } finally {
      await node.close();
    }
  }

  /** Each damaged entry's lines as -r all gave them: the "Repairing" line and what followed it. */
  function linesOf(messages: string[], bad: number[]): string[] {
    const at = messages.flatMap((m, i) => (/^Repairing offset=[0-9a-f]+: Preallocated cluster is not properly aligned/.test(m) ? [i] : []));
    assert.equal(at.length, bad.length, messages.join('\n'));
    return at.map((i) => messages[i + 1] ?? '');
  }

  it('-r all: a run of preallocated entries whose write fails stays as it was, each entry reported as QEMU reports it', async () => {
    const file = tmp.path('prealloc-write-fails.qcow2');
    const { table, bad } = await preallocatedRuns(file);
    const result = await checkAllFailing(file, (raw) => {
      const write = raw.write.bind(raw);
      raw.write = (offset, data, opts) => {
        if (offset >= table + 40 * 8 && offset < table + 4 * K) return Promise.reject(new BlockError('EIO', 'injected', { op: 'write' }));
        return write(offset, data, opts);
      };
    });
    const after = linesOf(result.messages, bad);
    const failed = 'ERROR: Failed to overwrite L2 table entry: Input/output error';
    assert.deepEqual(after.map((l) => l === failed), bad.map((i) => i >= 40), result.messages.join('\n'));
    assert.equal(result.checkErrors, 5);
    assert.ok(result.corruptions >= 5);
    const q = await Qcow2Bytes.load(file);
    for (const i of bad) assert.equal(q.u64(table + i * 8) === 1n, i < 40, `entry ${i}: ${q.u64(table + i * 8).toString(16)}`);
  });

  it('-r all: when the flush after a table\'s repairs fails, every entry of the table is reported unrepaired', async () => {
    const file = tmp.path('prealloc-flush-fails.qcow2');
    const { table, bad } = await preallocatedRuns(file);
    const result = await checkAllFailing(file, (raw) => {
      const write = raw.write.bind(raw);
      const flush = raw.flush.bind(raw);
      // Only the first flush after the repairs' writes fails (the image's own later ones succeed).
      let armed: boolean | undefined;
      raw.write = (offset, data, opts) => {
        if (armed === undefined && offset >= table && offset < table + 4 * K) armed = true;
        return write(offset, data, opts);
      };
      raw.flush = (opts) => {
        if (armed) {
          armed = false;
          return Promise.reject(new BlockError('EIO', 'injected', { op: 'flush' }));
        }
        return flush(opts);
      };
    });
    assert.deepEqual(linesOf(result.messages, bad), bad.map(() => 'ERROR: Failed to overwrite L2 table entry: Input/output error'), result.messages.join('\n'));
    assert.equal(result.checkErrors, bad.length);
  });
});
