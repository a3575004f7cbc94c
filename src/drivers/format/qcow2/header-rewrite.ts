import type { BlockNode } from '../../../core/block-node.js';
import { EXT, V2_HEADER_LENGTH, V3_HEADER_LENGTH } from './constants.js';
import type { Qcow2Header } from './header.js';
import { writeHeaderCluster, type HeaderImage } from './header-writer.js';

/**
 * Rewrites the header of an open image (QEMU's qcow2_update_header: a new version, a new backing
 * link, features), crash-safe where the change allows it. The caller has flushed everything the
 * new header refers to.
 *
 * A sector (512 bytes) is written whole or not at all; a longer write may land in part. So:
 * - only bytes the new header is read from (the fixed part, the extensions, the backing name)
 *   and that change are written; stale bytes past them are left, since no reader looks there;
 * - a change inside one sector is one write;
 * - a new backing file name with the rest beyond sector 0 unchanged (the usual rebase) goes in
 *   two steps: the name to bytes the old header does not read, flushed, then sector 0, which
 *   points at it. Until the second write lands the old header is intact; after it, the new one;
 * - anything else (a version change, an extension added or removed) moves the extensions, and
 *   no order of writes keeps both headers readable: it is one write, flushed, as QEMU's is.
 */
export async function rewriteHeader(file: BlockNode, h: Qcow2Header, next: Qcow2Header): Promise<void> {
  const cs = 2 ** h.clusterBits;
  const old = new Uint8Array(cs);
  await file.read(0, old.subarray(0, Math.min(cs, file.size)));
  const canonical = new Uint8Array(cs);
  writeHeaderCluster(headerImage(next), canonical);
  const dv = new DataView(canonical.buffer);
  // Fields a new image leaves zero, which an existing one may have.
  dv.setUint32(60, next.nbSnapshots);
  dv.setBigUint64(64, BigInt(next.snapshotsOffset));
  const name = nameRange(canonical);
  const extEnd = extensionsEnd(canonical);

  const changed = differing(old, canonical, [[0, extEnd], name]);
  let nameOffset = name[0];
  if (changed !== undefined) {
    const [first, last] = changed;
    // Only sector 0 and the name change: the name can move, and sector 0 switch to it.
    const relocatable = next.backingFile !== undefined && !differsIn(old, canonical, SECTOR, extEnd);
    const free = relocatable ? freeNameOffset(old, h, extEnd, name[1] - name[0], cs) : undefined;
    if (Math.floor(first / SECTOR) !== Math.floor(last / SECTOR) && free !== undefined) {
      const moved = canonical.slice();
      moved.fill(0, name[0], name[1]);
      moved.set(canonical.subarray(name[0], name[1]), free);
      new DataView(moved.buffer).setBigUint64(8, BigInt(free));
      await writeFlushed(file, moved, free, free + (name[1] - name[0]));
      await writeFlushed(file, moved, 0, Math.min(SECTOR, cs));
      nameOffset = free;
    } else {
      await writeFlushed(file, canonical, first, last + 1);
    }
  }
  Object.assign(h, next, {
    headerLength: next.version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH + next.extraHeaderFields.byteLength,
    backingFileOffset: next.backingFile === undefined ? 0 : nameOffset,
  });
}

const SECTOR = 512;

/** What the header writer needs from a parsed header; v2 has no autoclear bits to guard bitmaps with. */
function headerImage(h: Qcow2Header): HeaderImage {
  return {
    version: h.version,
    clusterBits: h.clusterBits,
    size: h.size,
    l1Size: h.l1Size,
    l1TableOffset: h.l1TableOffset,
    refcountTableOffset: h.refcountTableOffset,
    refcountTableClusters: h.refcountTableClusters,
    incompatibleFeatures: h.incompatibleFeatures,
    compatibleFeatures: h.compatibleFeatures,
    autoclearFeatures: h.autoclearFeatures,
    refcountOrder: h.refcountOrder,
    compressionType: h.compressionType,
    backingFile: h.backingFile,
    backingFormat: h.backingFile === undefined ? undefined : h.backingFormat,
    dataFile: h.dataFile,
    extraHeaderFields: h.version === 3 ? h.extraHeaderFields : undefined,
    otherExtensions: h.unknownExtensions.filter((e) => h.version === 3 || e.type !== EXT.BITMAPS),
  };
}

/** [offset, end) of the backing file name a header cluster names ([0, 0) for none). */
function nameRange(cluster: Uint8Array): [number, number] {
  const dv = new DataView(cluster.buffer, cluster.byteOffset);
  const offset = Number(dv.getBigUint64(8));
  return offset === 0 ? [0, 0] : [offset, offset + dv.getUint32(16)];
}

/** Where the extension area of a header cluster ends (after its end marker). */
function extensionsEnd(cluster: Uint8Array): number {
  const dv = new DataView(cluster.buffer, cluster.byteOffset);
  let at = dv.getUint32(4) === 2 ? V2_HEADER_LENGTH : dv.getUint32(100);
  while (at + 8 <= cluster.byteLength) {
    const len = dv.getUint32(at + 4);
    if (dv.getUint32(at) === EXT.END) return at + 8;
    at += 8 + Math.ceil(len / 8) * 8;
  }
  return cluster.byteLength;
}

/** First and last byte inside `ranges` where `a` and `b` differ. */
function differing(a: Uint8Array, b: Uint8Array, ranges: [number, number][]): [number, number] | undefined {
  let first = Infinity;
  let last = -1;
  for (const [start, end] of ranges) {
    for (let i = start; i < end; i++) {
      if (a[i] === b[i]) continue;
      first = Math.min(first, i);
      last = Math.max(last, i);
    }
  }
  return last < 0 ? undefined : [first, last];
}

function differsIn(a: Uint8Array, b: Uint8Array, start: number, end: number): boolean {
  return differing(a, b, [[start, end]]) !== undefined;
}

/**
 * A place for a new backing name of `length` bytes that the current header does not read: past
 * both extension areas and clear of the current name, inside the cluster. Undefined if none.
 */
function freeNameOffset(old: Uint8Array, h: Qcow2Header, newExtEnd: number, length: number, cs: number): number | undefined {
  const [oldStart, oldEnd] = nameRange(old);
  const floor = Math.max(extensionsEnd(old), newExtEnd);
  const align = (n: number) => Math.ceil(n / 8) * 8;
  for (const at of [align(floor), align(Math.max(floor, oldEnd))]) {
    const clear = h.backingFile === undefined || at + length <= oldStart || at >= oldEnd;
    if (clear && at + length <= cs) return at;
  }
  return undefined;
}

async function writeFlushed(file: BlockNode, bytes: Uint8Array, start: number, end: number): Promise<void> {
  await file.write(start, bytes.subarray(start, end));
  await file.flush();
}
