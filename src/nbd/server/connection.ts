import type net from 'node:net';
import tls from 'node:tls';
import {
  decodeRequestHeader, MAX_PAYLOAD, NBD_CMD_DISC, NBD_CMD_READ, NBD_CMD_WRITE, REQUEST_HEADER_SIZE, type Request,
} from '../protocol.js';
import { ByteQueue } from './byte-queue.js';
import { executeRequest, type Session } from './commands.js';
import { MAX_OPTION_LENGTH, negotiate, ProtocolError, type HandshakeHost, type HandshakeIo } from './handshake.js';
import { planeTarget, PlaneTransmission } from './native-plane.js';
import { replyPool } from './reply-pool.js';
import type { TlsCredentials } from './tls.js';

export interface ConnectionLimits {
  /** Requests executing at once; more wait in the socket until one finishes. */
  maxRequests: number;
  /**
   * Bytes held for one client: request payloads and read data in flight, plus replies the socket
   * has not sent yet. Above it the server stops reading requests, so a client that never reads
   * its replies stalls itself instead of growing the server without bound.
   */
  maxBufferedBytes: number;
  /** Replies queued in the socket above which no new request is started. */
  maxWriteBuffer: number;
  /** Milliseconds a client may take to pick an export (0: no limit), as qemu-nbd's handshake limit. */
  handshakeTimeout: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxRequests: 256,
  maxBufferedBytes: 64 * 1024 * 1024,
  maxWriteBuffer: 4 * 1024 * 1024,
  handshakeTimeout: 10_000,
};

export interface ConnectionHost extends HandshakeHost {
  readonly tls: TlsCredentials | undefined;
  readonly limits: ConnectionLimits;
  log(message: string): void;
}

/** Bytes the handshake lets pile up unread: one option header and its longest data, twice over. */
const HANDSHAKE_BUFFER = 2 * (MAX_OPTION_LENGTH + 16);

/** How long a client may keep its side open after the server has said goodbye. */
const LINGER_MS = 30_000;

/** Input the native data plane takes over with the socket (its own buffer's size). */
const PLANE_INITIAL_MAX = 256 * 1024;

type Phase = 'handshake' | 'transmission' | 'draining' | 'closed';

export interface ConnectionStats {
  exportName: string | undefined;
  phase: Phase;
  /** Requests executing now. */
  inFlight: number;
  /** False while flow control keeps the server from reading this client's requests. */
  reading: boolean;
  bufferedBytes: number;
  peakBufferedBytes: number;
  /** The native data plane serves the transmission phase (see native-plane.ts). */
  native: boolean;
  /** READs the plane served from a qcow2 export's cluster map. */
  mappedReads: number;
  /** WRITEs the plane served in place through a qcow2 export's cluster map. */
  mappedWrites: number;
}

/**
 * One client: the handshake, then requests executing concurrently with their replies written as
 * each finishes (header and payload in one write), and flow control on both directions.
 */
export class NbdConnection implements HandshakeIo {
  private socket: net.Socket;
  private readonly queue = new ByteQueue();
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private phase: Phase = 'handshake';
  private session: Session | undefined;
  /** A WRITE whose payload is still arriving. */
  private pendingWrite: Request | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  private paused = false;
  /** Our side is closed (FIN sent); input is dropped. */
  private ended = false;
  private socketClosed = false;
  private timer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;
  /** Settles when the socket is closed and no request is executing any more. */
  readonly closed = new Promise<void>((resolve) => (this.resolveClosed = resolve));
  /** The most bytes this connection ever held at once (see ConnectionLimits.maxBufferedBytes). */
  peakBufferedBytes = 0;
  private readonly onData = (chunk: Buffer) => this.received(chunk);
  private readonly onEnd = () => this.clientEnded();
  private readonly onClose = () => this.socketGone();
  private readonly onError = (err: Error) => this.host.log(`client connection failed: ${err.message}`);
  private readonly onDrain = () => this.maybeResume();
  /** Runs after the promise callbacks of the turn in which the first reply was corked. */
  private readonly onTurnEnd = () => this.uncorkReplies();
  /** Replies are being gathered for one writev (see sendReply). */
  private corked = false;
  /** Pool buffers handed to the socket, oldest first: each one's write callback returns the oldest. */
  private readonly sending: Buffer[] = [];
  private readonly onSent = (err?: Error | null) => this.sent(err);
  /** The native data plane, when it serves this connection's transmission phase. */
  private plane: PlaneTransmission | undefined;

  constructor(socket: net.Socket, private readonly host: ConnectionHost) {
    this.socket = socket;
    socket.setNoDelay?.(true);
    this.attach(socket);
    if (host.limits.handshakeTimeout > 0) {
      this.timer = setTimeout(() => this.fail(new ProtocolError('the client took too long to choose an export')), host.limits.handshakeTimeout);
      this.timer.unref();
    }
    void this.run();
  }

  /** Bytes held right now: unparsed input, requests in flight, replies not yet sent. */
  get bufferedBytes(): number {
    if (this.plane) return this.plane.stats.bufferedBytes;
    return this.queue.length + this.inFlightBytes + this.socket.writableLength;
  }

  /** For monitoring and tests: the state of this client's flow control. */
  get stats(): ConnectionStats {
    if (this.plane) {
      const { inFlight, reading, bufferedBytes, peakBufferedBytes, mappedReads, mappedWrites } = this.plane.stats;
      return { exportName: this.session?.exp.name, phase: this.phase, inFlight, reading, bufferedBytes, peakBufferedBytes, native: true, mappedReads, mappedWrites };
    }
    return {
      exportName: this.session?.exp.name,
      phase: this.phase,
      inFlight: this.inFlight,
      reading: !this.paused,
      bufferedBytes: this.bufferedBytes,
      peakBufferedBytes: this.peakBufferedBytes,
      native: false,
      mappedReads: 0,
      mappedWrites: 0,
    };
  }

  get tlsConfigured(): boolean {
    return this.host.tls !== undefined;
  }

  get tlsActive(): boolean {
    return this.socket instanceof tls.TLSSocket;
  }

  /** Graceful stop: no new requests, the ones in flight finish and are answered, then the socket closes. */
  shutdown(): Promise<void> {
    if (this.plane) return this.plane.shutdown().then(() => this.closed);
    if (this.phase === 'handshake') this.fail(new ProtocolError('the server is shutting down'));
    else if (this.phase === 'transmission') this.finish();
    return this.closed;
  }

  /** Drops the client at once (requests in flight still finish on the image; their replies are lost). */
  destroy(): void {
    if (this.plane) this.plane.destroy();
    else this.socket.destroy();
  }

  // ---- handshake --------------------------------------------------------------------------------

  private async run(): Promise<void> {
    try {
      const session = await negotiate(this, this.host);
      clearTimeout(this.timer);
      if (!session) return this.finish();
      this.session = session;
      if (await this.handOver(session)) return;
      this.phase = 'transmission';
      this.resume();
      this.pump();
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Hands the socket to the native data plane when the export allows it (see planeTarget): the
   * plane takes a duplicate of the descriptor and whatever input came after the handshake, and
   * Node's socket is closed without a shutdown, so the connection lives on in the plane. TLS
   * stays here (the bytes on the wire are not requests), and so does a socket with input Node
   * holds where we cannot take it (paused in the handshake).
   */
  private async handOver(session: Session): Promise<boolean> {
    const target = planeTarget(session.exp);
    const s = this.socket;
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (!target || this.tlsActive || typeof fd !== 'number' || fd < 0) return false;
    // The handshake's last reply must be on the wire before the plane writes.
    if (s.writableLength > 0) {
      await new Promise<void>((resolve) => {
        const done = () => (s.off('drain', done).off('close', done), resolve());
        s.on('drain', done).on('close', done);
      });
      if (this.socketClosed) return true;
    }
    if (this.paused || s.readableLength > 0 || this.queue.length > PLANE_INITIAL_MAX) return false;
    let plane: PlaneTransmission;
    try {
      plane = new PlaneTransmission(fd, target, session, { ...this.host.limits, lingerMs: LINGER_MS }, this.queue.drain(), (m) => this.host.log(m));
    } catch (err) {
      this.host.log(`serving the client without the native data plane: ${(err as Error).message}`);
      return false;
    }
    this.plane = plane;
    this.phase = 'transmission';
    this.detach(s);
    s.on('error', () => {});
    s.destroy();
    void plane.closed.then(() => {
      this.peakBufferedBytes = Math.max(this.peakBufferedBytes, plane.stats.peakBufferedBytes);
      this.phase = 'closed';
      this.socketClosed = true;
      this.resolveClosed();
    });
    return true;
  }

  read(n: number): Promise<Buffer> {
    if (this.socketClosed) return Promise.reject(new ProtocolError('the client disconnected'));
    if (this.queue.length >= n) return Promise.resolve(this.queue.take(n));
    this.resume();
    return new Promise((resolve, reject) => (this.waiter = { n, resolve, reject }));
  }

  send(data: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  /**
   * Hands the socket to a tls.Server, the documented way to upgrade an accepted socket: it runs
   * the handshake and the peer verification (verify-peer), and yields the secure socket.
   */
  async startTls(): Promise<void> {
    // The client waits for our ACK before its TLS hello: anything already here broke the protocol.
    if (this.queue.length > 0) throw new ProtocolError('data sent before the TLS handshake');
    // No await from here to the hand-over, so no byte of the client's hello is read without us.
    const raw = this.socket;
    this.detach(raw);
    const tlsServer = tls.createServer(this.host.tls!.serverOptions);
    this.socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const failed = (err?: Error) => {
        const message = `TLS handshake failed${err ? `: ${err.message}` : ''}`;
        this.host.log(`dropping client: ${message}`);
        raw.destroy();
        // Our listeners are off the raw socket now: its end is reported here.
        this.socketGone();
        reject(new ProtocolError(message));
      };
      raw.once('close', failed);
      tlsServer.once('tlsClientError', failed);
      tlsServer.once('secureConnection', (secure: tls.TLSSocket) => {
        raw.off('close', failed);
        resolve(secure);
      });
      tlsServer.emit('connection', raw);
    });
    this.attach(this.socket);
  }

  // ---- socket events ----------------------------------------------------------------------------

  private attach(s: net.Socket): void {
    s.on('data', this.onData).on('end', this.onEnd).on('close', this.onClose).on('error', this.onError).on('drain', this.onDrain);
  }

  private detach(s: net.Socket): void {
    s.off('data', this.onData).off('end', this.onEnd).off('close', this.onClose).off('error', this.onError).off('drain', this.onDrain);
  }

  private received(chunk: Buffer): void {
    if (this.ended) return;
    this.queue.push(chunk);
    this.notePeak();
    if (this.phase === 'handshake') {
      const w = this.waiter;
      if (w && this.queue.length >= w.n) {
        this.waiter = undefined;
        w.resolve(this.queue.take(w.n));
      } else if (this.queue.length > HANDSHAKE_BUFFER) this.pause();
    } else if (this.phase === 'transmission') this.pump();
  }

  /** The client sent FIN: like NBD_CMD_DISC, answer what is in flight and close. */
  private clientEnded(): void {
    if (this.phase === 'transmission') this.finish();
    else if (this.phase === 'handshake') this.fail(new ProtocolError('the client closed during the handshake'));
  }

  private socketGone(): void {
    this.socketClosed = true;
    this.phase = 'closed';
    clearTimeout(this.timer);
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(new ProtocolError('the client disconnected'));
    if (this.inFlight === 0) this.resolveClosed();
  }

  private fail(err: unknown): void {
    if (this.socketClosed) return;
    if (err instanceof ProtocolError) this.host.log(`dropping client: ${err.message}`);
    else this.host.log(`dropping client after an internal error: ${(err as Error)?.stack ?? String(err)}`);
    this.phase = 'closed';
    this.socket.destroy();
  }

  // ---- transmission -----------------------------------------------------------------------------

  /** Parses and starts every complete request the queue holds, unless the client must wait. */
  private pump(): void {
    while (this.phase === 'transmission') {
      if (this.pendingWrite) {
        if (this.queue.length < this.pendingWrite.length) return;
        const req = this.pendingWrite;
        this.pendingWrite = undefined;
        void this.serve(req, this.queue.take(req.length));
        continue;
      }
      if (this.overloaded()) return this.pause();
      if (this.queue.length < REQUEST_HEADER_SIZE) return;
      const req = decodeRequestHeader(this.queue.contiguous(REQUEST_HEADER_SIZE), this.queue.headOffset);
      if (!req) return this.violation('bad request magic');
      this.queue.skip(REQUEST_HEADER_SIZE);
      if (req.type === NBD_CMD_DISC) return this.finish();
      if (req.type === NBD_CMD_WRITE) {
        // Up to 32 MiB the spec says a payload is never a reason to disconnect; beyond, it may be.
        if (req.length > MAX_PAYLOAD) return this.violation(`write payload of ${req.length} bytes`);
        this.pendingWrite = req;
        continue;
      }
      void this.serve(req);
    }
  }

  private overloaded(): boolean {
    const l = this.host.limits;
    return this.inFlight >= l.maxRequests || this.inFlightBytes >= l.maxBufferedBytes || this.socket.writableLength >= l.maxWriteBuffer;
  }

  /** Runs one request and sends its reply (one async frame a request, no closures). */
  private async serve(req: Request, payload?: Buffer): Promise<void> {
    const bytes = req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE ? req.length : 0;
    this.inFlight++;
    this.inFlightBytes += bytes;
    this.notePeak();
    let reply: Buffer[] | undefined;
    let failure: unknown;
    try {
      reply = await executeRequest(this.session!, req, payload);
    } catch (err) {
      failure = err;
    }
    // The request's bytes stop counting as in flight when its reply is handed to the socket,
    // where writableLength counts them: counted once, not twice.
    this.inFlight--;
    this.inFlightBytes -= bytes;
    if (reply) this.sendReply(reply);
    else this.fail(failure);
    this.requestDone();
  }

  /**
   * Replies finished in one event-loop turn leave together: the socket is corked at the first and
   * uncorked once the turn's promise callbacks have run, so a batch of I/O completions costs one
   * writev instead of a write per reply (the syscall was the largest cost in the profile).
   */
  private sendReply(buffers: Buffer[]): void {
    if (this.socketClosed || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.onTurnEnd);
    }
    for (const b of buffers) {
      // Only pool buffers get a callback: one per write cost WRITE replies (16 bytes) ~10%.
      if (!replyPool.owns(b)) this.socket.write(b);
      else {
        this.sending.push(b);
        this.socket.write(b, this.onSent);
      }
    }
    this.notePeak();
  }

  /**
   * A write's callback: the socket calls them in write order, so the oldest buffer handed to it
   * is the one now sent, and it can serve another read. After an error nothing goes back to the
   * pool: the socket is being destroyed and no more of its bytes will be sent.
   */
  private sent(err?: Error | null): void {
    const b = this.sending.shift()!;
    if (!err && !this.socket.destroyed) replyPool.release(b);
  }

  private uncorkReplies(): void {
    this.corked = false;
    this.socket.uncork();
  }

  private requestDone(): void {
    if (this.inFlight > 0) return this.maybeResume();
    if (this.phase === 'closed') return void (this.socketClosed && this.resolveClosed());
    if (this.phase === 'draining') return this.endSocket();
    this.maybeResume();
  }

  /**
   * A request stream that cannot be parsed on: nothing after it is read, but the requests
   * already running are still answered before the connection closes.
   */
  private violation(message: string): void {
    this.host.log(`dropping client: ${message}`);
    this.finish();
  }

  /** Stops reading requests: answer those in flight, then close (DISC, client FIN, server stop). */
  private finish(): void {
    this.phase = 'draining';
    this.pause();
    if (this.inFlight === 0) this.endSocket();
  }

  /**
   * Sends FIN once every reply is out, then reads and drops whatever the client still sends until
   * it closes too: closing with unread input would reset the connection, and the client could
   * lose replies still in transit. A client that never closes is dropped after a while.
   */
  private endSocket(): void {
    if (this.ended) return;
    this.ended = true;
    this.socket.end();
    this.resume();
    this.queue.skip(this.queue.length);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.socket.destroy(), LINGER_MS);
    this.timer.unref();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket.resume();
  }

  private maybeResume(): void {
    if (this.phase !== 'transmission' || !this.paused || this.overloaded()) return;
    this.resume();
    this.pump();
  }

  private notePeak(): void {
    const now = this.bufferedBytes;
    if (now > this.peakBufferedBytes) this.peakBufferedBytes = now;
  }
}
