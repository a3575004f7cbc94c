import { BlockError } from '../../../core/errors.js';
import { EXT, QCOW2_MAGIC, V2_HEADER_LENGTH, V3_HEADER_LENGTH } from './constants.js';

/*
 * Serialises cluster 0 the way QEMU's qcow2_update_header() lays it out, so that an image vdisk
 * creates has the same first cluster, byte for byte, as one qemu-img creates with the same options:
 * the header (72 bytes for v2, QEMU's 112-byte struct for v3), then the extensions in QEMU's order
 * (backing format, external data file, feature name table, end marker), each padded to 8 bytes,
 * then the backing file name right after the end marker; the rest of the cluster is zeros.
 */

/** The header fields a writer chooses; everything else is zero in a new image. */
export interface HeaderImage {
  version: 2 | 3;
  clusterBits: number;
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  compressionType: number;
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
  dataFile?: string | undefined;
  /** An existing image's v3 header fields past byte 112 that vdisk does not know, kept. */
  extraHeaderFields?: Uint8Array | undefined;
  /** An existing image's extensions vdisk does not interpret, kept (QEMU writes them after its own). */
  otherExtensions?: readonly { type: number; data: Uint8Array }[] | undefined;
}

/** QEMU's feature name table (type, bit, name), in QEMU's order. */
export const QEMU_FEATURE_NAMES: readonly (readonly [number, number, string])[] = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];
const FEATURE_ENTRY = 48;
/**
 * QEMU leaves the feature table out for clusters of 4 KiB and less: with 512-byte clusters it
 * would leave almost no room for a backing file name.
 */
const FEATURE_TABLE_MIN_CLUSTER = 4096;

const encoder = new TextEncoder();

function padded(len: number): number {
  return Math.ceil(len / 8) * 8;
}

/** The extensions QEMU writes for these fields, as (type, payload) in order. */
function extensions(h: HeaderImage): [number, Uint8Array][] {
  const out: [number, Uint8Array][] = [];
  if (h.backingFormat !== undefined) out.push([EXT.BACKING_FORMAT, encoder.encode(h.backingFormat)]);
  if (h.dataFile !== undefined) out.push([EXT.DATA_FILE, encoder.encode(h.dataFile)]);
  if (h.version >= 3 && 2 ** h.clusterBits > FEATURE_TABLE_MIN_CLUSTER) {
    const table = new Uint8Array(QEMU_FEATURE_NAMES.length * FEATURE_ENTRY);
    QEMU_FEATURE_NAMES.forEach(([type, bit, name], i) => {
      table[i * FEATURE_ENTRY] = type;
      table[i * FEATURE_ENTRY + 1] = bit;
      table.set(encoder.encode(name), i * FEATURE_ENTRY + 2);
    });
    out.push([EXT.FEATURE_TABLE, table]);
  }
  for (const e of h.otherExtensions ?? []) out.push([e.type, e.data]);
  return out;
}

/** Bytes of cluster 0 that the header, its extensions and the backing file name take. */
export function headerBytesNeeded(h: HeaderImage): number {
  const fixed = h.version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH + (h.extraHeaderFields?.byteLength ?? 0);
  const exts = extensions(h).reduce((n, [, data]) => n + 8 + padded(data.byteLength), 0);
  const backing = h.backingFile === undefined ? 0 : encoder.encode(h.backingFile).byteLength;
  return fixed + exts + 8 + backing;
}

/** Writes cluster 0 of an image into `out` (at least one cluster long; bytes past the end are left alone). */
export function writeHeaderCluster(h: HeaderImage, out: Uint8Array): void {
  const clusterSize = 2 ** h.clusterBits;
  if (headerBytesNeeded(h) > clusterSize) {
    throw new BlockError('EINVAL', `Could not update qcow2 header: the header, its extensions and the backing file name do not fit in one ${clusterSize}-byte cluster`, { op: 'create' });
  }
  out.fill(0, 0, clusterSize);
  const dv = new DataView(out.buffer, out.byteOffset, clusterSize);
  dv.setUint32(0, QCOW2_MAGIC);
  dv.setUint32(4, h.version);
  dv.setUint32(20, h.clusterBits);
  dv.setBigUint64(24, BigInt(h.size));
  dv.setUint32(32, 0);
  dv.setUint32(36, h.l1Size);
  dv.setBigUint64(40, BigInt(h.l1TableOffset));
  dv.setBigUint64(48, BigInt(h.refcountTableOffset));
  dv.setUint32(56, h.refcountTableClusters);
  let at = V2_HEADER_LENGTH;
  if (h.version === 3) {
    dv.setBigUint64(72, h.incompatibleFeatures);
    dv.setBigUint64(80, h.compatibleFeatures);
    dv.setBigUint64(88, h.autoclearFeatures);
    dv.setUint32(96, h.refcountOrder);
    const extra = h.extraHeaderFields ?? new Uint8Array(0);
    dv.setUint32(100, V3_HEADER_LENGTH + extra.byteLength);
    out[104] = h.compressionType;
    out.set(extra, V3_HEADER_LENGTH);
    at = V3_HEADER_LENGTH + extra.byteLength;
  }
  for (const [type, data] of extensions(h)) {
    dv.setUint32(at, type);
    dv.setUint32(at + 4, data.byteLength);
    out.set(data, at + 8);
    at += 8 + padded(data.byteLength);
  }
  // End-of-extensions marker: type 0, length 0.
  at += 8;
  if (h.backingFile !== undefined) {
    const name = encoder.encode(h.backingFile);
    out.set(name, at);
    dv.setBigUint64(8, BigInt(at));
    dv.setUint32(16, name.byteLength);
  }
}
