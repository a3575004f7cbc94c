import { BlockError, type BlockErrorCode } from '../../core/errors.js';
import { STRERROR } from '../../core/strerror.js';
import {
  blockCodeFor, COMMAND_NAMES, decodeBlockStatus, decodeError, decodeHole, decodeOffsetData, decodeReplyHeader,
  emptyReplyHeader, encodeRequestHeader, high32, joinU64, low32, MAX_ERROR_PAYLOAD, MAX_STATUS_PAYLOAD, NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC, NBD_CMD_READ, NBD_ERRNO_NAMES, NBD_ESHUTDOWN, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_FLAG_ERROR, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE,
  OFFSET_DATA_PREFIX, OFFSET_HOLE_PAYLOAD, replyHeaderSize, REQUEST_HEADER_SIZE, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE, u64Text, type RequestHeader,
} from '../protocol.js';
import type { ExportInfo, Wire } from './handshake.js';

/** Errors of requests that failed only because the server went away: safe to send again. */
const losses = new WeakSet<Error>();

export function isConnectionLoss(err: unknown): boolean {
  return err instanceof Error && losses.has(err);
}

/** Whether any two of the [start, end) pairs overlap. */
function overlaps(ranges: number[]): boolean {
  const pairs: [number, number][] = [];
  for (let i = 0; i < ranges.length; i += 2) if (ranges[i]! < ranges[i + 1]!) pairs.push([ranges[i]!, ranges[i + 1]!]);
  pairs.sort((a, b) => a[0] - b[0]);
  return pairs.some((r, i) => i > 0 && r[0] < pairs[i - 1]![1]);
}

/** A reply that breaks the protocol: the stream cannot be trusted any more. Internal to the reply loop. */
class ProtocolViolation extends Error {}

export interface CommandResult {
  /** BLOCK_STATUS: context id → [length, flags, …] as the server sent them. */
  extents?: Map<number, Uint32Array>;
}

export interface Command {
  type: number;
  flags: number;
  offset: number;
  length: number;
  /** WRITE: the bytes that follow the header. */
  payload?: Uint8Array;
  /** READ: where the data goes. */
  into?: Uint8Array;
}

/** A request in flight: its header fields (cookie and offset as the halves the wire carries) and its progress. */
interface Pending extends Command, RequestHeader {
  /** The cookie as a number: the key of `pending` (cookies count up from 1, far below 2^53). */
  cookie: number;
  /** READ: bytes covered by data and hole chunks so far. */
  covered: number;
  /** READ: [start, end, …] of the chunks, once one arrived out of order. */
  ranges?: number[];
  extents?: Map<number, Uint32Array>;
  /** The first failure reported for this request; the reply still runs to its DONE chunk. */
  error?: BlockError;
  shutdown?: boolean;
  timer?: NodeJS.Timeout;
  resolve(r: CommandResult): void;
  reject(e: BlockError): void;
}

export interface ConnectionOptions {
  /** Names the server in messages. */
  describe: string;
  /** Milliseconds a request may wait for its reply before the connection is given up; 0: forever. */
  requestTimeoutMs: number;
  /** Called once when the connection dies or the server shuts down, other than by close(). */
  onLost?(reason: BlockError): void;
}

/**
 * One NBD connection in the transmission phase: sends requests with fresh cookies, and one reply
 * loop matches replies to them, so any number may be in flight and answered in any order. A
 * protocol violation, a lost socket or a request timeout fails every pending request at once.
 */
export class NbdConnection {
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  /** Where each reply header is read and decoded: one reply is read at a time. */
  private readonly replyBytes = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE);
  private readonly replySimplePart = this.replyBytes.subarray(0, SIMPLE_REPLY_SIZE);
  private readonly replyRest = this.replyBytes.subarray(SIMPLE_REPLY_SIZE);
  /** An OFFSET_DATA chunk's offset is read here too, once its header is decoded. */
  private readonly dataOffset = this.replyBytes.subarray(0, OFFSET_DATA_PREFIX);
  private readonly reply = emptyReplyHeader();
  /** Set once the connection is unusable; every request fails with it. */
  private dead: BlockError | undefined;
  /** Set when no new request may start (server shutdown, close()); pending ones still finish. */
  private refusing: BlockError | undefined;
  private closing = false;
  private drained: (() => void) | undefined;

  constructor(private readonly wire: Wire, readonly info: ExportInfo, private readonly opts: ConnectionOptions) {
    if ('setNoDelay' in wire.socket) (wire.socket as { setNoDelay(on: boolean): void }).setNoDelay(true);
    void this.replyLoop();
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Why this connection can take no more requests, if it cannot. */
  get unusable(): BlockError | undefined {
    return this.dead ?? this.refusing;
  }

  send(cmd: Command): Promise<CommandResult> {
    const stop = this.dead ?? this.refusing;
    if (stop) return Promise.reject(stop);
    const cookie = this.nextCookie++;
    return new Promise<CommandResult>((resolve, reject) => {
      const p: Pending = {
        ...cmd, cookie, cookieHigh: high32(cookie), cookieLow: low32(cookie),
        offsetHigh: high32(cmd.offset), offsetLow: low32(cmd.offset), covered: 0, resolve, reject,
      };
      this.pending.set(cookie, p);
      const ms = this.opts.requestTimeoutMs;
      if (ms > 0) {
        p.timer = setTimeout(() => this.kill('ETIMEDOUT',
          `${COMMAND_NAMES[p.type]} got no reply within ${ms / 1000} s (ETIMEDOUT); the connection is closed`, false), ms);
      }
      const header = encodeRequestHeader(Buffer.allocUnsafe(REQUEST_HEADER_SIZE), 0, p);
      const socket = this.wire.socket;
      if (cmd.payload) {
        // One writev for header and payload.
        socket.cork();
        socket.write(header);
        socket.write(cmd.payload);
        socket.uncork();
      } else socket.write(header);
    });
  }

  /** Soft disconnect: waits for the requests in flight, sends NBD_CMD_DISC and closes the socket. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.refusing ??= new BlockError('ESHUTDOWN', `${this.opts.describe}: the connection is closed`, { op: 'close', path: this.opts.describe });
    if (this.pending.size > 0 && !this.dead) await new Promise<void>((resolve) => (this.drained = resolve));
    const socket = this.wire.socket;
    if (!this.dead && socket.writable) {
      const cookie = this.nextCookie++;
      const disc = encodeRequestHeader(Buffer.allocUnsafe(REQUEST_HEADER_SIZE), 0, {
        flags: 0, type: NBD_CMD_DISC, cookieHigh: high32(cookie), cookieLow: low32(cookie), offsetHigh: 0, offsetLow: 0, length: 0,
      });
      await new Promise<void>((resolve) => socket.end(disc, () => resolve()));
    }
    socket.destroy();
  }

  /** Hard disconnect: every pending request fails with `why`. */
  kill(code: BlockErrorCode, why: string, retriable: boolean, cause?: unknown): void {
    if (this.dead) return;
    this.dead = new BlockError(code, `${this.opts.describe}: ${why}`, { path: this.opts.describe }, cause === undefined ? undefined : { cause });
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      const err = this.error(p, code, why, cause);
      if (retriable) losses.add(err);
      p.reject(err);
    }
    this.pending.clear();
    this.wire.socket.destroy();
    this.drained?.();
    if (!this.closing) this.opts.onLost?.(this.dead);
  }

  // ---- replies ----------------------------------------------------------------------------

  private async replyLoop(): Promise<void> {
    try {
      for (;;) await this.readReply();
    } catch (err) {
      if (this.dead) return;
      if (err instanceof ProtocolViolation) return this.kill('EIO', `protocol error: ${err.message}; disconnected`, false);
      // The socket ended or failed: after close() that is expected, otherwise the server went away.
      if (this.closing) return this.kill('ESHUTDOWN', 'the connection is closed', false);
      this.kill('EIO', 'the NBD server closed the connection', true, this.wire.reader.endedWith ?? err);
    }
  }

  private async readReply(): Promise<void> {
    const reader = this.wire.reader;
    await reader.readInto(this.replySimplePart);
    const size = replyHeaderSize(this.replyBytes, 0);
    if (size === 0) throw new ProtocolViolation(`bad reply magic 0x${this.replyBytes.readUInt32BE(0).toString(16)}`);
    if (size > SIMPLE_REPLY_SIZE) await reader.readInto(this.replyRest);
    const h = decodeReplyHeader(this.replyBytes, 0, this.reply);
    if (!h.structured) return this.simpleReply(h.error, h.cookieHigh, h.cookieLow);
    const { flags, type, length } = h;
    const p = this.lookup(h.cookieHigh, h.cookieLow);
    if (!this.info.structuredReplies) throw new ProtocolViolation('a structured reply chunk, which was not negotiated');
    await this.chunk(p, type, length);
    if (flags & NBD_REPLY_FLAG_DONE) this.finish(p);
    else if (type === NBD_REPLY_TYPE_NONE) throw new ProtocolViolation('an NBD_REPLY_TYPE_NONE chunk without the DONE flag');
  }

  private lookup(cookieHigh: number, cookieLow: number): Pending {
    // A cookie above 2^53 rounds, but only to a number no request of ours has.
    const p = this.pending.get(joinU64(cookieHigh, cookieLow));
    if (!p) throw new ProtocolViolation(`a reply for cookie ${u64Text(cookieHigh, cookieLow)}, which no request in flight has`);
    return p;
  }

  private async simpleReply(error: number, cookieHigh: number, cookieLow: number): Promise<void> {
    const p = this.lookup(cookieHigh, cookieLow);
    if (error !== 0) {
      p.error = this.serverError(p, error, '');
    } else if (p.type === NBD_CMD_READ) {
      // Under structured replies a read's data must come in chunks; a simple reply is unframed data.
      if (this.info.structuredReplies) throw new ProtocolViolation('a simple reply carrying read data after structured replies were agreed');
      await this.wire.reader.readInto(p.into!);
      p.covered = p.length;
    } else if (p.type === NBD_CMD_BLOCK_STATUS) {
      throw new ProtocolViolation('a simple success reply to NBD_CMD_BLOCK_STATUS');
    }
    this.finish(p);
  }

  /**
   * Handles one chunk's payload. A chunk whose length breaks the rules (too long for its request
   * or type) ends the connection, since skipping it would mean trusting that length; a chunk
   * of sane length with bad contents fails only its request.
   */
  private async chunk(p: Pending, type: number, length: number): Promise<void> {
    const reader = this.wire.reader;
    const failRequest = (why: string): void => void (p.error ??= this.error(p, 'EIO', `the server sent ${why}`));
    if (type === NBD_REPLY_TYPE_NONE) {
      if (length !== 0) throw new ProtocolViolation(`an NBD_REPLY_TYPE_NONE chunk of ${length} bytes`);
      return;
    }
    if (type & NBD_REPLY_TYPE_FLAG_ERROR) {
      if (length > MAX_ERROR_PAYLOAD) throw new ProtocolViolation(`an error chunk of ${length} bytes`);
      const e = decodeError(type, await reader.read(length));
      if (typeof e === 'string') return failRequest(e);
      // An error of 0 is no error at all: the request still failed, cause unknown.
      p.error ??= this.serverError(p, e.error || 5, e.message);
      return;
    }
    if (type === NBD_REPLY_TYPE_OFFSET_DATA || type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (p.type !== NBD_CMD_READ) throw new ProtocolViolation(`read data in the reply to ${COMMAND_NAMES[p.type]}`);
      const data = type === NBD_REPLY_TYPE_OFFSET_DATA;
      if (data ? length <= OFFSET_DATA_PREFIX || length - OFFSET_DATA_PREFIX > p.length : length !== OFFSET_HOLE_PAYLOAD) {
        throw new ProtocolViolation(`an ${data ? 'OFFSET_DATA' : 'OFFSET_HOLE'} chunk of ${length} bytes for a read of ${p.length}`);
      }
      let at: number;
      let size: number;
      if (data) {
        await reader.readInto(this.dataOffset);
        [at, size] = [decodeOffsetData(this.dataOffset, 0), length - OFFSET_DATA_PREFIX];
      } else {
        const hole = decodeHole(await reader.read(OFFSET_HOLE_PAYLOAD));
        if (typeof hole === 'string') return failRequest(hole);
        [at, size] = [hole.offset, hole.size];
      }
      // Offsets past 2^53 are rounded, but stay past the end of the request all the same.
      const rel = at - p.offset;
      if (rel < 0 || rel + size > p.length) {
        throw new ProtocolViolation(`read data for ${size} bytes at ${at}, outside the request (${p.length} bytes at ${p.offset})`);
      }
      if (data) await reader.readInto(p.into!.subarray(rel, rel + size));
      else p.into!.fill(0, rel, rel + size);
      // Chunks come in any order but may not overlap: in order is the common case and costs
      // nothing; others are kept and checked when the reply is complete.
      if (rel === p.covered && !p.ranges) p.covered += size;
      else {
        (p.ranges ??= [0, p.covered]).push(rel, rel + size);
        p.covered += size;
      }
      return;
    }
    if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      if (p.type !== NBD_CMD_BLOCK_STATUS) throw new ProtocolViolation(`block status in the reply to ${COMMAND_NAMES[p.type]}`);
      if (length > MAX_STATUS_PAYLOAD) throw new ProtocolViolation(`a BLOCK_STATUS chunk of ${length} bytes`);
      const status = decodeBlockStatus(await reader.read(length));
      if (typeof status === 'string') return failRequest(status);
      if (!this.info.contexts.has(status.contextId)) return failRequest(`block status for unknown context ${status.contextId}`);
      p.extents ??= new Map();
      if (p.extents.has(status.contextId)) return failRequest('block status for one context twice');
      p.extents.set(status.contextId, status.extents);
      return;
    }
    // Unknown types without the error bit cannot be understood or safely skipped (spec §3.3).
    throw new ProtocolViolation(`an unknown reply chunk type ${type}`);
  }

  private finish(p: Pending): void {
    this.pending.delete(p.cookie);
    clearTimeout(p.timer);
    if (!p.error && p.type === NBD_CMD_READ && (p.covered !== p.length || (p.ranges && overlaps(p.ranges)))) {
      p.error = this.error(p, 'EIO', `the server's read reply covered ${p.covered} of ${p.length} bytes, or some twice`);
    }
    if (!p.error && p.type === NBD_CMD_BLOCK_STATUS && (p.extents?.size ?? 0) !== this.info.contexts.size) {
      p.error = this.error(p, 'EIO', `the server sent block status for ${p.extents?.size ?? 0} of ${this.info.contexts.size} contexts`);
    }
    if (p.error) p.reject(p.error);
    else p.resolve(p.extents ? { extents: p.extents } : {});
    if (p.shutdown && !this.refusing) {
      // NBD_ESHUTDOWN asks the client to disconnect: nothing new is sent, pending requests finish.
      // The owner hears of it now, before the failed request's handlers run, so it can reconnect.
      this.refusing = new BlockError('ESHUTDOWN', `${this.opts.describe}: the server is shutting down`, { path: this.opts.describe });
      this.opts.onLost?.(this.refusing);
      void this.close();
    }
    if (this.pending.size === 0) this.drained?.();
  }

  private serverError(p: Pending, nbdError: number, message: string): BlockError {
    const code = blockCodeFor(nbdError);
    const name = NBD_ERRNO_NAMES[nbdError] ?? `error ${nbdError}`;
    const words = message || STRERROR[name] || name;
    const err = this.error(p, code, `${words} (${name})`);
    if (nbdError === NBD_ESHUTDOWN) {
      // The server refused the request because it is going away: nothing was done, so it may be sent again.
      p.shutdown = true;
      losses.add(err);
    }
    return err;
  }

  private error(p: Pending, code: BlockErrorCode, what: string, cause?: unknown): BlockError {
    const name = COMMAND_NAMES[p.type] ?? `command ${p.type}`;
    return new BlockError(code, `${this.opts.describe}: ${name} of ${p.length} bytes at offset ${p.offset} failed: ${what}`,
      { op: name, offset: p.offset, length: p.length, path: this.opts.describe }, cause === undefined ? undefined : { cause });
  }
}
