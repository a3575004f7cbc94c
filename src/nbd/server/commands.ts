import type { Extent, WriteOptions } from '../../core/types.js';
import {
  COMMAND_NAMES, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, MAX_PAYLOAD, nbdErrorFor, u64Text, type Request,
  type StatusDescriptor,
} from '../protocol.js';
import type { NbdExport } from './export.js';
import type { MetaContext } from './meta-contexts.js';
import {
  blockStatusChunk, errorChunk, noneChunk, offsetDataChunk, offsetHoleChunk, simpleReadReply, simpleReply,
} from './replies.js';

/** What a connection agreed on in the handshake. */
export interface Session {
  exp: NbdExport;
  structured: boolean;
  /** Contexts selected by the last SET_META_CONTEXT for this export (empty: none). */
  contexts: MetaContext[];
}

/**
 * Reads shorter than this go out as one data chunk without asking where the holes are: the
 * block-status walk costs more than sending a few zero bytes would save.
 */
const SPARSE_READ_MIN = 64 * 1024;
/** Descriptors per BLOCK_STATUS chunk; the spec asks for no more than 2^20. */
const MAX_STATUS_EXTENTS = 64 * 1024;
/** NBD_CMD_CACHE reads its range in pieces this big, so a 4 GiB hint holds 1 MiB at a time. */
const CACHE_PIECE = 1024 * 1024;

/** Flags each command takes (FUA everywhere: clients set it on reads too, and it does no harm). */
function validFlags(type: number, structured: boolean): number | undefined {
  switch (type) {
    case NBD_CMD_READ: return NBD_CMD_FLAG_FUA | (structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE: case NBD_CMD_FLUSH: case NBD_CMD_TRIM: case NBD_CMD_CACHE: return NBD_CMD_FLAG_FUA;
    case NBD_CMD_WRITE_ZEROES: return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default: return undefined;
  }
}

/** A request refused before it reached the image: the NBD error and the message to send. */
class Refusal extends Error {
  constructor(readonly error: number, message: string) {
    super(message);
  }
}

/** The options of every WRITE, shared: the layers below only read them. */
const FUA: WriteOptions = Object.freeze({ fua: true });
const NO_FUA: WriteOptions = Object.freeze({ fua: false });

const WRITING = new Set([NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_CMD_TRIM]);

/** The checks every request passes, in QEMU's order: command, flags, permission, range. */
function check(s: Session, r: Request): number {
  const name = COMMAND_NAMES[r.type] ?? `command ${r.type}`;
  const valid = validFlags(r.type, s.structured);
  if (valid === undefined) throw new Refusal(NBD_EINVAL, `unknown command ${r.type}`);
  if (r.flags & ~valid) throw new Refusal(NBD_EINVAL, `${name}: unsupported flags 0x${r.flags.toString(16)}`);
  if (WRITING.has(r.type) && s.exp.readOnly) throw new Refusal(NBD_EPERM, `${name}: the export is read-only`);
  if (r.type === NBD_CMD_FLUSH) return 0;
  const size = s.exp.size;
  // Above 2^53 the offset is inexact, but then it is past the end of any export all the same.
  if (r.offset > size || r.length > size - r.offset) {
    const error = r.type === NBD_CMD_WRITE || r.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    throw new Refusal(error, `${name} of ${r.length} bytes at offset ${u64Text(r.offsetHigh, r.offsetLow)} is past the end of the export (size ${size})`);
  }
  if (r.type === NBD_CMD_READ && r.length > MAX_PAYLOAD) throw new Refusal(NBD_EINVAL, `${name} of ${r.length} bytes is longer than ${MAX_PAYLOAD}`);
  if (r.type === NBD_CMD_BLOCK_STATUS) {
    if (s.contexts.length === 0) throw new Refusal(NBD_EINVAL, `${name} without a metadata context (use NBD_OPT_SET_META_CONTEXT)`);
    if (r.length === 0) throw new Refusal(NBD_EINVAL, `${name} of 0 bytes`);
  }
  return r.offset;
}

/**
 * Runs one request against the export and returns its reply, one or more buffers that go out
 * together. Never rejects: failures become error replies (structured ones carry a message).
 */
export async function executeRequest(s: Session, r: Request, payload?: Buffer): Promise<Buffer[]> {
  try {
    const offset = check(s, r);
    const node = s.exp.node;
    switch (r.type) {
      case NBD_CMD_READ: return await read(s, r, offset);
      case NBD_CMD_BLOCK_STATUS: return await blockStatus(s, r, offset);
      case NBD_CMD_WRITE:
        await node.write(offset, payload!, r.flags & NBD_CMD_FLAG_FUA ? FUA : NO_FUA);
        break;
      case NBD_CMD_WRITE_ZEROES:
        await node.writeZeroes(offset, r.length, {
          fua: (r.flags & NBD_CMD_FLAG_FUA) !== 0,
          mayUnmap: (r.flags & NBD_CMD_FLAG_NO_HOLE) === 0 && s.exp.discard === 'unmap',
          noFallback: (r.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
        break;
      case NBD_CMD_TRIM:
        // A hint: with discard=ignore (QEMU's default) it succeeds without deallocating.
        if (s.exp.discard === 'unmap') await node.discard(offset, r.length);
        if (r.flags & NBD_CMD_FLAG_FUA) await node.flush();
        break;
      case NBD_CMD_FLUSH:
        await node.flush();
        break;
      case NBD_CMD_CACHE:
        await cache(s, offset, r.length);
        break;
    }
    return [simpleReply(0, r)];
  } catch (err) {
    const error = err instanceof Refusal ? err.error : nbdErrorFor(err, r.flags);
    const message = err instanceof Error ? err.message : String(err);
    return [s.structured ? errorChunk(r, error, message) : simpleReply(error, r)];
  }
}

async function read(s: Session, r: Request, offset: number): Promise<Buffer[]> {
  const node = s.exp.node;
  if (!s.structured) {
    const { reply, data } = simpleReadReply(r);
    await node.read(offset, data);
    return [reply];
  }
  if (r.length === 0) return [noneChunk(r)];
  if (r.flags & NBD_CMD_FLAG_DF || r.length < SPARSE_READ_MIN || !node.caps.blockStatus) {
    // The common case, kept to one buffer and one await.
    const { reply, data } = offsetDataChunk(r, offset, r.length, true);
    await node.read(offset, data);
    return [reply];
  }
  const runs = await zeroRuns(s, offset, r.length);
  // Everything is read before anything is sent: the last chunk carries DONE, and a failure
  // anywhere becomes one error chunk instead of a reply cut short.
  const chunks = runs.map((run, i) => {
    const done = i === runs.length - 1;
    if (run.zero) return { reply: offsetHoleChunk(r, run.offset, run.length, done), data: undefined };
    return offsetDataChunk(r, run.offset, run.length, done);
  });
  await Promise.all(chunks.map((c, i) => c.data && node.read(runs[i]!.offset, c.data)));
  return chunks.map((c) => c.reply);
}

/** The read range cut into runs known to read as zeros (sent as holes) and the rest. */
async function zeroRuns(s: Session, offset: number, length: number): Promise<{ offset: number; length: number; zero: boolean }[]> {
  const runs: { offset: number; length: number; zero: boolean }[] = [];
  for (const e of await extentsOf(s, offset, length, false)) {
    const last = runs[runs.length - 1];
    if (last && last.zero === e.zero) last.length += e.length;
    else runs.push({ offset: e.offset, length: e.length, zero: e.zero });
  }
  return runs;
}

/** Extents covering [offset, offset+length), clipped to it, up to MAX_STATUS_EXTENTS of them. */
async function extentsOf(s: Session, offset: number, length: number, one: boolean): Promise<Extent[]> {
  const out: Extent[] = [];
  const end = offset + length;
  for (let pos = offset; pos < end && out.length < MAX_STATUS_EXTENTS;) {
    const list = await s.exp.node.blockStatusList(pos, end - pos);
    for (const e of list) {
      const clipped = Math.min(e.length, end - e.offset);
      out.push(clipped === e.length ? e : { ...e, length: clipped });
      pos = e.offset + clipped;
    }
    if (one) break;
  }
  return out;
}

async function blockStatus(s: Session, r: Request, offset: number): Promise<Buffer[]> {
  const reqOne = (r.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
  const length = Math.min(r.length, s.exp.size - offset);
  const extents = await extentsOf(s, offset, length, reqOne);
  return s.contexts.map((ctx, i) => {
    // Neighbours with the same status merge, per context: depth and allocation differ in where they change.
    const descriptors: StatusDescriptor[] = [];
    for (const e of extents) {
      const status = ctx.status(e);
      const last = descriptors[descriptors.length - 1];
      if (last && last.status === status) last.length += e.length;
      else descriptors.push({ length: e.length, status });
    }
    if (reqOne) descriptors.length = 1;
    return blockStatusChunk(r, ctx.id, descriptors, i === s.contexts.length - 1);
  });
}

async function cache(s: Session, offset: number, length: number): Promise<void> {
  // Reading is what warms every cache below (and, under copy-on-read, pulls the data up).
  const piece = Buffer.allocUnsafe(Math.min(length, CACHE_PIECE));
  for (let pos = offset; pos < offset + length; pos += piece.length) {
    await s.exp.node.read(pos, piece.subarray(0, Math.min(piece.length, offset + length - pos)));
  }
}
