import { constants } from 'node:os';
import { native, type IoQueueHandle } from '../../../native/index.js';
import { STRERROR } from '../../../core/strerror.js';

/*
 * Positional reads and writes through the native addon's IoQueue: a submission queue served by
 * threads of its own and a completion queue drained once per event-loop wake-up. fs.read pays a
 * thread-pool hand-off and two wake-ups per request, more than a 4 KiB copy from the page cache.
 * Here the requests of one event-loop turn go down in one call at the end of it (io_uring_enter's
 * batching), and the completions of many requests share one wake-up and one call into JS.
 */

/**
 * The most threads serving the queue (VDISK_IO_THREADS overrides). The queue starts threads as
 * requests back up and retires idle ones, as QEMU's thread pool does, with QEMU's maximum: reads
 * that miss the page cache need as many threads as the disk can overlap requests.
 */
const MAX_THREADS = ioThreads(process.env.VDISK_IO_THREADS);

function ioThreads(text: string | undefined): number {
  const n = Number(text);
  return Number.isInteger(n) && n >= 1 && n <= 256 ? n : 64;
}

interface Pending {
  /** Held until completion: the threads write into (or read from) its memory. */
  buf: Uint8Array;
  /** The system call, for errors. */
  syscall: Syscall;
  resolve: (bytes: number) => void;
  reject: (err: Error) => void;
  /** performance.now() past which the caller is told ETIMEDOUT; Infinity: no deadline. */
  deadline: number;
  /** Given up on (rejected with ETIMEDOUT): its completion, if it comes, only frees the id. */
  abandoned: boolean;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

type Syscall = 'pread' | 'pwrite' | 'lseek';

/** The shape Node's own fs errors have (.code, .errno, .syscall), which fromSystemError reads. */
function errnoError(errno: number, syscall: Syscall): Error {
  const code = ERRNO_NAMES.get(errno) ?? 'EIO';
  return Object.assign(new Error(`${code}: ${STRERROR[code] ?? 'I/O error'}, ${syscall}`), { code, errno: -errno, syscall });
}

/** Requests in flight by id; ids are reused, so the table is as long as the deepest queue. */
const pending: (Pending | undefined)[] = [];
const freeIds: number[] = [];

/** The request `id` stands for; the id is free again. */
function release(id: number): Pending {
  const p = pending[id]!;
  pending[id] = undefined;
  freeIds.push(id);
  return p;
}

function complete(done: Uint32Array, results: Float64Array): void {
  for (let i = 0; i < done.length; i++) {
    const p = release(done[i]!);
    if (p.deadline !== Infinity) {
      if (p.abandoned) continue;
      timed--;
    }
    const r = results[i]!;
    if (r >= 0) p.resolve(r);
    else p.reject(errnoError(-r, p.syscall));
  }
}

let queue: IoQueueHandle | undefined;

/** The submissions of this turn, in arrays reused from turn to turn (the addon copies them). */
let count = 0;
let ids = new Uint32Array(64);
let fds = new Int32Array(64);
let offsets = new Float64Array(64);
/** Per request: bit 0 a write, bit 1 O_DIRECT; or 4, a map (see native/ioqueue-pool.h). */
let kinds = new Uint8Array(64);
const buffers: Uint8Array[] = [];

function grow(): void {
  const size = ids.length * 2;
  const more = <T extends Uint32Array | Int32Array | Float64Array | Uint8Array>(a: T, make: (n: number) => T): T => {
    const b = make(size);
    b.set(a);
    return b;
  };
  ids = more(ids, (n) => new Uint32Array(n));
  fds = more(fds, (n) => new Int32Array(n));
  offsets = more(offsets, (n) => new Float64Array(n));
  kinds = more(kinds, (n) => new Uint8Array(n));
}

function flush(): void {
  const n = count;
  count = 0;
  try {
    queue!.submit(n, ids, fds, offsets, kinds, buffers);
  } catch (err) {
    // Only a bad argument gets here (a closed descriptor fails in its own completion).
    for (let i = 0; i < n; i++) release(ids[i]!).reject(err as Error);
  } finally {
    buffers.length = 0;
  }
}

const KIND_WRITE = 1;
const KIND_DIRECT = 2;
const KIND_MAP = 4;

/*
 * Deadlines. A read or write on a dead NFS or FUSE mount never returns, and its thread cannot be
 * stopped; a caller with a deadline (vdisk's --timeout) is told ETIMEDOUT instead, and the
 * request is left to the queue, which stops waiting for it too. One interval checks every
 * request with a deadline, while any is in flight: no timer per request.
 */
/** Requests in flight with a deadline, not given up on yet. */
let timed = 0;
let watchdog: NodeJS.Timeout | undefined;
/** How often deadlines are checked: an expired request fails at most this late. */
const WATCH_MS = 100;

function checkDeadlines(): void {
  const now = performance.now();
  for (let id = 0; id < pending.length; id++) {
    const p = pending[id];
    if (!p || p.abandoned || p.deadline > now) continue;
    p.abandoned = true;
    timed--;
    queue!.abandon(id);
    p.reject(errnoError(ETIMEDOUT, p.syscall));
  }
  if (timed === 0) {
    clearInterval(watchdog);
    watchdog = undefined;
  }
}

const ETIMEDOUT = constants.errno.ETIMEDOUT;

/**
 * At exit, requests with a deadline are let go and the queue closed while JS can still run:
 * Node runs the loop once more to close handles, and a request stuck on a dead mount that
 * finished just then would be delivered to JS that can no longer run. Closing waits only for
 * requests without a deadline, which end.
 */
function closeAtExit(): void {
  if (!queue) return;
  for (let id = 0; id < pending.length; id++) {
    const p = pending[id];
    if (p && p.deadline !== Infinity && !p.abandoned) queue.abandon(id);
  }
  queue.close();
  queue = undefined;
}

function submit(fd: number, buf: Uint8Array, offset: number, kind: number, timeoutMs: number): Promise<number> {
  if (!queue) {
    queue = new native!.IoQueue(MAX_THREADS, complete);
    process.once('exit', closeAtExit);
  }
  return new Promise<number>((resolve, reject) => {
    const id = freeIds.pop() ?? pending.length;
    let deadline = Infinity;
    if (timeoutMs > 0) {
      deadline = performance.now() + timeoutMs;
      timed++;
      watchdog ??= setInterval(checkDeadlines, WATCH_MS).unref();
    }
    const syscall = kind === KIND_MAP ? 'lseek' : kind & KIND_WRITE ? 'pwrite' : 'pread';
    pending[id] = { buf, syscall, resolve, reject, deadline, abandoned: false };
    if (count === ids.length) grow();
    ids[count] = id;
    fds[count] = fd;
    offsets[count] = offset;
    kinds[count] = kind;
    buffers[count] = buf;
    if (count++ === 0) setImmediate(flush);
  });
}

/** Whether queued I/O is available (it needs the native addon). */
export const queuedIo = native !== null;

/**
 * Reads of at most this size first try the page cache on the event loop's own thread: a cached
 * 4 KiB read costs a syscall there, against a queue push, a thread wake-up and a completion
 * wake-up. (Buffered writes have no such non-blocking form on ext4 or XFS.)
 */
const INLINE_READ_MAX = 64 * 1024;
/**
 * Inline reads per event-loop turn at most. Each resolves at once, so a caller that answers a
 * completion with the next request would otherwise keep the loop from timers and sockets.
 */
const INLINE_PER_TURN = 256;
let inlineThisTurn = 0;

function resetInline(): void {
  inlineThisTurn = 0;
}

/**
 * Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
 * `direct`: the descriptor is O_DIRECT, where RWF_NOWAIT does not refuse a read that must wait
 * for the disk (it only avoids waiting on locks), so the inline attempt would block the event
 * loop for the whole disk read (0.1–4 ms per 64 KiB, measured); those always go to the queue.
 */
export function queuedRead(fd: number, buf: Uint8Array, offset: number, direct = false, timeoutMs = 0): Promise<number> {
  if (!direct && buf.byteLength <= INLINE_READ_MAX && inlineThisTurn < INLINE_PER_TURN) {
    if (inlineThisTurn++ === 0) setImmediate(resetInline);
    // -1: not all of it is cached (or the read fails): the queue does it, and reports failures.
    const n = native!.preadNowait(fd, buf, offset);
    if (n === buf.byteLength) return Promise.resolve(n);
  }
  return submit(fd, buf, offset, direct ? KIND_DIRECT : 0, timeoutMs);
}

/**
 * Writes all of `buf` at `offset`. Buffered writes to a file run one at a time in the kernel
 * (the inode lock), so the queue runs only two at once; `direct` (O_DIRECT) writes overlap in
 * the device and are not held back.
 */
export async function queuedWrite(fd: number, buf: Uint8Array, offset: number, direct = false, timeoutMs = 0): Promise<void> {
  await submit(fd, buf, offset, direct ? KIND_WRITE | KIND_DIRECT : KIND_WRITE, timeoutMs);
}

/** Whether the queue can walk SEEK_DATA/SEEK_HOLE (queuedMapData); an older addon cannot. */
export const queuedMap = native?.ioQueueMap === true;

/**
 * native.mapData's walk of [offset, end), on the queue's threads: for a caller with a deadline,
 * which the walk on a dead NFS or FUSE mount would otherwise hold forever on the event loop.
 */
export async function queuedMapData(fd: number, offset: number, end: number, maxRuns: number, timeoutMs: number): Promise<Float64Array> {
  const out = new Float64Array(1 + 2 * maxRuns);
  out[0] = end;
  const n = await submit(fd, new Uint8Array(out.buffer), offset, KIND_MAP, timeoutMs);
  return out.subarray(0, n);
}
