import type { BlockNode } from '../../core/block-node.js';
import { native, type NbdPlaneEvent, type NbdPlaneHandle } from '../../native/index.js';
import type { Request } from '../protocol.js';
import { executeRequest, type Session } from './commands.js';
import { replyPool } from './reply-pool.js';

/*
 * The transmission phase on the native data plane (native/nbd-plane.cc): for a raw image over a
 * plain file, threads read requests off the socket and serve READ and WRITE with pread/pwrite
 * themselves, as nbdkit does; everything else comes here in batches and runs through
 * executeRequest as on the JavaScript path. The JavaScript server spent ~14 µs of CPU per cached
 * 4 KiB read (an I/O-queue hand-off each way, an event-loop turn, a writev); nbdkit ~5.
 */

/**
 * Worker threads per connection, started only as requests back up. Buffered writes to one file
 * run one at a time in the kernel (the inode lock), and reads from the page cache are CPU work:
 * a few threads overlap a socket wait with a copy; more only take turns.
 */
const THREADS = 4;
/**
 * Longest READ or WRITE a worker serves; each worker keeps a buffer this big once it has needed
 * one, so a connection holds at most THREADS of them. Longer requests are forwarded.
 */
const MAX_NATIVE_LENGTH = 1024 * 1024;

/** What the file under a raw export must offer the plane: a descriptor it may pread and pwrite. */
interface PlainFile extends BlockNode {
  readonly fd: number;
  readonly cacheMode: string;
  readonly uncachedBy: string | undefined;
  dropCachedHoles(): void;
}

/**
 * The file whose descriptor the plane may serve the export from, or undefined when the export
 * needs the block layer for its reads and writes: any format but raw, a filter, a raw slice
 * (offset/size), detect-zeroes, cache modes that sync every write or keep the page cache out.
 */
export function planeFile(node: BlockNode): PlainFile | undefined {
  const file = node.file as PlainFile | undefined;
  if (!native || node.driver !== 'raw' || node.children.size !== 1 || !file || file.driver !== 'file') return undefined;
  if (file.children.size !== 0 || node.size !== file.size) return undefined;
  if (node.detectZeroes !== 'off' || file.detectZeroes !== 'off') return undefined;
  if (file.uncachedBy !== undefined || (file.cacheMode !== 'writeback' && file.cacheMode !== 'unsafe')) return undefined;
  return typeof file.fd === 'number' && file.fd >= 0 ? file : undefined;
}

export interface PlaneStats {
  inFlight: number;
  reading: boolean;
  bufferedBytes: number;
  peakBufferedBytes: number;
}

type ForwardedRequest = Exclude<NbdPlaneEvent, { event: string }>;

/** One connection's transmission phase on the data plane. */
export class PlaneTransmission {
  private readonly plane: NbdPlaneHandle;
  /** The plane's write count when cached holes were last dropped. */
  private writesSeen = 0;
  private resolveClosed!: () => void;
  /** Settles when the socket is closed and every request is answered. */
  readonly closed = new Promise<void>((resolve) => (this.resolveClosed = resolve));
  private final: PlaneStats | undefined;

  constructor(
    socketFd: number,
    private readonly file: PlainFile,
    private readonly session: Session,
    limits: { maxRequests: number; maxBufferedBytes: number; lingerMs: number },
    initial: Buffer,
    private readonly log: (message: string) => void,
  ) {
    const exp = session.exp;
    this.plane = new native!.NbdPlane(socketFd, file.fd, {
      size: exp.size,
      structured: session.structured,
      writable: !exp.readOnly,
      threads: THREADS,
      maxRequests: limits.maxRequests,
      maxBufferedBytes: limits.maxBufferedBytes,
      maxNativeLength: MAX_NATIVE_LENGTH,
      lingerMs: limits.lingerMs,
    }, initial, (events) => this.received(events));
  }

  get stats(): PlaneStats {
    if (this.final) return this.final;
    const s = this.plane.stats();
    return { inFlight: s[0]!, reading: s[1] === 1, bufferedBytes: s[2]!, peakBufferedBytes: s[3]! };
  }

  /** Graceful: no new requests, the ones in hand are answered, then the socket closes. */
  shutdown(): Promise<void> {
    if (!this.final) this.plane.shutdown();
    return this.closed;
  }

  destroy(): void {
    if (!this.final) this.plane.destroy();
  }

  private received(events: NbdPlaneEvent[]): void {
    for (const e of events) {
      if (e.event === undefined) void this.serve(e);
      else if (e.event === 'violation') this.log(`dropping client: ${e.message}`);
      else this.ended();
    }
  }

  private ended(): void {
    this.final = { ...this.stats, inFlight: 0, reading: false, bufferedBytes: 0 };
    this.plane.close();
    this.resolveClosed();
  }

  private async serve(req: ForwardedRequest): Promise<void> {
    // Holes the file node cached may have been written by the plane since.
    const writes = this.plane.writes();
    if (writes !== this.writesSeen) {
      this.writesSeen = writes;
      this.file.dropCachedHoles();
    }
    let reply: Buffer[] = [];
    try {
      reply = await executeRequest(this.session, req as Request, req.payload);
    } catch (err) {
      this.log(`dropping client after an internal error: ${(err as Error)?.stack ?? String(err)}`);
      this.plane.destroy();
    }
    this.plane.reply(reply, req.charge);
    // The plane has its own copy: read buffers can serve the next read at once.
    for (const b of reply) replyPool.release(b);
  }
}
