import type { BlockNode } from '../../core/block-node.js';
import { native, type NbdPlaneEvent, type NbdPlaneHandle } from '../../native/index.js';
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE, type Request } from '../protocol.js';
import { ClusterMap } from './cluster-map.js';
import { executeRequest, type Session } from './commands.js';
import type { NbdExport } from './export.js';
import { replyPool } from './reply-pool.js';

/*
 * The transmission phase on the native data plane (native/nbd-plane.cc): for a raw image over a
 * plain file, threads read requests off the socket and serve READ and WRITE with pread/pwrite
 * themselves, as nbdkit does; for a qcow2 image, READs of clusters its cluster map knows and
 * WRITEs of clusters it marks writable in place (see cluster-map.ts). Everything else comes here
 * in batches and runs through executeRequest as on the JavaScript path. The JavaScript server
 * spent ~14 µs of CPU per cached 4 KiB read (an I/O-queue hand-off each way, an event-loop
 * turn, a writev); nbdkit ~5.
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
  if (node.driver !== 'raw' || node.children.size !== 1 || node.size !== node.file?.size) return undefined;
  if (node.detectZeroes !== 'off') return undefined;
  return plainFile(node.file);
}

/** A file node the plane may pread (and pwrite) through its descriptor: the page cache in use. */
function plainFile(node: BlockNode | undefined): PlainFile | undefined {
  const file = node as PlainFile | undefined;
  if (!native || !file || file.driver !== 'file' || file.children.size !== 0 || file.detectZeroes !== 'off') return undefined;
  if (file.uncachedBy !== undefined || (file.cacheMode !== 'writeback' && file.cacheMode !== 'unsafe')) return undefined;
  return typeof file.fd === 'number' && file.fd >= 0 ? file : undefined;
}

/** What the plane serves an export from: the file, and for qcow2 the map of its clusters. */
export interface PlaneTarget {
  file: PlainFile;
  map?: ClusterMap;
}

/** Each export's target, made with its first connection (a qcow2 map is filled once). */
const targets = new WeakMap<NbdExport, PlaneTarget | null>();

export function planeTarget(exp: NbdExport): PlaneTarget | undefined {
  let target = targets.get(exp);
  if (target === undefined) {
    const raw = planeFile(exp.node);
    const file = raw ?? plainFile(exp.node.file);
    const map = raw || !file ? undefined : ClusterMap.forNode(exp.node, file, !exp.readOnly);
    target = raw ? { file: raw } : file && map ? { file, map } : null;
    targets.set(exp, target);
  }
  return target ?? undefined;
}

/** Requests that leave every cluster where it was: the rest may move or free one. */
const KEEPS_MAPPING = new Set([NBD_CMD_READ, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLUSH, NBD_CMD_CACHE]);

export interface PlaneStats {
  inFlight: number;
  reading: boolean;
  bufferedBytes: number;
  peakBufferedBytes: number;
  /** READs served from a qcow2 export's cluster map. */
  mappedReads: number;
  /** WRITEs served in place through a qcow2 export's cluster map. */
  mappedWrites: number;
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

  private readonly file: PlainFile;
  private readonly map: ClusterMap | undefined;

  constructor(
    socketFd: number,
    target: PlaneTarget,
    private readonly session: Session,
    limits: { maxRequests: number; maxBufferedBytes: number; lingerMs: number },
    initial: Buffer,
    private readonly log: (message: string) => void,
  ) {
    const exp = session.exp;
    this.file = target.file;
    this.map = target.map;
    this.plane = new native!.NbdPlane(socketFd, this.file.fd, {
      size: exp.size,
      structured: session.structured,
      writable: !exp.readOnly,
      threads: THREADS,
      maxRequests: limits.maxRequests,
      maxBufferedBytes: limits.maxBufferedBytes,
      maxNativeLength: MAX_NATIVE_LENGTH,
      lingerMs: limits.lingerMs,
    }, initial, (events) => this.received(events), this.map?.handle);
  }

  get stats(): PlaneStats {
    if (this.final) return this.final;
    const s = this.plane.stats();
    return { inFlight: s[0]!, reading: s[1] === 1, bufferedBytes: s[2]!, peakBufferedBytes: s[3]!, mappedReads: s[4]!, mappedWrites: s[5] ?? 0 };
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
    const map = this.map;
    try {
      const run = () => executeRequest(this.session, req as Request, req.payload);
      // A write the map could not serve maps its clusters again before its reply, so the next
      // one can be served on the plane; a read maps them after.
      reply = await (map && !KEEPS_MAPPING.has(req.type) ? map.around(req.offset, req.length, run, req.type === NBD_CMD_WRITE) : run());
      if (map) {
        map.afterRequest();
        if (req.type === NBD_CMD_READ) void map.fill(req.offset, req.length);
      }
    } catch (err) {
      this.log(`dropping client after an internal error: ${(err as Error)?.stack ?? String(err)}`);
      this.plane.destroy();
    }
    this.plane.reply(reply, req.charge);
    // The plane has its own copy: read buffers can serve the next read at once.
    for (const b of reply) replyPool.release(b);
  }
}
