import { promises as fsp } from 'node:fs';
import { BlockError, fromSystemError } from '../../../core/errors.js';
import { native } from '../../../native/index.js';
import type { CreateRequest } from '../../../registry/driver.js';
import { openForCreate, type CreatedFile } from '../../protocol/file/create.js';
import { parseQcow2CreateRequest } from './create-options.js';
import { planQcow2Layout, type Piece, type PlannedFile, type Qcow2Layout } from './create-layout.js';
import { headerBytesNeeded, writeHeaderCluster, type HeaderImage } from './header-writer.js';

export { QCOW2_CREATE_OPTIONS, parseQcow2CreateRequest, type Qcow2CreateParams } from './create-options.js';
export { planQcow2Layout, Qcow2Layout } from './create-layout.js';

/*
 * `create` for qcow2: the image qemu-img create -f qcow2 makes, byte for byte where it can be.
 * The options are checked first (nothing is touched on a bad value), the whole layout is then
 * worked out in memory by replaying QEMU's allocator (create-layout.ts), and only then are the
 * files opened, locked as QEMU locks them, truncated and written: metadata in large contiguous
 * writes, preallocation with fallocate or zeros, one fdatasync per file at the end.
 */

/** Largest single write; a window always holds at least one cluster. */
const WRITE_WINDOW = 16 * 1024 * 1024;
const COPIED_HI = 0x80000000;
const TWO_32 = 2 ** 32;

function setU64(dv: DataView, at: number, value: number, copied: boolean): void {
  dv.setUint32(at, Math.floor(value / TWO_32) + (copied ? COPIED_HI : 0));
  dv.setUint32(at + 4, value % TWO_32);
}

/** Renders the pieces of one image file into `buf`, which holds bytes [at, at + buf.length). */
class PieceRenderer {
  private readonly cluster: Uint8Array;
  private readonly headerCluster: Uint8Array;

  constructor(private readonly layout: Qcow2Layout, header: HeaderImage) {
    this.cluster = new Uint8Array(layout.clusterSize);
    this.headerCluster = new Uint8Array(layout.clusterSize);
    writeHeaderCluster(header, this.headerCluster);
  }

  render(p: Piece, at: number, buf: Uint8Array): void {
    const from = Math.max(p.offset, at);
    const to = Math.min(p.offset + p.length, at + buf.byteLength);
    if (from >= to) return;
    const dest = buf.subarray(from - at, to - at);
    const local = from - p.offset;
    const dv = new DataView(dest.buffer, dest.byteOffset, dest.byteLength);
    switch (p.kind) {
      case 'zero':
        return;
      case 'header':
        dest.set(this.headerCluster.subarray(local, local + dest.byteLength));
        return;
      case 'stale':
      case 'reftable': {
        const entries = p.kind === 'stale' ? p.entries : this.layout.reftable;
        for (let i = 0; i < dest.byteLength; i += 8) setU64(dv, i, entries[(local + i) / 8]!, false);
        return;
      }
      case 'l1': {
        const l1 = this.layout.l1;
        for (let i = 0; i < dest.byteLength; i += 8) {
          const off = l1[(local + i) / 8]!;
          if (off) setU64(dv, i, off, true);
        }
        return;
      }
      case 'refblock':
      case 'l2': {
        const whole = local === 0 && dest.byteLength === p.length;
        const out = whole ? dest : this.cluster.fill(0);
        if (p.kind === 'refblock') this.refblock(p.index, out);
        else this.l2(p.l1Index, out);
        if (!whole) dest.set(out.subarray(local, local + dest.byteLength));
        return;
      }
    }
  }

  private refblock(index: number, out: Uint8Array): void {
    const bits = 2 ** this.layout.params.refcountOrder;
    const entries = this.layout.refblockEntries;
    const base = index * entries;
    this.layout.forEachUsed(base, entries, (start, end) => {
      for (let c = start - base; c < end - base; c++) {
        // Narrow refcounts are packed LSB first; wider ones are big-endian (a refcount of 1).
        if (bits < 8) out[(c * bits) >> 3]! |= 1 << ((c * bits) & 7);
        else out[c * (bits >> 3) + (bits >> 3) - 1] = 1;
      }
    });
  }

  private l2(l1Index: number, out: Uint8Array): void {
    const { clusterSize, l2EntrySize } = this.layout;
    const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
    const runs = this.layout.l2Runs.get(l1Index) ?? [];
    for (let r = 0; r < runs.length; r += 3) {
      const [first, count, host] = [runs[r]!, runs[r + 1]!, runs[r + 2]!];
      for (let j = 0; j < count; j++) setU64(dv, (first + j) * l2EntrySize, host + j * clusterSize, true);
    }
  }
}

async function writeAll(fh: fsp.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.byteLength;) {
    const { bytesWritten } = await fh.write(buf, done, buf.byteLength - done, position + done);
    if (bytesWritten <= 0) throw new BlockError('EIO', 'short write', { op: 'create' });
    done += bytesWritten;
  }
}

/** Keeps a few writes in flight: metadata of preallocated images is many small scattered clusters. */
class WriteQueue {
  private readonly inflight = new Set<Promise<void>>();
  private bytes = 0;
  private failure: unknown;

  constructor(private readonly fh: fsp.FileHandle, private readonly maxWrites = 16, private readonly maxBytes = 64 * 1024 * 1024) {}

  async submit(buf: Uint8Array, position: number): Promise<void> {
    while (this.inflight.size > 0 && (this.inflight.size >= this.maxWrites || this.bytes + buf.byteLength > this.maxBytes)) {
      await Promise.race(this.inflight);
    }
    if (this.failure !== undefined) throw this.failure;
    this.bytes += buf.byteLength;
    const p: Promise<void> = writeAll(this.fh, buf, position).catch((err: unknown) => {
      this.failure ??= err;
    }).finally(() => {
      this.bytes -= buf.byteLength;
      this.inflight.delete(p);
    });
    this.inflight.add(p);
  }

  async drain(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.failure !== undefined) throw this.failure;
  }
}

/**
 * Writes pieces (sorted by offset) in as few writes as their layout allows: overlapping and
 * adjacent pieces form one span, written window by window; holes between spans stay holes.
 */
async function writePieces(fh: fsp.FileHandle, pieces: readonly Piece[], render: (p: Piece, at: number, buf: Uint8Array) => void, windowSize: number): Promise<void> {
  const rank = (p: Piece): number => (p.kind === 'stale' ? 0 : p.kind === 'zero' ? 1 : 2);
  const queue = new WriteQueue(fh);
  let next = 0;
  let active: Piece[] = [];
  while (next < pieces.length) {
    const spanStart = pieces[next]!.offset;
    let spanEnd = spanStart;
    for (let j = next; j < pieces.length && pieces[j]!.offset <= spanEnd; j++) spanEnd = Math.max(spanEnd, pieces[j]!.offset + pieces[j]!.length);
    for (let at = spanStart; at < spanEnd; at += windowSize) {
      const end = Math.min(at + windowSize, spanEnd);
      while (next < pieces.length && pieces[next]!.offset < end) active.push(pieces[next++]!);
      active = active.filter((p) => p.offset + p.length > at);
      const buf = new Uint8Array(end - at);
      for (const p of [...active].sort((a, b) => rank(a) - rank(b))) render(p, at, buf);
      await queue.submit(buf, at);
    }
    active = [];
  }
  await queue.drain();
}

/** Zeros, reservations and the final length of a file (the data file, or the image's data area). */
async function fillFile(fh: fsp.FileHandle, file: PlannedFile, path: string, windowSize: number): Promise<void> {
  const zeros: Piece[] = file.zeros.map((z) => ({ kind: 'zero', offset: z.offset, length: z.length }));
  zeros.sort((a, b) => a.offset - b.offset);
  await writePieces(fh, zeros, () => undefined, windowSize);
  for (const r of file.falloc) {
    if (!native) throw noFalloc(path);
    try {
      await native.fallocate(fh.fd, 0, r.offset, r.length);
    } catch (err) {
      throw fromSystemError(err, { op: 'preallocate', path, offset: r.offset, length: r.length });
    }
  }
  await fh.truncate(file.length);
}

function noFalloc(path: string): BlockError {
  return new BlockError('ENOTSUP', 'preallocation=falloc needs the native addon (fallocate), which is not loaded', { op: 'create', path });
}

/** The header and extensions must fit in cluster 0; QEMU fails with ENOSPC when they do not. */
function checkHeaderFits(h: HeaderImage, filename: string): void {
  const clusterSize = 2 ** h.clusterBits;
  const ctx = { op: 'create', path: filename };
  if (headerBytesNeeded({ ...h, backingFile: undefined, backingFormat: undefined }) > clusterSize) {
    throw new BlockError('EINVAL', 'Could not update qcow2 header: No space left on device (the data file name does not fit in the first cluster)', ctx);
  }
  if (headerBytesNeeded(h) > clusterSize) {
    throw new BlockError('EINVAL', `Could not assign backing file '${h.backingFile}' with format '${h.backingFormat}': No space left on device (use a larger cluster size or a shorter name)`, ctx);
  }
}

/** Creates the image (and its external data file), as `qemu-img create -f qcow2` does. */
export async function createQcow2(req: CreateRequest): Promise<void> {
  const params = parseQcow2CreateRequest(req);
  const layout = planQcow2Layout(params);
  const header = layout.header();
  checkHeaderFits(header, params.filename);
  if (!native && (layout.file.falloc.length > 0 || (layout.data?.falloc.length ?? 0) > 0)) throw noFalloc(params.filename);
  const windowSize = Math.max(WRITE_WINDOW, layout.clusterSize);

  const files: CreatedFile[] = [];
  let written = false;
  try {
    files.push(await openForCreate(params.filename));
    if (params.dataFile !== undefined) files.push(await openForCreate(params.dataFile));
    written = true;
    for (const f of files) await f.fh.truncate(0);
    const [image, data] = files as [CreatedFile, CreatedFile | undefined];
    const renderer = new PieceRenderer(layout, header);
    await writePieces(image.fh, layout.pieces(), (p, at, buf) => renderer.render(p, at, buf), windowSize);
    await fillFile(image.fh, { ...layout.file, zeros: [] }, image.path, windowSize);
    if (data && layout.data) await fillFile(data.fh, layout.data, data.path, windowSize);
    for (const f of files) await f.fh.datasync();
  } catch (err) {
    await Promise.allSettled(files.map((f) => f.fh.close()));
    // Like qemu-img, a failed create removes what it half wrote (but never a file it could not lock).
    await Promise.allSettled(files.filter((f) => written || f.isNew).map((f) => fsp.rm(f.path, { force: true })));
    throw err instanceof BlockError ? err : fromSystemError(err, { op: 'create', path: params.filename });
  }
  const closing = await Promise.allSettled(files.map((f) => f.fh.close()));
  const failed = closing.find((r) => r.status === 'rejected');
  if (failed) throw fromSystemError((failed as PromiseRejectedResult).reason, { op: 'create', path: params.filename });
}
