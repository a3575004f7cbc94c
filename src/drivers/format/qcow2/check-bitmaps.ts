import { AUTOCLEAR, EXT } from './constants.js';
import type { CheckContext } from './check-context.js';
import type { Qcow2Header } from './header.js';

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
const ENTRY_FIXED = 24;
/** Bitmap table entries: bits 9-55 the data cluster, bit 0 "all ones" (only without one). */
const TABLE_OFFSET_MASK = 0x00fffffffffffe00n;
const TABLE_RESERVED_MASK = 0xff000000000001fen;
const TABLE_ALL_ONES = 1n;

/** The bitmaps extension (spec §4.3): where the bitmap directory lies. */
interface BitmapsExtension {
  count: number;
  directoryOffset: number;
  directorySize: number;
}

/** A bitmap's table, from its directory entry. */
interface BitmapTable {
  offset: number;
  entries: number;
}

/**
 * QEMU's qcow2_check_bitmaps_refcounts: the persistent bitmaps' clusters (the bitmap directory,
 * each bitmap table and the data clusters it names) are references too. Only when the bitmaps
 * autoclear bit says they are valid: otherwise QEMU ignores the extension, and so do its
 * clusters' references. `count` is the caller's qcow2_inc_refcounts_imrt.
 *
 * QEMU fails the whole check on a directory it cannot parse; vdisk reports it as one corruption
 * and goes on, so the rest of the image is still checked.
 */
export async function countBitmaps(ctx: CheckContext, count: (offset: number, length: number) => void): Promise<void> {
  const h = ctx.t.header;
  if (!(h.autoclearFeatures & AUTOCLEAR.BITMAPS)) return;
  const ext = bitmapsExtension(h);
  if (ext === undefined) return;
  if (typeof ext === 'string') return corrupt(ctx, `ERROR bitmaps extension: ${ext}`);
  count(ext.directoryOffset, ext.directorySize);
  const tables = await readDirectory(ctx, ext);
  if (typeof tables === 'string') return corrupt(ctx, `ERROR bitmap directory: ${tables}`);
  for (const table of tables) {
    count(table.offset, table.entries * 8);
    const raw = await ctx.readRaw(table.offset, table.entries * 8);
    const dv = new DataView(raw.buffer);
    const data: number[] = [];
    for (let i = 0; i < table.entries; i++) {
      const e = dv.getBigUint64(i * 8);
      const offset = Number(e & TABLE_OFFSET_MASK);
      // QEMU loads the table only when every entry is valid (bitmap_table_load), and stops there.
      if (e & TABLE_RESERVED_MASK || (offset !== 0 && (e & TABLE_ALL_ONES || offset % ctx.cs !== 0))) return corrupt(ctx, `ERROR bitmap table entry ${i} at 0x${table.offset.toString(16)} is invalid`);
      if (offset !== 0) data.push(offset);
    }
    for (const offset of data) count(offset, ctx.cs);
  }
}

function corrupt(ctx: CheckContext, line: string): void {
  ctx.say(line);
  ctx.res.corruptions++;
}

/** The extension's fields, checked as QEMU checks them at open; a string says what is wrong. */
function bitmapsExtension(h: Qcow2Header): BitmapsExtension | string | undefined {
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

/** The bitmap tables the directory names (QEMU's bitmap_list_load and check_dir_entry), or what is wrong. */
async function readDirectory(ctx: CheckContext, ext: BitmapsExtension): Promise<BitmapTable[] | string> {
  const { cs, t } = ctx;
  const dir = await ctx.readRaw(ext.directoryOffset, ext.directorySize);
  const dv = new DataView(dir.buffer);
  const tables: BitmapTable[] = [];
  let at = 0;
  while (at < dir.byteLength) {
    if (at + ENTRY_FIXED > dir.byteLength) return `entry ${tables.length} is truncated`;
    const offset = dv.getBigUint64(at);
    const entries = dv.getUint32(at + 8);
    const flags = dv.getUint32(at + 12);
    const type = dv.getUint8(at + 16);
    const granularityBits = dv.getUint8(at + 17);
    const nameSize = dv.getUint16(at + 18);
    const extraSize = dv.getUint32(at + 20);
    const next = at + Math.ceil((ENTRY_FIXED + extraSize + nameSize) / 8) * 8;
    if (next > dir.byteLength) return `entry ${tables.length} is truncated`;
    const valid = entries !== 0 && offset !== 0n && offset <= BigInt(Number.MAX_SAFE_INTEGER) && offset % BigInt(cs) === 0n
      && entries <= MAX_TABLE_SIZE && granularityBits >= MIN_GRANULARITY_BITS && granularityBits <= MAX_GRANULARITY_BITS
      && !(flags & RESERVED_FLAGS) && nameSize <= MAX_NAME_SIZE && type === DIRTY_TRACKING_BITMAP && extraSize === 0
      && entries * cs <= t.file.size;
    if (!valid) return `entry ${tables.length} is invalid`;
    tables.push({ offset: Number(offset), entries });
    at = next;
  }
  if (tables.length !== ext.count) return `${tables.length} bitmaps where the header says ${ext.count}`;
  return tables;
}
