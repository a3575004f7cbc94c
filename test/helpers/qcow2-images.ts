/**
 * The qcow2 interop matrix: builders that make each kind of qcow2 image with the REAL qemu-img
 * and qemu-io (never with vdisk), with known contents written by qemu-io. The interop tests read
 * these back through vdisk and compare with what QEMU itself says (`qemu-img convert -O raw`,
 * `map`, `info`), so a builder must only ever use QEMU: an image vdisk wrote would prove nothing.
 *
 * Each builder writes into a directory it is given and returns the top image. Sizes stay small
 * (3 MiB virtual; 2 MiB-cluster images 8-16 MiB) so the whole matrix builds in seconds.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { MapEntry } from '../../src/cli/map.js';
import { pattern } from './bytes.js';
import { run, runOk } from './oracles.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A kind of row `qemu-img map --output=json` shows; see `rowKinds`. */
export type MapRowKind =
  | 'data' // data at a host offset in this image
  | 'data-without-offset' // data QEMU gives no offset for: compressed clusters
  | 'zero-alloc' // reads as zero, host cluster kept (ZERO_ALLOC): present, zero, offset
  | 'zero-plain' // reads as zero, nothing allocated (ZERO_PLAIN): present, zero, no offset
  | 'unallocated' // no layer has it: present false
  | 'backing'; // found in a backing layer: depth > 0

export interface Qcow2Image {
  /** The image to open (the top of a chain). */
  path: string;
  format: 'qcow2';
  description: string;
  /** Internal snapshots, oldest first; each reads back with `qemu-img convert -l snapshot.name=NAME`. */
  snapshots?: { id: string; name: string }[];
  /**
   * A deep subset of `qemu-img info --output=json` that shows the options the builder asked for,
   * so a builder whose option QEMU ignored or renamed fails loudly instead of testing the default.
   */
  intended: Record<string, unknown>;
  /** Row kinds `qemu-img map --output=json` must show: what the fixture is there to exercise. */
  shows: MapRowKind[];
  /** `qemu-img check` exit status: 0 unless the fixture is damaged on purpose. */
  checkStatus: number;
}

export interface Qcow2Variant {
  name: string;
  /** Builds the variant in `dir` (an empty directory of its own). */
  build(dir: string): Promise<Qcow2Image>;
}

/** Classifies a `qemu-img map` row into the kinds a fixture declares in `shows`. */
export function rowKinds(row: MapEntry): MapRowKind[] {
  const kinds: MapRowKind[] = [];
  if (row.depth > 0) kinds.push('backing');
  if (!row.present) kinds.push('unallocated');
  else if (row.data && !row.zero) kinds.push(row.offset === undefined ? 'data-without-offset' : 'data');
  else if (row.zero && !row.data) kinds.push(row.offset === undefined ? 'zero-plain' : 'zero-alloc');
  return kinds;
}

type Options = Record<string, string | number | boolean>;

function optionString(opts: Options): string {
  return Object.entries(opts).map(([k, v]) => `${k}=${v === true ? 'on' : v === false ? 'off' : v}`).join(',');
}

/** `qemu-img create -f FMT [-o …] [-b BACKING -F BFMT] FILE SIZE`; cwd matters for relative names. */
export async function qemuCreate(file: string, size: number, opts: Options = {}, format = 'qcow2',
  backing?: { name: string; format: string }, cwd?: string): Promise<void> {
  const args = ['create', '-q', '-f', format];
  if (Object.keys(opts).length) args.push('-o', optionString(opts));
  if (backing) args.push('-b', backing.name, '-F', backing.format);
  await runOk('qemu-img', [...args, file, String(size)], { cwd });
}

/**
 * Runs qemu-io commands on an image in one process, so they apply in order. qemu-io carries on
 * after a failed command (exiting 1 at the end), so status and output are both checked: a fixture
 * must not silently lack a write.
 */
export async function qemuIo(file: string, commands: readonly string[], format = 'qcow2'): Promise<void> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  const r = await run('qemu-io', [...args, file]);
  if (r.code !== 0 || /failed|error/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${commands.join(' ; ')} on ${file} exited ${r.code}: ${(r.stdout + r.stderr).trim()}`);
  }
}

/** A virtual size that is never a multiple of the cluster size (unless the cluster is 512 B). */
export function oddSize(clusterSize: number): number {
  return Math.max(8 * clusterSize - clusterSize / 2, 3 * MiB) + 1536;
}

/**
 * The standard writes, scaled to the cluster size C so that each lands where it means to on every
 * geometry (cluster k is [kC, (k+1)C)). In order:
 *  k0..k2  data: a full cluster, then writes with unaligned ends across the k1/k2 boundary;
 *  k2      a sub-cluster zero write inside data (QEMU falls back to writing zeros);
 *  k3      data, then `write -z`: the host cluster stays (ZERO_ALLOC in v3; v2 without a
 *          backing file has no zero flag and deallocates instead);
 *  k4      data, then `write -z -u`: the host cluster is freed;
 *  k5      data, then a whole-cluster discard;
 *  k6      a few subclusters of data in an empty cluster, then an unaligned zero write beside them;
 *  end     data in the last 1536 bytes of the disk (in a partial last cluster);
 *  and, where the disk is big enough, data across an L2-table boundary.
 */
export function standardWrites(C: number, size: number, extendedL2 = false): string[] {
  const ops = [
    `write -P 0x11 0 ${C + 1000}`,
    `write -P 0x22 ${2 * C - 777} ${C}`,
    `write -z ${2 * C + 1000} 2000`,
    `write -P 0x33 ${3 * C} ${2 * C}`,
    `write -z ${3 * C} ${C}`,
    `write -z -u ${4 * C} ${C}`,
    `write -P 0x44 ${5 * C} ${C}`,
    `discard ${5 * C} ${C}`,
    `write -P 0x66 ${6 * C + (3 * C) / 32} ${C / 16}`,
    `write -z ${6 * C + C / 4 + 100} ${C / 2}`,
    `write -P 0x55 ${size - 1536} 1536`,
  ];
  const l2Coverage = C * (C / (extendedL2 ? 16 : 8));
  if (l2Coverage + 1000 < size - 2 * C && l2Coverage - 1000 > 7 * C) ops.push(`write -P 0x77 ${l2Coverage - 1000} 2000`);
  return ops;
}

/** The part of `qemu-img info --output=json` that a builder's options decide. */
function qcow2Info(clusterSize: number, data: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { format: 'qcow2', 'cluster-size': clusterSize, 'format-specific': { type: 'qcow2', data }, ...extra };
}

/** A standalone image with the standard writes, for the geometry and feature options. */
export async function buildStandard(dir: string, description: string, opts: Options & { cluster_size: number },
  intendedData: Record<string, unknown>, shows: MapRowKind[], extraWrites: string[] = []): Promise<Qcow2Image> {
  const file = path.join(dir, 'disk.qcow2');
  const C = opts.cluster_size;
  const size = oddSize(C);
  await qemuCreate(file, size, opts);
  await qemuIo(file, [...standardWrites(C, size, opts.extended_l2 === true), ...extraWrites]);
  return { path: file, format: 'qcow2', description, intended: qcow2Info(C, intendedData, { 'virtual-size': size }), shows, checkStatus: 0 };
}

/** A qcow2 base filled with data (so overlays have something to hide), for overlay variants. */
async function dataBase(file: string, size: number, opts: Options = { cluster_size: 64 * KiB }): Promise<void> {
  await qemuCreate(file, size, opts);
  await qemuIo(file, [`write -P 0xb0 0 ${size}`]);
}

/** Incompressible bytes written by qemu-io from a pattern file, so a compressed image also has clusters QEMU stores uncompressed. */
async function writeRandom(dir: string, image: string, format: string, offset: number, length: number, seed: number): Promise<void> {
  const src = path.join(dir, `random-${seed}.bin`);
  await writeFile(src, pattern(length, seed));
  await qemuIo(image, [`write -s ${src} ${offset} ${length}`], format);
}

/**
 * `qemu-img convert -c -O qcow2` of a source with compressible clusters, incompressible ones (QEMU
 * stores those uncompressed), all-zero ones (convert leaves them out) and partial clusters; then
 * qemu-io rewrites part of a compressed cluster, zeroes one and discards one, as a guest would.
 */
export async function buildCompressed(dir: string, compression: 'zlib' | 'zstd', C: number): Promise<Qcow2Image> {
  const src = path.join(dir, 'source.raw');
  const file = path.join(dir, 'disk.qcow2');
  const size = oddSize(C);
  const unit = Math.min(C, 64 * KiB);
  await qemuCreate(src, size, {}, 'raw');
  await qemuIo(src, [
    `write -P 0x5a 0 ${4 * C}`,
    `write -P 0x5b ${C + 3000} 5000`,
    `write -z ${2 * C} ${unit / 2}`,
    `write -P 0x5c ${6 * C} ${C / 2 + 512}`,
    `write -P 0x5d ${size - 4096} 4096`,
  ], 'raw');
  await writeRandom(dir, src, 'raw', 4 * C, C, 0xc0ffee);
  await runOk('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', optionString({ compression_type: compression, cluster_size: C }), src, file]);
  await rm(src); // up to 15 MiB of data the tests never read
  await qemuIo(file, [
    `write -P 0x71 ${C + 100} ${unit / 4}`,
    `write -z ${2 * C} ${C}`,
    `discard ${3 * C} ${C}`,
  ]);
  return {
    path: file, format: 'qcow2', description: `compressed by qemu-img convert -c, ${compression}, cluster ${C}, then partly rewritten`,
    intended: qcow2Info(C, { 'compression-type': compression }, { 'virtual-size': size }),
    shows: ['data', 'data-without-offset', 'zero-plain', 'unallocated'], checkStatus: 0,
  };
}

/**
 * A lazy-refcount image left dirty: qemu-io aborts instead of closing. The flush puts the L2
 * tables on disk but not the refcounts (lazy refcounts skip them while dirty); after it, an
 * in-place overwrite reaches the file and a new allocation's L2 update is lost with the process.
 */
export async function buildDirtyLazyRefcounts(dir: string): Promise<Qcow2Image> {
  const file = path.join(dir, 'dirty.qcow2');
  const size = oddSize(64 * KiB);
  await qemuCreate(file, size, { lazy_refcounts: true, cluster_size: 64 * KiB });
  // abort(3) kills qemu-io by a signal, so its status is not checked here; the dirty flag is (intended).
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 200k', '-c', 'write -P 0x12 1M 64k', '-c', `write -P 0x13 ${size - 512} 512`,
    '-c', 'flush', '-c', 'write -P 0x14 4k 8k', '-c', 'write -P 0x15 2M 64k', '-c', 'abort', file], { cwd: dir });
  return {
    path: file, format: 'qcow2', description: 'lazy_refcounts=on, left dirty by qemu-io abort (stale refcounts)',
    intended: qcow2Info(64 * KiB, { 'lazy-refcounts': true }, { 'dirty-flag': true }),
    shows: ['data', 'unallocated'],
    // Refcounts of the clusters allocated while dirty were never written: check sees references to free clusters.
    checkStatus: 2,
  };
}

/** Internal snapshots with different data before and after each, and more changes after the last. */
export async function buildSnapshots(dir: string): Promise<Qcow2Image> {
  const file = path.join(dir, 'snap.qcow2');
  const size = oddSize(64 * KiB);
  await qemuCreate(file, size, { cluster_size: 64 * KiB });
  await qemuIo(file, ['write -P 0x11 0 256k', 'write -P 0x12 1M 100k', `write -P 0x13 ${size - 1000} 1000`]);
  await runOk('qemu-img', ['snapshot', '-c', 'first', file]);
  await qemuIo(file, ['write -P 0x21 64k 70k', 'write -z 1M 64k', 'discard 192k 64k', 'write -P 0x22 2M 64k']);
  await runOk('qemu-img', ['snapshot', '-c', 'second', file]);
  await qemuIo(file, ['write -P 0x31 100k 200k', 'write -z -u 2M 64k', 'write -P 0x32 1M 4k', `write -P 0x33 ${size - 3000} 1000`]);
  return {
    path: file, format: 'qcow2', description: 'two internal snapshots, data changed before, between and after them',
    snapshots: [{ id: '1', name: 'first' }, { id: '2', name: 'second' }],
    intended: qcow2Info(64 * KiB, { compat: '1.1' }), shows: ['data', 'zero-plain', 'unallocated'], checkStatus: 0,
  };
}

/**
 * base <- mid <- top with writes at each layer: mid zeroes (with and without unmap) and discards
 * ranges over base data, top writes partial 2 MiB clusters (COW from below) and zeroes one.
 */
export async function buildChain(dir: string, baseFormat: 'raw' | 'qcow2', midCluster: number): Promise<Qcow2Image> {
  // Five 2 MiB top clusters: k1 written partly in top (COW from below), k3 zeroed in top, the
  // rest left to mid and base, where base data, base holes and mid's zeroes show through.
  const size = 10 * MiB;
  const base = path.join(dir, `base.${baseFormat}`);
  const mid = path.join(dir, 'mid.qcow2');
  const top = path.join(dir, 'top.qcow2');
  if (baseFormat === 'raw') await qemuCreate(base, size, {}, 'raw');
  else await qemuCreate(base, size, { cluster_size: 64 * KiB });
  await qemuIo(base, ['write -P 0xb1 0 3M', 'write -P 0xb2 5M 1M', `write -P 0xb3 ${size - 512} 512`], baseFormat);
  await qemuCreate(mid, size, { cluster_size: midCluster }, 'qcow2', { name: base, format: baseFormat });
  await qemuIo(mid, [
    'write -P 0xc1 100k 50k', 'write -z 512k 64k', 'write -z -u 640k 64k', 'discard 768k 64k',
    `write -z ${1 * MiB + 1000} 3000`, 'write -P 0xc2 5M 8k', 'write -z 5200k 64k', `write -P 0xc3 ${8 * MiB - 1000} 2000`,
  ]);
  await qemuCreate(top, size, { cluster_size: 2 * MiB }, 'qcow2', { name: mid, format: 'qcow2' });
  await qemuIo(top, ['write -P 0xd1 2052k 4k', `write -P 0xd2 ${3.5 * MiB + 12345} 1000`, 'write -z 6M 2M']);
  return {
    path: top, format: 'qcow2',
    description: `three layers: base ${baseFormat}${baseFormat === 'qcow2' ? ' 64k' : ''} <- mid qcow2 cluster ${midCluster} <- top qcow2 cluster 2M`,
    intended: qcow2Info(2 * MiB, { compat: '1.1' }, { 'backing-filename': mid, 'backing-filename-format': 'qcow2' }),
    shows: ['data', 'backing', 'zero-plain', baseFormat === 'raw' ? 'zero-alloc' : 'unallocated'], checkStatus: 0,
  };
}

/** The overlay names its backing file relative to its own directory (not the process's). */
export async function buildRelativeBacking(dir: string): Promise<Qcow2Image> {
  await mkdir(path.join(dir, 'backing'));
  await mkdir(path.join(dir, 'overlays'));
  const size = 3 * MiB;
  await dataBase(path.join(dir, 'backing', 'base.qcow2'), size);
  const top = path.join(dir, 'overlays', 'top.qcow2');
  await qemuCreate('top.qcow2', size, { cluster_size: 64 * KiB }, 'qcow2', { name: '../backing/base.qcow2', format: 'qcow2' }, path.dirname(top));
  await qemuIo(top, ['write -P 0xe1 100k 10k', 'write -z 1M 64k']);
  return {
    path: top, format: 'qcow2', description: 'backing file named by a relative path (../backing/base.qcow2)',
    // QEMU joins the overlay's directory and the name without normalising the '..' away.
    intended: qcow2Info(64 * KiB, {}, { 'backing-filename': '../backing/base.qcow2', 'full-backing-filename': `${path.dirname(top)}/../backing/base.qcow2` }),
    shows: ['data', 'backing', 'zero-plain'], checkStatus: 0,
  };
}

/**
 * Guest data in an external file (named by an absolute path: QEMU 7.2 resolves a relative
 * data-file name against the process's working directory, not the image's). With
 * data_file_raw=on QEMU writes real zeros there, so the data file stays a usable raw image.
 */
export async function buildDataFile(dir: string, raw: boolean): Promise<Qcow2Image> {
  const file = path.join(dir, 'meta.qcow2');
  const data = path.join(dir, 'data.raw');
  const size = oddSize(64 * KiB);
  await qemuCreate(file, size, { cluster_size: 64 * KiB, data_file: data, data_file_raw: raw });
  await qemuIo(file, [...standardWrites(64 * KiB, size)]);
  return {
    path: file, format: 'qcow2', description: `external data file${raw ? ', data_file_raw=on' : ''}`,
    intended: qcow2Info(64 * KiB, { 'data-file': data, 'data-file-raw': raw }),
    // data_file_raw=on makes qemu-img create preallocate metadata: every cluster is mapped.
    shows: raw ? ['data', 'zero-alloc', 'zero-plain'] : ['data', 'zero-alloc', 'zero-plain', 'unallocated'], checkStatus: 0,
  };
}

/** Metadata or falloc preallocation, then writes over part of it (zero writes keep the allocation). */
export async function buildPreallocated(dir: string, mode: 'metadata' | 'falloc' | 'full'): Promise<Qcow2Image> {
  const file = path.join(dir, `prealloc-${mode}.qcow2`);
  const size = oddSize(64 * KiB);
  await qemuCreate(file, size, { cluster_size: 64 * KiB, preallocation: mode });
  await qemuIo(file, ['write -P 0x91 100k 100k', 'write -z 512k 128k', 'write -z -u 1M 64k', 'discard 2M 64k', `write -P 0x92 ${size - 700} 700`]);
  return {
    path: file, format: 'qcow2', description: `preallocation=${mode}, then written, zeroed and discarded in places`,
    intended: qcow2Info(64 * KiB, {}, { 'virtual-size': size }), shows: ['data', 'zero-alloc', 'zero-plain'], checkStatus: 0,
  };
}

/**
 * An overlay longer than its backing file: reads past the backing end are zeros. The backing end
 * falls inside an overlay cluster: over a qcow2 backing a partial write copies that cluster up
 * (COW reads past the backing end); over a raw backing it stays unallocated, so the overlay's
 * own reads cross the backing end.
 */
export async function buildShortBacking(dir: string, baseFormat: 'raw' | 'qcow2'): Promise<Qcow2Image> {
  const base = path.join(dir, `short.${baseFormat}`);
  const top = path.join(dir, 'long.qcow2');
  // A raw file may end mid-sector; qcow2 sizes are whole sectors.
  const baseSize = baseFormat === 'raw' ? MiB + 1000 : MiB + 512;
  await qemuCreate(base, baseSize, baseFormat === 'qcow2' ? { cluster_size: 64 * KiB } : {}, baseFormat);
  await qemuIo(base, [`write -P 0xa1 0 ${baseSize}`], baseFormat);
  const size = oddSize(64 * KiB);
  await qemuCreate(top, size, { cluster_size: 64 * KiB }, 'qcow2', { name: base, format: baseFormat });
  const copyUp = baseFormat === 'qcow2' ? MiB + 4096 : MiB + 128 * KiB;
  await qemuIo(top, ['write -P 0xa2 100k 4k', `write -P 0xa3 ${copyUp} 512`, `write -P 0xa4 ${size - 512} 512`]);
  return {
    path: top, format: 'qcow2', description: `backing ${baseFormat} of ${baseSize} bytes under a ${size}-byte overlay`,
    intended: qcow2Info(64 * KiB, {}, { 'virtual-size': size, 'backing-filename': base }), shows: ['data', 'backing', 'unallocated'], checkStatus: 0,
  };
}

/** An extended-L2 overlay (64 KiB clusters of 32 × 2 KiB subclusters): partial writes leave the other subclusters reading from the backing. */
export async function buildExtendedL2OverBacking(dir: string): Promise<Qcow2Image> {
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  const size = oddSize(64 * KiB);
  await dataBase(base, size);
  await qemuCreate(top, size, { cluster_size: 64 * KiB, extended_l2: true }, 'qcow2', { name: base, format: 'qcow2' });
  await qemuIo(top, ['write -P 0xe2 6k 4k', 'write -P 0xe3 70k 1000', 'write -z 136k 8k', 'write -z -u 256k 64k', 'discard 512k 64k', `write -z ${MiB + 2048} 2048`]);
  return {
    path: top, format: 'qcow2', description: 'extended_l2=on overlay: subclusters allocated, zero and left to the backing',
    intended: qcow2Info(64 * KiB, { 'extended-l2': true }), shows: ['data', 'backing', 'zero-plain'], checkStatus: 0,
  };
}

/** A compat=0.10 overlay: v2 has no zero flag, so zero writes over backing data become data. */
export async function buildV2Overlay(dir: string): Promise<Qcow2Image> {
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  const size = 3 * MiB;
  await dataBase(base, size, { cluster_size: 64 * KiB, compat: '0.10' });
  await qemuCreate(top, size, { cluster_size: 64 * KiB, compat: '0.10' }, 'qcow2', { name: base, format: 'qcow2' });
  await qemuIo(top, ['write -P 0xf1 1000 3000', 'write -z 64k 64k', 'write -z -u 256k 128k', 'discard 1M 64k']);
  return {
    path: top, format: 'qcow2', description: 'compat=0.10 overlay: zero writes and discards over backing data',
    intended: qcow2Info(64 * KiB, { compat: '0.10' }), shows: ['data', 'backing'], checkStatus: 0,
  };
}

const K64 = 64 * KiB;

/** Every variant of the read matrix, by name. */
export const QCOW2_VARIANTS: readonly Qcow2Variant[] = [
  { name: 'compat-0.10', build: (d) => buildStandard(d, 'compat=0.10 (v2), cluster 64k, with a compressed write', { compat: '0.10', cluster_size: K64 },
    { compat: '0.10', 'refcount-bits': 16 }, ['data', 'data-without-offset', 'unallocated'], [`write -c -P 0x5c ${16 * K64} ${K64}`]) },
  { name: 'compat-1.1', build: (d) => buildStandard(d, 'compat=1.1, cluster 64k, with a compressed write', { compat: '1.1', cluster_size: K64 },
    { compat: '1.1', 'refcount-bits': 16, 'extended-l2': false }, ['data', 'data-without-offset', 'zero-alloc', 'zero-plain', 'unallocated'], [`write -c -P 0x5c ${16 * K64} ${K64}`]) },
  { name: 'cluster-512', build: (d) => buildStandard(d, 'cluster 512 B (one L2 table maps 32 KiB)', { cluster_size: 512 },
    {}, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'cluster-2M', build: (d) => buildStandard(d, 'cluster 2 MiB', { cluster_size: 2 * MiB },
    {}, ['data', 'zero-alloc', 'zero-plain']) },
  { name: 'refcount-1', build: (d) => buildStandard(d, 'refcount_bits=1', { refcount_bits: 1, cluster_size: K64 },
    { 'refcount-bits': 1 }, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'refcount-16-cluster-4k', build: (d) => buildStandard(d, 'refcount_bits=16, cluster 4k', { refcount_bits: 16, cluster_size: 4 * KiB },
    { 'refcount-bits': 16 }, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'refcount-64', build: (d) => buildStandard(d, 'refcount_bits=64', { refcount_bits: 64, cluster_size: K64 },
    { 'refcount-bits': 64 }, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'extended-l2-64k', build: (d) => buildStandard(d, 'extended_l2=on, cluster 64k (2 KiB subclusters)', { extended_l2: true, cluster_size: K64 },
    { 'extended-l2': true }, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'extended-l2-2M', build: (d) => buildStandard(d, 'extended_l2=on, cluster 2 MiB (64 KiB subclusters)', { extended_l2: true, cluster_size: 2 * MiB },
    { 'extended-l2': true }, ['data', 'zero-alloc', 'zero-plain', 'unallocated']) },
  { name: 'extended-l2-over-backing', build: buildExtendedL2OverBacking },
  { name: 'compressed-zlib', build: (d) => buildCompressed(d, 'zlib', K64) },
  { name: 'compressed-zstd', build: (d) => buildCompressed(d, 'zstd', K64) },
  { name: 'compressed-zstd-2M', build: (d) => buildCompressed(d, 'zstd', 2 * MiB) },
  { name: 'compressed-zlib-512', build: (d) => buildCompressed(d, 'zlib', 512) },
  { name: 'lazy-refcounts-dirty', build: buildDirtyLazyRefcounts },
  { name: 'snapshots', build: buildSnapshots },
  { name: 'chain-raw-base', build: (d) => buildChain(d, 'raw', 4 * KiB) },
  { name: 'chain-qcow2-base', build: (d) => buildChain(d, 'qcow2', 512) },
  { name: 'backing-relative', build: buildRelativeBacking },
  { name: 'v2-overlay', build: buildV2Overlay },
  { name: 'data-file', build: (d) => buildDataFile(d, false) },
  { name: 'data-file-raw', build: (d) => buildDataFile(d, true) },
  { name: 'prealloc-metadata', build: (d) => buildPreallocated(d, 'metadata') },
  { name: 'prealloc-falloc', build: (d) => buildPreallocated(d, 'falloc') },
  { name: 'prealloc-full', build: (d) => buildPreallocated(d, 'full') },
  { name: 'backing-shorter-qcow2', build: (d) => buildShortBacking(d, 'qcow2') },
  { name: 'backing-shorter-raw', build: (d) => buildShortBacking(d, 'raw') },
];

/** Builds one variant in its own subdirectory of `root`. */
export async function buildVariant(root: string, variant: Qcow2Variant): Promise<Qcow2Image> {
  const dir = path.join(root, variant.name);
  await mkdir(dir, { recursive: true });
  return variant.build(dir);
}
