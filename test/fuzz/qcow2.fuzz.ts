/**
 * qcow2 fuzzer (DESIGN.md §11: "Fuzzing of every parser … only BlockErrors, no hangs, bounded
 * memory; minimised crashers kept as byte literals in unit tests").
 *
 * Seeds: 25 small valid images made by the REAL qemu-img / qemu-io, never by vdisk (clusters of
 * 512 B, 16 KiB and 64 KiB; compat 0.10 and 1.1; extended L2; zlib and zstd compression, also with
 * extended L2; internal snapshots; backing files; external data files, one data_file_raw;
 * refcount widths 1, 2, 16 and 64; lazy refcounts, clean and left dirty; a persistent bitmap).
 *
 * Mutations (1–5 per case, chosen by a seeded PRNG, aimed by an independent reading of the
 * seed's layout): header fields (boundary values 0, 1, 2^31, 2^32-1, 2^53, 2^56, 2^63, 2^64-1,
 * cluster-aligned and misaligned offsets in the file, past EOF and at metadata, bit flips),
 * consistent huge geometries (size with a matching l1_size), the header-extension area (types,
 * lengths, feature-table bytes, a new or duplicated extension, backing-name bytes), L1 entries, L2
 * entries (offsets, COPIED/ZERO/COMPRESSED/reserved bits, compressed descriptors' offset and
 * sector count, subcluster bitmaps), compressed bytes, refcount-table entries (also many naming
 * one block), refcount blocks (also filled with one byte),
 * snapshot-table fields and bytes, one cluster copied over another, truncation, appended bytes
 * and bit flips.
 *
 * Each case then:
 *   1. opens the mutant read-only (a qcow2 spec; 10% by filename with probing; 10% of snapshot
 *      seeds at a snapshot), reads the guest disk in three chunk sizes (all of it up to 2 MiB and
 *      the last 256 KiB of larger disks), sometimes six concurrent reads, walks block status
 *      (extentLists, extents, blockStatusList at random offsets) and runs check('none');
 *   2. opens the same bytes writable (10% with `check: true`), does 3–7 writes, FUA writes, zero
 *      writes (plain, unmap, no-fallback), discards, reads and flushes aimed at the guest
 *      offsets whose mappings were mutated — in 30% of cases all at once — sometimes check('none'
 *      | 'leaks' | 'all'), reads back, flushes and closes.
 * Every failure must be a BlockError. Cases run in child processes (a V8 abort takes a whole
 * process with it, threads included); the parent's watchdog kills a child whose case runs past
 * the budget (default 10 s) and reports a hang with the case seed; a case whose RSS grows by more
 * than 512 MiB fails, as does a child that dies, leaves a rejection unhandled, or leaves a file
 * descriptor open after every node is closed. References are followed only inside the case's
 * own directory and the seed directory (an allow-list open gate).
 *
 * Runs:
 *   CI slice:  node --import tsx --test test/fuzz/qcow2-fuzz.test.ts
 *   Long run:  VDISK_FUZZ_CASES=100000 VDISK_FUZZ_SEED=1 node --import tsx test/fuzz/qcow2.fuzz.ts
 *              (VDISK_FUZZ_WORKERS=2, VDISK_FUZZ_BUDGET_MS=10000, VDISK_FUZZ_LOG=progress.log,
 *               VDISK_FUZZ_DIR=work dir, VDISK_FUZZ_MINIMISE=0 to skip minimising)
 *   Replay:    VDISK_FUZZ_REPLAY=<case seed> [VDISK_FUZZ_DUMP=dir] node --import tsx test/fuzz/qcow2.fuzz.ts
 *              (runs one case in this process and prints every step; DUMP keeps the mutant).
 *              A case seed stands for the same mutant only with the same version of this file.
 */
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fork, type ChildProcess } from 'node:child_process';
import type { BlockNode } from '../../src/core/block-node.js';
import { BlockError } from '../../src/core/errors.js';
import { Qcow2Node } from '../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../src/registry/index.js';
import type { NodeSpec, OpenOptions } from '../../src/registry/driver.js';
import { run as runTool } from '../helpers/oracles.js';
import { pattern } from '../helpers/bytes.js';

const KiB = 1024;
const MiB = 1024 * KiB;

// ---- deterministic randomness ----------------------------------------------------------------

/** Mixes two 32-bit numbers into one (a murmur3-style finaliser): case seeds from (run seed, index). */
export function mix32(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** mulberry32: small, fast, good enough to pick mutations; every case is replayable from its seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    if (n <= 0) return 0;
    if (n <= 2 ** 32) return Math.floor((this.u32() / 2 ** 32) * n);
    return Math.floor((this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53 * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  weighted<T>(items: readonly (readonly [T, number])[]): T {
    let total = 0;
    for (const [, w] of items) total += w;
    let r = this.u32() / 2 ** 32 * total;
    for (const [v, w] of items) {
      if ((r -= w) < 0) return v;
    }
    return items[items.length - 1]![0];
  }
}

// ---- seeds -----------------------------------------------------------------------------------

/** A seed image as the workers need it (paths, not bytes). */
export interface SeedInfo {
  name: string;
  /** The image made by qemu-img/qemu-io. */
  image: string;
  /** A relative data file the image names (copied next to every mutant). */
  dataFile?: string;
  /** Snapshot names and ids, for opening a snapshot. */
  snapshots: string[];
}

export interface Seed extends SeedInfo {
  bytes: Uint8Array;
  layout: Layout;
}

async function tool(cmd: string, args: string[], cwd: string, allowFail = false): Promise<void> {
  const r = await runTool(cmd, args, { cwd });
  if (r.code !== 0 && !allowFail) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stdout + r.stderr).trim()}`);
  if (!allowFail && cmd === 'qemu-io' && /failed|error/i.test(r.stdout + r.stderr)) {
    throw new Error(`${cmd} ${args.join(' ')}: ${(r.stdout + r.stderr).trim()}`);
  }
}

const create = (cwd: string, file: string, size: number, opts: string, backing?: string) =>
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...(backing ? ['-b', backing, '-F', 'qcow2'] : []), file, String(size)], cwd);
const io = (cwd: string, file: string, cmds: string[]) => tool('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file], cwd);

/** Data, ZERO_ALLOC, ZERO_PLAIN, a discard, a compressed cluster, a partial last cluster. */
function writesFor(C: number, size: number, compressed: boolean): string[] {
  const ops = [
    `write -P 0x11 0 ${C + 1000}`,
    `write -P 0x22 ${2 * C - 777} ${C}`,
    `write -P 0x33 ${3 * C} ${2 * C}`,
    `write -z ${3 * C} ${C}`,
    `write -z -u ${4 * C} ${C}`,
    `write -P 0x44 ${5 * C} ${C}`,
    `discard ${5 * C} ${C}`,
    `write -P 0x55 ${size - 1536} 1536`,
  ];
  if (compressed) ops.push(`write -c -P 0x5c ${7 * C} ${C}`);
  return ops;
}

/**
 * Builds the seed corpus in `dir` with qemu-img and qemu-io (never with vdisk). Small on
 * purpose: every case copies one seed, reads all of it three times and writes to it.
 */
export async function buildSeeds(dir: string): Promise<Seed[]> {
  mkdirSync(dir, { recursive: true });
  const seeds: SeedInfo[] = [];
  const add = (name: string, extra: Partial<SeedInfo> = {}) => seeds.push({ name, image: path.join(dir, `${name}.qcow2`), snapshots: [], ...extra });
  const K64 = 64 * KiB;
  const std = async (name: string, C: number, opts: string, size: number, compressed: boolean, extra: string[] = []) => {
    await create(dir, `${name}.qcow2`, size, `cluster_size=${C}${opts ? ',' + opts : ''}`);
    await io(dir, `${name}.qcow2`, [...writesFor(C, size, compressed), ...extra]);
    add(name);
  };
  await std('v3-64k', K64, 'compat=1.1', MiB + 1536, true);
  await std('v2-64k', K64, 'compat=0.10', MiB + 1536, true);
  // 512-byte clusters: one L2 table maps 32 KiB, a refcount block 128 KiB of host.
  await std('v3-512', 512, 'compat=1.1', 80 * KiB + 1536, true);
  await std('v2-512', 512, 'compat=0.10', 80 * KiB + 1536, true);
  await std('v3-512-refcount2', 512, 'refcount_bits=2', 40 * KiB + 512, false);
  await std('v3-64k-refcount1', K64, 'refcount_bits=1', MiB, false);
  await std('v3-64k-refcount64', K64, 'refcount_bits=64', MiB, false);
  // 64-bit refcounts in 512-byte clusters: a refcount block covers 32 KiB, so writes add blocks.
  await std('v3-512-refcount64', 512, 'refcount_bits=64', 80 * KiB, false);
  await std('lazy-64k', K64, 'lazy_refcounts=on', MiB, false);
  await std('extl2-64k', K64, 'extended_l2=on', MiB + 1536, false,
    [`write -P 0x66 ${9 * K64 + 6 * KiB} 4096`, `write -z ${9 * K64 + 16 * KiB} 8192`, `write -P 0x67 ${10 * K64 + 2048} 2048`]);
  await std('extl2-16k', 16 * KiB, 'extended_l2=on', 512 * KiB, false, ['write -P 0x68 200k 1536', 'write -z 300k 1024']);
  // Compressed by qemu-img convert -c: compressible, incompressible and zero clusters.
  for (const [name, type, C] of [['zlib-64k', 'zlib', K64], ['zstd-64k', 'zstd', K64], ['zlib-512', 'zlib', 512], ['zstd-512', 'zstd', 512]] as const) {
    const raw = path.join(dir, `${name}.raw`);
    const size = C === 512 ? 24 * KiB : 8 * K64;
    writeFileSync(raw, new Uint8Array(size));
    const text = new TextEncoder().encode('qcow2 fuzz seed compressible text\n');
    const buf = new Uint8Array(size);
    for (let i = 0; i < 4 * C; i++) buf[i] = text[i % text.length]!;
    buf.set(pattern(C, 0xc0ffee), 5 * C);
    for (let i = 6 * C; i < 6 * C + C / 2; i++) buf[i] = (i * 7) & 0xff;
    writeFileSync(raw, buf);
    await tool('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=${C}`, raw, `${name}.qcow2`], dir);
    rmSync(raw);
    await io(dir, `${name}.qcow2`, [`write -P 0x71 ${C + 100} ${C / 4}`, `write -z ${2 * C} ${C}`, `discard ${3 * C} ${C}`]);
    add(name);
  }
  // Compressed clusters in an extended-L2 image (compressed entries have no subcluster bitmap).
  await create(dir, 'zlib-extl2-64k.qcow2', MiB, `cluster_size=${K64},extended_l2=on`);
  await io(dir, 'zlib-extl2-64k.qcow2', ['write -c -P 0x5c 0 64k', 'write -c -P 0x5d 128k 64k', 'write -P 0x5e 70k 4k', 'write -z 200k 8k']);
  add('zlib-extl2-64k');
  // A persistent dirty bitmap: the bitmaps extension, its directory and autoclear bit 0.
  await create(dir, 'bitmap-64k.qcow2', MiB, `cluster_size=${K64}`);
  await tool('qemu-img', ['bitmap', '--add', 'bitmap-64k.qcow2', 'b0'], dir);
  await io(dir, 'bitmap-64k.qcow2', ['write -P 0x61 0 100k', 'write -P 0x62 512k 64k']);
  add('bitmap-64k');
  // Internal snapshots (v3 64k and v2 512).
  await create(dir, 'snap-64k.qcow2', MiB, `cluster_size=${K64}`);
  await io(dir, 'snap-64k.qcow2', ['write -P 0x11 0 256k', 'write -P 0x12 512k 100k']);
  await tool('qemu-img', ['snapshot', '-c', 'first', 'snap-64k.qcow2'], dir);
  await io(dir, 'snap-64k.qcow2', ['write -P 0x21 64k 70k', 'write -z 512k 64k', 'discard 192k 64k']);
  await tool('qemu-img', ['snapshot', '-c', 'second', 'snap-64k.qcow2'], dir);
  await io(dir, 'snap-64k.qcow2', ['write -P 0x31 100k 200k', 'write -P 0x32 768k 4k']);
  add('snap-64k', { snapshots: ['first', 'second', '1', '2'] });
  await create(dir, 'snap-v2-512.qcow2', 48 * KiB, 'cluster_size=512,compat=0.10');
  await io(dir, 'snap-v2-512.qcow2', ['write -P 0x11 0 8k', 'write -P 0x12 33k 3k']);
  await tool('qemu-img', ['snapshot', '-c', 'only', 'snap-v2-512.qcow2'], dir);
  await io(dir, 'snap-v2-512.qcow2', ['write -P 0x21 4k 6k']);
  add('snap-v2-512', { snapshots: ['only', '1'] });
  // A backing chain (the backing file stays in the seed directory, read-only).
  await create(dir, 'base.qcow2', MiB, `cluster_size=${K64}`);
  await io(dir, 'base.qcow2', [`write -P 0xb0 0 ${MiB}`]);
  await create(dir, 'overlay-64k.qcow2', MiB, `cluster_size=${K64}`, path.join(dir, 'base.qcow2'));
  await io(dir, 'overlay-64k.qcow2', ['write -P 0xe1 100k 10k', 'write -z 256k 64k', 'discard 512k 64k']);
  add('overlay-64k');
  await create(dir, 'overlay-extl2.qcow2', MiB, `cluster_size=${K64},extended_l2=on`, path.join(dir, 'base.qcow2'));
  await io(dir, 'overlay-extl2.qcow2', ['write -P 0xe2 6k 4k', 'write -z 136k 8k', 'write -z -u 256k 64k', 'discard 512k 64k']);
  add('overlay-extl2');
  await create(dir, 'overlay-v2-512.qcow2', 64 * KiB, 'cluster_size=512,compat=0.10', path.join(dir, 'base.qcow2'));
  await io(dir, 'overlay-v2-512.qcow2', ['write -P 0xf1 1000 3000', 'write -z 8k 2k']);
  add('overlay-v2-512');
  // An external data file, named relative to the image (QEMU resolves it against its cwd: dir).
  await create(dir, 'datafile-64k.qcow2', MiB, `cluster_size=${K64},data_file=datafile-64k.raw`);
  await io(dir, 'datafile-64k.qcow2', writesFor(K64, MiB, false));
  add('datafile-64k', { dataFile: 'datafile-64k.raw' });
  await create(dir, 'datafile-raw-512.qcow2', 32 * KiB, 'cluster_size=512,data_file=datafile-raw-512.raw,data_file_raw=on');
  await io(dir, 'datafile-raw-512.qcow2', writesFor(512, 32 * KiB, false));
  add('datafile-raw-512', { dataFile: 'datafile-raw-512.raw' });
  // Lazy refcounts left dirty: a writable open repairs it (check 'all') before anything else.
  await create(dir, 'dirty-64k.qcow2', MiB, `cluster_size=${K64},lazy_refcounts=on`);
  await tool('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 200k', '-c', 'flush', '-c', 'write -P 0x15 512k 64k', '-c', 'abort', 'dirty-64k.qcow2'], dir, true);
  add('dirty-64k');
  return seeds.map((s) => {
    const bytes = new Uint8Array(readFileSync(s.image));
    return { ...s, bytes, layout: describe(bytes) };
  });
}

// ---- an independent reading of the layout (not the driver's parser) ---------------------------

export interface Layout {
  version: number;
  clusterBits: number;
  clusterSize: number;
  size: number;
  headerLength: number;
  extendedL2: boolean;
  refcountOrder: number;
  l1Offset: number;
  l1Size: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  snapshotsOffset: number;
  nbSnapshots: number;
  backingFileOffset: number;
  backingFileSize: number;
  /** Header extensions: where each starts (its type field). */
  extensions: { at: number; type: number; length: number }[];
  /** Every L1 table: active first, then the snapshots'. */
  l1Tables: { offset: number; size: number }[];
  /** Byte offsets of L2 entries (non-zero ones) with the guest offset they map (active tables only for guest). */
  l2Entries: { at: number; guest: number; compressed: boolean }[];
  l2Tables: number[];
  refcountBlocks: number[];
  /** Snapshot table entries: where each starts, and its field layout. */
  snapshotEntries: { at: number; length: number }[];
  /** Compressed data ranges [offset, offset + length). */
  compressed: { offset: number; length: number }[];
  /** Offsets of every metadata structure, for pointing entries at them. */
  metadata: number[];
}

const rd64 = (b: Uint8Array, at: number) => (at + 8 <= b.byteLength ? new DataView(b.buffer, b.byteOffset).getBigUint64(at) : 0n);
const rd32 = (b: Uint8Array, at: number) => (at + 4 <= b.byteLength ? new DataView(b.buffer, b.byteOffset).getUint32(at) : 0);
const rd16 = (b: Uint8Array, at: number) => (at + 2 <= b.byteLength ? new DataView(b.buffer, b.byteOffset).getUint16(at) : 0);

/** Reads a valid seed's structure; mutations use it to hit real fields. */
export function describe(b: Uint8Array): Layout {
  const version = rd32(b, 4);
  const clusterBits = rd32(b, 20);
  const cs = 2 ** clusterBits;
  const incompat = version >= 3 ? rd64(b, 72) : 0n;
  const extendedL2 = (incompat & 16n) !== 0n;
  const headerLength = version >= 3 ? rd32(b, 100) : 72;
  const L: Layout = {
    version, clusterBits, clusterSize: cs, size: Number(rd64(b, 24)), headerLength, extendedL2,
    refcountOrder: version >= 3 ? rd32(b, 96) : 4,
    l1Offset: Number(rd64(b, 40)), l1Size: rd32(b, 36),
    refcountTableOffset: Number(rd64(b, 48)), refcountTableClusters: rd32(b, 56),
    snapshotsOffset: Number(rd64(b, 64)), nbSnapshots: rd32(b, 60),
    backingFileOffset: Number(rd64(b, 8)), backingFileSize: rd32(b, 16),
    extensions: [], l1Tables: [], l2Entries: [], l2Tables: [], refcountBlocks: [], snapshotEntries: [], compressed: [], metadata: [0],
  };
  for (let at = headerLength; at + 8 <= Math.min(cs, b.byteLength);) {
    const type = rd32(b, at);
    const length = rd32(b, at + 4);
    L.extensions.push({ at, type, length });
    if (type === 0) break;
    at += 8 + Math.ceil(length / 8) * 8;
  }
  L.l1Tables.push({ offset: L.l1Offset, size: L.l1Size });
  let p = L.snapshotsOffset;
  for (let i = 0; i < L.nbSnapshots; i++) {
    const extra = rd32(b, p + 36);
    const len = Math.ceil((40 + extra + rd16(b, p + 12) + rd16(b, p + 14)) / 8) * 8;
    L.snapshotEntries.push({ at: p, length: len });
    L.l1Tables.push({ offset: Number(rd64(b, p)), size: rd32(b, p + 8) });
    p += len;
  }
  const entryBytes = extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const seenL2 = new Set<number>();
  L.l1Tables.forEach((t, ti) => {
    L.metadata.push(t.offset);
    for (let i = 0; i < t.size; i++) {
      const l2 = Number(rd64(b, t.offset + i * 8) & 0x00fffffffffffe00n);
      if (l2 === 0 || seenL2.has(l2)) continue;
      seenL2.add(l2);
      L.l2Tables.push(l2);
      L.metadata.push(l2);
      for (let j = 0; j < l2Entries; j++) {
        const at = l2 + j * entryBytes;
        const e = rd64(b, at);
        const bitmap = extendedL2 ? rd64(b, at + 8) : 0n;
        if (e === 0n && bitmap === 0n) continue;
        const compressed = (e & (1n << 62n)) !== 0n;
        L.l2Entries.push({ at, guest: ti === 0 ? (i * l2Entries + j) * cs : -1, compressed });
        if (compressed) {
          const shift = BigInt(62 - (clusterBits - 8));
          const desc = e & ((1n << 62n) - 1n);
          const offset = Number(desc & ((1n << shift) - 1n));
          const sectors = Number((desc >> shift) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
          L.compressed.push({ offset, length: sectors * 512 - (offset % 512) });
        }
      }
    }
  });
  L.metadata.push(L.refcountTableOffset);
  for (let i = 0; i < L.refcountTableClusters * cs / 8; i++) {
    const off = Number(rd64(b, L.refcountTableOffset + i * 8));
    if (off) {
      L.refcountBlocks.push(off);
      L.metadata.push(off);
    }
  }
  if (L.nbSnapshots) L.metadata.push(L.snapshotsOffset);
  for (const e of L.extensions) L.metadata.push(e.at);
  return L;
}

// ---- mutations -------------------------------------------------------------------------------

export interface Mutant {
  bytes: Uint8Array;
  log: string[];
  /** Guest offsets whose mapping a mutation touched: the writes aim there. */
  hot: number[];
}

const P = (n: number) => 2n ** BigInt(n);
const BOUNDARIES: bigint[] = [0n, 1n, 2n, 7n, 8n, 9n, 0x1ffn, 0x200n, 0x201n, P(16), P(31) - 1n, P(31), P(32) - 1n, P(32), P(53) - 1n, P(53), P(53) + 1n,
  P(55), P(56) - 512n, P(56), P(62), P(63), P(63) + 512n, P(64) - 1n, P(64) - 512n];

/** An "interesting" 64-bit value for a field whose current value is `old`. */
function interesting(rng: Rng, L: Layout, fileSize: number, old: bigint): bigint {
  const cs = BigInt(L.clusterSize);
  switch (rng.int(9)) {
    case 0: case 1: return rng.pick(BOUNDARIES);
    case 2: return BigInt(rng.int(Math.ceil(fileSize / L.clusterSize) + 6)) * cs; // aligned, in the file or just past it
    case 3: return BigInt(rng.int(Math.ceil(fileSize / L.clusterSize) + 2)) * cs + BigInt(rng.range(1, L.clusterSize - 1)); // misaligned
    case 4: return BigInt(rng.pick(L.metadata)); // at metadata
    case 5: return (BigInt(rng.range(1, 2 ** 20)) << BigInt(rng.range(9, 54))) & ~(cs - 1n); // aligned, far past EOF
    case 6: return rng.u64();
    case 7: return old + BigInt(rng.range(-4, 4)) * (rng.chance(0.5) ? 1n : cs);
    default: return old ^ (1n << BigInt(rng.int(64)));
  }
}

function put(b: Uint8Array, at: number, width: number, value: bigint): void {
  if (at < 0 || at + width > b.byteLength) return;
  let v = BigInt.asUintN(width * 8, value);
  for (let i = width - 1; i >= 0; i--) {
    b[at + i] = Number(v & 0xffn);
    v >>= 8n;
  }
}
function get(b: Uint8Array, at: number, width: number): bigint {
  let v = 0n;
  for (let i = 0; i < width && at + i < b.byteLength; i++) v = (v << 8n) | BigInt(b[at + i]!);
  return v;
}
const hex = (v: bigint | number) => `0x${v.toString(16)}`;

const HEADER_FIELDS: readonly (readonly [string, number, number])[] = [
  ['magic', 0, 4], ['version', 4, 4], ['backing_file_offset', 8, 8], ['backing_file_size', 16, 4], ['cluster_bits', 20, 4],
  ['size', 24, 8], ['crypt_method', 32, 4], ['l1_size', 36, 4], ['l1_table_offset', 40, 8], ['refcount_table_offset', 48, 8],
  ['refcount_table_clusters', 56, 4], ['nb_snapshots', 60, 4], ['snapshots_offset', 64, 8],
  ['incompatible_features', 72, 8], ['compatible_features', 80, 8], ['autoclear_features', 88, 8], ['refcount_order', 96, 4],
  ['header_length', 100, 4], ['compression_type', 104, 1],
];
const EXT_TYPES = [0, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0x12345678];

type MutationKind = 'header' | 'geometry' | 'ext' | 'l1' | 'l2' | 'bitmap' | 'cdesc' | 'cbytes' | 'reftable' | 'refblock' | 'snapshot' | 'clone'
  | 'truncate' | 'flip' | 'grow';

function mutateOnce(rng: Rng, L: Layout, b: Uint8Array, m: Mutant): Uint8Array {
  const kinds: [MutationKind, number][] = [
    ['header', 20], ['geometry', 4], ['ext', 8], ['l1', 10], ['l2', 16], ['reftable', 6], ['refblock', 5], ['clone', 3], ['truncate', 5], ['flip', 5], ['grow', 1],
  ];
  if (L.extendedL2) kinds.push(['bitmap', 8]);
  if (L.compressed.length) kinds.push(['cdesc', 8], ['cbytes', 8]);
  if (L.nbSnapshots) kinds.push(['snapshot', 12]);
  const kind = rng.weighted(kinds);
  const cs = L.clusterSize;
  switch (kind) {
    case 'header': {
      const fields = HEADER_FIELDS.filter(([, at]) => L.version >= 3 || at < 72);
      const [name, at, width] = rng.chance(0.9) ? rng.pick(fields) : rng.pick(HEADER_FIELDS);
      const old = get(b, at, width);
      let v: bigint;
      if (name.endsWith('_features')) v = rng.chance(0.6) ? old ^ (1n << BigInt(rng.int(rng.chance(0.7) ? 5 : 64))) : interesting(rng, L, b.byteLength, old);
      else if (name === 'cluster_bits') v = BigInt(rng.pick([0, 1, 8, 9, 12, 14, 16, 20, 21, 22, 31, 32, 63, 0xffffffff]));
      else if (name === 'refcount_order') v = BigInt(rng.range(0, 8));
      else if (name === 'version') v = BigInt(rng.pick([0, 1, 2, 3, 4, 0xffffffff]));
      else if (name === 'header_length') v = BigInt(rng.pick([0, 72, 96, 103, 104, 105, 108, 112, 120, 128, 512, cs - 8, cs, cs + 8, 0xfffffff8]));
      else if (name === 'compression_type') v = BigInt(rng.pick([0, 1, 2, 0xff]));
      else v = interesting(rng, L, b.byteLength, old);
      put(b, at, width, v);
      m.log.push(`header ${name} ${hex(old)} -> ${hex(BigInt.asUintN(width * 8, v))}`);
      return b;
    }
    case 'geometry': {
      // A virtual size with an L1 table just big enough for it (and as long as the file allows),
      // so that huge disks get past the header checks and reach the mapping code.
      const l2Entries = cs / (L.extendedL2 ? 16 : 8);
      const maxL1 = Math.max(1, Math.floor((b.byteLength - L.l1Offset) / 8));
      const l1Size = rng.chance(0.5) ? maxL1 : rng.range(L.l1Size, Math.max(L.l1Size, maxL1));
      const span = l1Size * l2Entries * cs;
      const size = rng.pick([span, span - 512, Math.floor(span / 2 / 512) * 512 + 512, Math.min(span, Number.MAX_SAFE_INTEGER) - 1, span + 1]);
      put(b, 24, 8, BigInt(Math.max(0, Math.min(size, Number.MAX_SAFE_INTEGER))));
      put(b, 36, 4, BigInt(l1Size));
      m.hot.push(Math.max(0, size - cs), Math.floor(size / 2));
      m.log.push(`geometry size ${size} l1_size ${l1Size}`);
      return b;
    }
    case 'clone': {
      // One cluster's bytes over another's: an L2 table where a refcount block was, and so on.
      const from = rng.chance(0.7) ? rng.pick(L.metadata) : rng.int(Math.ceil(b.byteLength / cs)) * cs;
      const to = rng.pick(L.metadata.filter((o) => o !== 0)) ?? cs;
      const src = b.slice(from - (from % cs), from - (from % cs) + cs);
      b.set(src.subarray(0, Math.max(0, Math.min(cs, b.byteLength - to))), to);
      m.log.push(`cluster @${from - (from % cs)} copied over @${to}`);
      return b;
    }
    case 'ext': {
      const exts = L.extensions;
      const e = exts.length && rng.chance(0.8) ? rng.pick(exts) : { at: L.headerLength, type: 0, length: 0 };
      switch (rng.int(6)) {
        case 0: {
          const t = rng.pick(EXT_TYPES);
          put(b, e.at, 4, BigInt(t));
          m.log.push(`ext@${e.at} type ${hex(e.type)} -> ${hex(t)}`);
          break;
        }
        case 1: {
          const v = rng.chance(0.5) ? rng.pick([0n, 1n, 7n, 8n, 48n, 49n, 96n, BigInt(cs), BigInt(cs - e.at), P(31), P(32) - 1n, P(32) - 8n]) : BigInt(e.length + rng.range(-16, 16));
          put(b, e.at + 4, 4, v);
          m.log.push(`ext@${e.at} length ${e.length} -> ${BigInt.asUintN(32, v)}`);
          break;
        }
        case 2: {
          // Feature-table entries (type, bit) or payload bytes.
          const at = e.at + 8 + rng.int(Math.max(1, Math.min(e.length, 512)));
          const v = rng.pick([0, 1, 2, 3, 63, 64, 0xff, rng.int(256)]);
          b[at] = v;
          m.log.push(`ext@${e.at} payload byte ${at} -> ${hex(v)}`);
          break;
        }
        case 3: {
          // A new extension written over the end marker (or the last extension).
          const last = exts.length ? exts[exts.length - 1]! : e;
          const t = rng.pick(EXT_TYPES);
          const len = rng.pick([0, 1, 8, 16, 24, 48, 49, 96]);
          put(b, last.at, 4, BigInt(t));
          put(b, last.at + 4, 4, BigInt(len));
          for (let i = 0; i < len; i++) if (last.at + 8 + i < cs) b[last.at + 8 + i] = rng.int(256);
          m.log.push(`ext@${last.at} new ${hex(t)} len ${len}`);
          break;
        }
        case 4: {
          // Duplicate the first extension after itself.
          const src = exts[0];
          if (!src || src.type === 0) break;
          const n = 8 + Math.ceil(src.length / 8) * 8;
          const copy = b.slice(src.at, src.at + n);
          const to = src.at + n;
          if (to + n <= Math.min(cs, b.byteLength)) {
            b.copyWithin(to + n, to, Math.min(cs - n, b.byteLength - n));
            b.set(copy, to);
            m.log.push(`ext@${src.at} duplicated`);
          }
          break;
        }
        default: {
          // Backing file name bytes.
          if (L.backingFileOffset && L.backingFileSize) {
            const at = L.backingFileOffset + rng.int(L.backingFileSize);
            const v = rng.pick([0, 0x2f, 0x2e, 0xff, 0xc3, rng.int(256)]);
            b[at] = v;
            m.log.push(`backing name byte ${at} -> ${hex(v)}`);
          } else {
            const at = L.headerLength + rng.int(64);
            b[at] ^= 1 << rng.int(8);
            m.log.push(`ext area bit flip at ${at}`);
          }
        }
      }
      return b;
    }
    case 'l1': {
      const t = rng.pick(L.l1Tables);
      if (t.size === 0) return b;
      const i = rng.int(t.size);
      const at = t.offset + i * 8;
      const old = get(b, at, 8);
      let v: bigint;
      switch (rng.int(4)) {
        case 0: v = old ^ (1n << BigInt(rng.pick([0, 1, 8, 9, 55, 56, 62, 63, rng.int(64)]))); break;
        case 1: v = (interesting(rng, L, b.byteLength, old) & 0x00fffffffffffe00n) | (old & (1n << 63n)); break;
        default: v = interesting(rng, L, b.byteLength, old);
      }
      put(b, at, 8, v);
      if (t.offset === L.l1Offset) m.hot.push(i * (cs / (L.extendedL2 ? 16 : 8)) * cs);
      m.log.push(`L1@${t.offset}[${i}] ${hex(old)} -> ${hex(BigInt.asUintN(64, v))}`);
      return b;
    }
    case 'l2': case 'cdesc': case 'bitmap': {
      const pool = kind === 'cdesc' ? L.l2Entries.filter((e) => e.compressed) : L.l2Entries;
      let at: number;
      let guest = -1;
      if (pool.length && rng.chance(0.85)) {
        const e = rng.pick(pool);
        at = e.at;
        guest = e.guest;
      } else if (L.l2Tables.length) {
        const idx = rng.int(cs / (L.extendedL2 ? 16 : 8));
        at = rng.pick(L.l2Tables) + idx * (L.extendedL2 ? 16 : 8);
      } else return b;
      if (guest >= 0) m.hot.push(guest);
      if (kind === 'bitmap') {
        const old = get(b, at + 8, 8);
        const v = rng.pick([0n, 0xffffffffn, 0xffffffff00000000n, P(64) - 1n, old ^ (1n << BigInt(rng.int(64))), old | (old << 32n), rng.u64()]);
        put(b, at + 8, 8, v);
        m.log.push(`L2 bitmap@${at} ${hex(old)} -> ${hex(v)}`);
        return b;
      }
      const old = get(b, at, 8);
      let v: bigint;
      if (kind === 'cdesc') {
        const shift = BigInt(62 - (L.clusterBits - 8));
        const sectorsMask = (1n << BigInt(L.clusterBits - 8)) - 1n;
        const off = old & ((1n << shift) - 1n);
        const sectors = (old >> shift) & sectorsMask;
        const newOff = rng.chance(0.5) ? off : rng.pick([0n, 1n, 511n, BigInt(b.byteLength - 1), BigInt(b.byteLength), BigInt(b.byteLength + 513), (1n << shift) - 1n, off + BigInt(rng.range(-600, 600)), P(53), P(55)]);
        const newSectors = rng.chance(0.5) ? sectors : rng.pick([0n, 1n, sectorsMask, sectors + 1n, sectors - 1n]);
        v = (old & (3n << 62n)) | ((newSectors & sectorsMask) << shift) | (newOff & ((1n << shift) - 1n));
        if (rng.chance(0.1)) v |= 1n << 63n;
      } else {
        switch (rng.int(6)) {
          case 0: v = old ^ (1n << BigInt(rng.pick([0, 1, 8, 9, 55, 56, 61, 62, 63, rng.int(64)]))); break;
          case 1: v = (interesting(rng, L, b.byteLength, old) & 0x00fffffffffffe00n) | (old & (3n << 62n)); break;
          case 2: v = (1n << 62n) | (rng.u64() & ((1n << 62n) - 1n)); break; // compressed, random descriptor
          case 3: v = rng.pick([1n, (1n << 63n), (1n << 63n) | 1n, (1n << 62n) | (1n << 63n), old | 1n]); break;
          default: v = interesting(rng, L, b.byteLength, old);
        }
      }
      put(b, at, 8, v);
      m.log.push(`L2@${at}${guest >= 0 ? ` (guest ${guest})` : ''} ${hex(old)} -> ${hex(BigInt.asUintN(64, v))}`);
      return b;
    }
    case 'cbytes': {
      const c = rng.pick(L.compressed);
      const len = Math.max(1, c.length);
      switch (rng.int(4)) {
        case 0: {
          const at = c.offset + rng.int(Math.min(len, 16));
          b[at] = rng.int(256);
          m.log.push(`compressed byte ${at} (stream head) randomised`);
          break;
        }
        case 1: {
          const at = c.offset + rng.int(len);
          b[at] ^= 1 << rng.int(8);
          m.log.push(`compressed byte ${at} bit flip`);
          break;
        }
        case 2: {
          const from = c.offset + rng.int(len);
          b.fill(rng.pick([0, 0xff]), from, Math.min(b.byteLength, c.offset + len));
          m.log.push(`compressed bytes ${from}..${c.offset + len} filled`);
          break;
        }
        default: {
          const at = c.offset + rng.int(len);
          const junk = rng.pick([[0x28, 0xb5, 0x2f, 0xfd], [0x50, 0x2a, 0x4d, 0x18, 0xff, 0xff, 0xff, 0xff], [0x04, 0xff, 0xff], [0x00, 0x00, 0x00]]);
          b.set(junk.slice(0, Math.max(0, b.byteLength - at)), at);
          m.log.push(`compressed bytes at ${at} <- ${junk.map((x) => x.toString(16)).join(' ')}`);
        }
      }
      return b;
    }
    case 'reftable': {
      const entries = L.refcountTableClusters * cs / 8;
      if (rng.chance(0.15)) {
        // Many entries naming one block (or none): the allocator's view of the whole file changes.
        const v = BigInt(rng.chance(0.7) && L.refcountBlocks.length ? rng.pick(L.refcountBlocks) : rng.pick(L.metadata));
        const k = rng.pick([2, 16, 256, entries]);
        for (let i = 0; i < Math.min(k, entries); i++) put(b, L.refcountTableOffset + i * 8, 8, v);
        m.log.push(`reftable[0..${Math.min(k, entries)}) <- ${hex(v)}`);
        return b;
      }
      const n = Math.max(1, Math.min(entries, 64));
      const i = rng.int(n);
      const at = L.refcountTableOffset + i * 8;
      const old = get(b, at, 8);
      const v = rng.chance(0.2) ? old ^ (1n << BigInt(rng.int(12))) : interesting(rng, L, b.byteLength, old);
      put(b, at, 8, v);
      m.log.push(`reftable[${i}] ${hex(old)} -> ${hex(BigInt.asUintN(64, v))}`);
      return b;
    }
    case 'refblock': {
      if (!L.refcountBlocks.length) return b;
      const blk = rng.pick(L.refcountBlocks);
      if (rng.chance(0.15)) {
        // Every cluster it covers in use (or free).
        const v = rng.pick([0xff, 0x00, 0x01]);
        b.fill(v, blk, Math.min(blk + cs, b.byteLength));
        m.log.push(`refblock@${blk} filled with ${hex(v)}`);
        return b;
      }
      const at = blk + rng.int(Math.min(cs, 256));
      const v = rng.pick([0, 1, 2, 0xff, rng.int(256)]);
      const n = rng.pick([1, 1, 2, 8]);
      b.fill(v, at, Math.min(at + n, b.byteLength));
      m.log.push(`refblock@${blk} bytes ${at}+${n} -> ${hex(v)}`);
      return b;
    }
    case 'snapshot': {
      const e = rng.pick(L.snapshotEntries);
      const fields: [string, number, number][] = [['l1_table_offset', 0, 8], ['l1_size', 8, 4], ['id_str_size', 12, 2], ['name_size', 14, 2],
        ['vm_state_size', 32, 4], ['extra_data_size', 36, 4], ['vm_state_size_large', 40, 8], ['disk_size', 48, 8], ['icount', 56, 8]];
      if (rng.chance(0.2)) {
        const at = e.at + rng.int(e.length);
        b[at] = rng.int(256);
        m.log.push(`snapshot@${e.at} byte ${at} randomised`);
        return b;
      }
      const [name, off, width] = rng.pick(fields);
      const old = get(b, e.at + off, width);
      const v = width === 2 ? BigInt(rng.pick([0, 1, 7, 255, 0xffff, Number(old) + 1])) : name === 'extra_data_size' ? BigInt(rng.pick([0, 8, 15, 16, 17, 24, 1024, 1025, 0x7fffffff, 0xffffffff]))
        : name === 'l1_size' ? BigInt(rng.pick([0, 1, Number(old) + 1, 0x1000000, 0x400000, 0x7fffffff, 0xffffffff])) : interesting(rng, L, b.byteLength, old);
      put(b, e.at + off, width, v);
      m.log.push(`snapshot@${e.at} ${name} ${hex(old)} -> ${hex(BigInt.asUintN(width * 8, v))}`);
      return b;
    }
    case 'truncate': {
      const points = [rng.int(b.byteLength), rng.pick(L.metadata) + rng.int(cs), rng.range(0, 120), rng.int(Math.ceil(b.byteLength / cs)) * cs, b.byteLength - rng.range(1, 600)];
      const to = Math.max(0, Math.min(b.byteLength, rng.pick(points)));
      m.log.push(`truncate ${b.byteLength} -> ${to}`);
      return b.slice(0, to);
    }
    case 'grow': {
      const n = rng.pick([1, 511, cs, 3 * cs + 7]);
      const out = new Uint8Array(b.byteLength + n);
      out.set(b);
      if (rng.chance(0.5)) out.fill(0xff, b.byteLength);
      m.log.push(`append ${n} bytes`);
      return out;
    }
    case 'flip':
    default: {
      const base = rng.chance(0.8) ? rng.pick(L.metadata) : 0;
      const span = base === 0 && rng.chance(0.3) ? b.byteLength : Math.min(cs, 4096);
      const count = rng.pick([1, 2, 4, 16]);
      const at0 = base + rng.int(span);
      for (let k = 0; k < count; k++) {
        const at = rng.chance(0.5) ? at0 + k : base + rng.int(span);
        if (at < b.byteLength) b[at] ^= 1 << rng.int(8);
      }
      m.log.push(`${count} bit flips near ${at0}`);
      return b;
    }
  }
}

export function mutate(rng: Rng, seed: Seed): Mutant {
  const m: Mutant = { bytes: seed.bytes.slice(), log: [], hot: [] };
  const n = rng.weighted([[1, 50], [2, 25], [3, 12], [4, 8], [5, 5]] as const);
  for (let i = 0; i < n; i++) {
    try {
      m.bytes = mutateOnce(rng, seed.layout, m.bytes, m);
    } catch (err) {
      // A mutation that does not fit this (already mutated) image is skipped, and says so.
      m.log.push(`(mutation skipped: ${(err as Error).message})`);
    }
  }
  return m;
}

// ---- one case --------------------------------------------------------------------------------

export interface CaseJob {
  caseSeed: number;
  seed: SeedInfo;
  /** The mutated image. */
  bytes: Uint8Array;
  hot: number[];
}

export interface CaseFailure {
  kind: 'exception' | 'hang' | 'memory' | 'worker-crash' | 'unhandled-rejection' | 'fd-leak';
  phase: string;
  op: string;
  name: string;
  message: string;
  stack: string;
}

export interface CaseOutcome {
  failure?: CaseFailure;
  /** BlockError codes seen (the expected outcome for corrupt images), and how far the case got. */
  codes: string[];
  reached: string[];
  rssGrowth: number;
  ms: number;
}

const READ_HEAD = 2 * MiB;
const READ_TAIL = 256 * KiB;
const CHUNKS = [512, 3000, 4096, 65536, 1048576];
const MAX_STATUS_LISTS = 256;
const MAX_EXTENTS = 4096;
const RSS_LIMIT = 512 * MiB;

class CaseRunner {
  codes: string[] = [];
  reached: string[] = [];
  failure: CaseFailure | undefined;
  constructor(readonly verbose: boolean) {}

  /** Runs one operation: a BlockError is an answer, anything else is the bug we look for. */
  async op<T>(phase: string, op: string, fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false }> {
    if (this.failure) return { ok: false };
    // Printed before the operation, so that a replay that hangs shows where.
    if (this.verbose) console.log(`  ${phase} ${op} ...`);
    const t0 = Date.now();
    try {
      const value = await fn();
      if (this.verbose) console.log(`  ${phase} ${op}: ok (${Date.now() - t0} ms)`);
      return { ok: true, value };
    } catch (err) {
      if (err instanceof BlockError) {
        this.codes.push(err.code);
        if (this.verbose) console.log(`  ${phase} ${op}: BlockError ${err.code}: ${err.message} (${Date.now() - t0} ms)`);
        return { ok: false };
      }
      const e = err as Error;
      this.failure = { kind: 'exception', phase, op, name: e?.constructor?.name ?? typeof err, message: String(e?.message ?? err), stack: String(e?.stack ?? err) };
      if (this.verbose) console.log(`  ${phase} ${op}: FAILURE ${this.failure.stack}`);
      return { ok: false };
    }
  }
}

function readPlan(rng: Rng, size: number): [number, number][] {
  const regions: [number, number][] = [];
  if (size <= READ_HEAD + READ_TAIL) return [[0, size]];
  regions.push([0, READ_HEAD], [size - READ_TAIL, size]);
  for (let i = 0; i < 4; i++) {
    const at = rng.int(size - 64 * KiB);
    regions.push([at, at + 64 * KiB]);
  }
  return regions;
}

async function readAll(r: CaseRunner, node: BlockNode, rng: Rng, phase: string): Promise<void> {
  const size = node.size;
  if (size <= 0) return;
  const chunks = [rng.pick(CHUNKS), rng.pick(CHUNKS), rng.pick(CHUNKS)];
  for (const chunk of chunks) {
    const buf = new Uint8Array(chunk);
    const plan = readPlan(rng, size);
    // A start that is not chunk-aligned exercises reads crossing (sub)cluster boundaries.
    const skew = chunk === 3000 ? 777 : 0;
    await r.op(phase, `read chunk ${chunk}`, async () => {
      for (const [from, to] of plan) {
        let errors = 0;
        for (let pos = Math.min(from + skew, to - 1); pos < to;) {
          const n = Math.min(chunk, to - pos);
          try {
            await node.read(pos, buf.subarray(0, n));
          } catch (err) {
            // One BlockError per region is noted; the rest of the region is still read.
            if (!(err instanceof BlockError)) throw err;
            if (errors++ === 0) r.codes.push(err.code);
            if (errors > 64) break;
          }
          pos += n;
        }
        if (skew && from < to) {
          try {
            await node.read(from, buf.subarray(0, Math.min(skew, to - from)));
          } catch (err) {
            if (!(err instanceof BlockError)) throw err;
          }
        }
      }
    });
  }
}

async function walkStatus(r: CaseRunner, node: BlockNode, rng: Rng, phase: string): Promise<void> {
  const size = node.size;
  if (size <= 0) return;
  await r.op(phase, 'extentLists', async () => {
    let lists = 0;
    for await (const _ of node.extentLists(0, size)) if (++lists >= MAX_STATUS_LISTS) break;
  });
  await r.op(phase, 'extents', async () => {
    const from = rng.int(size);
    let n = 0;
    for await (const _ of node.extents(from, size - from)) if (++n >= MAX_EXTENTS) break;
  });
  for (let i = 0; i < 3; i++) {
    const at = rng.int(size);
    await r.op(phase, `blockStatusList ${at}`, () => node.blockStatusList(at, rng.chance(0.5) ? size - at : rng.range(1, 1 << 20)));
  }
}

async function closeNode(r: CaseRunner, node: BlockNode, phase: string): Promise<void> {
  await r.op(phase, 'close', () => node.close());
}

/** A guest offset to aim a write at: near a mutated mapping, the image end, or anywhere. */
function target(rng: Rng, size: number, hot: number[], cs: number): number {
  const c = rng.int(4);
  let at: number;
  if (c === 0 && hot.length) at = rng.pick(hot) + rng.pick([0, 1, 512, cs / 2, cs - 1]);
  else if (c === 1) at = size - rng.range(1, Math.min(size, 2 * cs));
  else if (c === 2) at = rng.int(Math.ceil(size / cs)) * cs;
  else at = rng.int(size);
  return Math.max(0, Math.min(size - 1, Math.floor(at)));
}

/** Leaked descriptors already blamed on an earlier case (the seed directory outlives cases). */
const blamed = new Set<string>();

/** Files under `dir` this process holds open and no earlier case leaked (Linux /proc; empty elsewhere). */
export function openFilesUnder(dir: string): string[] {
  let fds: string[];
  try {
    fds = readdirSync('/proc/self/fd');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const fd of fds) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      // Files of earlier cases were deleted; they are reported (once) by their own case.
      if (target.startsWith(dir + path.sep) && !target.endsWith(' (deleted)') && !blamed.has(`${fd}:${target}`)) {
        blamed.add(`${fd}:${target}`);
        out.push(target);
      }
    } catch {
      // Closed meanwhile.
    }
  }
  return out;
}

export async function runCase(job: CaseJob, workdir: string, verbose = false): Promise<CaseOutcome> {
  const t0 = Date.now();
  const rssBefore = process.memoryUsage().rss;
  let peak = rssBefore;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 25);
  const r = new CaseRunner(verbose);
  const rng = new Rng(mix32(job.caseSeed, 0x5eed));
  const image = path.join(workdir, 'img.qcow2');
  try {
    rmSync(workdir, { recursive: true, force: true });
    mkdirSync(workdir, { recursive: true });
    writeFileSync(image, job.bytes);
    const dataFile = job.seed.dataFile ? path.join(workdir, job.seed.dataFile) : path.join(workdir, 'data.raw');
    if (job.seed.dataFile) copyFileSync(path.join(path.dirname(job.seed.image), job.seed.dataFile), dataFile);
    const gate: OpenOptions['gate'] = { mode: 'allow', dirs: [workdir, path.dirname(job.seed.image)] };

    // Phase 1: read-only.
    const how = rng.int(10);
    let spec: NodeSpec | string = { driver: 'qcow2', file: { driver: 'file', filename: image }, 'read-only': true };
    if (how === 0) spec = image;
    else if (how === 1 && job.seed.snapshots.length) spec = { ...spec, snapshot: rng.pick(job.seed.snapshots) };
    const ro = await r.op('ro', `open ${typeof spec === 'string' ? 'probe' : (spec.snapshot ? `snapshot ${spec.snapshot as string}` : 'qcow2')}`, () => open(spec, { readOnly: true, gate }));
    if (ro.ok) {
      r.reached.push('ro-open');
      const node = ro.value;
      try {
        await r.op('ro', 'info', async () => {
          node.imageInfo();
          node.formatSpecific();
          node.snapshotTable();
          await node.allocatedSize();
        });
        await readAll(r, node, rng, 'ro');
        if (node.size > 0 && rng.chance(0.3)) {
          // Concurrent reads share table loads and the decompressed-cluster cache.
          const reads = Array.from({ length: 6 }, () => {
            const at = rng.int(node.size);
            const len = Math.min(node.size - at, rng.pick([512, 4096, 65536, 200_000]));
            return r.op('ro', `concurrent read ${at}+${len}`, () => node.read(at, new Uint8Array(len)));
          });
          await Promise.all(reads);
        }
        await walkStatus(r, node, rng, 'ro');
        if (node instanceof Qcow2Node) {
          const c = await r.op('ro', 'check none', () => node.check('none'));
          if (c.ok) r.reached.push('ro-check');
        }
      } finally {
        await closeNode(r, node, 'ro');
      }
    }

    // Phase 2: writable, on the same bytes (phase 1 changed nothing; rewrite them anyway).
    if (!r.failure) {
      writeFileSync(image, job.bytes);
      if (job.seed.dataFile) copyFileSync(path.join(path.dirname(job.seed.image), job.seed.dataFile), dataFile);
      else if (rng.chance(0.5)) writeFileSync(dataFile, new Uint8Array(0));
      const checking = rng.chance(0.1);
      const wspec: NodeSpec = { driver: 'qcow2', file: { driver: 'file', filename: image } };
      // The data file is named explicitly, so a mutated name can never send writes elsewhere.
      if (existsSync(dataFile)) wspec['data-file'] = { driver: 'file', filename: dataFile };
      const rw = await r.op('rw', `open${checking ? ' check' : ''}`, () => open(wspec, { gate, check: checking }));
      if (rw.ok) {
        r.reached.push('rw-open');
        const node = rw.value;
        try {
          const size = node.size;
          const cs = node instanceof Qcow2Node ? node.clusterSize : 65536;
          const ops = size > 0 ? rng.range(3, 7) : 0;
          /** One random guest operation (its random choices are made now, in order). */
          const guestOp = (i: number): (() => Promise<unknown>) => {
            const at = target(rng, size, job.hot, cs);
            const len = Math.max(1, Math.min(size - at, rng.pick([1, 512, 1000, cs, cs + 512, 2 * cs, rng.range(1, 3 * cs)])));
            const kind = rng.weighted([['write', 5], ['write-fua', 1], ['zero', 2], ['zero-unmap', 2], ['zero-fast', 1], ['discard', 2], ['read', 1], ['flush', 1]] as const);
            switch (kind) {
              case 'write': return () => r.op('rw', `write ${at}+${len}`, () => node.write(at, pattern(len, job.caseSeed + i)));
              case 'write-fua': return () => r.op('rw', `write fua ${at}+${len}`, () => node.write(at, pattern(len, job.caseSeed + i), { fua: true }));
              case 'zero': return () => r.op('rw', `write-zeroes ${at}+${len}`, () => node.writeZeroes(at, len));
              case 'zero-unmap': return () => r.op('rw', `write-zeroes unmap ${at}+${len}`, () => node.writeZeroes(at, len, { mayUnmap: true }));
              case 'zero-fast': return () => r.op('rw', `write-zeroes no-fallback ${at}+${len}`, () => node.writeZeroes(at, len, { noFallback: true }));
              case 'discard': return () => r.op('rw', `discard ${at}+${len}`, () => node.discard(at, len));
              case 'read': return () => r.op('rw', `read ${at}+${len}`, () => node.read(at, new Uint8Array(len)));
              default: return () => r.op('rw', 'flush', () => node.flush());
            }
          };
          if (ops && rng.chance(0.3)) {
            // A burst of concurrent requests: the metadata lock, in-place overwrites and the
            // request tracker meet corrupt metadata together.
            const burst = Array.from({ length: ops }, (_, i) => guestOp(i));
            await Promise.all(burst.map((f) => f()));
          } else {
            for (let i = 0; i < ops && !r.failure; i++) await guestOp(i)();
          }
          if (ops) r.reached.push('rw-io');
          if (node instanceof Qcow2Node && rng.chance(0.3)) {
            const fix = checking ? rng.pick(['none', 'leaks', 'all'] as const) : 'none';
            await r.op('rw', `check ${fix}`, () => node.check(fix));
          }
          // Read back a little of what was written.
          if (size > 0) {
            const at = target(rng, size, job.hot, cs);
            await r.op('rw', `read back ${at}`, () => node.read(at, new Uint8Array(Math.min(8192, node.size - at))));
          }
          const f = await r.op('rw', 'flush', () => node.flush());
          if (f.ok) r.reached.push('rw-flush');
        } finally {
          await closeNode(r, node, 'rw');
        }
      }
    }
    // Every node is closed by now: a descriptor still open on this case's files leaked.
    await new Promise((resolve) => setTimeout(resolve, 1));
    const leaked = [...openFilesUnder(workdir), ...openFilesUnder(path.dirname(job.seed.image))];
    if (!r.failure && leaked.length) {
      r.failure = { kind: 'fd-leak', phase: '-', op: '-', name: 'FileHandle', message: `descriptors left open after close: ${leaked.map((f) => path.basename(f)).join(', ')}`, stack: '' };
    }
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, process.memoryUsage().rss);
  const growth = peak - rssBefore;
  if (!r.failure && growth > RSS_LIMIT) {
    r.failure = { kind: 'memory', phase: '-', op: '-', name: 'RSS', message: `RSS grew by ${Math.round(growth / MiB)} MiB during the case`, stack: '' };
  }
  return { failure: r.failure, codes: r.codes, reached: r.reached, rssGrowth: growth, ms: Date.now() - t0 };
}

// ---- worker side (a child process) ----------------------------------------------------------

interface WorkerJob { caseSeed: number; seed: SeedInfo; bytes: Uint8Array; hot: number[] }

/**
 * The child's loop: one job in, one outcome out. Cases run in child processes, not worker
 * threads, because some failures abort V8 itself ("Fatal JavaScript invalid size error"),
 * which takes every thread of the process down with it.
 */
function childMain(workdir: string): void {
  let unhandled: unknown;
  process.on('unhandledRejection', (reason) => {
    unhandled ??= reason;
  });
  process.on('message', (job: WorkerJob) => {
    void (async () => {
      unhandled = undefined;
      let out: CaseOutcome;
      try {
        out = await runCase(job, workdir);
      } catch (err) {
        // The harness itself (file setup) failed: report it as a failure, not silently.
        const e = err as Error;
        out = { failure: { kind: 'exception', phase: 'harness', op: '-', name: e?.name ?? 'Error', message: String(e?.message ?? err), stack: String(e?.stack ?? err) }, codes: [], reached: [], rssGrowth: 0, ms: 0 };
      }
      // Let a rejection that nobody handles surface before answering.
      await new Promise((resolve) => setImmediate(resolve));
      if (!out.failure && unhandled !== undefined) {
        const e = unhandled as Error;
        out.failure = { kind: 'unhandled-rejection', phase: '-', op: '-', name: e?.constructor?.name ?? typeof e, message: String(e?.message ?? e), stack: String(e?.stack ?? e) };
      }
      process.send!(out);
    })();
  });
  process.send!({ ready: true });
}

// ---- main side: a pool of child processes with a watchdog ---------------------------------------

const HEAP_LIMIT_MB = 1536;
/** A child whose RSS passes this is killed and its case fails (the per-case limit is checked inside). */
const CHILD_RSS_CEILING = 3 * 1024 * MiB;

interface Slot {
  id: number;
  generation: number;
  child: ChildProcess;
  stderr: string;
  busy?: { resolve: (o: CaseOutcome) => void; timer: NodeJS.Timeout; started: number };
}

function rssOf(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const pages = Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]);
    return pages * 4096;
  } catch {
    return 0;
  }
}

export class Pool {
  private slots: Slot[] = [];
  private waiting: ((s: Slot) => void)[] = [];
  private idle: Slot[] = [];
  private closed = false;
  private readonly rssTimer: NodeJS.Timeout;
  constructor(size: number, private readonly workRoot: string, private readonly budgetMs: number) {
    for (let id = 0; id < size; id++) {
      const slot = { id, generation: 0 } as Slot;
      this.attach(slot);
      this.slots.push(slot);
    }
    this.idle = [...this.slots];
    this.rssTimer = setInterval(() => {
      for (const s of this.slots) {
        if (s.busy && rssOf(s.child.pid) > CHILD_RSS_CEILING) this.kill(s, 'memory', `the case's process passed ${CHILD_RSS_CEILING / MiB} MiB RSS`);
      }
    }, 100);
    this.rssTimer.unref();
  }

  /** Gives the slot a fresh child process running this module (with tsx, as the parent). */
  private attach(slot: Slot): void {
    slot.generation++;
    // A killed child may still hold locks on its files: every generation gets its own directory.
    const workdir = path.join(this.workRoot, `w${slot.id}.${slot.generation}`);
    const env: NodeJS.ProcessEnv = { ...process.env, VDISK_FUZZ_CHILD: workdir };
    // Under `node --test` the child must not report to the test runner.
    delete env.NODE_TEST_CONTEXT;
    const child = fork(fileURLToPath(import.meta.url), [], {
      execArgv: ['--import', import.meta.resolve('tsx'), `--max-old-space-size=${HEAP_LIMIT_MB}`],
      env,
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    slot.child = child;
    slot.stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      slot.stderr = (slot.stderr + chunk).slice(-8192);
    });
    child.on('message', (out: CaseOutcome | { ready: true }) => {
      if (slot.child === child && !('ready' in out)) this.finish(slot, out);
    });
    child.on('exit', (code, signal) => {
      if (slot.child !== child || !slot.busy) return;
      // Give stderr a moment: a V8 fatal error is printed just before the abort.
      setTimeout(() => {
        const fatal = /Fatal[^\n]*|FATAL[^\n]*|out of memory[^\n]*/i.exec(slot.stderr)?.[0] ?? '';
        this.kill(slot, /memory/i.test(fatal) ? 'memory' : 'worker-crash', `child exited (${signal ?? code})${fatal ? `: ${fatal}` : ''}`, slot.stderr);
      }, 50);
    });
    child.on('error', () => {});
  }

  private finish(slot: Slot, out: CaseOutcome): void {
    const busy = slot.busy;
    if (!busy) return;
    clearTimeout(busy.timer);
    slot.busy = undefined;
    this.release(slot);
    busy.resolve(out);
  }

  /** Ends the slot's case with a failure, replaces its child, and frees the slot. */
  private kill(slot: Slot, kind: CaseFailure['kind'], message: string, stack = ''): void {
    const busy = slot.busy;
    if (!busy) return;
    clearTimeout(busy.timer);
    slot.busy = undefined;
    slot.child.kill('SIGKILL');
    if (!this.closed) this.attach(slot);
    this.release(slot);
    busy.resolve({ failure: { kind, phase: '-', op: '-', name: kind, message, stack }, codes: [], reached: [], rssGrowth: 0, ms: Date.now() - busy.started });
  }

  private release(slot: Slot): void {
    const next = this.waiting.shift();
    if (next) next(slot);
    else this.idle.push(slot);
  }

  private acquire(): Promise<Slot> {
    const s = this.idle.shift();
    if (s) return Promise.resolve(s);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  async run(job: WorkerJob, budgetMs = this.budgetMs): Promise<CaseOutcome> {
    if (this.closed) throw new Error('the pool is closed');
    const slot = await this.acquire();
    return new Promise<CaseOutcome>((resolve) => {
      // The budget includes a fresh child's start-up (about a second with tsx).
      const timer = setTimeout(() => this.kill(slot, 'hang', `case took longer than ${budgetMs} ms`), budgetMs);
      slot.busy = { resolve, timer, started: Date.now() };
      slot.child.send(job);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.rssTimer);
    await Promise.all(this.slots.map((s) => new Promise<void>((resolve) => {
      if (s.child.exitCode !== null || s.child.signalCode !== null) return resolve();
      s.child.once('exit', () => resolve());
      s.child.kill('SIGKILL');
    })));
  }
}

// ---- the run ---------------------------------------------------------------------------------

export interface FuzzOptions {
  cases: number;
  seed: number;
  workers?: number;
  /** Wall budget of one case (the watchdog), ms. */
  budgetMs?: number;
  /** Where seeds and worker files go (a fresh temporary directory when absent). */
  workRoot?: string;
  /** Minimise the first case of every distinct failure. */
  minimise?: boolean;
  log?: (line: string) => void;
  progressEveryMs?: number;
}

export interface FuzzFailure {
  caseIndex: number;
  caseSeed: number;
  seedName: string;
  mutations: string[];
  failure: CaseFailure;
  signature: string;
  /** The minimised difference from the seed, when minimised. */
  minimised?: { patches: string[]; length: number; seedLength: number; file: string };
}

export interface FuzzReport {
  cases: number;
  ms: number;
  failures: FuzzFailure[];
  /** Distinct failures: signature → count and first case. */
  distinct: { signature: string; count: number; first: FuzzFailure }[];
  codes: Record<string, number>;
  reached: Record<string, number>;
  perSeed: Record<string, number>;
  maxRssGrowth: number;
  slowest: { caseSeed: number; ms: number };
}

/** One line that groups failures of the same bug: kind, error class, message shape and the first src/ frame. */
export function signatureOf(f: CaseFailure): string {
  const frame = /\/src\/([\w/.-]+\.ts):(\d+)/.exec(f.stack);
  const msg = f.message.replace(/'[^']*'/g, "'…'").replace(/0x[0-9a-f]+/gi, 'N').replace(/\d+/g, 'N').slice(0, 120);
  return `${f.kind} ${f.name}: ${msg}${frame ? ` @ src/${frame[1]}:${frame[2]}` : ''}`;
}

export function caseSeedOf(runSeed: number, index: number): number {
  return mix32(runSeed, index);
}

/** The case a seed number stands for: which seed image, which mutations. */
export function makeCase(seeds: Seed[], caseSeed: number): { seed: Seed; mutant: Mutant } {
  const rng = new Rng(caseSeed);
  const seed = seeds[rng.int(seeds.length)]!;
  return { seed, mutant: mutate(rng, seed) };
}

const info = (s: Seed): SeedInfo => ({ name: s.name, image: s.image, dataFile: s.dataFile, snapshots: s.snapshots });

export async function runFuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const log = opts.log ?? (() => {});
  const workRoot = opts.workRoot ?? path.join(os.tmpdir(), `vdisk-qcow2-fuzz-${process.pid}-${Date.now()}`);
  const ownRoot = opts.workRoot === undefined;
  const t0 = Date.now();
  const seeds = await buildSeeds(path.join(workRoot, 'seeds'));
  log(`seeds: ${seeds.map((s) => `${s.name} (${s.bytes.byteLength} B)`).join(', ')} in ${Date.now() - t0} ms`);
  const workers = opts.workers ?? Math.max(1, Math.min(2, os.availableParallelism()));
  const pool = new Pool(workers, workRoot, opts.budgetMs ?? 10_000);
  const report: FuzzReport = { cases: 0, ms: 0, failures: [], distinct: [], codes: {}, reached: {}, perSeed: {}, maxRssGrowth: 0, slowest: { caseSeed: 0, ms: 0 } };
  const bySig = new Map<string, { signature: string; count: number; first: FuzzFailure; bytes: Uint8Array; seed: Seed; hot: number[] }>();
  const t1 = Date.now();
  let lastProgress = t1;
  let next = 0;
  const every = opts.progressEveryMs ?? 10_000;
  const progress = () => {
    const s = (Date.now() - t1) / 1000;
    log(`[${s.toFixed(0)} s] ${report.cases}/${opts.cases} cases, ${(report.cases / Math.max(s, 0.001)).toFixed(1)}/s, ${report.failures.length} failures, ${bySig.size} distinct; `
      + `ro-open ${report.reached['ro-open'] ?? 0}, ro-check ${report.reached['ro-check'] ?? 0}, rw-open ${report.reached['rw-open'] ?? 0}, rw-flush ${report.reached['rw-flush'] ?? 0}; `
      + `max RSS growth ${Math.round(report.maxRssGrowth / MiB)} MiB, slowest ${report.slowest.ms} ms (case ${report.slowest.caseSeed})`);
  };
  let stopped = false;
  const lane = async () => {
    for (;;) {
      if (stopped) return;
      const index = next++;
      if (index >= opts.cases) return;
      const caseSeed = caseSeedOf(opts.seed, index);
      const { seed, mutant } = makeCase(seeds, caseSeed);
      const out = await pool.run({ caseSeed, seed: info(seed), bytes: mutant.bytes, hot: mutant.hot });
      report.cases++;
      report.perSeed[seed.name] = (report.perSeed[seed.name] ?? 0) + 1;
      for (const c of out.codes) report.codes[c] = (report.codes[c] ?? 0) + 1;
      for (const c of out.reached) report.reached[c] = (report.reached[c] ?? 0) + 1;
      report.maxRssGrowth = Math.max(report.maxRssGrowth, out.rssGrowth);
      if (out.ms > report.slowest.ms) report.slowest = { caseSeed, ms: out.ms };
      if (out.failure) {
        const f: FuzzFailure = { caseIndex: index, caseSeed, seedName: seed.name, mutations: mutant.log, failure: out.failure, signature: signatureOf(out.failure) };
        report.failures.push(f);
        const known = bySig.get(f.signature);
        if (known) known.count++;
        else {
          bySig.set(f.signature, { signature: f.signature, count: 1, first: f, bytes: mutant.bytes, seed, hot: mutant.hot });
          log(`NEW FAILURE case ${index} (seed ${caseSeed}, ${seed.name}): ${f.signature}\n  mutations: ${mutant.log.join('; ')}\n  ${out.failure.stack.split('\n').slice(0, 8).join('\n  ')}`);
        }
      }
      if (Date.now() - lastProgress >= every) {
        lastProgress = Date.now();
        progress();
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: workers }, () => lane().catch((err: unknown) => {
      stopped = true;
      throw err;
    })));
    progress();
    if (opts.minimise) {
      for (const d of bySig.values()) {
        log(`minimising ${d.signature} (case ${d.first.caseSeed})`);
        d.first.minimised = await minimise(pool, d.seed, d.bytes, d.first.caseSeed, d.hot, d.signature, workRoot, log);
        log(`  -> ${d.first.minimised.patches.length} patch(es), length ${d.first.minimised.length}: ${d.first.minimised.patches.join('; ')}`);
      }
    }
  } finally {
    await pool.close();
    if (ownRoot && report.failures.length === 0) rmSync(workRoot, { recursive: true, force: true });
    else for (const f of readdirSync(workRoot)) if (/^w\d+\.\d+$/.test(f)) rmSync(path.join(workRoot, f), { recursive: true, force: true });
  }
  report.ms = Date.now() - t1;
  report.distinct = [...bySig.values()].map(({ signature, count, first }) => ({ signature, count, first }));
  return report;
}

// ---- minimising ------------------------------------------------------------------------------

/** Names the field a byte offset belongs to, for the minimised report. */
function label(L: Layout, at: number): string {
  for (const [name, off, width] of HEADER_FIELDS) if (at >= off && at < off + width) return `header.${name}`;
  for (const e of L.extensions) if (at >= e.at && at < e.at + 8 + Math.ceil(e.length / 8) * 8) return `ext(${hex(e.type)})@${e.at}`;
  const cs = L.clusterSize;
  for (const [i, t] of L.l1Tables.entries()) if (at >= t.offset && at < t.offset + t.size * 8) return `${i ? `snapshot${i}.` : ''}L1[${(at - t.offset) >> 3}]`;
  for (const t of L.l2Tables) if (at >= t && at < t + cs) return `L2@${t}[${Math.floor((at - t) / (L.extendedL2 ? 16 : 8))}]`;
  if (at >= L.refcountTableOffset && at < L.refcountTableOffset + L.refcountTableClusters * cs) return `reftable[${(at - L.refcountTableOffset) >> 3}]`;
  for (const blk of L.refcountBlocks) if (at >= blk && at < blk + cs) return `refblock@${blk}`;
  for (const e of L.snapshotEntries) if (at >= e.at && at < e.at + e.length) return `snapshot entry@${e.at}+${at - e.at}`;
  for (const c of L.compressed) if (at >= c.offset && at < c.offset + c.length) return `compressed@${c.offset}`;
  if (L.backingFileOffset && at >= L.backingFileOffset && at < L.backingFileOffset + L.backingFileSize) return 'backing name';
  return 'data';
}

/**
 * Reverts as much of the mutant to the seed as keeps the same failure: first the length, then
 * each run of changed bytes, then each changed byte. Every trial is a full case in the pool.
 */
async function minimise(pool: Pool, seed: Seed, bytes: Uint8Array, caseSeed: number, hot: number[], signature: string,
  workRoot: string, log: (l: string) => void): Promise<NonNullable<FuzzFailure['minimised']>> {
  // Hangs, memory blow-ups and aborted processes are one family: which of them a runaway
  // allocation ends as depends on timing and on the other process's load.
  const resource = (sig: string) => /^(hang|memory|worker-crash) /.test(sig);
  let last = '';
  const fails = async (b: Uint8Array) => {
    const out = await pool.run({ caseSeed, seed: info(seed), bytes: b, hot });
    last = out.failure ? signatureOf(out.failure) : `no failure (${out.ms} ms)`;
    if (!out.failure) return false;
    return last === signature || (resource(last) && resource(signature));
  };
  let cur = bytes.slice();
  if (!(await fails(cur))) {
    log(`  does not fail again on its own (depends on an earlier case, or on timing; this time: ${last}): not minimised`);
    return { patches: ['(not reproducible on its own)'], length: cur.byteLength, seedLength: seed.bytes.byteLength, file: '' };
  }
  // Length: back to the seed's, when the failure does not need the truncation.
  if (cur.byteLength !== seed.bytes.byteLength) {
    const full = seed.bytes.slice();
    full.set(cur.subarray(0, Math.min(cur.byteLength, full.byteLength)));
    if (await fails(full)) cur = full;
  }
  const diffRuns = (): [number, number][] => {
    const runs: [number, number][] = [];
    const n = Math.min(cur.byteLength, seed.bytes.byteLength);
    for (let i = 0; i < n; i++) {
      if (cur[i] === seed.bytes[i]) continue;
      const last = runs[runs.length - 1];
      if (last && i - last[1] <= 8) last[1] = i + 1;
      else runs.push([i, i + 1]);
    }
    return runs;
  };
  let trials = 0;
  for (let changed = true; changed && trials < 200;) {
    changed = false;
    for (const [a, z] of diffRuns()) {
      const t = cur.slice();
      t.set(seed.bytes.subarray(a, z), a);
      trials++;
      if (await fails(t)) {
        cur = t;
        changed = true;
      }
    }
  }
  for (const [a, z] of diffRuns()) {
    for (let i = a; i < z && trials < 400; i++) {
      if (cur[i] === seed.bytes[i]) continue;
      const t = cur.slice();
      t[i] = seed.bytes[i]!;
      trials++;
      if (await fails(t)) cur = t;
    }
  }
  // Shorter files, when the failure survives a cut.
  for (let to = cur.byteLength >> 1; to >= 1024 && trials < 440 && to < cur.byteLength; to >>= 1) {
    trials++;
    if (await fails(cur.slice(0, to))) cur = cur.slice(0, to);
    else break;
  }
  const patches = diffRuns().map(([a, z]) => `${label(seed.layout, a)} @${a}: ${Buffer.from(seed.bytes.subarray(a, z)).toString('hex')} -> ${Buffer.from(cur.subarray(a, z)).toString('hex')}`);
  const file = path.join(workRoot, `crash-${caseSeed}.qcow2`);
  writeFileSync(file, cur);
  log(`  minimised in ${trials} trials; kept as ${file}`);
  return { patches, length: cur.byteLength, seedLength: seed.bytes.byteLength, file };
}

// ---- command line ----------------------------------------------------------------------------

async function cli(): Promise<void> {
  const env = process.env;
  const logFile = env.VDISK_FUZZ_LOG;
  const log = (line: string) => {
    const l = `${new Date().toISOString()} ${line}`;
    console.log(l);
    if (logFile) appendFileSync(logFile, l + '\n');
  };
  if (env.VDISK_FUZZ_REPLAY) {
    const root = path.join(os.tmpdir(), `vdisk-qcow2-replay-${process.pid}`);
    const seeds = await buildSeeds(path.join(root, 'seeds'));
    const caseSeed = Number(env.VDISK_FUZZ_REPLAY) >>> 0;
    const { seed, mutant } = makeCase(seeds, caseSeed);
    log(`case ${caseSeed}: seed ${seed.name}; mutations: ${mutant.log.join('; ')}`);
    if (env.VDISK_FUZZ_DUMP) {
      mkdirSync(env.VDISK_FUZZ_DUMP, { recursive: true });
      writeFileSync(path.join(env.VDISK_FUZZ_DUMP, `case-${caseSeed}.qcow2`), mutant.bytes);
      writeFileSync(path.join(env.VDISK_FUZZ_DUMP, `seed-${seed.name}.qcow2`), seed.bytes);
    }
    const out = await runCase({ caseSeed, seed: info(seed), bytes: mutant.bytes, hot: mutant.hot }, path.join(root, 'w'), true);
    log(`${out.ms} ms, RSS growth ${Math.round(out.rssGrowth / MiB)} MiB`);
    log(out.failure ? `FAILURE ${signatureOf(out.failure)}\n${out.failure.stack}` : `ok (${out.codes.join(', ')})`);
    rmSync(root, { recursive: true, force: true });
    process.exitCode = out.failure ? 1 : 0;
    return;
  }
  const cases = Number(env.VDISK_FUZZ_CASES ?? 1000);
  const seed = Number(env.VDISK_FUZZ_SEED ?? 1) >>> 0;
  const workRoot = env.VDISK_FUZZ_DIR ?? path.join(os.tmpdir(), `vdisk-qcow2-fuzz-${seed}-${process.pid}`);
  const report = await runFuzz({
    cases, seed, workRoot, log,
    workers: Number(env.VDISK_FUZZ_WORKERS ?? Math.max(1, Math.min(2, os.availableParallelism()))),
    budgetMs: Number(env.VDISK_FUZZ_BUDGET_MS ?? 10_000),
    minimise: env.VDISK_FUZZ_MINIMISE !== '0',
  });
  const out = path.join(workRoot, 'report.json');
  writeFileSync(out, JSON.stringify(report, null, 2));
  log(`${report.cases} cases in ${(report.ms / 1000).toFixed(1)} s; ${report.failures.length} failures, ${report.distinct.length} distinct; report ${out}`);
  log(`codes: ${JSON.stringify(report.codes)}`);
  log(`reached: ${JSON.stringify(report.reached)}`);
  for (const d of report.distinct) {
    log(`  ${d.count}× ${d.signature}\n     first: case ${d.first.caseIndex} seed ${d.first.caseSeed} (${d.first.seedName}): ${d.first.mutations.join('; ')}`
      + (d.first.minimised ? `\n     minimised: ${d.first.minimised.patches.join('; ')} (length ${d.first.minimised.length}/${d.first.minimised.seedLength})` : ''));
  }
  process.exitCode = report.failures.length ? 1 : 0;
}

const isEntry = process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntry && process.env.VDISK_FUZZ_CHILD && process.send) childMain(process.env.VDISK_FUZZ_CHILD);
else if (isEntry) {
  cli().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 2;
  });
}
