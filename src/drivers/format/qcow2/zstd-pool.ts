import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { BlockError } from '../../../core/errors.js';

/**
 * zstd compression on worker threads. Our zstd is a wasm build, which runs on the thread that
 * calls it: on the event loop, clusters would compress one at a time, where QEMU compresses on a
 * thread pool (qcow2_co_compress). Each worker holds its own wasm instance; a request goes to the
 * least busy one. Idle workers are unref'd, so they never keep the process alive.
 */

/** Plain JavaScript, run with `eval`: no loader (tsx) needed in the worker. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const zstd = require(workerData.module);
zstd.init().then(() => {
  parentPort.on('message', ({ id, data, level }) => {
    try {
      const out = zstd.compress(data, level);
      parentPort.postMessage({ id, out }, [out.buffer]);
    } catch (err) {
      parentPort.postMessage({ id, error: String((err && err.message) || err) });
    }
  });
}, (err) => { throw err; });
`;

interface Pending {
  resolve: (out: Uint8Array) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  pending: Map<number, Pending>;
}

const MAX_WORKERS = 4;

export class ZstdPool {
  private readonly workers: PoolWorker[] = [];
  private nextId = 0;

  constructor(private readonly size = Math.max(1, Math.min(MAX_WORKERS, availableParallelism()))) {}

  /** One zstd frame of `data` at `level` (the bytes are copied to the worker; `data` is not touched). */
  compress(data: Uint8Array, level: number): Promise<Uint8Array> {
    const w = this.pick();
    const id = this.nextId++;
    const copy = data.slice();
    return new Promise((resolve, reject) => {
      w.pending.set(id, { resolve, reject });
      if (w.pending.size === 1) w.worker.ref();
      w.worker.postMessage({ id, data: copy, level }, [copy.buffer]);
    });
  }

  /** Stops every worker (tests; the process exits without this). */
  async close(): Promise<void> {
    const workers = this.workers.splice(0);
    await Promise.all(workers.map((w) => w.worker.terminate()));
  }

  private pick(): PoolWorker {
    let best = this.workers.reduce<PoolWorker | undefined>((b, w) => (b === undefined || w.pending.size < b.pending.size ? w : b), undefined);
    if ((best === undefined || best.pending.size > 0) && this.workers.length < this.size) best = this.spawn();
    return best!;
  }

  private spawn(): PoolWorker {
    const module = createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm');
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { module }, execArgv: [] });
    const w: PoolWorker = { worker, pending: new Map() };
    worker.unref();
    worker.on('message', (m: { id: number; out?: Uint8Array; error?: string }) => {
      const p = w.pending.get(m.id);
      if (!p) return;
      w.pending.delete(m.id);
      if (w.pending.size === 0) worker.unref();
      if (m.out) p.resolve(m.out);
      else p.reject(new BlockError('EIO', `zstd compression failed: ${m.error}`, { op: 'compress' }));
    });
    // A worker that dies takes its requests with it; the next request starts another.
    const fail = (why: string) => {
      const i = this.workers.indexOf(w);
      if (i !== -1) this.workers.splice(i, 1);
      for (const p of w.pending.values()) p.reject(new BlockError('E_UNSUPPORTED_FEATURE', `zstd compression is unavailable: ${why}`, { op: 'compress' }));
      w.pending.clear();
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`its worker thread exited (${code})`));
    this.workers.push(w);
    return w;
  }
}
