import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { alignUp } from '../../../core/limits.js';
import { compressCluster, type CompressionType } from './compression.js';
import type { DeflatePool } from './deflate-pool.js';
import { OFLAG_COMPRESSED } from './constants.js';
import type { Qcow2Geometry } from './geometry.js';
import type { L2Editor } from './l2-editor.js';
import { decode, Sub } from './l2-entry.js';
import type { MetadataLock } from './metadata-lock.js';
import type { MetadataWriteback } from './metadata-writeback.js';
import type { OverlapGuard } from './overlap-guard.js';
import type { Refcounts, RefcountLoader } from './refcounts.js';

const SECTOR = 512;

type ErrorContext = (op: string, offset?: number, length?: number) => Record<string, unknown> & { node: string; op: string };

/**
 * Guest clusters of one compressed write, compressed: `data` holds them end to end from guest
 * offset `offset` (the image's last cluster padded with zeros to a whole one), `length` guest
 * bytes of it are written, and `compressed[i]` is cluster i's compressed form, or null where it
 * did not compress below the cluster size and is written as it is.
 */
interface PreparedClusters {
  offset: number;
  length: number;
  data: Uint8Array;
  compressed: (Uint8Array | null)[];
}

/**
 * Deflate on worker threads, shared by every writer in the process; loaded on first use, so
 * that opening a qcow2 image does not pay for it.
 */
let deflatePool: Promise<DeflatePool> | undefined;

/**
 * A compressed write whose clusters are compressed already: `commit()` stores them. Splitting
 * the two lets a copy compress many requests at once and still store them in guest order.
 */
export interface CompressedWrite {
  commit(): Promise<void>;
}

/**
 * Compressed guest clusters (QEMU's qcow2_co_pwritev_compressed_part and _task): whole clusters
 * only (the image's last one may be short and is padded with zeros), each deflated or zstd'd into
 * less than a cluster, or else written uncompressed. Compressed clusters are packed byte by byte
 * into host clusters (qcow2_alloc_bytes), each host cluster counting one reference per compressed
 * cluster that touches it; the L2 entry holds the host offset and the number of 512-byte sectors
 * the data reaches into (spec §6, "Compressed Clusters Descriptor"). Only clusters that hold
 * nothing yet (unallocated or plain zero) may be written so, as in QEMU.
 */
export class CompressedWriter {
  /** Where the next compressed bytes may go: inside a host cluster that holds some (free_byte_offset); 0 for none. */
  private cursor = 0;
  /** The refcounts' state when the cursor was set: frees applied since may have freed or reused its cluster. */
  private cursorEpoch = '';

  constructor(private readonly parts: {
    g: Qcow2Geometry;
    file: BlockNode;
    compression: CompressionType;
    editor: L2Editor;
    lock: MetadataLock;
    writeback: MetadataWriteback;
    guard: OverlapGuard;
    refcounts: RefcountLoader;
    /** The virtual disk's size now. */
    size: () => number;
    /** An ordinary write, for clusters that do not compress. */
    writePlain: (offset: number, data: Uint8Array) => Promise<void>;
    /** Compressed bytes were written: cached decompressed clusters (by host offset) may be stale. */
    written: () => void;
    corruption: (what: string) => BlockError;
    ctx: ErrorContext;
  }) {}

  /** Checks the request and compresses its clusters, all at once (on worker threads). */
  async prepare(offset: number, data: Uint8Array): Promise<CompressedWrite> {
    const { g, size, ctx } = this.parts;
    const cs = g.clusterSize;
    const length = data.byteLength;
    if (g.hasDataFile) {
      throw new BlockError('ENOTSUP', 'qcow2: compressed writes are not supported with an external data file', ctx('write compressed', offset, length));
    }
    if (offset % cs !== 0) {
      throw new BlockError('EINVAL', `qcow2: a compressed write must start on a cluster boundary (offset ${offset}, cluster size ${cs})`, ctx('write compressed', offset, length));
    }
    if (length % cs !== 0 && offset + length !== size()) {
      throw new BlockError('EINVAL', `qcow2: a compressed write must cover whole clusters, or end at the end of the image (${length} bytes at offset ${offset})`, ctx('write compressed', offset, length));
    }
    if (offset + length > size()) {
      throw new BlockError('ERANGE', `write compressed of ${length} bytes at offset ${offset} is past the end of the image (size ${size()})`, ctx('write compressed', offset, length));
    }
    // The last cluster of an image whose size is not a multiple of the cluster size is
    // compressed as a whole cluster, padded with zeros.
    let whole = data;
    if (length % cs !== 0) {
      whole = new Uint8Array(alignUp(length, cs));
      whole.set(data);
    }
    const prepared: PreparedClusters = { offset, length, data: whole, compressed: await this.compress(whole) };
    return { commit: () => this.commit(prepared) };
  }

  /** Each cluster of `data` compressed, all at once: deflate on the worker pool, zstd on its own. */
  private compress(data: Uint8Array): Promise<(Uint8Array | null)[]> {
    const cs = this.parts.g.clusterSize;
    if (this.parts.compression === 'zlib') {
      deflatePool ??= import('./deflate-pool.js').then((m) => new m.DeflatePool());
      return deflatePool.then((pool) => pool.compressClusters(data, cs));
    }
    const clusters: Promise<Uint8Array | null>[] = [];
    for (let pos = 0; pos < data.byteLength; pos += cs) clusters.push(compressCluster(this.parts.compression, data.subarray(pos, pos + cs)));
    return Promise.all(clusters);
  }

  /**
   * Stores prepared clusters in guest order: runs that compressed under the lock, each run of
   * clusters that did not as one plain write (QEMU writes them one by one; one write of many
   * clusters allocates them together, with one metadata update).
   */
  private async commit(p: PreparedClusters): Promise<void> {
    const { lock, writeback, g } = this.parts;
    const cs = g.clusterSize;
    const count = p.compressed.length;
    for (let i = 0; i < count;) {
      const plain = p.compressed[i] === null;
      let end = i + 1;
      while (end < count && (p.compressed[end] === null) === plain) end++;
      if (plain) {
        const stop = Math.min(end * cs, p.length);
        await this.parts.writePlain(p.offset + i * cs, p.data.subarray(i * cs, stop));
      } else {
        const first = i;
        await lock.run(async () => {
          for (let k = first; k < end; k++) await this.store(p.offset + k * cs, p.compressed[k]!);
          await writeback.relieveCachePressure();
        });
        this.parts.written();
      }
      i = end;
    }
  }

  /**
   * One compressed cluster (qcow2_alloc_compressed_cluster_offset): refuses a cluster that is
   * allocated, places the bytes, then points the L2 entry at them. Runs under the metadata lock.
   * The data is written before the entry changes, and the writeback flushes data, refcounts and
   * tables in that order, so a crash leaves at worst a leaked range, never an entry pointing at
   * bytes not written.
   */
  private async store(guest: number, compressed: Uint8Array): Promise<void> {
    const { g, editor, guard, file, writeback } = this.parts;
    const { entry, view } = await editor.entryForWrite(guest);
    const old = decode(view, entry, 0);
    if (old.sub === Sub.Compressed || old.hostCluster !== 0) {
      // QEMU refuses too (-EIO): a compressed cluster is written once, into a cluster that holds
      // nothing; rewriting means discarding or zeroing first.
      throw new BlockError('EIO', `qcow2: cannot write a compressed cluster over an allocated one at guest offset ${guest}`,
        this.parts.ctx('write compressed', guest, g.clusterSize));
    }
    const length = compressed.byteLength;
    const host = await this.allocBytes(length);
    // The entry's offset field has 62 - (cluster_bits - 8) bits (QEMU's cluster_offset_mask).
    const offsetBits = 62 - (g.clusterBits - 8);
    if (host + length > 2 ** offsetBits) {
      throw new BlockError('ERANGE', `qcow2: no room for compressed data at host offset ${host}: compressed clusters must lie below ${2 ** offsetBits} bytes`,
        this.parts.ctx('write compressed', guest, g.clusterSize));
    }
    await guard.check(host, length);
    // Bytes that extend the file are padded to the end of their sector, so the file always ends
    // on a sector as QEMU leaves it (convert's final bdrv_pwrite_compressed of 0 bytes). The next
    // compressed cluster starts right after these bytes and overwrites the padding; the lock
    // orders the two writes.
    const end = host + length;
    const padded = end > file.size && end % SECTOR !== 0 ? padTo(compressed, alignUp(end, SECTOR) - host) : compressed;
    await file.write(host, padded);
    writeback.dataChanged();
    const sectors = Math.floor((end - 1) / SECTOR) - Math.floor(host / SECTOR);
    view.dv.setBigUint64(entry * g.entryBytes, OFLAG_COMPRESSED | (BigInt(sectors) << BigInt(offsetBits)) | BigInt(host));
    // No subclusters in a compressed cluster: its bitmap must be zero (spec §6).
    if (g.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0n);
  }

  /**
   * `size` bytes for compressed data (qcow2_alloc_bytes): right after the last compressed bytes
   * while they fit in that host cluster, or run on into the next cluster when that is the one
   * newly allocated; else from the start of a new cluster. Every host cluster the bytes touch
   * gains one reference.
   */
  private async allocBytes(size: number): Promise<number> {
    const cs = this.parts.g.clusterSize;
    const refcounts = await this.parts.refcounts.get();
    let offset = this.cursor;
    // The cursor's cluster holds our bytes as long as no free was applied (a free could have
    // emptied it and handed it to someone else); a full refcount takes no more references.
    if (offset !== 0 && (this.cursorEpoch !== epochOf(refcounts) || (await refcounts.get(Math.floor(offset / cs))) >= 2 ** refcounts.bits - 1)) offset = 0;
    if (offset !== 0 && cs - (offset % cs) >= size) {
      await refcounts.add(Math.floor(offset / cs), 1);
    } else {
      // allocate() counts the new cluster's reference.
      const fresh = await refcounts.allocate(1);
      if (fresh === 0) throw this.parts.corruption('preventing invalid allocation of compressed cluster at offset 0');
      if (offset !== 0 && alignUp(offset, cs) === fresh) await refcounts.add(Math.floor(offset / cs), 1);
      else offset = fresh;
    }
    const next = offset + size;
    this.cursor = next % cs === 0 ? 0 : next;
    this.cursorEpoch = epochOf(refcounts);
    return offset;
  }
}

function epochOf(refcounts: Refcounts): string {
  return `${refcounts.version}/${refcounts.freesApplied}`;
}

function padTo(data: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(data);
  return out;
}
