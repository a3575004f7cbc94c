import { EventEmitter, on } from 'node:events';
import { BlockError } from '../core/errors.js';

/**
 * Long-running work on images (convert, stream, commit, backup), as QEMU's block jobs: a state
 * machine, progress, pause/resume and cancellation. A job's work calls `checkpoint()` between
 * requests; that is where a pause holds it and a cancel stops it, so a cancelled job never
 * leaves a request of its own half-issued.
 */
export type JobState = 'created' | 'running' | 'paused' | 'ready' | 'concluded';

export interface JobProgress {
  /** Bytes of the job's range dealt with (copied, zeroed or found not to need copying). */
  done: number;
  total: number;
}

export type JobEvent =
  | { type: 'state'; state: JobState }
  | ({ type: 'progress' } & JobProgress)
  | { type: 'concluded'; error?: BlockError };

export interface JobOptions {
  /** Cancels the job when it aborts, as `cancel()` does. */
  signal?: AbortSignal;
}

let jobCounter = 0;

export abstract class Job<T = void> {
  readonly id = `job${++jobCounter}`;
  private _state: JobState = 'created';
  private readonly progressNow: JobProgress = { done: 0, total: 0 };
  private readonly controller = new AbortController();
  private readonly emitter = new EventEmitter();
  private resumed: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private result: Promise<T> | undefined;
  private failure: BlockError | undefined;

  constructor(opts: JobOptions = {}) {
    const outer = opts.signal;
    if (outer?.aborted) this.cancel(outer.reason);
    else outer?.addEventListener('abort', () => this.cancel(outer.reason), { once: true });
  }

  /** The work itself: call `checkpoint()` between requests and `addProgress()` as bytes get done. */
  protected abstract run(signal: AbortSignal): Promise<T>;

  get state(): JobState {
    return this._state;
  }

  get progress(): Readonly<JobProgress> {
    return { ...this.progressNow };
  }

  /** Aborts when the job is cancelled: hand it to whatever the work waits on. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The error the job concluded with, if it failed or was cancelled. */
  get error(): BlockError | undefined {
    return this.failure;
  }

  /** Runs the job once; later calls return the same promise. Rejects with a BlockError. */
  start(): Promise<T> {
    this.result ??= this.execute();
    return this.result;
  }

  /** Stops the job at its next checkpoint; requests already issued complete first. */
  cancel(reason?: unknown): void {
    if (this._state === 'concluded' || this.controller.signal.aborted) return;
    this.controller.abort(reason);
    this.resume();
  }

  /** Holds the job at its next checkpoint (requests in flight still complete). */
  pause(): void {
    if (this._state !== 'running' && this._state !== 'ready') return;
    this.resumed = new Promise((resolve) => (this.wake = resolve));
    this.setState('paused');
  }

  resume(): void {
    const wake = this.wake;
    [this.resumed, this.wake] = [undefined, undefined];
    if (this._state === 'paused') this.setState('running');
    wake?.();
  }

  /**
   * Every state change and progress report from this call until the job concludes (subscribed
   * at once, so nothing emitted before the first `next()` is lost).
   */
  events(): AsyncIterable<JobEvent> {
    if (this._state === 'concluded') return (async function* (error) { yield { type: 'concluded', error } as JobEvent; })(this.failure);
    const ac = new AbortController();
    const source = on(this.emitter, 'event', { signal: ac.signal }) as AsyncIterableIterator<[JobEvent]>;
    return (async function* () {
      try {
        for await (const [event] of source) {
          yield event;
          if (event.type === 'concluded') return;
        }
      } finally {
        ac.abort();
      }
    })();
  }

  /** Waits out a pause; throws E_ABORTED once the job is cancelled. */
  protected async checkpoint(): Promise<void> {
    while (this.resumed && !this.signal.aborted) await this.resumed;
    if (this.signal.aborted) throw cancelled(this.signal.reason);
  }

  protected setTotal(total: number): void {
    this.progressNow.total = total;
    this.emit({ type: 'progress', ...this.progressNow });
  }

  protected addProgress(bytes: number): void {
    this.progressNow.done += bytes;
    this.emit({ type: 'progress', ...this.progressNow });
  }

  /** A job that keeps running after its main work (a mirror) reports that it could now complete. */
  protected markReady(): void {
    if (this._state === 'running') this.setState('ready');
  }

  private async execute(): Promise<T> {
    this.setState('running');
    try {
      if (this.signal.aborted) throw cancelled(this.signal.reason);
      return await this.run(this.signal);
    } catch (err) {
      this.failure = asBlockError(err);
      throw this.failure;
    } finally {
      this.setState('concluded');
      this.emit({ type: 'concluded', error: this.failure });
    }
  }

  private setState(state: JobState): void {
    this._state = state;
    this.emit({ type: 'state', state });
  }

  private emit(event: JobEvent): void {
    this.emitter.emit('event', event);
  }
}

export function cancelled(reason?: unknown): BlockError {
  const why = reason instanceof Error ? `: ${reason.message}` : '';
  return new BlockError('E_ABORTED', `The job was cancelled${why}`, { op: 'job' }, { cause: reason });
}

function asBlockError(err: unknown): BlockError {
  if (err instanceof BlockError) return err;
  return new BlockError('EIO', err instanceof Error ? err.message : String(err), { op: 'job' }, { cause: err });
}
