import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { BlockError } from '../../../core/errors.js';
import { DEFLATE_OPTS } from './compression.js';

/**
 * Deflate for compressed cluster writes (convert -c), on worker threads: QEMU's
 * qcow2_co_compress runs on its thread pool, one cluster per task. zlib's asynchronous API costs
 * the event loop about 0.25 ms per 64 KiB cluster (a stream, its callbacks, and an Error for
 * each cluster that does not compress) on top of the 0.65 ms the deflate itself takes
 * (measured, Node 20): 40% more CPU, on the cores the deflates need. Here a batch of clusters
 * goes to a worker in one message, is deflated there with the synchronous API, and comes back
 * in one buffer. A worker per core, four at least; idle workers are unref'd, so they never keep
 * the process alive.
 */

/** Plain JavaScript, run with `eval`: no loader (tsx) needed in the worker. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const zlib = require('node:zlib');
parentPort.on('message', ({ id, data, clusterSize }) => {
  try {
    // Output that reaches the cluster size is useless: zlib stops there (ERR_BUFFER_TOO_LARGE).
    const opts = { ...workerData.options, chunkSize: clusterSize, maxOutputLength: clusterSize - 1 };
    const outs = [];
    for (let pos = 0; pos < data.byteLength; pos += clusterSize) {
      try {
        outs.push(zlib.deflateRawSync(data.subarray(pos, pos + clusterSize), opts));
      } catch (err) {
        if (err.code !== 'ERR_BUFFER_TOO_LARGE') throw err;
        outs.push(null);
      }
    }
    // One buffer back, the clusters end to end; -1 for one that did not compress.
    const lengths = new Int32Array(outs.map((o) => (o === null ? -1 : o.byteLength)));
    const packed = new Uint8Array(outs.reduce((n, o) => n + (o === null ? 0 : o.byteLength), 0));
    let at = 0;
    for (const o of outs) if (o !== null) packed.set(o, at), (at += o.byteLength);
    // The input goes back too, for the next batch to be copied into.
    parentPort.postMessage({ id, lengths, packed, data }, [lengths.buffer, packed.buffer, data.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: String((err && err.message) || err) });
  }
});
`;

/** Clusters per message: a few ms of deflate, against tens of µs for the message. */
const BATCH_CLUSTERS = 8;
/** Bytes of batch buffers kept for reuse: all that -m 16 requests of 2 MiB have in flight. */
const MAX_SPARE_BYTES = 32 * 1024 * 1024;
/**
 * One worker per core, and at least as many as libuv's default pool, which deflate ran on
 * before: on a machine whose cores are shared, a descheduled worker then leaves others to go
 * on (QEMU's pool runs one thread per compressing request, -m 8 of them).
 */
const MIN_WORKERS = 4;
const MAX_WORKERS = 8;

interface Pending {
  resolve: (out: (Uint8Array | null)[]) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  pending: Map<number, Pending>;
}

export class DeflatePool {
  private readonly workers: PoolWorker[] = [];
  private nextId = 0;
  /**
   * Batch buffers back from the workers, for the next batches: fresh memory costs page faults
   * (and zeroing) on every use, measured at a third of the event loop's time in convert -c.
   */
  private readonly spare: Uint8Array<ArrayBuffer>[] = [];
  private spareBytes = 0;

  constructor(private readonly size = Math.min(MAX_WORKERS, Math.max(MIN_WORKERS, availableParallelism()))) {}

  /**
   * Deflates each cluster of `data` (whole clusters) as QEMU does (raw deflate, 4 KiB window);
   * null for a cluster whose deflate is not smaller than the cluster. `data` is copied at once
   * and may be reused when this returns.
   */
  compressClusters(data: Uint8Array, clusterSize: number): Promise<(Uint8Array | null)[]> {
    const batch = BATCH_CLUSTERS * clusterSize;
    const parts: Promise<(Uint8Array | null)[]>[] = [];
    for (let pos = 0; pos < data.byteLength; pos += batch) {
      const n = Math.min(batch, data.byteLength - pos);
      const spare = this.spare.pop();
      this.spareBytes -= spare?.byteLength ?? 0;
      // Whole batches, for reuse by batches of any length.
      const buf = (spare && spare.byteLength >= n ? spare : new Uint8Array(batch)).subarray(0, n);
      buf.set(data.subarray(pos, pos + n));
      parts.push(this.send(buf, clusterSize));
    }
    return Promise.all(parts).then((lists) => lists.flat());
  }

  /** Stops every worker (tests; the process exits without this). */
  async close(): Promise<void> {
    const workers = this.workers.splice(0);
    await Promise.all(workers.map((w) => w.worker.terminate()));
  }

  /** `data`'s ArrayBuffer is moved to the worker (and comes back to `spare`). */
  private send(data: Uint8Array<ArrayBuffer>, clusterSize: number): Promise<(Uint8Array | null)[]> {
    const w = this.pick();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      w.pending.set(id, { resolve, reject });
      if (w.pending.size === 1) w.worker.ref();
      w.worker.postMessage({ id, data, clusterSize }, [data.buffer]);
    });
  }

  private pick(): PoolWorker {
    let best = this.workers.reduce<PoolWorker | undefined>((b, w) => (b === undefined || w.pending.size < b.pending.size ? w : b), undefined);
    if ((best === undefined || best.pending.size > 0) && this.workers.length < this.size) best = this.spawn();
    return best!;
  }

  private spawn(): PoolWorker {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { options: DEFLATE_OPTS }, execArgv: [] });
    const w: PoolWorker = { worker, pending: new Map() };
    worker.unref();
    worker.on('message', (m: { id: number; lengths?: Int32Array; packed?: Uint8Array; data?: Uint8Array<ArrayBuffer>; error?: string }) => {
      if (m.data && this.spareBytes + m.data.buffer.byteLength <= MAX_SPARE_BYTES) {
        this.spare.push(new Uint8Array(m.data.buffer));
        this.spareBytes += m.data.buffer.byteLength;
      }
      const p = w.pending.get(m.id);
      if (!p) return;
      w.pending.delete(m.id);
      if (w.pending.size === 0) worker.unref();
      if (!m.lengths || !m.packed) return p.reject(new BlockError('EIO', `deflate failed: ${m.error}`, { op: 'compress' }));
      const out: (Uint8Array | null)[] = [];
      let at = 0;
      for (const n of m.lengths) {
        out.push(n < 0 ? null : m.packed.subarray(at, (at += n)));
      }
      p.resolve(out);
    });
    // A worker that dies takes its requests with it; the next request starts another.
    const fail = (why: string) => {
      const i = this.workers.indexOf(w);
      if (i !== -1) this.workers.splice(i, 1);
      for (const p of w.pending.values()) p.reject(new BlockError('EIO', `deflate failed: ${why}`, { op: 'compress' }));
      w.pending.clear();
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`its worker thread exited (${code})`));
    this.workers.push(w);
    return w;
  }
}
