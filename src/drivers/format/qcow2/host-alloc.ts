import type { BlockNode } from '../../../core/block-node.js';
import { BlockError, isNotSupported } from '../../../core/errors.js';
import { zeroBuffer } from '../../../core/zero-detect.js';
import { OFLAG_COPIED } from './constants.js';
import type { Qcow2Geometry } from './geometry.js';
import type { L2Editor } from './l2-editor.js';
import { decode, Sub } from './l2-entry.js';
import type { Qcow2Mapping } from './mapping.js';
import type { MetadataLock } from './metadata-lock.js';
import type { MetadataWriteback } from './metadata-writeback.js';
import type { OverlapGuard } from './overlap-guard.js';
import type { RefcountLoader } from './refcounts.js';

/** Guest bytes [offset, offset + length) go to host bytes [host, host + length) of the image's file. */
export interface HostRun {
  offset: number;
  length: number;
  host: number;
}

export interface GuestRange {
  offset: number;
  length: number;
}

/**
 * Whole clusters of a guest range made ready for data written from outside the driver (an
 * in-kernel copy into the image's file): QEMU's allocating write cut in its three steps,
 * qcow2_alloc_host_offset (here), the data write (the caller's), qcow2_alloc_cluster_link_l2
 * (commit) or qcow2_alloc_cluster_abort (abort). The caller must end every allocation with one
 * of the two: until then other writes to its new clusters wait, and a flush that frees clusters
 * waits for its clusters written in place.
 */
export interface HostAllocation {
  readonly offset: number;
  readonly length: number;
  /** The node whose host offsets the runs are (the image's file). */
  readonly file: BlockNode;
  /** The unit written ranges come in: a subcluster with extended L2, else a cluster. */
  readonly granule: number;
  /** In guest order, covering [offset, offset + length); each run contiguous in the file. */
  readonly runs: readonly HostRun[];
  /**
   * The caller's data is in the file at the runs' host offsets (for `written`, default all of
   * the range, in units of `granule`; new clusters nothing was written to are given back):
   * the L2 entries point at it from now on. The data is flushed before any table that points
   * at it, so a crash leaves leaked clusters at worst, never an entry pointing at unwritten data.
   */
  commit(written?: readonly GuestRange[]): Promise<void>;
  /** The data was not (all) written: the new clusters are given back, the entries never changed. */
  abort(): Promise<void>;
}

/** A cluster of an allocation: newly allocated (linked at commit), or one of ours written in place. */
interface Cluster {
  host: number;
  fresh: boolean;
}

/**
 * Allocations for data written from outside (see HostAllocation). A cluster qualifies when its
 * data needs nothing of what it held: unallocated or plain zero (no host cluster; whole
 * clusters are written, so no backing data needs copying), or ours alone (COPIED, every
 * subcluster allocated), written in place as QEMU's handle_copied does. Anything else
 * (compressed, shared with a snapshot, preallocated zero, partly allocated subclusters, an
 * external data file, a cluster another write is allocating) answers undefined: the caller
 * writes the ordinary way.
 *
 * Allocation and linking each hold the metadata lock, the data write in between does not, so
 * allocations, ordinary writes and flushes go on meanwhile. A new cluster stays invisible until
 * linked: reads see what was there before, ordinary writes to it wait for the link (`pending`,
 * QEMU's handle_dependencies) and then write into it in place.
 */
export class HostAlloc {
  /** New clusters between allocation and commit or abort, by guest cluster index: settled then. */
  private readonly pendingClusters = new Map<number, Promise<void>>();

  constructor(private readonly parts: {
    g: Qcow2Geometry;
    file: BlockNode;
    mapping: Qcow2Mapping;
    editor: L2Editor;
    lock: MetadataLock;
    writeback: MetadataWriteback;
    guard: OverlapGuard;
    refcounts: RefcountLoader;
    size: () => number;
    /** A cluster being zeroed for another write (ZeroingClusters): it has its host cluster already. */
    zeroing: (clusterIndex: number) => boolean;
    /** Throws when an entry points past the end of the file (DataWriter's check). */
    checkHostInFile: (host: number, length: number) => void;
  }) {}

  /** Settles when the new cluster at this guest cluster index is linked or given back; undefined when none is pending. */
  pending(clusterIndex: number): Promise<void> | undefined {
    return this.pendingClusters.get(clusterIndex);
  }

  /** Called with the metadata lock free. */
  /**
   * `growByWrite`: the caller writes every byte of the range through the file node, whose writes
   * grow the file as they land, so the allocation need not extend it first (a resize waits for
   * the node's requests in flight, which would make allocations take turns again).
   */
  async allocate(offset: number, length: number, opts: { growByWrite?: boolean } = {}): Promise<HostAllocation | undefined> {
    const { g, lock } = this.parts;
    const cs = g.clusterSize;
    if (g.hasDataFile || length <= 0 || offset % cs !== 0 || length % cs !== 0 || offset + length > this.parts.size()) return undefined;
    return lock.run(async () => {
      const clusters = await this.classify(offset, length);
      return clusters && this.reserve(offset, clusters, opts.growByWrite === true);
    });
  }

  /** What each cluster of the range is, or undefined when one does not qualify. */
  private async classify(offset: number, length: number): Promise<Cluster[] | undefined> {
    const { g, mapping } = this.parts;
    const cs = g.clusterSize;
    const first = offset / cs;
    const clusters: (Cluster | undefined)[] = new Array<Cluster | undefined>(length / cs);
    for (let i = 0; i < clusters.length; i++) if (this.pendingClusters.has(first + i) || this.parts.zeroing(first + i)) return undefined;
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const mapped = mapping.mapRun(pos, end - pos);
      const run = mapped instanceof Promise ? await mapped : mapped;
      const fresh = run.sub === Sub.UnallocatedPlain || run.sub === Sub.ZeroPlain;
      if (!fresh && !(run.sub === Sub.Normal && run.copied)) return undefined;
      // A run may start or end inside a cluster (subclusters): each cluster must be one kind throughout.
      for (let p = pos; p < pos + run.length; p = (Math.floor(p / cs) + 1) * cs) {
        const i = Math.floor(p / cs) - first;
        const host = fresh ? 0 : run.host + (p - pos) - (p % cs);
        const seen = clusters[i];
        if (seen && (seen.fresh !== fresh || seen.host !== host)) return undefined;
        clusters[i] = { host, fresh };
      }
      pos += run.length;
    }
    return clusters as Cluster[];
  }

  /** Under the lock: host clusters for the new ones (one contiguous run), the checks a data write makes, and the pending marks. */
  private async reserve(offset: number, clusters: Cluster[], growByWrite: boolean): Promise<HostAllocation> {
    const { g, guard, file } = this.parts;
    const cs = g.clusterSize;
    for (const c of clusters) {
      if (c.fresh) continue;
      this.parts.checkHostInFile(c.host, cs);
      await guard.check(c.host, cs);
    }
    const fresh = clusters.filter((c) => c.fresh).length;
    // The L2 tables first, as QEMU's handle_alloc gets the cluster table before it allocates:
    // a table lands before the data it maps, as an ordinary write lays them out.
    let table = -1;
    for (const [i, c] of clusters.entries()) {
      const t = Math.floor((offset / cs + i) / g.l2Entries);
      if (!c.fresh || t === table) continue;
      await this.parts.editor.entryForWrite(offset + i * cs);
      table = t;
    }
    if (fresh > 0) {
      const refcounts = await this.parts.refcounts.get();
      const start = await refcounts.allocate(fresh);
      try {
        await guard.check(start, fresh * cs);
        if (!growByWrite) await this.grow(start + fresh * cs);
      } catch (err) {
        refcounts.free(start, fresh);
        throw err;
      }
      let next = start;
      for (const c of clusters) {
        if (!c.fresh) continue;
        c.host = next;
        next += cs;
      }
    }
    const runs: HostRun[] = [];
    clusters.forEach((c, i) => {
      const last = runs[runs.length - 1];
      if (last && last.host + last.length === c.host) last.length += cs;
      else runs.push({ offset: offset + i * cs, length: cs, host: c.host });
    });
    let settle!: () => void;
    const settled = new Promise<void>((resolve) => (settle = resolve));
    const first = offset / cs;
    clusters.forEach((c, i) => c.fresh && this.pendingClusters.set(first + i, settled));
    // Writes in place are tracked as the ordinary ones are: a flush lets them land before a
    // cluster they hit can be reused. They have landed when the caller commits or aborts, before
    // either takes the lock (a flush holding it may be waiting for them).
    let landed: () => void = () => undefined;
    if (fresh < clusters.length) void this.parts.writeback.inPlace(new Promise<void>((resolve) => (landed = resolve))).catch(() => undefined);
    return new Allocation(this, offset, clusters, runs, () => landed(), settle, file, g.subclusterSize);
  }

  /**
   * The file grows as a data write past its end would grow it: the node's size must cover a
   * cluster before an entry points at it (reads past the end read zeros, and an entry past it
   * is taken for corruption). Extended, not written: with extended L2 the caller may leave the
   * last subclusters unwritten, and they must take no space (as qemu-img leaves them). Where the
   * file cannot be resized (a block device ends where it ends), writing the last block grows it.
   */
  private async grow(end: number): Promise<void> {
    const file = this.parts.file;
    if (end <= file.size) return;
    try {
      await file.resize(end);
    } catch (err) {
      if (!isNotSupported(err)) throw err;
      const n = Math.min(end - file.size, 4096);
      await file.write(end - n, zeroBuffer(n));
    }
  }

  /** Commit: under the lock, the new clusters written to are linked and the others given back. */
  async link(offset: number, clusters: Cluster[], written: readonly GuestRange[], settle: () => void): Promise<void> {
    const { g, lock, editor, writeback } = this.parts;
    const cs = g.clusterSize;
    const ss = g.subclusterSize;
    const masks = writtenMasks(offset, clusters.length, cs, ss, written);
    await lock.run(async () => {
      try {
        writeback.dataChanged();
        const size = this.parts.size();
        for (const [i, c] of clusters.entries()) {
          if (!c.fresh) continue;
          const guest = offset + i * cs;
          const mask = masks[i]!;
          // Shrunk meanwhile, or not written at all: nothing may point at the cluster.
          if (mask === 0 || guest >= size) {
            (await this.parts.refcounts.get()).free(c.host, 1);
            continue;
          }
          const { entry, view } = await editor.entryForWrite(guest);
          // Whatever the entry says now (a zero write may have come between) gives way to the cluster.
          editor.freeOld(decode(view, entry, 0), view, entry);
          view.dv.setBigUint64(entry * g.entryBytes, BigInt(c.host) | OFLAG_COPIED);
          if (g.extendedL2) {
            // Written subclusters are allocated; the others keep reading as they did (zeros stay zeros).
            const zeros = view.dv.getUint32(entry * 16 + 8) & ~mask;
            view.dv.setUint32(entry * 16 + 8, zeros >>> 0);
            view.dv.setUint32(entry * 16 + 12, mask >>> 0);
          }
        }
      } finally {
        this.forget(offset, clusters, settle);
      }
      await writeback.relieveCachePressure();
    });
  }

  /** Abort: under the lock, the new clusters go back (at the next flush, as every free). */
  async giveBack(offset: number, clusters: Cluster[], settle: () => void): Promise<void> {
    await this.parts.lock.run(async () => {
      try {
        if (clusters.some((c) => c.fresh)) {
          const refcounts = await this.parts.refcounts.get();
          for (const c of clusters) if (c.fresh) refcounts.free(c.host, 1);
        }
      } finally {
        this.forget(offset, clusters, settle);
      }
    });
  }

  private forget(offset: number, clusters: Cluster[], settle: () => void): void {
    const first = offset / this.parts.g.clusterSize;
    clusters.forEach((c, i) => c.fresh && this.pendingClusters.delete(first + i));
    settle();
  }
}

class Allocation implements HostAllocation {
  private ended = false;

  constructor(
    private readonly owner: HostAlloc,
    readonly offset: number,
    private readonly clusters: Cluster[],
    readonly runs: readonly HostRun[],
    /** The caller's writes have landed (commit or abort): in-place ones stop holding up flushes. */
    private readonly landed: () => void,
    private readonly settle: () => void,
    readonly file: BlockNode,
    readonly granule: number,
  ) {}

  get length(): number {
    return this.runs.reduce((sum, r) => sum + r.length, 0);
  }

  async commit(written: readonly GuestRange[] = [{ offset: this.offset, length: this.length }]): Promise<void> {
    this.end('commit');
    const bad = written.find((w) => w.length < 0 || w.offset < this.offset || w.offset + w.length > this.offset + this.length || w.offset % this.granule !== 0 || w.length % this.granule !== 0);
    if (bad) {
      await this.owner.giveBack(this.offset, this.clusters, this.settle);
      throw new BlockError('EINVAL', `written range ${bad.offset}+${bad.length} is not in whole units of ${this.granule} bytes inside the allocation ${this.offset}+${this.length}`, { op: 'write', offset: bad.offset, length: bad.length });
    }
    await this.owner.link(this.offset, this.clusters, written, this.settle);
  }

  async abort(): Promise<void> {
    this.end('abort');
    await this.owner.giveBack(this.offset, this.clusters, this.settle);
  }

  private end(op: string): void {
    if (this.ended) throw new BlockError('EINVAL', `${op}: this allocation was committed or aborted already`, { op: 'write', offset: this.offset });
    this.ended = true;
    this.landed();
  }
}

/** Per cluster, the bitmap of its subclusters `written` covers (bit 0: the first; one bit without subclusters). */
function writtenMasks(offset: number, count: number, cs: number, ss: number, written: readonly GuestRange[]): number[] {
  const masks = new Array<number>(count).fill(0);
  const perCluster = cs / ss;
  for (const w of written) {
    for (let s = w.offset / ss; s < (w.offset + w.length) / ss; s++) {
      const rel = s - offset / ss;
      masks[Math.floor(rel / perCluster)]! |= 1 << (rel % perCluster);
    }
  }
  return masks;
}
