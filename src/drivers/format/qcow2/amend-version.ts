import { BlockError } from '../../../core/errors.js';
import { INCOMPAT, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO } from './constants.js';
import { rewriteHeader } from './header-rewrite.js';
import { Sub } from './l2-entry.js';
import type { Qcow2Internals } from './qcow2-node.js';
import { serializeSnapshotTable, type Qcow2Snapshot } from './snapshots.js';

/*
 * compat=1.1 ↔ 0.10 for qemu-img amend (QEMU's qcow2_upgrade and qcow2_downgrade), with QEMU's
 * refusals and in QEMU's order. `progress(done, total)` reports each step's share.
 */

type Progress = (done: number, total: number) => void;

function refuse(message: string): BlockError {
  return new BlockError('ENOTSUP', message, { op: 'amend' });
}

/**
 * To version 3: snapshots whose entries lack the disk size v3 requires get a new table holding
 * it (on new clusters, switched to by the header write), then the header becomes a v3 one.
 */
export async function upgradeToV3(p: Qcow2Internals, progress: Progress): Promise<void> {
  const { header: h, file } = p;
  progress(0, 2);
  const cs = 2 ** h.clusterBits;
  let oldTable: { offset: number; clusters: number } | undefined;
  let snapshotsOffset = h.snapshotsOffset;
  if (p.snapshots.some((s) => s.extraData.byteLength < 16)) {
    const before = serializeSnapshotTable([...p.snapshots]).byteLength;
    for (const s of p.snapshots) if (s.extraData.byteLength < 16) Object.assign(s, withV3Extra(s, h.size));
    const table = serializeSnapshotTable([...p.snapshots]);
    const refcounts = await p.refcounts.get();
    snapshotsOffset = await refcounts.allocate(Math.ceil(table.byteLength / cs));
    await p.writeback.flush();
    await file.write(snapshotsOffset, table);
    await file.flush();
    oldTable = { offset: h.snapshotsOffset, clusters: Math.ceil(before / cs) };
  }
  progress(1, 2);
  await p.writeback.flush();
  await rewriteHeader(file, h, { ...h, version: 3, snapshotsOffset });
  if (oldTable) {
    (await p.refcounts.get()).free(oldTable.offset, oldTable.clusters);
    await p.writeback.flush();
  }
  progress(2, 2);
}

/** QEMU writes v3 snapshot entries with all 24 bytes of extra data; a v2 entry's disk size is the image's. */
function withV3Extra(s: Qcow2Snapshot, size: number): Partial<Qcow2Snapshot> {
  const extraData = new Uint8Array(24);
  extraData.set(s.extraData.subarray(0, 24));
  return { extraData, diskSize: s.diskSize ?? size };
}

/**
 * To version 2, which has no zero clusters, feature bits, other refcount widths, external data
 * files or zstd: refused where QEMU refuses, zero clusters turned into data clusters of zeros,
 * then the header rewritten as a v2 one.
 */
export async function downgradeToV2(p: Qcow2Internals, progress: Progress): Promise<void> {
  const h = p.header;
  if (h.refcountOrder !== 4) throw refuse('compat=0.10 requires refcount_bits=16');
  if (h.incompatibleFeatures & INCOMPAT.DATA_FILE) throw refuse('Cannot downgrade an image with a data file');
  if (p.snapshots.some((s) => s.vmStateSize > 0xffffffff || (s.diskSize ?? h.size) !== h.size)) throw refuse('Internal snapshots prevent downgrade of image');
  // The dirty bit is clear: amend settles lazy refcounts before it starts.
  const others = h.incompatibleFeatures & ~(INCOMPAT.COMPRESSION | INCOMPAT.DIRTY);
  if (others) throw refuse(`Cannot downgrade an image with incompatible features 0x${others.toString(16)} set`);
  await expandZeroClusters(p, progress);
  if ((h.incompatibleFeatures & INCOMPAT.COMPRESSION) && (await hasCompressedClusters(p))) {
    throw refuse('Cannot downgrade an image with zstd compression type and existing compressed clusters');
  }
  await p.writeback.flush();
  await rewriteHeader(p.file, h, {
    ...h, version: 2, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, compressionType: 0, extraHeaderFields: new Uint8Array(0),
  });
}

/**
 * QEMU's qcow2_expand_zero_clusters: every L2 table of the active state and of the snapshots,
 * each once, read from disk. A zero cluster without a host cluster becomes unallocated when no
 * backing file could show through, else gets a new cluster of zeros; one with a host cluster
 * gets zeros written there. Counts go to disk before the tables that use them, the zeros too.
 */
async function expandZeroClusters(p: Qcow2Internals, progress: Progress): Promise<void> {
  const { header: h, file, tables } = p;
  const cs = 2 ** h.clusterBits;
  await p.writeback.flush();
  const l2s = new Set(tables.l1.filter((o) => o !== 0));
  for (const s of p.snapshots) for (const o of await snapshotL1(p, s)) if (o !== 0) l2s.add(o);
  const zeros = new Uint8Array(cs);
  let done = 0;
  for (const l2 of l2s) {
    const table = await tables.readForCheck(l2);
    const dv = new DataView(table.buffer);
    const refcounts = await p.refcounts.get();
    const shared = await refcounts.get(l2 / cs);
    let changed = false;
    for (let i = 0; i < cs / 8; i++) {
      const e = dv.getBigUint64(i * 8);
      if (!(e & OFLAG_ZERO) || e & OFLAG_COMPRESSED) continue;
      let host = Number(e & L2E_OFFSET_MASK);
      if (host === 0 && h.backingFile === undefined) {
        dv.setBigUint64(i * 8, 0n);
        changed = true;
        continue;
      }
      if (host === 0) {
        host = await refcounts.allocate(1);
        // A table several snapshots share stands for each of them: so does its new cluster.
        if (shared > 1) await refcounts.add(host / cs, shared - 1);
      }
      await p.guard.check(host, cs);
      // Zeroed in place where the file has the cluster (QEMU's bdrv_pwrite_zeroes); written past its end.
      if (host + cs <= p.dataFile.size) await p.dataFile.writeZeroes(host, cs);
      else await p.dataFile.write(host, zeros);
      dv.setBigUint64(i * 8, BigInt(host) | (shared === 1 ? OFLAG_COPIED : 0n));
      changed = true;
    }
    if (changed) {
      await p.dataFile.flush();
      if (await refcounts.writeBack()) await file.flush();
      await file.write(l2, table);
      await file.flush();
    }
    progress(++done, l2s.size);
  }
}

/** The L2 table offsets a snapshot's L1 table names, read from disk. */
async function snapshotL1(p: Qcow2Internals, s: Qcow2Snapshot): Promise<number[]> {
  const raw = new Uint8Array(s.l1Size * 8);
  await p.file.read(s.l1TableOffset, raw);
  const dv = new DataView(raw.buffer);
  return Array.from({ length: s.l1Size }, (_, i) => Number(dv.getBigUint64(i * 8) & L1E_OFFSET_MASK));
}

/** Whether the active state has a compressed cluster (QEMU looks there only). */
async function hasCompressedClusters(p: Qcow2Internals): Promise<boolean> {
  for (let pos = 0; pos < p.header.size;) {
    const run = await p.mapping.mapRun(pos, p.header.size - pos);
    if (run.sub === Sub.Compressed) return true;
    pos += run.length;
  }
  return false;
}
