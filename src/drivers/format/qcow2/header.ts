import { BlockError } from '../../../core/errors.js';
import {
  AUTOCLEAR_KNOWN, EXT, INCOMPAT, INCOMPAT_KNOWN, MAX_BACKING_FILE_NAME, MAX_CLUSTER_BITS, MAX_L1_BYTES,
  MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, MIN_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS, QCOW2_MAGIC,
  V2_HEADER_LENGTH, V3_MIN_HEADER_LENGTH,
} from './constants.js';

export interface FeatureName {
  type: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
}

/** A header extension vdisk does not interpret: kept byte for byte and written back. */
export interface UnknownExtension {
  type: number;
  data: Uint8Array;
}

/** The qcow2 header and its extensions (spec §2–4), numbers already range-checked. */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFile: string | undefined;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Bytes of optional header fields past 112 that we do not know, kept for rewrites. */
  extraHeaderFields: Uint8Array;
  backingFormat: string | undefined;
  dataFile: string | undefined;
  featureNames: FeatureName[];
  hasBitmapsExtension: boolean;
  unknownExtensions: UnknownExtension[];
}

const FEATURE_TYPES = ['incompatible', 'compatible', 'autoclear'] as const;

function corrupt(path: string, what: string): BlockError {
  return new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: ${what}`, { op: 'open', path });
}

/** Reads a 64-bit field as a number, refusing values JS numbers cannot hold exactly. */
export function u64(dv: DataView, at: number, path: string, field: string): number {
  const v = dv.getBigUint64(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(path, `${field} ${v} is out of range`);
  return Number(v);
}

const decoder = new TextDecoder('utf-8', { fatal: false });

export function isQcow2(head: Uint8Array): boolean {
  return head.byteLength >= 8 && new DataView(head.buffer, head.byteOffset, 8).getUint32(0) === QCOW2_MAGIC
    && new DataView(head.buffer, head.byteOffset, 8).getUint32(4) >= 2;
}

/**
 * Parses the header from the first cluster of the file (pass at least min(file size, 2 MiB)
 * bytes; the header, its extensions and the backing file name all live in cluster 0).
 */
export function parseHeader(buf: Uint8Array, path: string): Qcow2Header {
  if (buf.byteLength < V2_HEADER_LENGTH) throw corrupt(path, 'the file is too short for a qcow2 header');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(0) !== QCOW2_MAGIC) throw new BlockError('E_WRONG_FORMAT', `'${path}' is not a qcow2 image`, { op: 'open', path });
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new BlockError('E_UNSUPPORTED_FEATURE', `qcow2 image '${path}' has unsupported version ${version}`, { op: 'open', path });
  }
  const clusterBits = dv.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(path, `cluster size 2^${clusterBits} is outside 512 B – 2 MiB`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, 8, path, 'backing file offset'),
    backingFile: undefined,
    clusterBits,
    size: u64(dv, 24, path, 'virtual size'),
    cryptMethod: dv.getUint32(32),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(dv, 40, path, 'L1 table offset'),
    refcountTableOffset: u64(dv, 48, path, 'refcount table offset'),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(dv, 64, path, 'snapshot table offset'),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    extraHeaderFields: new Uint8Array(0),
    backingFormat: undefined,
    dataFile: undefined,
    featureNames: [],
    hasBitmapsExtension: false,
    unknownExtensions: [],
  };
  if (version === 3) {
    if (buf.byteLength < V3_MIN_HEADER_LENGTH) throw corrupt(path, 'the file is too short for a v3 header');
    h.incompatibleFeatures = dv.getBigUint64(72);
    h.compatibleFeatures = dv.getBigUint64(80);
    h.autoclearFeatures = dv.getBigUint64(88);
    h.refcountOrder = dv.getUint32(96);
    h.headerLength = dv.getUint32(100);
    if (h.headerLength < V3_MIN_HEADER_LENGTH || h.headerLength % 8 !== 0 || h.headerLength > Math.min(clusterSize, buf.byteLength)) {
      throw corrupt(path, `header length ${h.headerLength} is invalid`);
    }
    if (h.headerLength > 104) h.compressionType = buf[104]!;
    if (h.headerLength > 112) h.extraHeaderFields = buf.slice(112, h.headerLength);
  }
  validate(h, path, clusterSize);
  parseExtensions(buf, h, path, clusterSize);
  if (h.backingFileOffset !== 0) {
    const len = dv.getUint32(16);
    if (len > MAX_BACKING_FILE_NAME) throw corrupt(path, `backing file name is ${len} bytes long (at most ${MAX_BACKING_FILE_NAME})`);
    if (h.backingFileOffset + len > Math.min(clusterSize, buf.byteLength)) throw corrupt(path, 'backing file name lies outside the first cluster');
    h.backingFile = decoder.decode(buf.subarray(h.backingFileOffset, h.backingFileOffset + len));
  }
  return h;
}

function validate(h: Qcow2Header, path: string, clusterSize: number): void {
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown) {
    throw new BlockError('E_UNSUPPORTED_FEATURE', `qcow2 image '${path}' uses unsupported incompatible features 0x${unknown.toString(16)}`, { op: 'open', path });
  }
  if (h.refcountOrder > 6) throw corrupt(path, `refcount width 2^${h.refcountOrder} bits is larger than 64`);
  if (h.cryptMethod !== 0) {
    throw new BlockError('E_UNSUPPORTED_FEATURE', `qcow2 image '${path}' is encrypted, which vdisk does not support yet`, { op: 'open', path });
  }
  if ((h.incompatibleFeatures & INCOMPAT.EXTL2) && h.clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw corrupt(path, 'extended L2 entries need clusters of at least 16 KiB');
  }
  if (h.compressionType > 1) {
    throw new BlockError('E_UNSUPPORTED_FEATURE', `qcow2 image '${path}' uses unknown compression type ${h.compressionType}`, { op: 'open', path });
  }
  if ((h.compressionType !== 0) !== Boolean(h.incompatibleFeatures & INCOMPAT.COMPRESSION)) {
    throw corrupt(path, 'compression type and its incompatible feature bit disagree');
  }
  for (const [name, off] of [['L1 table', h.l1TableOffset], ['refcount table', h.refcountTableOffset], ['snapshot table', h.snapshotsOffset]] as const) {
    if (off % clusterSize !== 0) throw corrupt(path, `${name} offset ${off} is not cluster-aligned`);
  }
  if (h.l1Size * 8 > MAX_L1_BYTES) throw corrupt(path, `L1 table of ${h.l1Size} entries is too large`);
  if (h.refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) throw corrupt(path, 'refcount table is too large');
  if (h.refcountTableClusters === 0) throw corrupt(path, 'refcount table is empty');
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw corrupt(path, `${h.nbSnapshots} snapshots is too many`);
  // Every guest cluster must be reachable through L1.
  const l2Entries = clusterSize / ((h.incompatibleFeatures & INCOMPAT.EXTL2) ? 16 : 8);
  const needed = Math.ceil(h.size / clusterSize / l2Entries);
  if (h.l1Size < needed) throw corrupt(path, `L1 table of ${h.l1Size} entries is too small for the virtual size`);
  if ((h.incompatibleFeatures & INCOMPAT.DATA_FILE) && h.backingFileOffset !== 0 && (h.autoclearFeatures & 2n)) {
    throw corrupt(path, 'a raw external data file cannot have a backing file');
  }
  if (h.backingFileOffset !== 0 && h.backingFileOffset >= clusterSize) throw corrupt(path, 'backing file offset is outside the first cluster');
}

function parseExtensions(buf: Uint8Array, h: Qcow2Header, path: string, clusterSize: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // Extensions end at the backing file name, or at the end of cluster 0.
  const end = Math.min(h.backingFileOffset || clusterSize, clusterSize, buf.byteLength);
  let at = h.headerLength;
  const seen = new Set<number>();
  while (at + 8 <= end) {
    const type = dv.getUint32(at);
    const len = dv.getUint32(at + 4);
    if (type === EXT.END) return;
    if (at + 8 + len > end) throw corrupt(path, `header extension 0x${type.toString(16)} runs past the end of the header area`);
    const data = buf.subarray(at + 8, at + 8 + len);
    if (seen.has(type) && type !== EXT.END) throw corrupt(path, `header extension 0x${type.toString(16)} appears twice`);
    seen.add(type);
    switch (type) {
      case EXT.BACKING_FORMAT:
        h.backingFormat = decoder.decode(data);
        break;
      case EXT.DATA_FILE:
        h.dataFile = decoder.decode(data);
        break;
      case EXT.FEATURE_TABLE:
        for (let i = 0; i + 48 <= len; i += 48) {
          const type = FEATURE_TYPES[data[i]!];
          if (!type) continue;
          const raw = data.subarray(i + 2, i + 48);
          const nul = raw.indexOf(0);
          h.featureNames.push({ type, bit: data[i + 1]!, name: decoder.decode(nul === -1 ? raw : raw.subarray(0, nul)) });
        }
        break;
      case EXT.BITMAPS:
        h.hasBitmapsExtension = true;
        h.unknownExtensions.push({ type, data: data.slice() });
        break;
      default:
        h.unknownExtensions.push({ type, data: data.slice() });
    }
    at += 8 + Math.ceil(len / 8) * 8;
  }
}

/** Autoclear bits a writer that does not know them must clear (spec §3). */
export function autoclearToKeep(h: Qcow2Header): bigint {
  return h.autoclearFeatures & AUTOCLEAR_KNOWN;
}
