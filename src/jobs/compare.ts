import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { Extent } from '../core/types.js';
import { isAllZero } from '../core/zero-detect.js';
import { ExtentCursor } from './extent-cursor.js';

/**
 * qemu-img compare: two images (backing chains included) read the same. Both block-status maps
 * are walked side by side; ranges both know to be zero are skipped, ranges allocated in one
 * image only are checked for zeros, the rest is read and compared. The longer image's tail
 * must read as zeros, unless `strict` asks for equal sizes (and equal block status).
 */
export type CompareResult =
  | { kind: 'identical'; sizeMismatch: boolean }
  /** First differing 512-byte sector; `sizeMismatch` says whether the common part matched and the tail did not. */
  | { kind: 'content'; offset: number; sizeMismatch: boolean }
  | { kind: 'strict-size' }
  | { kind: 'strict-status'; offset: number };

export interface CompareOptions {
  strict?: boolean;
  /** The names used in error messages (qemu-img names the file it could not read). */
  names?: [string, string];
  /** Bytes compared so far, out of the larger image's size. */
  onProgress?: (bytes: number) => void;
}

/** A read or block-status failure during compare: qemu-img exits 4 and 3 for them. */
export class CompareIoError extends BlockError {
  constructor(readonly stage: 'block-status' | 'read', message: string, cause: unknown) {
    super(cause instanceof BlockError ? cause.code : 'EIO', message, { op: stage }, { cause });
  }
}

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE: the most read from either image at once. */
const CHUNK = 2 * 1024 * 1024;

export async function compareImages(a: BlockNode, b: BlockNode, opts: CompareOptions = {}): Promise<CompareResult> {
  const names = opts.names ?? [a.filename, b.filename];
  const progress = opts.onProgress ?? (() => {});
  if (opts.strict && a.size !== b.size) return { kind: 'strict-size' };
  const common = Math.min(a.size, b.size);
  const ca = new ExtentCursor(a, 0, a.size);
  const cb = new ExtentCursor(b, 0, b.size);
  for (let offset = 0; offset < common;) {
    const ea = await status(ca, offset, names[0]);
    const eb = await status(cb, offset, names[1]);
    const end = Math.min(ea.offset + ea.length, eb.offset + eb.length, common);
    if (opts.strict && statusFlags(ea) !== statusFlags(eb)) return { kind: 'strict-status', offset };
    if (!(ea.zero && eb.zero)) {
      const found = ea.present === eb.present
        ? ea.present ? await firstDifference(a, b, offset, end, names) : undefined
        : await firstNonZero(ea.present ? a : b, offset, end, names[ea.present ? 0 : 1]);
      if (found !== undefined) return { kind: 'content', offset: found, sizeMismatch: false };
    }
    progress(end - offset);
    offset = end;
  }
  if (a.size === b.size) return { kind: 'identical', sizeMismatch: false };
  const [over, name] = a.size > b.size ? [a, names[0]] : [b, names[1]];
  const cursor = new ExtentCursor(over, common, over.size);
  for (let offset = common; offset < over.size;) {
    const e = await status(cursor, offset, name);
    const end = e.offset + e.length;
    if (e.present && !e.zero) {
      const found = await firstNonZero(over, offset, end, name);
      if (found !== undefined) return { kind: 'content', offset: found, sizeMismatch: true };
    }
    progress(end - offset);
    offset = end;
  }
  return { kind: 'identical', sizeMismatch: true };
}

async function status(cursor: ExtentCursor, offset: number, name: string): Promise<Extent> {
  try {
    return await cursor.at(offset);
  } catch (err) {
    throw new CompareIoError('block-status', `Sector allocation test failed for ${name}`, err);
  }
}

/** What qemu-img -s compares: the block-status flags (data, zero, allocated, offset valid). */
function statusFlags(e: Extent): number {
  return (e.data ? 1 : 0) | (e.zero ? 2 : 0) | (e.present ? 4 : 0) | (e.hostOffset !== undefined ? 8 : 0);
}

async function read(node: BlockNode, offset: number, into: Uint8Array, name: string): Promise<void> {
  try {
    await node.read(offset, into);
  } catch (err) {
    throw new CompareIoError('read', `Error while reading offset ${offset} of ${name}: ${(err as Error).message}`, err);
  }
}

/** The first 512-byte sector of [start, end) where the two images differ, counted from start. */
async function firstDifference(a: BlockNode, b: BlockNode, start: number, end: number, names: [string, string]): Promise<number | undefined> {
  const bufA = new Uint8Array(Math.min(CHUNK, end - start));
  const bufB = new Uint8Array(bufA.byteLength);
  for (let pos = start; pos < end; pos += CHUNK) {
    const n = Math.min(CHUNK, end - pos);
    const [x, y] = [bufA.subarray(0, n), bufB.subarray(0, n)];
    await read(a, pos, x, names[0]);
    await read(b, pos, y, names[1]);
    if (Buffer.compare(x, y) === 0) continue;
    for (let s = 0; s < n; s += SECTOR) {
      if (Buffer.compare(x.subarray(s, s + SECTOR), y.subarray(s, s + SECTOR)) !== 0) return pos + s;
    }
  }
  return undefined;
}

/** The first 512-byte sector of [start, end) holding a non-zero byte, counted from start. */
async function firstNonZero(node: BlockNode, start: number, end: number, name: string): Promise<number | undefined> {
  const buf = new Uint8Array(Math.min(CHUNK, end - start));
  for (let pos = start; pos < end; pos += CHUNK) {
    const n = Math.min(CHUNK, end - pos);
    const x = buf.subarray(0, n);
    await read(node, pos, x, name);
    if (isAllZero(x)) continue;
    for (let s = 0; s < n; s += SECTOR) if (!isAllZero(x.subarray(s, s + SECTOR))) return pos + s;
  }
  return undefined;
}
