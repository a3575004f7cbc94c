import type http from 'node:http';
import { finished } from 'node:stream/promises';
import { BlockError, type BlockErrorContext } from '../../../core/errors.js';

/*
 * What the server's answers must look like. A server is trusted for bytes, never for sizes: a
 * reply is read into the buffer the request asked for and not a byte more, and any answer that
 * does not fit the request exactly is an EIO with one line saying what was wrong.
 */

function fail(ctx: BlockErrorContext, why: string): BlockError {
  return new BlockError('EIO', `Could not ${ctx.op} '${ctx.path}': ${why}`, ctx);
}

/** curl's words for an HTTP error status (CURLOPT_FAILONERROR), which QEMU passes on. */
function statusError(res: http.IncomingMessage, ctx: BlockErrorContext): BlockError {
  const code = res.statusCode ?? 0;
  const why = `The requested URL returned error: ${code}${res.statusMessage ? ` ${res.statusMessage}` : ''}`;
  return new BlockError(code === 401 || code === 403 ? 'EACCES' : code === 404 || code === 410 ? 'ENOENT' : 'EIO',
    `Could not ${ctx.op} '${ctx.path}': ${why}`, ctx);
}

/** A decimal header value as a safe integer; anything else is undefined. */
function decimal(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,16}$/.test(value.trim())) return undefined;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

export interface Resource {
  /** Content-Length of the HEAD reply: the image's bytes. */
  length: number;
}

/**
 * The HEAD reply of an open (QEMU's curl_open): the size from Content-Length, and byte ranges
 * announced by Accept-Ranges, or the image cannot be read piecewise and is refused.
 */
export async function readHead(res: http.IncomingMessage, ctx: BlockErrorContext): Promise<Resource> {
  // Read to its end, so the connection is free for the next request when the open goes on.
  res.resume();
  await finished(res);
  const status = res.statusCode ?? 0;
  if (status >= 400) throw statusError(res, ctx);
  if (status !== 200) throw fail(ctx, `unexpected HTTP status ${status}${res.statusMessage ? ` ${res.statusMessage}` : ''}`);
  const header = res.headers['content-length'];
  if (header === undefined) throw fail(ctx, "Server didn't report file size.");
  const length = decimal(header);
  if (length === undefined) throw fail(ctx, `the server reports a file size of ${header} bytes, which vdisk cannot address`);
  const encoding = res.headers['content-encoding'];
  if (encoding !== undefined && encoding.toLowerCase() !== 'identity') {
    throw fail(ctx, `the server sends the file with Content-Encoding '${encoding}', not as stored`);
  }
  const ranges = (res.headers['accept-ranges'] ?? '').toLowerCase().split(',').map((s) => s.trim());
  if (!ranges.includes('bytes')) throw fail(ctx, "Server does not support 'range' (byte ranges).");
  return { length };
}

/** `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`), strictly; undefined when the header is not that. */
export function parseContentRange(value: string | undefined): { first: number; last: number; total?: number } | undefined {
  const m = /^bytes (\d{1,16})-(\d{1,16})\/(\d{1,16}|\*)$/.exec(value?.trim() ?? '');
  if (!m) return undefined;
  const [first, last] = [Number(m[1]), Number(m[2])];
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (last < first || (total !== undefined && last >= total)) return undefined;
  return { first, last, total };
}

/**
 * Reads the reply to `Range: bytes=offset-(offset+into.length-1)` into `into`. It must be 206
 * with exactly that Content-Range (a 200 is taken only when the range was the whole file and
 * Content-Length says so); the body must be exactly that long.
 */
export async function readRange(res: http.IncomingMessage, offset: number, into: Uint8Array, fileLength: number, ctx: BlockErrorContext): Promise<void> {
  const want = into.byteLength;
  const status = res.statusCode ?? 0;
  const check = (): BlockError | undefined => {
    if (status >= 400) return statusError(res, ctx);
    const length = decimal(res.headers['content-length']);
    if (status === 200) {
      // A server may answer a range covering the whole file with the whole file.
      if (offset === 0 && want === fileLength && length === want) return undefined;
      return fail(ctx, `the server ignored the byte range (HTTP ${status} instead of 206 Partial Content)`);
    }
    if (status !== 206) return fail(ctx, `unexpected HTTP status ${status} to a byte-range request`);
    const encoding = res.headers['content-encoding'];
    if (encoding !== undefined && encoding.toLowerCase() !== 'identity') return fail(ctx, `the reply has Content-Encoding '${encoding}'`);
    const header = res.headers['content-range'];
    const range = parseContentRange(header);
    if (!range) return fail(ctx, `the reply's Content-Range ${JSON.stringify(header ?? null)} is not one byte range`);
    if (range.first !== offset || range.last !== offset + want - 1) {
      return fail(ctx, `the server sent bytes ${range.first}-${range.last} for a request of bytes ${offset}-${offset + want - 1}`);
    }
    if (range.total !== undefined && range.total !== fileLength) {
      return fail(ctx, `the file changed size on the server (${range.total} bytes, ${fileLength} when opened)`);
    }
    if (length !== undefined && length !== want) return fail(ctx, `the reply's Content-Length ${length} does not match the ${want} bytes asked for`);
    return undefined;
  };
  const bad = check();
  if (bad) {
    // The body is not read: a server that ignored the range might be sending the whole image.
    res.destroy();
    throw bad;
  }
  let got = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (got + chunk.byteLength > want) {
      res.destroy();
      throw fail(ctx, `the server sent more than the ${want} bytes asked for at offset ${offset}`);
    }
    into.set(chunk, got);
    got += chunk.byteLength;
  }
  if (got < want) throw fail(ctx, `the reply ended after ${got} of ${want} bytes at offset ${offset}`);
}
