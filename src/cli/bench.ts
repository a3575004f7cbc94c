import { performance } from 'node:perf_hooks';
import { BlockError } from '../core/errors.js';
import type { BlockDevice } from '../core/types.js';
import { hasFlag, lastValue, parseArgs, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { IMAGE_OPTIONS, onePositional, openImage, TIMEOUT_HELP } from './open-image.js';
import { formatFixed, parseSize } from './sizes.js';

const HELP = `usage: vdisk bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N [--no-drain]] [-i AIO] [-n]
                   [-o OFFSET] [--pattern=N] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-U] [-w]
                   [--image-opts] [--timeout SECONDS] IMAGE
Sends COUNT read (or, with -w, write) requests of BUFFER_SIZE bytes, DEPTH of them in flight,
at offsets from OFFSET stepping by STEP_SIZE (default: the buffer size) and wrapping at the end
of the image, and prints how long they took, as qemu-img bench does.
${TIMEOUT_HELP}`;

const INT_MAX = 2 ** 31 - 1;

/** What one run sends; the fields of qemu-img's BenchData. */
export interface BenchParams {
  /** Requests to send in all (≥ 1). */
  count: number;
  /** Requests in flight at most (≥ 1). */
  depth: number;
  /** Offset of the first request. */
  offset: number;
  bufferSize: number;
  /** Distance between consecutive requests' offsets (qemu-img: 0 means the buffer size). */
  step: number;
  write: boolean;
  /** Byte the buffers are filled with (what -w writes). */
  pattern: number;
  /** Flush after every this many requests (write runs only); 0: never. */
  flushInterval: number;
  /** Let requests in flight finish before each flush and send none while it runs. */
  drainOnFlush: boolean;
}

/** All a run needs of a device: tests pass a counting wrapper. */
export type BenchDevice = Pick<BlockDevice, 'size' | 'read' | 'write' | 'flush'>;

/**
 * qemu-img bench's request loop (bench_cb in qemu-img.c), step for step: up to `depth` requests
 * in flight; after each completion the next ones go out, unless a flush is due (every
 * `flushInterval` requests sent), which with draining waits for the queue to empty, runs alone,
 * and only then lets new requests go. Resolves with the seconds from the first request to the
 * last completion, as qemu-img times it (a flush issued after the last request is waited for,
 * but not timed, as qemu-img leaves it to the close). Rejects at the first failed request.
 */
export function runBench(dev: BenchDevice, p: BenchParams): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const size = dev.size;
    // One buffer, filled with the pattern, that every request reads into or writes from at
    // once: qemu-img's bench hands all its requests the same I/O vector, so the copies stay in
    // the CPU's cache (2,048 1 MiB reads: 0.30 s with a buffer per request, 0.27 s shared).
    const buf = Buffer.alloc(p.bufferSize, p.pattern);

    let n = p.count; // requests not yet completed (in flight or not yet sent)
    let inFlight = 0;
    let inFlush = false;
    let offset = p.offset;
    let failed = false;
    let elapsed = -1;
    /** Flushes sent without draining (or the last one), still running. */
    let openFlushes = 0;
    const start = performance.now();

    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      const message = err instanceof Error ? err.message : String(err);
      const code = err instanceof BlockError ? err.code : 'EIO';
      reject(new BlockError(code, `Failed request: ${message}`, {}, { cause: err }));
    };
    const finishIfDone = (): void => {
      if (!failed && elapsed >= 0 && openFlushes === 0) resolve(elapsed);
    };
    const flushDone = (): void => {
      openFlushes--;
      finishIfDone();
    };
    const flushFailed = (err: unknown): void => {
      openFlushes--;
      fail(err);
    };
    const drainedFlushDone = (): void => {
      openFlushes--;
      inFlush = false;
      if (n === 0) finishIfDone();
      else submit();
    };

    const submit = (): void => {
      while (n > inFlight && inFlight < p.depth) {
        const at = offset;
        // Counted before the call, so a completion cannot see a stale count.
        inFlight++;
        offset = size > 0 ? (offset + p.step) % size : 0;
        (p.write ? dev.write(at, buf) : dev.read(at, buf)).then(complete, fail);
      }
    };

    const complete = (): void => {
      if (failed) return;
      const remaining = n - inFlight; // requests not yet sent
      n--;
      inFlight--;
      if (n === 0) elapsed = (performance.now() - start) / 1000;
      if (p.flushInterval > 0 && remaining % p.flushInterval === 0) {
        if (inFlight === 0 || !p.drainOnFlush) {
          openFlushes++;
          if (p.drainOnFlush) {
            inFlush = true;
            dev.flush().then(drainedFlushDone, flushFailed);
          } else {
            dev.flush().then(flushDone, flushFailed);
          }
        }
        if (p.drainOnFlush) return;
      }
      if (n === 0) finishIfDone();
      else if (!inFlush) submit();
    };

    submit();
  });
}

/** qemu_strtoul(text, NULL, 0, …) limited to [0, max]: decimal, 0x hex or 0 octal, all of it. */
function parseUlong(text: string, max: number, message: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) throw new UsageError(message);
  const digits = m[2]!;
  const value = /^0[xX]/.test(digits) ? parseInt(digits.slice(2), 16) : digits.startsWith('0') ? parseInt(digits, 8) : Number(digits);
  // strtoul negates a negative number into a huge one: only -0 stays in range.
  if ((m[1] === '-' && value !== 0) || !(value <= max)) throw new UsageError(message);
  return value;
}

/** qemu-img's cvtnum_full(): a size with suffixes, within [0, max]. */
function parseBoundedSize(text: string, what: string, max: number): number {
  const value = parseSize(text, what);
  if (value > max) throw new UsageError(`Invalid ${what} specified. Must be between 0 and ${max}.`);
  return value;
}

export function benchParams(p: Parsed): BenchParams {
  const countText = lastValue(p, 'c');
  const depthText = lastValue(p, 'd');
  const count = countText === undefined ? 75000 : parseUlong(countText, INT_MAX, `Invalid request count specified: '${countText}'`);
  const depth = depthText === undefined ? 64 : parseUlong(depthText, INT_MAX, `Invalid queue depth specified: '${depthText}'`);
  if (count === 0) throw new UsageError('Invalid request count specified: it must be at least 1');
  if (depth === 0) throw new UsageError('Invalid queue depth specified: it must be at least 1');
  const offsetText = lastValue(p, 'o');
  const offset = offsetText === undefined ? 0 : parseSize(offsetText, 'offset');
  const sizeText = lastValue(p, 's');
  const bufferSize = sizeText === undefined ? 4096 : parseBoundedSize(sizeText, 'buffer size', INT_MAX);
  const stepText = lastValue(p, 'S');
  const step = stepText === undefined ? 0 : parseBoundedSize(stepText, 'step_size', INT_MAX);
  const patternText = lastValue(p, 'pattern');
  const pattern = patternText === undefined ? 0 : parseUlong(patternText, 0xff, `Invalid pattern byte specified: '${patternText}'`);
  const intervalText = lastValue(p, 'flush-interval');
  const flushInterval = intervalText === undefined ? 0 : parseUlong(intervalText, INT_MAX, `Invalid flush interval specified: '${intervalText}'`);
  const aio = lastValue(p, 'i');
  if (aio !== undefined && !['threads', 'native', 'io_uring'].includes(aio)) throw new UsageError(`Invalid aio option: ${aio}`);
  const write = hasFlag(p, 'w');
  if (!write && flushInterval) throw new UsageError('--flush-interval is only available in write tests');
  if (flushInterval && flushInterval < depth) throw new UsageError("Flush interval can't be smaller than depth");
  return {
    count, depth, offset, bufferSize, step: step || bufferSize, write, pattern, flushInterval,
    drainOnFlush: !hasFlag(p, 'no-drain'),
  };
}

export function startLine(b: BenchParams): string {
  return `Sending ${b.count} ${b.write ? 'write' : 'read'} requests, ${b.bufferSize} bytes each, ${b.depth} in parallel ` +
    `(starting at offset ${b.offset}, step size ${b.step})`;
}

export function completedLine(seconds: number): string {
  return `Run completed in ${formatFixed(seconds, 3)} seconds.`;
}

export async function bench(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    ...IMAGE_OPTIONS,
    { short: 'c', value: true }, { short: 'd', value: true }, { short: 'i', value: true }, { short: 'n' },
    { short: 'o', value: true }, { short: 'q' }, { short: 's', value: true }, { short: 'S', value: true },
    { short: 'w' }, { long: 'pattern', value: true }, { long: 'flush-interval', value: true }, { long: 'no-drain' },
    { short: 'h', long: 'help' },
  ], 'vdisk bench');
  if (p.options.has('help')) return print(io, HELP), 0;
  const params = benchParams(p);
  const image = onePositional(p, 'image');
  // -n (Linux native AIO) and -i choose QEMU's I/O backend; Node has one, so they change nothing.
  // -q silences only qemu-img's open-time messages: the two lines below are printed regardless.
  await using node = await openImage(p, image, { readOnly: !params.write });
  // qemu-img sends such requests and fails on the first; we say why before starting.
  if (params.offset >= node.size) {
    throw new UsageError(`Offset ${params.offset} is past the end of the image (${node.size} bytes)`);
  }
  if (params.offset + params.bufferSize > node.size) {
    throw new UsageError(`A request of ${params.bufferSize} bytes at offset ${params.offset} runs past the end of the image (${node.size} bytes)`);
  }
  print(io, startLine(params));
  if (params.flushInterval) print(io, `Sending flush every ${params.flushInterval} requests`);
  const seconds = await runBench(node, params);
  print(io, completedLine(seconds));
  // qemu-img's block layer flushes when it closes the image, after the timed run; so do we.
  if (params.write) await node.flush();
  return 0;
}
