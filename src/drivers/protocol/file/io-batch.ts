import { constants } from 'node:os';
import { native } from '../../../native/index.js';
import { STRERROR } from '../../../core/strerror.js';

/*
 * Positional reads and writes gathered per event-loop turn. fs.read pays a thread-pool hand-off,
 * a worker wake-up and a completion wake-up for every request: more than a 4 KiB copy from the
 * page cache costs. Requests issued during one turn (a guest's queue, a bench's depth, an NBD
 * client's pipeline) go down together at the end of it as a few thread-pool jobs of up to
 * OPS_PER_JOB requests each, so the pool's threads still work in parallel, and each job wakes the
 * event loop once.
 */

/** Requests per thread-pool job: small enough that a slow one holds up few others. */
const OPS_PER_JOB = 8;

interface Op {
  fd: number;
  buf: Uint8Array;
  offset: number;
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

let pending: Op[] = [];
let scheduled = false;

function submitJob(ops: Op[]): void {
  const n = ops.length;
  const fds = new Int32Array(n);
  const offsets = new Float64Array(n);
  const writes = new Uint8Array(n);
  const buffers: Uint8Array[] = new Array<Uint8Array>(n);
  const results = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    fds[i] = op.fd;
    offsets[i] = op.offset;
    writes[i] = op.write ? 1 : 0;
    buffers[i] = op.buf;
  }
  native!.ioBatch(fds, offsets, writes, buffers, results, n, () => {
    for (let i = 0; i < n; i++) {
      const r = results[i]!;
      const op = ops[i]!;
      if (r >= 0) op.resolve(r);
      else op.reject(errnoError(-r, op.write));
    }
  });
}

function flush(): void {
  const ops = pending;
  pending = [];
  scheduled = false;
  for (let i = 0; i < ops.length; i += OPS_PER_JOB) submitJob(ops.slice(i, i + OPS_PER_JOB));
}

function enqueue(fd: number, buf: Uint8Array, offset: number, write: boolean): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    pending.push({ fd, buf, offset, write, resolve, reject });
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  });
}

/** Whether batched I/O is available (it needs the native addon). */
export const batchedIo = native !== null;

/** Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read. */
export function batchedRead(fd: number, buf: Uint8Array, offset: number): Promise<number> {
  return enqueue(fd, buf, offset, false);
}

/** Writes all of `buf` at `offset`. */
export async function batchedWrite(fd: number, buf: Uint8Array, offset: number): Promise<void> {
  await enqueue(fd, buf, offset, true);
}
