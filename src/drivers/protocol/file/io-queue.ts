import { availableParallelism, constants } from 'node:os';
import { native, type IoQueueHandle } from '../../../native/index.js';
import { STRERROR } from '../../../core/strerror.js';

/*
 * Positional reads and writes through the native addon's IoQueue: a submission queue served by
 * threads of its own and a completion queue drained once per event-loop wake-up. fs.read pays a
 * thread-pool hand-off and two wake-ups per request, more than a 4 KiB copy from the page cache;
 * here a request costs a queue push, and the completions of many requests share one wake-up and
 * one call into JS.
 */

/**
 * Threads serving the queue (VDISK_IO_THREADS overrides): enough to keep every core busy
 * copying from the page cache and a few more waiting on the disk. QEMU's pool grows to 64.
 */
const THREADS = ioThreads(process.env.VDISK_IO_THREADS);

function ioThreads(text: string | undefined): number {
  const n = Number(text);
  return Number.isInteger(n) && n >= 1 && n <= 256 ? n : Math.min(16, Math.max(4, availableParallelism() * 2));
}

interface Pending {
  /** Held until completion: the threads write into (or read from) its memory. */
  buf: Uint8Array;
  write: boolean;
  resolve: (bytes: number) => void;
  reject: (err: Error) => void;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/** The shape Node's own fs errors have (.code, .errno, .syscall), which fromSystemError reads. */
function errnoError(errno: number, write: boolean): Error {
  const code = ERRNO_NAMES.get(errno) ?? 'EIO';
  const syscall = write ? 'pwrite' : 'pread';
  return Object.assign(new Error(`${code}: ${STRERROR[code] ?? 'I/O error'}, ${syscall}`), { code, errno: -errno, syscall });
}

/** Requests in flight by id; ids are reused, so the table is as long as the deepest queue. */
const pending: (Pending | undefined)[] = [];
const freeIds: number[] = [];

function complete(ids: Uint32Array, results: Float64Array): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    const p = pending[id]!;
    pending[id] = undefined;
    freeIds.push(id);
    const r = results[i]!;
    if (r >= 0) p.resolve(r);
    else p.reject(errnoError(-r, p.write));
  }
}

let queue: IoQueueHandle | undefined;

function submit(fd: number, buf: Uint8Array, offset: number, write: boolean): Promise<number> {
  queue ??= new native!.IoQueue(THREADS, complete);
  return new Promise<number>((resolve, reject) => {
    const id = freeIds.pop() ?? pending.length;
    pending[id] = { buf, write, resolve, reject };
    try {
      queue!.submit(id, fd, buf, offset, write);
    } catch (err) {
      pending[id] = undefined;
      freeIds.push(id);
      reject(err as Error);
    }
  });
}

/** Whether queued I/O is available (it needs the native addon). */
export const queuedIo = native !== null;

/** Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read. */
export function queuedRead(fd: number, buf: Uint8Array, offset: number): Promise<number> {
  return submit(fd, buf, offset, false);
}

/** Writes all of `buf` at `offset`. */
export async function queuedWrite(fd: number, buf: Uint8Array, offset: number): Promise<void> {
  await submit(fd, buf, offset, true);
}
