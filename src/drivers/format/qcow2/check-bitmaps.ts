import { bitmapsExtension, parseBitmapDirectory, type BitmapsExtension } from './bitmap-directory.js';
import { AUTOCLEAR } from './constants.js';
import type { CheckContext } from './check-context.js';

/** Bitmap table entries: bits 9-55 the data cluster, bit 0 "all ones" (only without one). */
const TABLE_OFFSET_MASK = 0x00fffffffffffe00n;
const TABLE_RESERVED_MASK = 0xff000000000001fen;
const TABLE_ALL_ONES = 1n;

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

/** The bitmap tables the directory names, or what is wrong. */
async function readDirectory(ctx: CheckContext, ext: BitmapsExtension): Promise<BitmapTable[] | string> {
  const entries = parseBitmapDirectory(await ctx.readRaw(ext.directoryOffset, ext.directorySize), ext, ctx.cs, ctx.t.file.size);
  return typeof entries === 'string' ? entries : entries.map((e) => ({ offset: e.tableOffset, entries: e.tableSize }));
}
