import zlib from 'node:zlib';
import { promisify } from 'node:util';
import { BlockError } from '../../../core/errors.js';
import { ZstdPool } from './zstd-pool.js';

/**
 * qcow2 compressed clusters (spec §6): one cluster in, one cluster out. The qcow2 driver finds
 * the bytes (L2 descriptor → host offset and sector count) and hands them here.
 *
 * Header byte 104: 0 = deflate ("zlib" in QEMU, but raw deflate with no zlib header), 1 = zstd.
 */
export type CompressionType = 'zlib' | 'zstd';

const MIN_CLUSTER = 512;
const MAX_CLUSTER = 2 * 1024 * 1024;
/**
 * Measured on 64 KiB clusters (Node 20, 2 cores): a sync inflate takes 40–150 µs, the async one
 * 230–370 µs because of the thread-pool hop. So small clusters decompress synchronously; from
 * 128 KiB on the work (up to ~5 ms for 2 MiB) is worth moving off the event loop. (Compression
 * is always asynchronous: see compressCluster.)
 */
const SYNC_MAX = 64 * 1024;

/** QEMU writes deflate with a 4 KiB window (windowBits -12) and inflates with -12 too, so a
 * stream we write must not reach further back; memLevel 9 and level 6 are QEMU's settings. */
export const DEFLATE_OPTS = { windowBits: 12, memLevel: 9, level: 6 } as const;

const inflateRawAsync = promisify(zlib.inflateRaw);
const deflateRawAsync = promisify(zlib.deflateRaw);

export function compressionTypeFromHeader(byte: number): CompressionType {
  if (byte === 0) return 'zlib';
  if (byte === 1) return 'zstd';
  throw new BlockError('E_UNSUPPORTED_FEATURE', `Unsupported qcow2 compression type ${byte} (known: 0 zlib, 1 zstd)`);
}

function checkClusterSize(clusterSize: number): void {
  if (!Number.isInteger(clusterSize) || clusterSize < MIN_CLUSTER || clusterSize > MAX_CLUSTER
    || (clusterSize & (clusterSize - 1)) !== 0) {
    throw new BlockError('EINVAL', `Invalid qcow2 cluster size ${clusterSize} for compression`);
  }
}

function corrupt(type: CompressionType, why: string, cause?: unknown): BlockError {
  return new BlockError('E_CORRUPT', `Corrupt ${type}-compressed qcow2 cluster: ${why}`, { op: 'decompress' },
    cause === undefined ? undefined : { cause });
}

/**
 * Decompresses one cluster. `input` may run past the end of the compressed data (the driver
 * reads whole sectors, and the last one is shared with the next compressed cluster), so the
 * decoders stop at clusterSize bytes and never look at what follows.
 */
export async function decompressCluster(type: CompressionType, input: Uint8Array, clusterSize: number): Promise<Uint8Array> {
  checkClusterSize(clusterSize);
  if (input.byteLength === 0) throw corrupt(type, 'no compressed data');
  return type === 'zlib' ? inflateCluster(input, clusterSize) : zstdDecompressCluster(input, clusterSize);
}

/**
 * Returns the compressed cluster, or null when it would not be smaller than the cluster (QEMU
 * then writes the cluster uncompressed: qcow2_co_pwritev_compressed_task compresses into
 * cluster_size - 1 bytes and falls back on -ENOMEM). Deflate always runs on libuv's thread pool,
 * however small the cluster: a writer compresses many clusters at once (convert -c), and only
 * off the event loop do they use more than one core.
 */
export async function compressCluster(type: CompressionType, data: Uint8Array): Promise<Uint8Array | null> {
  checkClusterSize(data.byteLength);
  const out = type === 'zlib' ? await deflateCluster(data) : await zstdCompressCluster(data);
  return out !== null && out.byteLength < data.byteLength ? out : null;
}

// ---- deflate ---------------------------------------------------------------------------------

async function inflateCluster(input: Uint8Array, clusterSize: number): Promise<Uint8Array> {
  // windowBits 15 accepts every window size a writer may have used (QEMU's is 12).
  // Z_SYNC_FLUSH: a stream that fills the cluster but whose end marker lies past the bytes
  // read is accepted, as QEMU accepts Z_BUF_ERROR with a full output buffer. maxOutputLength
  // bounds a deflate bomb at one cluster: Node throws instead of growing past it.
  const opts = {
    windowBits: 15, chunkSize: clusterSize, maxOutputLength: clusterSize,
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
  };
  let out: Buffer;
  try {
    out = clusterSize <= SYNC_MAX ? zlib.inflateRawSync(input, opts) : await inflateRawAsync(input, opts);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw corrupt('zlib', code === 'ERR_BUFFER_TOO_LARGE' ? `data expands past ${clusterSize} bytes`
      : (err as Error).message, err);
  }
  if (out.byteLength !== clusterSize) throw corrupt('zlib', `data ends after ${out.byteLength} of ${clusterSize} bytes`);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

async function deflateCluster(data: Uint8Array): Promise<Uint8Array | null> {
  // Output that reaches the cluster size is useless; let zlib stop there instead of growing.
  const opts = { ...DEFLATE_OPTS, chunkSize: data.byteLength, maxOutputLength: data.byteLength - 1 };
  try {
    const out = await deflateRawAsync(data, opts);
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') return null;
    throw err;
  }
}

// ---- zstd --------------------------------------------------------------------------------------

type ZstdModule = typeof import('@bokuweb/zstd-wasm');
let zstdModule: Promise<ZstdModule> | undefined;

/**
 * Loaded on first use: images without zstd clusters never pay for the 250 KB wasm module.
 * The package holds one wasm instance per process, and a second init() swaps the memory under
 * functions bound to the first instance, corrupting both. So init only when a probe call shows
 * that nobody else in the process has done it (uninitialised, the probe throws a TypeError).
 */
function loadZstd(): Promise<ZstdModule> {
  zstdModule ??= (async () => {
    const mod = await import('@bokuweb/zstd-wasm');
    try {
      mod.compress(new Uint8Array(1), 1);
    } catch {
      await mod.init();
    }
    return mod;
  })().catch((err: unknown) => {
    zstdModule = undefined;
    throw new BlockError('E_UNSUPPORTED_FEATURE',
      `zstd compression is unavailable: could not load @bokuweb/zstd-wasm (${(err as Error).message})`, {}, { cause: err });
  });
  return zstdModule;
}

/** QEMU's level: ZSTD_compressStream2 with default parameters. */
const ZSTD_LEVEL = 3;

let zstdPool: ZstdPool | undefined;

/** One frame with its content size in the header, as QEMU writes it; on worker threads, so clusters compress in parallel. */
function zstdCompressCluster(data: Uint8Array): Promise<Uint8Array | null> {
  return (zstdPool ??= new ZstdPool()).compress(data, ZSTD_LEVEL);
}

/**
 * QEMU feeds the bytes to ZSTD_decompressStream until the cluster is full, so the data may be
 * several frames and may be followed by anything. The wasm build only offers one-shot
 * ZSTD_decompress, which needs exact frames; so we walk the frame and block headers ourselves
 * (cheap: no decoding), check each frame's declared size against the space left, and decode it
 * into a buffer no larger than that space.
 */
async function zstdDecompressCluster(input: Uint8Array, clusterSize: number): Promise<Uint8Array> {
  const zstd = await loadZstd();
  const out = new Uint8Array(clusterSize);
  let produced = 0;
  let pos = 0;
  while (produced < clusterSize) {
    if (pos >= input.byteLength) throw corrupt('zstd', `data ends after ${produced} of ${clusterSize} bytes`);
    const frame = zstdFrameAt(input, pos, clusterSize - produced);
    pos += frame.length;
    if (frame.skippable) continue;
    let chunk: Uint8Array;
    try {
      chunk = zstd.decompress(input.subarray(frame.start, frame.start + frame.length),
        { defaultHeapSize: clusterSize - produced });
    } catch (err) {
      throw corrupt('zstd', `frame at byte ${frame.start} does not decode`, err);
    }
    if (chunk.byteLength > clusterSize - produced) throw corrupt('zstd', `data expands past ${clusterSize} bytes`);
    out.set(chunk, produced);
    produced += chunk.byteLength;
  }
  return out;
}

const ZSTD_MAGIC = 0xfd2fb528;
const BLOCK_RLE = 1;
const BLOCK_RESERVED = 3;

interface ZstdFrame { start: number; length: number; skippable: boolean }

/** Finds where the frame at `start` ends (RFC 8878 §3.1); refuses frames that cannot fit `room`. */
function zstdFrameAt(input: Uint8Array, start: number, room: number): ZstdFrame {
  const dv = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const need = (p: number, n: number) => {
    if (p + n > input.byteLength) throw corrupt('zstd', `frame at byte ${start} is truncated`);
  };
  need(start, 8);
  const magic = dv.getUint32(start, true);
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    const size = dv.getUint32(start + 4, true);
    need(start + 8, size);
    return { start, length: 8 + size, skippable: true };
  }
  if (magic !== ZSTD_MAGIC) throw corrupt('zstd', `no zstd frame at byte ${start}`);
  const fhd = input[start + 4]!;
  if (fhd & 0x08) throw corrupt('zstd', `frame at byte ${start} sets a reserved header bit`);
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const hasChecksum = (fhd >> 2) & 1;
  const dictIdSize = [0, 1, 2, 4][fhd & 3]!;
  const fcsSize = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
  // libzstd (32-bit wasm) refuses windows past 2^30; refusing them here keeps the package's
  // wrapper off its error path, where it would try to allocate for an "error" content size.
  if (!singleSegment && 10 + (input[start + 5]! >> 3) > 30) {
    throw corrupt('zstd', `frame at byte ${start} asks for a window past 1 GiB`);
  }
  let p = start + 5 + (singleSegment ? 0 : 1);
  need(p, dictIdSize + fcsSize + 3);
  let dictId = 0;
  for (let i = dictIdSize - 1; i >= 0; i--) dictId = dictId * 256 + input[p + i]!;
  // Neither QEMU nor we have dictionaries.
  if (dictId !== 0) throw corrupt('zstd', `frame at byte ${start} needs dictionary ${dictId}`);
  p += dictIdSize;
  if (fcsSize > 0) {
    let size = 0;
    // Little-endian; 8-byte sizes above 2^53 lose precision but are rejected as too big anyway.
    for (let i = fcsSize - 1; i >= 0; i--) size = size * 256 + input[p + i]!;
    if (fcsSize === 2) size += 256;
    if (size > room) throw corrupt('zstd', `frame at byte ${start} declares ${size} bytes, more than the cluster holds`);
  }
  p += fcsSize;
  for (;;) {
    need(p, 3);
    const header = input[p]! | (input[p + 1]! << 8) | (input[p + 2]! << 16);
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === BLOCK_RESERVED) throw corrupt('zstd', `frame at byte ${start} has a reserved block type`);
    // An RLE block stores one byte; raw and compressed blocks store `size` bytes.
    p += 3 + (type === BLOCK_RLE ? 1 : size);
    need(p, 0);
    if (header & 1) break;
  }
  if (hasChecksum) p += 4;
  need(p, 0);
  return { start, length: p - start, skippable: false };
}
