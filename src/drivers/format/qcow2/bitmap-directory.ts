import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { AUTOCLEAR, EXT } from './constants.js';
import type { Qcow2Header } from './header.js';

/*
 * The persistent bitmaps' directory (spec §4.3 and "Bitmaps"), read and checked as QEMU checks
 * it when it loads the bitmaps (qcow2.c qcow2_read_extensions, qcow2-bitmap.c bitmap_list_load
 * and check_dir_entry). Check counts the clusters it names; measure sizes the bitmaps.
 * Problems come back as strings saying what is wrong, for each caller to report its way.
 */

/** QEMU's limits for persistent bitmaps (block/qcow2.h, qcow2-bitmap.c). */
const MAX_BITMAPS = 65535;
const MAX_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
const MAX_TABLE_SIZE = 0x8000000;
const MIN_GRANULARITY_BITS = 9;
const MAX_GRANULARITY_BITS = 31;
const MAX_NAME_SIZE = 1023;
/** Directory entry flags QEMU knows: in_use, auto (bits 0 and 1). */
const RESERVED_FLAGS = 0xfffffffc;
const DIRTY_TRACKING_BITMAP = 1;
/** The fixed part of a directory entry, before its extra data and name. */
export const BITMAP_ENTRY_FIXED = 24;

/** The bitmaps extension (spec §4.3): where the bitmap directory lies. */
export interface BitmapsExtension {
  count: number;
  directoryOffset: number;
  directorySize: number;
}

/** One bitmap of the directory. */
export interface BitmapDirEntry {
  /** The bitmap table: where, and how many 8-byte entries. */
  tableOffset: number;
  tableSize: number;
  flags: number;
  granularityBits: number;
  /** Bytes of the name as stored (UTF-8): what sizes a directory entry. */
  nameSize: number;
  name: string;
}

/** The extension's fields, checked as QEMU checks them at open; a string says what is wrong. */
export function bitmapsExtension(h: Qcow2Header): BitmapsExtension | string | undefined {
  const ext = h.unknownExtensions.find((e) => e.type === EXT.BITMAPS);
  if (!ext) return undefined;
  if (ext.data.byteLength !== 24) return 'invalid extension length';
  const dv = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.byteLength);
  const count = dv.getUint32(0);
  const directorySize = dv.getBigUint64(8);
  const directoryOffset = dv.getBigUint64(16);
  if (dv.getUint32(4) !== 0) return 'reserved32 is not zero';
  if (count === 0 || count > MAX_BITMAPS) return `${count} bitmaps`;
  if (directorySize === 0n || directorySize > BigInt(MAX_DIRECTORY_SIZE)) return `directory size ${directorySize}`;
  if (directoryOffset > BigInt(Number.MAX_SAFE_INTEGER) || directoryOffset % BigInt(2 ** h.clusterBits) !== 0n) return `invalid bitmap directory offset 0x${directoryOffset.toString(16)}`;
  return { count, directoryOffset: Number(directoryOffset), directorySize: Number(directorySize) };
}

/**
 * The entries of the directory bytes `dir` (QEMU's bitmap_list_load and check_dir_entry), in an
 * image of cluster size `cs` whose file is `fileSize` bytes; a string says what is wrong.
 */
export function parseBitmapDirectory(dir: Uint8Array, ext: BitmapsExtension, cs: number, fileSize: number): BitmapDirEntry[] | string {
  const dv = new DataView(dir.buffer, dir.byteOffset, dir.byteLength);
  const decoder = new TextDecoder();
  const entries: BitmapDirEntry[] = [];
  let at = 0;
  while (at < dir.byteLength) {
    if (at + BITMAP_ENTRY_FIXED > dir.byteLength) return `entry ${entries.length} is truncated`;
    const offset = dv.getBigUint64(at);
    const tableSize = dv.getUint32(at + 8);
    const flags = dv.getUint32(at + 12);
    const type = dv.getUint8(at + 16);
    const granularityBits = dv.getUint8(at + 17);
    const nameSize = dv.getUint16(at + 18);
    const extraSize = dv.getUint32(at + 20);
    const next = at + Math.ceil((BITMAP_ENTRY_FIXED + extraSize + nameSize) / 8) * 8;
    if (next > dir.byteLength) return `entry ${entries.length} is truncated`;
    const valid = tableSize !== 0 && offset !== 0n && offset <= BigInt(Number.MAX_SAFE_INTEGER) && offset % BigInt(cs) === 0n
      && tableSize <= MAX_TABLE_SIZE && granularityBits >= MIN_GRANULARITY_BITS && granularityBits <= MAX_GRANULARITY_BITS
      && !(flags & RESERVED_FLAGS) && nameSize <= MAX_NAME_SIZE && type === DIRTY_TRACKING_BITMAP && extraSize === 0
      && tableSize * cs <= fileSize;
    if (!valid) return `entry ${entries.length} is invalid`;
    const nameAt = at + BITMAP_ENTRY_FIXED;
    entries.push({ tableOffset: Number(offset), tableSize, flags, granularityBits, nameSize, name: decoder.decode(dir.subarray(nameAt, nameAt + nameSize)) });
    at = next;
  }
  if (entries.length !== ext.count) return `${entries.length} bitmaps where the header says ${ext.count}`;
  return entries;
}

/**
 * The persistent bitmaps QEMU would load from this image: none without the extension, or when
 * the autoclear bit says a program without bitmap support wrote since (QEMU then ignores them).
 * A directory QEMU would refuse to load (and so the image) is an error.
 */
export async function readBitmapDirectory(file: BlockNode, h: Qcow2Header): Promise<BitmapDirEntry[]> {
  if (!(h.autoclearFeatures & AUTOCLEAR.BITMAPS)) return [];
  const bad = (what: string) => new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' has unusable bitmaps: ${what}`, { op: 'open', path: file.filename });
  const ext = bitmapsExtension(h);
  if (ext === undefined) return [];
  if (typeof ext === 'string') throw bad(ext);
  if (ext.directoryOffset + ext.directorySize > file.size) throw bad('the bitmap directory is past the end of the file');
  const dir = new Uint8Array(ext.directorySize);
  await file.read(ext.directoryOffset, dir);
  const entries = parseBitmapDirectory(dir, ext, 2 ** h.clusterBits, file.size);
  if (typeof entries === 'string') throw bad(entries);
  return entries;
}
