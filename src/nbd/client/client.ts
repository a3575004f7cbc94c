import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError, NotSupportedError, fromSystemError } from '../../core/errors.js';
import { alignDown } from '../../core/limits.js';
import {
  COMMAND_NAMES, CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM,
  NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, MAX_PAYLOAD,
} from '../protocol.js';
import { ByteReader } from './byte-reader.js';
import { isConnectionLoss, NbdConnection, type Command } from './connection.js';
import { negotiate, type ExportInfo, type Wire } from './handshake.js';
import { tlsUpgrader, type TlsCredentials } from './tls.js';
import { nbdFilename, type ServerAddress } from './uri.js';

export interface NbdClientOptions {
  server: ServerAddress;
  exportName?: string;
  /** Use TLS (STARTTLS) with these credentials; a server that requires TLS refuses plain clients. */
  tls?: TlsCredentials;
  /** Meta contexts to ask for; by default base:allocation and qemu:allocation-depth. */
  metaContexts?: readonly string[];
  /**
   * QEMU's reconnect-delay, in seconds: after the connection is lost, requests wait this long for
   * a reconnect (and requests in flight are sent again on the new connection); later requests fail
   * at once while reconnecting goes on in the background. 0: no reconnecting.
   */
  reconnectDelay?: number;
  /** QEMU's open-timeout, in seconds: how long the first connection is retried. 0: one attempt. */
  openTimeout?: number;
  /** Seconds a request (or the handshake) may wait for the server before the connection is dropped. 0: forever. */
  requestTimeout?: number;
}

/** One extent of one meta context, as the server reported it. */
export interface StatusExtent {
  length: number;
  flags: number;
}

export interface ZeroFlags {
  fua?: boolean;
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole?: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP instead of zeroing slowly. */
  fastZero?: boolean;
}

/** Largest length of one request without payload (trim, zero, block status); the field is 32 bits. */
const MAX_EFFECT_LENGTH = 2 ** 31;
/** Pause between reconnect attempts grows to this. */
const MAX_RETRY_PAUSE_MS = 2000;

/**
 * An NBD client for one export: connects (TCP or Unix socket, optionally TLS), negotiates, and
 * offers the transmission commands with requests split to the server's limits. Any number of
 * requests may be in flight; each resolves when its own reply arrives.
 */
export class NbdClient {
  /** The export as negotiated on the first connection; reconnects must find the same one. */
  readonly info: ExportInfo;
  readonly describe: string;
  private conn: NbdConnection;
  private reconnecting: Promise<NbdConnection> | undefined;
  private lostAt = 0;
  private closed = false;
  private readonly contextIds: Map<string, number>;

  private constructor(private readonly opts: NbdClientOptions, conn: NbdConnection, describe: string) {
    this.conn = conn;
    this.info = conn.info;
    this.describe = describe;
    this.contextIds = new Map([...conn.info.contexts].map(([id, name]) => [name, id]));
  }

  static async connect(opts: NbdClientOptions): Promise<NbdClient> {
    const describe = nbdFilename(opts.server, opts.exportName ?? '');
    const deadline = Date.now() + (opts.openTimeout ?? 0) * 1000;
    let client: NbdClient | undefined;
    const onLost = (): void => client?.lost();
    for (let attempt = 0; ; attempt++) {
      try {
        const conn = await connectOnce(opts, describe, onLost);
        client = new NbdClient(opts, conn, describe);
        return client;
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        await sleep(Math.min(MAX_RETRY_PAUSE_MS, 100 * 2 ** attempt, Math.max(0, deadline - Date.now())));
      }
    }
  }

  get size(): number {
    return this.info.size;
  }

  get readOnly(): boolean {
    return (this.info.flags & NBD_FLAG_READ_ONLY) !== 0;
  }

  /** Whether the server advertised a transmission flag (NBD_FLAG_SEND_*). */
  can(flag: number): boolean {
    return (this.info.flags & flag) !== 0;
  }

  hasContext(name: string): boolean {
    return this.contextIds.has(name);
  }

  /**
   * Largest read or write payload per request: the server's maximum, in whole blocks, and at most
   * 32 MiB whatever the server advertises, as a portable client keeps them (spec §4).
   */
  get maxPayload(): number {
    const { minimum, maximum } = this.info.blockSizes;
    return alignDown(Math.min(maximum, MAX_PAYLOAD), minimum);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    await this.split(offset, into.byteLength, this.maxPayload, (o, n) =>
      ({ type: NBD_CMD_READ, flags: 0, offset: o, length: n, into: into.subarray(o - offset, o - offset + n) }));
  }

  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    const flags = this.fuaFlag(opts.fua);
    await this.split(offset, data.byteLength, this.maxPayload, (o, n) =>
      ({ type: NBD_CMD_WRITE, flags, offset: o, length: n, payload: data.subarray(o - offset, o - offset + n) }));
  }

  async writeZeroes(offset: number, length: number, opts: ZeroFlags = {}): Promise<void> {
    this.need(NBD_FLAG_SEND_WRITE_ZEROES, 'write zeroes');
    if (opts.fastZero) this.need(NBD_FLAG_SEND_FAST_ZERO, 'fast zeroing');
    const flags = this.fuaFlag(opts.fua) | (opts.noHole ? NBD_CMD_FLAG_NO_HOLE : 0) | (opts.fastZero ? NBD_CMD_FLAG_FAST_ZERO : 0);
    await this.split(offset, length, MAX_EFFECT_LENGTH, (o, n) => ({ type: NBD_CMD_WRITE_ZEROES, flags, offset: o, length: n }));
  }

  async trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    this.need(NBD_FLAG_SEND_TRIM, 'trim');
    const flags = this.fuaFlag(opts.fua);
    await this.split(offset, length, MAX_EFFECT_LENGTH, (o, n) => ({ type: NBD_CMD_TRIM, flags, offset: o, length: n }));
  }

  async flush(): Promise<void> {
    this.need(NBD_FLAG_SEND_FLUSH, 'flush');
    await this.submit({ type: NBD_CMD_FLUSH, flags: 0, offset: 0, length: 0 });
  }

  async cache(offset: number, length: number): Promise<void> {
    this.need(NBD_FLAG_SEND_CACHE, 'cache');
    await this.split(offset, length, MAX_EFFECT_LENGTH, (o, n) => ({ type: NBD_CMD_CACHE, flags: 0, offset: o, length: n }));
  }

  /**
   * NBD_CMD_BLOCK_STATUS from `offset` for up to `length` bytes: each selected context's extents
   * by name (at least one each, the first starting at `offset`; the last may run past `length`).
   */
  async blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<Map<string, StatusExtent[]>> {
    if (this.contextIds.size === 0) throw new NotSupportedError(`${this.describe}: the server offers no block status`, { op: 'block-status' });
    const n = Math.min(length, MAX_EFFECT_LENGTH - (offset % this.info.blockSizes.minimum));
    const r = await this.submit({ type: NBD_CMD_BLOCK_STATUS, flags: opts.reqOne ? NBD_CMD_FLAG_REQ_ONE : 0, offset, length: n });
    const out = new Map<string, StatusExtent[]>();
    for (const [id, raw] of r.extents!) {
      const list: StatusExtent[] = [];
      for (let i = 0; i < raw.length; i += 2) list.push({ length: raw[i]!, flags: raw[i + 1]! });
      out.set(this.info.contexts.get(id)!, list);
    }
    return out;
  }

  /** Waits for requests in flight, disconnects politely and stops reconnecting. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.conn.close();
  }

  // ---- internals --------------------------------------------------------------------------

  private need(flag: number, what: string): void {
    if (!this.can(flag)) throw new NotSupportedError(`${this.describe}: the server does not support ${what}`, { op: what });
  }

  private fuaFlag(fua: boolean | undefined): number {
    if (!fua) return 0;
    this.need(NBD_FLAG_SEND_FUA, 'FUA');
    return NBD_CMD_FLAG_FUA;
  }

  /** Sends [offset, offset+length) as requests of at most `max` bytes, all in flight at once. */
  private async split(offset: number, length: number, max: number, make: (o: number, n: number) => Command): Promise<void> {
    if (length <= max) return void (await this.submit(make(offset, length)));
    const all: Promise<unknown>[] = [];
    for (let o = offset; o < offset + length; o += max) all.push(this.submit(make(o, Math.min(max, offset + length - o))));
    await Promise.all(all);
  }

  private async submit(cmd: Command) {
    for (;;) {
      const conn = await this.usable(cmd);
      try {
        return await conn.send(cmd);
      } catch (err) {
        // Lost with the request in flight: QEMU sends it again once reconnected; every command
        // is idempotent on its own range, so the result is the same.
        if (isConnectionLoss(err) && this.reconnectDelayMs > 0 && !this.closed) continue;
        throw err;
      }
    }
  }

  /** The connection to send on, waiting up to reconnect-delay for one while reconnecting. */
  private async usable(cmd: Command): Promise<NbdConnection> {
    const stop = this.conn.unusable;
    if (!stop || this.closed) {
      if (this.closed) throw new BlockError('ESHUTDOWN', `${this.describe}: the client is closed`, { op: 'request', path: this.describe });
      return this.conn;
    }
    if (!this.reconnecting) throw stop;
    const left = this.lostAt + this.reconnectDelayMs - Date.now();
    const expired = (): BlockError => new BlockError('EIO',
      `${this.describe}: the connection was lost and reconnecting has not succeeded within reconnect-delay (${this.opts.reconnectDelay} s)`,
      { op: COMMAND_NAMES[cmd.type], offset: cmd.offset, length: cmd.length, path: this.describe }, { cause: stop });
    if (left <= 0) throw expired();
    const ac = new AbortController();
    try {
      return await Promise.race([this.reconnecting, sleep(left, undefined, { signal: ac.signal }).then(() => { throw expired(); })]);
    } finally {
      ac.abort();
    }
  }

  private get reconnectDelayMs(): number {
    return (this.opts.reconnectDelay ?? 0) * 1000;
  }

  /** The connection died: with reconnect-delay set, start reconnecting in the background. */
  private lost(): void {
    if (this.closed || this.reconnectDelayMs <= 0 || this.reconnecting) return;
    this.lostAt = Date.now();
    const attempt = this.reconnectLoop();
    this.reconnecting = attempt;
    attempt.then((conn) => {
      this.conn = conn;
      this.reconnecting = undefined;
    }, () => {
      this.reconnecting = undefined;
    });
  }

  private async reconnectLoop(): Promise<NbdConnection> {
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new BlockError('ESHUTDOWN', `${this.describe}: the client is closed`, {});
      try {
        const conn = await connectOnce(this.opts, this.describe, () => this.lost());
        if (conn.info.size !== this.info.size || conn.info.flags !== this.info.flags) {
          void conn.close();
          throw new BlockError('EIO', `${this.describe}: the export changed while reconnecting`, {});
        }
        if (this.closed) {
          await conn.close();
          continue;
        }
        return conn;
      } catch {
        await sleep(Math.min(MAX_RETRY_PAUSE_MS, 100 * 2 ** attempt), undefined, { ref: false });
      }
    }
  }
}

/** A TCP or Unix socket connection through the handshake, ready for requests. */
async function connectOnce(opts: NbdClientOptions, describe: string,
  onLost: () => void): Promise<NbdConnection> {
  const server = opts.server;
  const startTls = opts.tls ? await tlsUpgrader(opts.tls, server.type === 'inet' ? server.host : undefined) : undefined;
  const timeoutMs = (opts.requestTimeout ?? 0) * 1000;
  const socket = server.type === 'unix' ? net.connect({ path: server.path }) : net.connect({ host: server.host, port: server.port });
  const timer = timeoutMs > 0 ? setTimeout(() => socket.destroy(new BlockError('ETIMEDOUT',
    `${describe}: no answer from the server within ${timeoutMs / 1000} s (ETIMEDOUT)`, { op: 'open', path: describe })), timeoutMs) : undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
  } catch (err) {
    clearTimeout(timer);
    socket.destroy();
    const where = server.type === 'unix' ? server.path : `${server.host}:${server.port}`;
    throw err instanceof BlockError ? err : fromSystemError(err, { op: 'connect to', path: where });
  }
  const wire: Wire = {
    socket,
    reader: new ByteReader(socket, (err) => err instanceof BlockError ? err
      : new BlockError('EIO', `${describe}: the server closed the connection during the handshake`, { op: 'open', path: describe }, { cause: err })),
  };
  try {
    const info = await negotiate(wire, {
      exportName: opts.exportName ?? '',
      metaContexts: opts.metaContexts ?? [CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH],
      startTls,
      describe,
    });
    return new NbdConnection(wire, info, { describe, requestTimeoutMs: timeoutMs, onLost });
  } catch (err) {
    wire.socket.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
