import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { CreateOptionValue, MeasureInfo, MeasureRequest } from '../../../registry/driver.js';
import { readBitmapDirectory, BITMAP_ENTRY_FIXED } from './bitmap-directory.js';
import { MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS } from './constants.js';
import { refcountMetadataClusters } from './create-layout.js';
import { l1EntriesFor } from './create-options.js';
import { Qcow2Node } from './qcow2-node.js';

/*
 * qemu-img measure -O qcow2 (block/qcow2.c qcow2_measure): the file size of a new image that
 * holds either a bare virtual size or an input image's data. QEMU reads the -o options here
 * through its own small parsers (qcow2_opt_get_*_del), not those of create: their checks, their
 * order and their messages differ from create's ("compat=v3" is refused, "extended_l2=on" with
 * "compat=0.10" is not), and those are the ones reproduced.
 *
 * Sizes are bigints: --size goes up to 2^63 - 1 and the answer must be exact.
 */

const PREALLOCATION = ['off', 'metadata', 'falloc', 'full'] as const;
const L1E_SIZE = 8n;
const U64 = 64;

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'measure' });
}

/** ROUND_UP on uint64_t, wrapping as C does for sizes near 2^64. */
function roundUp(n: bigint, to: bigint): bigint {
  return BigInt.asUintN(U64, n + to - 1n) / to * to;
}

function divRoundUp(n: bigint, by: bigint): bigint {
  return (n + by - 1n) / by;
}

/** qcow2_opt_get_cluster_size_del. */
function clusterSizeOf(value: CreateOptionValue | undefined, extendedL2: boolean): bigint {
  const size = typeof value === 'bigint' ? value : 65536n;
  // ctz32 of the size as C's size_t, then the round trip that refuses anything but a power of two.
  const low32 = Number(BigInt.asUintN(32, size));
  const bits = low32 === 0 ? 32 : 31 - Math.clz32(low32 & -low32);
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS || 2n ** BigInt(bits) !== size) {
    throw invalid(`Cluster size must be a power of two between ${2 ** MIN_CLUSTER_BITS} and ${2 ** (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (extendedL2 && bits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw invalid(`Extended L2 entries are only supported with cluster sizes of at least ${2 ** MIN_EXTENDED_L2_CLUSTER_BITS} bytes`);
  }
  return size;
}

/** qcow2_opt_get_version_del: only QEMU's two spellings, not create's v2/v3. */
function versionOf(value: CreateOptionValue | undefined): 2 | 3 {
  if (value === undefined) return 3;
  if (value === '0.10') return 2;
  if (value === '1.1') return 3;
  throw invalid(`Invalid compatibility level: '${String(value)}'`);
}

/** qcow2_opt_get_refcount_bits_del; returns the refcount order. */
function refcountOrderOf(value: CreateOptionValue | undefined, version: 2 | 3): number {
  const bits = typeof value === 'bigint' ? value : 16n;
  if (bits > 64n || bits === 0n || (bits & (bits - 1n)) !== 0n) {
    throw invalid('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && bits !== 16n) {
    throw invalid('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  return bits.toString(2).length - 1;
}

function preallocationOf(value: CreateOptionValue | undefined): (typeof PREALLOCATION)[number] {
  if (value === undefined) return 'off';
  const mode = PREALLOCATION.find((m) => m === value);
  if (!mode) throw invalid(`invalid parameter value: ${String(value)}`);
  return mode;
}

/**
 * qcow2_calc_prealloc_size(): the file of a fully allocated image — header, every L2 table, the
 * L1 table, and the refcount structures that count all of that and the data.
 */
function fullyAllocatedSize(virtualSize: bigint, cs: bigint, refcountOrder: number, extendedL2: boolean): bigint {
  const l2eSize = extendedL2 ? 16n : 8n;
  const aligned = roundUp(virtualSize, cs);
  let meta = cs;
  const l2Entries = roundUp(aligned / cs, cs / l2eSize);
  meta += l2Entries * l2eSize;
  const l1Entries = roundUp(l2Entries * l2eSize / cs, cs / L1E_SIZE);
  meta += l1Entries * L1E_SIZE;
  const refcounts = refcountMetadataClusters(Number((meta + aligned) / cs), Number(cs), refcountOrder, false);
  meta += BigInt(refcounts.blocks + refcounts.table) * cs;
  return meta + aligned;
}

/**
 * The bytes of whole clusters that hold data in `input`, its backing chain included: a cluster
 * counts when any byte of it is allocated data that does not read as zeros (QEMU's walk over
 * bdrv_block_status_above, which skips to the end of every cluster it counts).
 */
async function dataClusterBytes(input: BlockNode, length: number, clusterSize: number): Promise<number> {
  let bytes = 0;
  let next = 0;
  for await (const list of input.extentLists(0, Math.min(length, input.size))) {
    for (const e of list) {
      if (e.zero || !e.data || !e.present) continue;
      const end = e.offset + e.length;
      const start = Math.max(e.offset, next);
      if (start >= end) continue;
      const first = Math.floor(start / clusterSize) * clusterSize;
      next = Math.ceil(end / clusterSize) * clusterSize;
      bytes += next - first;
    }
  }
  return bytes;
}

/**
 * qcow2_get_persistent_dirty_bitmap_size() for the input's persistent bitmaps, as clusters of
 * the new image: each bitmap fully allocated, its table, and its share of the directory.
 * Undefined when the input cannot hold persistent bitmaps (only qcow2 v3 can).
 */
async function bitmapsSize(input: BlockNode, length: number, cs: bigint): Promise<bigint | undefined> {
  if (!(input instanceof Qcow2Node) || input.header.version < 3) return undefined;
  let size = 0n;
  let directory = 0n;
  for (const b of await readBitmapDirectory(input.file!, input.header)) {
    // A bitmap covers the image's length when it was loaded (before any snapshot was).
    const bits = divRoundUp(BigInt(length), 2n ** BigInt(b.granularityBits));
    const clusters = divRoundUp(divRoundUp(bits, 8n), cs);
    size += clusters * cs + roundUp(clusters * 8n, cs);
    directory += roundUp(BigInt(BITMAP_ENTRY_FIXED + b.nameSize), 8n);
  }
  return size + roundUp(directory, cs);
}

export async function measureQcow2(req: MeasureRequest): Promise<MeasureInfo> {
  const o = req.options;
  const extendedL2 = o.get('extended_l2') === true;
  const cs = clusterSizeOf(o.get('cluster_size'), extendedL2);
  const version = versionOf(o.get('compat'));
  const refcountOrder = refcountOrderOf(o.get('refcount_bits'), version);
  const preallocation = preallocationOf(o.get('preallocation'));
  const hasBackingFile = o.has('backing_file');

  // QEMU checks the size it was given (0 with an input image) before it looks at the input.
  const size = o.get('size');
  let virtualSize = roundUp(typeof size === 'bigint' ? size : 0n, cs);
  const clusterBits = cs.toString(2).length - 1;
  if (BigInt(l1EntriesFor(Number(virtualSize), clusterBits, extendedL2)) * L1E_SIZE > BigInt(MAX_L1_BYTES)) {
    throw invalid('The image size is too large (try using a larger cluster size)');
  }

  let required = 0n;
  const { input } = req;
  const length = req.inputLength ?? input?.size ?? 0;
  if (input) {
    virtualSize = roundUp(BigInt(length), cs);
    // With a backing file the new image may share nothing with it: every cluster may be written.
    required = hasBackingFile ? virtualSize : BigInt(await dataClusterBytes(input, length, Number(cs)));
  }
  if (preallocation === 'falloc' || preallocation === 'full') required = virtualSize;

  const fullyAllocated = fullyAllocatedSize(virtualSize, cs, refcountOrder, extendedL2);
  // The metadata of the fully allocated image is kept: QEMU's estimate errs on the large side.
  const info: MeasureInfo = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (version >= 3 && input) {
    const bitmaps = await bitmapsSize(input, length, cs);
    if (bitmaps !== undefined) info.bitmaps = bitmaps;
  }
  return info;
}
