import type { BlockNode } from '../../../core/block-node.js';
import type { BlockError } from '../../../core/errors.js';
import { AllocSpace, type ZeroParts } from './alloc-space.js';
import { OFLAG_COPIED } from './constants.js';
import type { Qcow2Geometry } from './geometry.js';
import { HostAlloc, type HostAllocation } from './host-alloc.js';
import type { L2Editor } from './l2-editor.js';
import { decode, Sub, type Decoded, type EntryView } from './l2-entry.js';
import type { Qcow2Mapping } from './mapping.js';
import type { MetadataLock } from './metadata-lock.js';
import type { MetadataWriteback } from './metadata-writeback.js';
import type { OverlapGuard } from './overlap-guard.js';
import type { RefcountLoader } from './refcounts.js';
import { ZeroingClusters, type Zeroing } from './zeroing-clusters.js';

/**
 * Guest data writes: in place where the cluster is ours alone, else into newly allocated
 * clusters (copy-on-write), with the L2 entries pointing at them changed afterwards.
 */
export class DataWriter {
  private readonly allocSpace: AllocSpace;
  private readonly zeroing: ZeroingClusters;
  /** New clusters written from outside the driver (an in-kernel copy), between allocation and link. */
  private readonly hostAlloc: HostAlloc;

  constructor(private readonly parts: {
    g: Qcow2Geometry;
    file: BlockNode;
    dataFile: BlockNode;
    mapping: Qcow2Mapping;
    editor: L2Editor;
    lock: MetadataLock;
    writeback: MetadataWriteback;
    guard: OverlapGuard;
    refcounts: RefcountLoader;
    /** The guest's current bytes (the node's read path), for copy-on-write. */
    readGuest: (offset: number, into: Uint8Array) => Promise<void>;
    /** What unallocated clusters read from (undefined: zeros). */
    backing: BlockNode | undefined;
    /** Zero the untouched parts of new clusters with allocate zero writes where cheap (see AllocSpace). */
    allocSpace: boolean;
    /** The virtual disk's size now (resize changes it). */
    size: () => number;
    corruption: (what: string) => BlockError;
  }) {
    this.allocSpace = new AllocSpace({ dataFile: parts.dataFile, backing: parts.backing, enabled: parts.allocSpace });
    this.zeroing = new ZeroingClusters({ ...parts, zero: (host) => this.allocSpace.zero(host, parts.g.clusterSize) });
    this.hostAlloc = new HostAlloc({
      ...parts, zeroing: (index) => this.zeroing.get(index) !== undefined, checkHostInFile: (host, length) => this.checkHostInFile(host, length),
    });
  }

  /** Whole clusters of [offset, offset + length) made ready for data written from outside (see HostAllocation); undefined where they cannot be. */
  allocateHost(offset: number, length: number): Promise<HostAllocation | undefined> {
    return this.hostAlloc.allocate(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const { mapping, lock, writeback, g } = this.parts;
    // Overwrites of clusters that are ours alone change no metadata: they run concurrently,
    // outside the lock, as QEMU's do. The first cluster that needs allocation takes the lock.
    const cs = g.clusterSize;
    let start = 0;
    while (start < data.byteLength) {
      // mapRun answers at once from a cached table: no await for it then.
      const mapped = mapping.mapRun(offset + start, data.byteLength - start);
      const run = mapped instanceof Promise ? await mapped : mapped;
      if (run.sub === Sub.Normal && run.copied) {
        await this.inPlace(run.host, data.subarray(start, start + run.length));
        start += run.length;
        continue;
      }
      // A new cluster another write is zeroing: ours as soon as it reads zeros.
      const zeroing = this.zeroing.get(Math.floor((offset + start) / cs));
      if (!zeroing) break;
      const n = Math.min(data.byteLength - start, cs - ((offset + start) % cs));
      await this.afterZeroing(zeroing, offset + start, data.subarray(start, start + n));
      start += n;
    }
    if (start === data.byteLength) return;
    // Whole clusters that hold nothing yet, on a file whose writes wait for the device
    // (O_DIRECT): allocated under the lock, written outside it and linked under it again (QEMU's
    // handle_alloc, data write, link_l2), so that allocating writers in flight (a commit's
    // requests) overlap at the device instead of taking turns at the lock for each write. Into
    // the page cache a write is a copy, and the one pass under the lock below costs less
    // (measured: ~0.2 ms more per 2 MiB write split, and no overlap gained).
    const rest = data.byteLength - start;
    if ((offset + start) % cs === 0 && rest % cs === 0 && rest >= 2 * cs && this.parts.dataFile.writesWaitForDevice) {
      const allocation = await this.hostAlloc.allocate(offset + start, rest, { growByWrite: true });
      if (allocation) return this.fill(allocation, offset, data);
    }
    // Writes into clusters that are ours by the time the lock is held (allocated meanwhile, or
    // just now and zeroed) are started under the lock and awaited after it: their data needs
    // no metadata change, and the next allocating writer need not wait for it.
    const deferred: Promise<void>[] = [];
    try {
      await lock.run(async () => {
        for (let done = start; done < data.byteLength;) {
          const pos = offset + done;
          // A new cluster data is being written to from outside: this write goes in after its link.
          const pending = this.hostAlloc.pending(Math.floor(pos / cs));
          if (pending) {
            const n = Math.min(data.byteLength - done, cs - (pos % cs));
            const part = data.subarray(done, done + n);
            deferred.push(pending.then(() => this.write(pos, part)));
            done += n;
            continue;
          }
          const zeroing = this.zeroing.get(Math.floor(pos / cs));
          if (zeroing) {
            const n = Math.min(data.byteLength - done, cs - (pos % cs));
            deferred.push(this.afterZeroing(zeroing, pos, data.subarray(done, done + n)));
            done += n;
            continue;
          }
          const run = await mapping.mapRun(pos, data.byteLength - done);
          if (run.sub === Sub.Normal && run.copied) {
            deferred.push(this.inPlace(run.host, data.subarray(done, done + run.length)));
            done += run.length;
            continue;
          }
          let whole = Math.floor(Math.min(run.length, data.byteLength - done) / cs);
          // Stop short of a cluster being zeroed or written from outside: it has its host cluster already.
          for (let k = 1; k < whole; k++) if (this.zeroing.get(Math.floor(pos / cs) + k) || this.hostAlloc.pending(Math.floor(pos / cs) + k)) whole = k;
          if (pos % cs === 0 && whole >= 2 && (run.sub === Sub.UnallocatedPlain || run.sub === Sub.ZeroPlain)) {
            done += await this.writeNewClusters(pos, data.subarray(done, done + whole * cs));
            continue;
          }
          const n = Math.min(data.byteLength - done, cs - (pos % cs));
          await this.writeCluster(pos, data.subarray(done, done + n), deferred);
          done += n;
        }
        await writeback.relieveCachePressure();
      });
    } finally {
      await settleAll(deferred);
    }
  }

  /** A write into a cluster another write is zeroing: in place once zeroed; if that was refused, the ordinary way. */
  /** Writes an allocation's runs from `data` (which starts at guest `offset`), then links them. */
  private async fill(allocation: HostAllocation, offset: number, data: Uint8Array): Promise<void> {
    try {
      await Promise.all(allocation.runs.map((r) => allocation.file.write(r.host, data.subarray(r.offset - offset, r.offset - offset + r.length))));
    } catch (err) {
      await allocation.abort();
      throw err;
    }
    await allocation.commit();
  }

  private async afterZeroing(z: Zeroing, pos: number, data: Uint8Array): Promise<void> {
    if (await z.done) return this.inPlace(z.host + (pos % this.parts.g.clusterSize), data);
    return this.write(pos, data);
  }

  /** A write into a cluster that is ours alone: no metadata changes, no lock. */
  private inPlace(host: number, data: Uint8Array): Promise<void> {
    this.checkHostInFile(host, data.byteLength);
    const { guard, dataFile, writeback } = this.parts;
    // Every 4 KiB guest write of an allocated image comes here: no async frame of its own.
    const checking = guard.check(host, data.byteLength);
    return writeback.inPlace(checking ? checking.then(() => dataFile.write(host, data)) : dataFile.write(host, data));
  }

  /**
   * Writes into one cluster that is not ours to overwrite: unallocated, zero, compressed or
   * shared. The new host cluster gets the guest data merged with what the cluster read before
   * (copy-on-write), in one write; then the L2 entry points at it; the old one is freed at flush.
   * Where what the cluster read before is zeros, the host cluster is zeroed cheaply instead
   * (writeZeroed) if the storage can.
   */
  private async writeCluster(pos: number, data: Uint8Array, deferred: Promise<void>[]): Promise<void> {
    const { g, editor, guard, dataFile, writeback } = this.parts;
    const cs = g.clusterSize;
    const guestBase = pos - (pos % cs);
    const inCluster = pos - guestBase;
    const { entry, view } = await editor.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    const extended = g.extendedL2;
    // With extended L2 only the touched subclusters are written, into the cluster's own slot.
    const partialCluster = extended && (old.sub === Sub.Normal || old.sub === Sub.ZeroAlloc || old.sub === Sub.UnallocatedAlloc || old.sub === Sub.UnallocatedPlain || old.sub === Sub.ZeroPlain) && (old.copied || old.hostCluster === 0);
    const ss = g.subclusterSize;
    const from = partialCluster ? Math.floor(inCluster / ss) * ss : 0;
    const to = partialCluster ? Math.min(Math.ceil((inCluster + data.byteLength) / ss) * ss, cs) : cs;

    const zero = !extended && data.byteLength < cs ? await this.zeroCow(old, guestBase, inCluster, inCluster + data.byteLength) : undefined;

    const hosted = old.hostCluster !== 0 || (g.hasDataFile && old.copied);
    const reuse = hosted && old.copied && old.sub !== Sub.Compressed && (extended || old.sub === Sub.ZeroAlloc);
    let host: number;
    if (reuse) this.checkHostInFile(old.hostCluster, cs);
    if (reuse) host = old.hostCluster;
    else if (g.hasDataFile) host = guestBase;
    else host = await (await this.parts.refcounts.get()).allocate(1);
    await guard.check(host + from, to - from);
    if (zero && (await this.writeZeroed(zero, pos, data, old, host, reuse, view, entry, deferred))) return;

    const buf = new Uint8Array(to - from);
    const valid = Math.max(0, Math.min(to, this.parts.size() - guestBase) - from);
    if (inCluster > from || inCluster + data.byteLength < from + valid) await this.parts.readGuest(guestBase + from, buf.subarray(0, valid));
    buf.set(data, inCluster - from);
    await dataFile.write(host + from, buf);
    writeback.dataChanged();
    if (!reuse) editor.freeOld(old, view, entry);

    const dv = view.dv;
    dv.setBigUint64(entry * g.entryBytes, BigInt(host) | OFLAG_COPIED);
    if (extended) {
      const first = from / ss;
      const last = to / ss;
      let bitmap = partialCluster ? dv.getBigUint64(entry * 16 + 8) : 0n;
      for (let i = first; i < last; i++) bitmap = (bitmap | (1n << BigInt(i))) & ~(1n << BigInt(i + 32));
      if (!partialCluster) bitmap = 0xffffffffn;
      dv.setBigUint64(entry * 16 + 8, bitmap);
    }
  }

  /**
   * QEMU's is_zero_cow: for a partial write into a cluster that is not ours, which parts read
   * as zeros before it, when at least the parts the write leaves untouched do (a zero cluster,
   * or unallocated with no backing data under them); undefined otherwise.
   */
  private async zeroCow(old: Decoded, guestBase: number, from: number, to: number): Promise<ZeroParts | undefined> {
    if (!this.allocSpace.active) return undefined;
    if (old.sub === Sub.ZeroPlain || old.sub === Sub.ZeroAlloc) return { head: true, middle: true, tail: true };
    if (old.sub !== Sub.UnallocatedPlain) return undefined;
    const zero = await this.allocSpace.zeroParts(guestBase, this.parts.g.clusterSize, from, to);
    return zero.head && zero.tail ? zero : undefined;
  }

  /**
   * The write into a cluster whose untouched parts read as zeros (see zeroCow): the host
   * cluster is zeroed with a cheap allocate zero write and only the guest's bytes are written.
   * False when the storage cannot zero cheaply; the caller then copies-on-write as ever.
   *
   * Crash order holds as for any data: the zeroing is flushed before the L2 entry can reach
   * the disk (dataChanged). When the written range read as zeros too, the entry may point at
   * the zeroed cluster before the guest's bytes land: until they do, the cluster reads exactly
   * as before the write, so an entry flushed meanwhile is just as correct. A newly allocated
   * cluster is then zeroed outside the lock (ZeroingClusters): other allocations go on, and
   * other writes to the cluster go in place as soon as it is zeroed, without waiting for the
   * L2 update. Data writes are tracked as in-place writes, so a flush cannot free the cluster
   * under them.
   */
  private async writeZeroed(zero: ZeroParts, pos: number, data: Uint8Array, old: Decoded, host: number, reuse: boolean,
    view: EntryView, entry: number, deferred: Promise<void>[]): Promise<boolean> {
    const { g, editor, dataFile, writeback } = this.parts;
    const inCluster = pos % g.clusterSize;
    if (zero.middle && !reuse && !g.hasDataFile) {
      const z = this.zeroing.start(pos - inCluster, host);
      deferred.push(z.done.then((ok) => (ok ? Promise.all([z.linked, this.inPlace(host + inCluster, data)]).then(() => undefined) : this.write(pos, data))));
      return true;
    }
    // An external data file may not reach this far; growing it is the guest write's business.
    if (g.hasDataFile && host + g.clusterSize > dataFile.size) return false;
    if (!(await this.allocSpace.zero(host, g.clusterSize))) return false;
    writeback.dataChanged();
    if (!reuse) editor.freeOld(old, view, entry);
    const point = () => view.dv.setBigUint64(entry * g.entryBytes, BigInt(host) | OFLAG_COPIED);
    if (zero.middle) {
      point();
      deferred.push(writeback.inPlace(dataFile.write(host + inCluster, data)));
    } else {
      // Backing data under the written range only: pointing at zeros early would show zeros there.
      await dataFile.write(host + inCluster, data);
      point();
    }
    return true;
  }

  /**
   * Whole clusters that hold nothing yet (unallocated or plain zero): nothing to copy, so they get
   * one contiguous allocation and one data write, as a sequential writer wants.
   */
  private async writeNewClusters(pos: number, data: Uint8Array): Promise<number> {
    const { g, editor, guard, dataFile, writeback } = this.parts;
    const cs = g.clusterSize;
    const count = data.byteLength / cs;
    const host = g.hasDataFile ? pos : await (await this.parts.refcounts.get()).allocate(count);
    await guard.check(host, data.byteLength);
    await dataFile.write(host, data);
    writeback.dataChanged();
    for (let i = 0; i < count; i++) {
      const { entry, view } = await editor.entryForWrite(pos + i * cs);
      view.dv.setBigUint64(entry * g.entryBytes, BigInt(host + i * cs) | OFLAG_COPIED);
      if (g.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0xffffffffn);
    }
    return data.byteLength;
  }

  /**
   * A cluster the image owns lies inside its file (the file grows as clusters are written). An
   * entry pointing past the end is corrupt, and following it would grow the file to wherever
   * it points.
   */
  private checkHostInFile(host: number, length: number): void {
    const { g, file } = this.parts;
    if (g.hasDataFile) return;
    const fileEnd = Math.ceil(file.size / g.clusterSize) * g.clusterSize;
    if (host + length > fileEnd) {
      throw this.parts.corruption(`a cluster at host offset 0x${host.toString(16)} lies past the end of the file (0x${fileEnd.toString(16)})`);
    }
  }
}

/** Waits for every promise; rethrows the first failure once all have settled (none is left unobserved). */
async function settleAll(promises: Promise<void>[]): Promise<void> {
  if (promises.length === 0) return;
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
