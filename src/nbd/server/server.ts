import { EventEmitter } from 'node:events';
import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { BlockError } from '../../core/errors.js';
import { DEFAULT_LIMITS, NbdConnection, type ConnectionHost, type ConnectionLimits, type ConnectionStats } from './connection.js';
import type { NbdExport } from './export.js';
import type { TlsCredentials } from './tls.js';

export interface NbdServerOptions {
  exports: readonly NbdExport[];
  /** Clients served at once (qemu-nbd -e); 0 = unlimited. Further clients wait their turn. */
  maxClients?: number;
  /** With credentials every client must use TLS (STARTTLS before anything else). */
  tls?: TlsCredentials;
  limits?: Partial<ConnectionLimits>;
  /** Where the server reports dropped clients and failures (default: nowhere). */
  log?: (message: string) => void;
}

/** TCP (`host` defaults to every interface, as qemu-nbd binds 0.0.0.0), a Unix socket, or an inherited listening fd. */
export type ListenTarget = { port: number; host?: string } | { path: string } | { fd: number };

/** Clients kept waiting for a slot when maxClients are connected, like a listen backlog. */
const MAX_WAITING = 128;

/**
 * An NBD server (DESIGN.md §7) exporting block nodes. Every connection to an export shares its
 * node, so a flush on one connection covers writes acknowledged on all. Events: `connect`,
 * `disconnect`, and `idle` when the last client has gone (qemu-nbd without -t exits then).
 */
export class NbdServer extends EventEmitter implements ConnectionHost {
  readonly tls: TlsCredentials | undefined;
  readonly limits: ConnectionLimits;
  private readonly exports: Map<string, NbdExport>;
  private readonly maxClients: number;
  private readonly logger: (message: string) => void;
  private readonly sockets: net.Server[] = [];
  private readonly active = new Set<NbdConnection>();
  private readonly waiting: net.Socket[] = [];
  private closing: Promise<void> | undefined;
  /** The most bytes any closed connection held at once (see stats()). */
  private peakBufferedBytes = 0;
  /** Requests closed connections' data planes served through cluster maps (see stats()). */
  private readonly mapped = { reads: 0, writes: 0 };

  constructor(opts: NbdServerOptions) {
    super();
    if (opts.exports.length === 0) throw new BlockError('EINVAL', 'An NBD server needs at least one export', { op: 'serve' });
    this.exports = new Map();
    for (const exp of opts.exports) {
      if (this.exports.has(exp.name)) throw new BlockError('EINVAL', `Two exports are named '${exp.name}'`, { op: 'serve' });
      this.exports.set(exp.name, exp);
    }
    this.maxClients = opts.maxClients ?? 0;
    if (!Number.isSafeInteger(this.maxClients) || this.maxClients < 0) {
      throw new BlockError('EINVAL', `Invalid number of clients ${opts.maxClients}`, { op: 'serve' });
    }
    this.tls = opts.tls;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.logger = opts.log ?? (() => {});
  }

  // ---- ConnectionHost -----------------------------------------------------------------------------

  findExport(name: string): NbdExport | undefined {
    return this.exports.get(name);
  }

  listExports(): readonly NbdExport[] {
    return [...this.exports.values()];
  }

  /** A client limited to one connection must not be told to open several (it would wait forever). */
  get multiConn(): boolean {
    return this.maxClients !== 1;
  }

  log(message: string): void {
    this.logger(message);
  }

  // ---- listening ----------------------------------------------------------------------------------

  /** Starts accepting clients on `target`; resolves with the bound address once listening. */
  async listen(target: ListenTarget): Promise<net.AddressInfo | string> {
    if (this.closing) throw new BlockError('ESHUTDOWN', 'The NBD server is closed', { op: 'serve' });
    if ('path' in target) await removeStaleSocket(target.path);
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const listening = () => {
        server.off('error', reject);
        resolve();
      };
      if ('fd' in target) server.listen({ fd: target.fd }, listening);
      else if ('path' in target) server.listen({ path: target.path }, listening);
      else server.listen({ port: target.port, host: target.host ?? '0.0.0.0' }, listening);
    }).catch((err: NodeJS.ErrnoException) => {
      const where = 'path' in target ? target.path : 'fd' in target ? `fd ${target.fd}` : `${target.host ?? '0.0.0.0'}:${target.port}`;
      throw new BlockError(err.code === 'EADDRINUSE' ? 'EBUSY' : 'EIO', `Cannot listen on ${where}: ${err.message}`, { op: 'serve' }, { cause: err });
    });
    server.on('error', (err) => this.log(`listening socket failed: ${err.message}`));
    this.sockets.push(server);
    return server.address() ?? '';
  }

  /** Serves a socket that is already connected (socket activation with Accept=yes, tests, socketpairs). */
  accept(socket: net.Socket): void {
    if (this.closing) return void socket.destroy();
    if (this.maxClients > 0 && this.active.size >= this.maxClients) {
      if (this.waiting.length >= MAX_WAITING) return void socket.destroy();
      socket.pause();
      socket.on('error', () => {});
      socket.once('close', () => this.unwait(socket));
      this.waiting.push(socket);
      return;
    }
    this.serve(socket);
  }

  /**
   * Graceful stop: no new clients; every connection answers the requests it has in flight and
   * closes; then every export is flushed. The caller closes the nodes.
   */
  close(): Promise<void> {
    return (this.closing ??= this.doClose());
  }

  /** Drops every client at once (a second SIGINT while close() waits for a client that does not read). */
  abort(): void {
    for (const s of this.waiting.splice(0)) s.destroy();
    for (const c of this.active) c.destroy();
  }

  private async doClose(): Promise<void> {
    const stopped = this.sockets.map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
    for (const s of this.waiting.splice(0)) s.destroy();
    await Promise.all([...this.active].map((c) => c.shutdown()));
    await Promise.all(stopped);
    for (const exp of this.exports.values()) {
      try {
        await exp.node.flush();
      } catch (err) {
        this.log(`flushing export '${exp.name}' failed: ${(err as Error).message}`);
      }
    }
  }

  private serve(socket: net.Socket): void {
    const conn = new NbdConnection(socket, this);
    this.active.add(conn);
    socket.resume();
    this.emit('connect');
    void conn.closed.then(() => {
      this.active.delete(conn);
      this.peakBufferedBytes = Math.max(this.peakBufferedBytes, conn.peakBufferedBytes);
      const { mappedReads, mappedWrites } = conn.stats;
      this.mapped.reads += mappedReads;
      this.mapped.writes += mappedWrites;
      this.emit('disconnect');
      const next = this.waiting.shift();
      if (next && !this.closing) this.serve(next);
      else if (this.active.size === 0 && this.waiting.length === 0) this.emit('idle');
    });
  }

  private unwait(socket: net.Socket): void {
    const i = this.waiting.indexOf(socket);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  /**
   * Connections served and waiting, the most bytes any one connection held at once, and the
   * reads and writes every connection so far served through a qcow2 cluster map.
   */
  stats(): { waiting: number; connections: ConnectionStats[]; peakBufferedBytes: number; mappedReads: number; mappedWrites: number } {
    const connections = [...this.active].map((c) => c.stats);
    const peak = Math.max(this.peakBufferedBytes, ...connections.map((c) => c.peakBufferedBytes));
    const sum = (k: 'mappedReads' | 'mappedWrites') => connections.reduce((n, c) => n + c[k], 0);
    return { waiting: this.waiting.length, connections, peakBufferedBytes: peak,
      mappedReads: this.mapped.reads + sum('mappedReads'), mappedWrites: this.mapped.writes + sum('mappedWrites') };
  }
}

/** A socket file left by a server that died is replaced, as QEMU does; any other file is not. */
async function removeStaleSocket(file: string): Promise<void> {
  try {
    if ((await lstat(file)).isSocket()) await unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
