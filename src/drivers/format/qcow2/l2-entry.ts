/**
 * What one guest (sub)cluster is, decoded from its L2 entry (spec §6–7; QEMU's
 * qcow2_get_cluster_type and qcow2_get_subcluster_type). Entries are read as two 32-bit halves:
 * the offset field spans bits 9–55, beyond what bitwise JS operators reach in one number.
 */
export const enum Sub {
  /** Not allocated here: read from the backing file (or zeros). */
  UnallocatedPlain,
  /** A host cluster exists but this subcluster still reads from the backing file. */
  UnallocatedAlloc,
  ZeroPlain,
  /** Reads as zeros; a host cluster is reserved for it. */
  ZeroAlloc,
  Normal,
  Compressed,
}

export interface EntryView {
  /** The table bytes (a whole L2 table). */
  dv: DataView;
  extendedL2: boolean;
  hasDataFile: boolean;
  clusterBits: number;
  /** 2 ** clusterBits as a number: `2 ** bits` in the per-entry path is a pow() call. */
  clusterSize: number;
}

export interface Decoded {
  sub: Sub;
  /** Host offset of the cluster (not the subcluster), 0 when none. */
  hostCluster: number;
  /** Reserved bits set, a misaligned or impossible combination: the image is corrupt. */
  invalid: string | undefined;
  copied: boolean;
}

const TWO32 = 2 ** 32;

/** The cluster descriptor's offset field (bits 9–55). */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

/** Decodes entry `index` for subcluster `sub` (0 when the image has no subclusters). */
export function decode(v: EntryView, index: number, sub: number): Decoded {
  const at = index * (v.extendedL2 ? 16 : 8);
  const hi = v.dv.getUint32(at);
  const lo = v.dv.getUint32(at + 4);
  const copied = (hi & 0x80000000) !== 0;
  if (hi & 0x40000000) {
    const invalid = v.extendedL2 && (v.dv.getUint32(at + 8) !== 0 || v.dv.getUint32(at + 12) !== 0) ? 'compressed cluster with a subcluster bitmap' : undefined;
    return { sub: Sub.Compressed, hostCluster: 0, invalid: invalid ?? (copied ? 'compressed cluster marked COPIED' : undefined), copied };
  }
  const host = entryOffset(hi, lo);
  const reserved = (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0;
  let invalid = reserved ? 'reserved bits set in an L2 entry' : undefined;
  if (!v.extendedL2) {
    if (lo & 1) return { sub: host ? Sub.ZeroAlloc : Sub.ZeroPlain, hostCluster: host, invalid, copied };
    if (host === 0 && !(v.hasDataFile && copied)) return { sub: Sub.UnallocatedPlain, hostCluster: 0, invalid, copied };
    if (host % v.clusterSize !== 0) invalid ??= `host offset 0x${host.toString(16)} is not cluster-aligned`;
    return { sub: Sub.Normal, hostCluster: host, invalid, copied };
  }
  if (lo & 1) invalid ??= 'ZERO flag set in an extended L2 entry';
  const allocBits = v.dv.getUint32(at + 12);
  const zeroBits = v.dv.getUint32(at + 8);
  const alloc = (allocBits >>> sub) & 1;
  const zero = (zeroBits >>> sub) & 1;
  const allocated = host !== 0 || (v.hasDataFile && copied);
  if (!allocated) {
    if (allocBits !== 0) invalid ??= 'subclusters allocated in an unallocated cluster';
    return { sub: zero ? Sub.ZeroPlain : Sub.UnallocatedPlain, hostCluster: 0, invalid, copied };
  }
  if ((allocBits & zeroBits) !== 0) invalid ??= 'subcluster both allocated and zero';
  if (host % v.clusterSize !== 0) invalid ??= `host offset 0x${host.toString(16)} is not cluster-aligned`;
  const type = zero ? Sub.ZeroAlloc : alloc ? Sub.Normal : Sub.UnallocatedAlloc;
  return { sub: type, hostCluster: host, invalid, copied };
}

/** Where a compressed cluster's bytes are: [offset, offset + length) in the host file. */
export interface CompressedRange {
  offset: number;
  length: number;
  /** The 512-byte sectors the entry names, which its refcounts cover. */
  sectorsStart: number;
  sectorsLength: number;
}

export function compressedRange(v: EntryView, index: number): CompressedRange {
  const at = index * (v.extendedL2 ? 16 : 8);
  const entry = v.dv.getBigUint64(at) & ((1n << 62n) - 1n);
  const shift = BigInt(62 - (v.clusterBits - 8));
  const offset = Number(entry & ((1n << shift) - 1n));
  const sectors = Number((entry >> shift) & ((1n << BigInt(v.clusterBits - 8)) - 1n)) + 1;
  const sectorsStart = offset - (offset % 512);
  return { offset, length: sectors * 512 - (offset % 512), sectorsStart, sectorsLength: sectors * 512 };
}
