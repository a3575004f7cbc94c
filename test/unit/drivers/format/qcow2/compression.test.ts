import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { compress, decompress as zstdDecompress } from '@bokuweb/zstd-wasm';
import {
  compressCluster, compressionTypeFromHeader, decompressCluster, type CompressionType,
} from '../../../../../src/drivers/format/qcow2/compression.js';
import { assertBytesEqual, pattern } from '../../../../helpers/bytes.js';
import { haveTool, needTools, runOk } from '../../../../helpers/oracles.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

const TYPES: CompressionType[] = ['zlib', 'zstd'];

/**
 * The zstd package is one wasm instance per process and must be initialised once only; our
 * module does that on first use, so tests reach the package's own functions after this.
 */
const zstdReady = () => compressCluster('zstd', new Uint8Array(512));
const SIZES = [512, 65536, 2 * 1024 * 1024];

/** Cluster contents of different compressibility; 'random' never compresses. */
function clusterOf(kind: string, size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  switch (kind) {
    case 'text': {
      const line = new TextEncoder().encode(`vdisk compressed cluster ${seed} says hello\n`);
      for (let i = 0; i < size; i++) out[i] = line[i % line.length]!;
      return out;
    }
    case 'ramp': for (let i = 0; i < size; i++) out[i] = (i * 7 + (i >> 9)) & 0xff; return out;
    case 'half': out.set(pattern(size / 2, seed)); out.fill(0x41, size / 2); return out;
    case 'random': return pattern(size, seed);
    case 'zero': return out;
    default: throw new Error(kind);
  }
}
const KINDS = ['text', 'random', 'ramp', 'half', 'zero'];

/** Asserts a BlockError with the code and a one-line message. */
async function rejectsWith(p: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(p, (err: any) => {
    assert.equal(err?.name, 'BlockError', `${what}: ${err}`);
    assert.equal(err.code, code, `${what}: ${err.message}`);
    assert.ok(!err.message.includes('\n'), `${what}: one-line message`);
    return true;
  }, what);
}

test('compression type comes from header byte 104', () => {
  assert.equal(compressionTypeFromHeader(0), 'zlib');
  assert.equal(compressionTypeFromHeader(1), 'zstd');
  for (const b of [2, 255, -1]) {
    assert.throws(() => compressionTypeFromHeader(b), (err: any) => err.code === 'E_UNSUPPORTED_FEATURE' && /\b-?\d+\b/.test(err.message));
  }
});

test('round trip for every type, cluster size and kind of data', async () => {
  for (const type of TYPES) {
    for (const size of SIZES) {
      for (const kind of KINDS) {
        const data = clusterOf(kind, size, size);
        const c = await compressCluster(type, data);
        if (kind === 'random') {
          assert.equal(c, null, `${type}/${size}/random is not compressible`);
          continue;
        }
        assert.ok(c, `${type}/${size}/${kind} compresses`);
        assert.ok(c.byteLength < size);
        assertBytesEqual(await decompressCluster(type, c, size), data, `${type}/${size}/${kind}`);
      }
    }
  }
});

test('our deflate output is raw deflate that QEMU\'s 4 KiB-window inflate accepts', async () => {
  for (const size of SIZES) {
    for (const kind of ['text', 'ramp', 'half']) {
      const data = clusterOf(kind, size, 3);
      const c = (await compressCluster('zlib', data))!;
      // QEMU inflates with windowBits -12: a longer back-reference would fail there.
      assertBytesEqual(new Uint8Array(zlib.inflateRawSync(c, { windowBits: 12 })), data, `${size}/${kind}`);
      assert.throws(() => zlib.inflateSync(c), 'no zlib header');
    }
  }
});

test('our zstd output is one standard frame the package and the zstd tool decode', async (t) => {
  await zstdReady();
  const data = clusterOf('half', 65536, 5);
  const c = (await compressCluster('zstd', data))!;
  assert.deepEqual([...c.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
  assertBytesEqual(zstdDecompress(c), data, 'package decode');
  if (!haveTool('zstd')) return t.diagnostic('zstd command not installed: checked with the package only');
  assertBytesEqual(new Uint8Array(execFileSync('zstd', ['-d', '-c'], { input: c })), data, 'zstd -d');
});

/** Every compressed cluster of a qcow2 file, found the way spec §6 says. */
function compressedClusters(img: Uint8Array): { index: number; bytes: Uint8Array }[] {
  const dv = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const clusterBits = dv.getUint32(20);
  const l1Size = dv.getUint32(36);
  const l1Offset = Number(dv.getBigUint64(40));
  const l2Entries = (1 << clusterBits) / 8;
  const shift = 62n - BigInt(clusterBits - 8);
  const sizeMask = (1n << BigInt(clusterBits - 8)) - 1n;
  const found: { index: number; bytes: Uint8Array }[] = [];
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(dv.getBigUint64(l1Offset + 8 * i) & 0x00fffffffffffe00n);
    if (l2 === 0) continue;
    for (let j = 0; j < l2Entries; j++) {
      const entry = dv.getBigUint64(l2 + 8 * j);
      if (!(entry & (1n << 62n))) continue;
      const coffset = Number(entry & ((1n << shift) - 1n));
      const nbSectors = Number((entry >> shift) & sizeMask) + 1;
      const csize = nbSectors * 512 - (coffset & 511);
      found.push({ index: i * l2Entries + j, bytes: img.subarray(coffset, Math.min(coffset + csize, img.byteLength)) });
    }
  }
  return found;
}

test('decodes the compressed clusters qemu-img writes', async (t) => {
  if (!needTools(t, 'qemu-img')) return;
  const tmp = await makeTmpDir();
  try {
    for (const size of SIZES) {
      const kinds = [...KINDS, 'text', 'ramp'];
      const raw = new Uint8Array(kinds.length * size);
      kinds.forEach((k, i) => raw.set(clusterOf(k, size, i + 1), i * size));
      await writeFile(tmp.path('src.raw'), raw);
      for (const type of TYPES) {
        const img = tmp.path(`${type}-${size}.qcow2`);
        await runOk('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=${size}`,
          tmp.path('src.raw'), img]);
        const clusters = compressedClusters(await readFile(img));
        // text, ramp, half, text, ramp compress; random is stored plainly; zero is left out.
        assert.deepEqual(clusters.map((c) => kinds[c.index]), ['text', 'ramp', 'half', 'text', 'ramp'], `${type}/${size}`);
        for (const c of clusters) {
          const want = raw.subarray(c.index * size, (c.index + 1) * size);
          assertBytesEqual(await decompressCluster(type, c.bytes, size), want, `${type}/${size} cluster ${c.index}`);
          // What follows the data in the last sector (here: more junk) is never looked at.
          const padded = new Uint8Array(c.bytes.byteLength + 1024);
          padded.set(c.bytes);
          padded.set(pattern(1024, c.index), c.bytes.byteLength);
          assertBytesEqual(await decompressCluster(type, padded, size), want, `${type}/${size} cluster ${c.index} + junk`);
        }
      }
    }
  } finally {
    await tmp.cleanup();
  }
});

/** A zstd frame without a content size holding one raw block (RFC 8878 §3.1.1). */
function rawZstdFrame(data: Uint8Array, last = true): Uint8Array {
  const windowLog = Math.max(10, Math.ceil(Math.log2(data.byteLength)));
  const header = (data.byteLength << 3) | (last ? 1 : 0);
  return Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (windowLog - 10) << 3,
    header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, ...data]);
}

test('zstd: several frames, skippable frames and frames without a content size', async () => {
  await zstdReady();
  const size = 65536;
  const data = clusterOf('half', size, 9);
  const first = compress(data.subarray(0, size / 2), 3);
  const second = compress(data.subarray(size / 2), 3);
  const skippable = Uint8Array.from([0x5a, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
  const joined = new Uint8Array([...first, ...skippable, ...second, ...pattern(100, 1)]);
  assertBytesEqual(await decompressCluster('zstd', joined, size), data, 'two frames around a skippable one');
  const plain = pattern(size, 4);
  assertBytesEqual(await decompressCluster('zstd', rawZstdFrame(plain), size), plain, 'no content size');
  const halves = new Uint8Array([...rawZstdFrame(plain.subarray(0, 1000)), ...rawZstdFrame(plain.subarray(1000))]);
  assertBytesEqual(await decompressCluster('zstd', halves, size), plain, 'uneven frames');
});

test('bad input is E_CORRUPT, promptly and without big allocations', async () => {
  for (const type of TYPES) {
    for (const size of SIZES) {
      const data = clusterOf('text', size, 2);
      const good = (await compressCluster(type, data))!;
      await rejectsWith(decompressCluster(type, new Uint8Array(0), size), 'E_CORRUPT', `${type}/${size} empty`);
      for (let seed = 1; seed <= 20; seed++) {
        await rejectsWith(decompressCluster(type, pattern(size, seed), size), 'E_CORRUPT', `${type}/${size} random ${seed}`);
      }
      for (const cut of [1, 2, 5, Math.floor(good.byteLength / 2)]) {
        await rejectsWith(decompressCluster(type, good.subarray(0, cut), size), 'E_CORRUPT', `${type}/${size} cut at ${cut}`);
      }
      // Cut in the last byte: if deflate has produced the whole cluster by then, QEMU accepts
      // it (Z_BUF_ERROR with a full buffer) and so do we; zstd needs the whole frame.
      const cut = good.byteLength - 1;
      if (type === 'zstd') await rejectsWith(decompressCluster(type, good.subarray(0, cut), size), 'E_CORRUPT', `zstd/${size} cut at ${cut}`);
      else {
        const out = await decompressCluster(type, good.subarray(0, cut), size).catch((err) => err.code as string);
        if (typeof out === 'string') assert.equal(out, 'E_CORRUPT');
        else assertBytesEqual(out, data, `zlib/${size} cut in the last byte`);
      }
      // A stream for less than a cluster, and one for more.
      const half = data.subarray(0, size / 2);
      const small = type === 'zlib' ? new Uint8Array(zlib.deflateRawSync(half)) : compress(half, 3);
      await rejectsWith(decompressCluster(type, small, size), 'E_CORRUPT', `${type}/${size} short output`);
      const twice = new Uint8Array(size * 2);
      twice.set(data);
      twice.set(data, size);
      const big = type === 'zlib' ? new Uint8Array(zlib.deflateRawSync(twice)) : compress(twice, 3);
      await rejectsWith(decompressCluster(type, big, size), 'E_CORRUPT', `${type}/${size} long output`);
      // Flipped bytes in the middle of a valid stream.
      for (const at of [3, 10, Math.floor(good.byteLength / 2)]) {
        const bad = good.slice();
        bad[at]! ^= 0x55;
        const r = await decompressCluster(type, bad, size).then(
          (out) => (out.byteLength === size ? 'ok' : 'wrong length'), (err) => err.code);
        assert.ok(r === 'ok' || r === 'E_CORRUPT', `${type}/${size} flipped byte ${at}: ${r}`);
      }
    }
  }
});

test('mutated streams decode to a full cluster or fail with E_CORRUPT', async () => {
  for (const type of TYPES) {
    const size = 4096;
    const good = (await compressCluster(type, clusterOf('half', size, 7)))!;
    for (let seed = 1; seed <= 400; seed++) {
      const bad = good.slice();
      const noise = pattern(8, seed);
      // 1–4 bytes changed anywhere, the zstd frame header included.
      for (let k = 0; k < 1 + (seed % 4); k++) bad[noise[k]! * 7919 % bad.byteLength] ^= noise[k + 4]!;
      const r = await decompressCluster(type, bad, size).then(
        (out) => (out.byteLength === size ? 'ok' : `length ${out.byteLength}`), (err) => err.code);
      assert.ok(r === 'ok' || r === 'E_CORRUPT', `${type} seed ${seed}: ${r}`);
    }
  }
});

test('compression bombs stop at the cluster size', async () => {
  const huge = new Uint8Array(16 * 1024 * 1024);
  const deflateBomb = new Uint8Array(zlib.deflateRawSync(huge));
  await rejectsWith(decompressCluster('zlib', deflateBomb, 65536), 'E_CORRUPT', 'deflate bomb');
  await zstdReady();
  // Declared content size: refused before decoding.
  await rejectsWith(decompressCluster('zstd', compress(huge, 3), 65536), 'E_CORRUPT', 'zstd bomb with size');
  // No declared size: 512 RLE blocks of 128 KiB each (64 MiB) in 2 KiB of input.
  const rle = [];
  for (let i = 0; i < 512; i++) {
    const h = (131072 << 3) | (1 << 1) | (i === 511 ? 1 : 0);
    rle.push(h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0x61);
  }
  const zstdBomb = Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3, ...rle]);
  await rejectsWith(decompressCluster('zstd', zstdBomb, 65536), 'E_CORRUPT', 'zstd bomb without size');
  // Hostile frame headers: reserved bit, dictionary, reserved block type, truncated skippable frame.
  const hostile = [
    [0x28, 0xb5, 0x2f, 0xfd, 0x08, 0x30, 1, 0, 0, 0],
    [0x28, 0xb5, 0x2f, 0xfd, 0x01, 0x30, 7, 1, 0, 0, 0],
    [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x30, 7, 0, 0, 0],
    [0x50, 0x2a, 0x4d, 0x18, 0xff, 0xff, 0xff, 0xff, 0],
    [0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0],
    // A 2^41 window.
    [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x81, 0, 0, ...pattern(16, 1)],
    // Declares 0 bytes, holds 10.
    [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x51, 0, 0, ...pattern(10, 1)],
  ];
  for (const h of hostile) await rejectsWith(decompressCluster('zstd', Uint8Array.from(h), 65536), 'E_CORRUPT', `hostile ${h}`);
});

test('cluster sizes are checked', async () => {
  for (const size of [0, 256, 1000, 4 * 1024 * 1024]) {
    await rejectsWith(decompressCluster('zlib', new Uint8Array(10), size), 'EINVAL', `decompress ${size}`);
    await rejectsWith(compressCluster('zstd', new Uint8Array(size)), 'EINVAL', `compress ${size}`);
  }
});
