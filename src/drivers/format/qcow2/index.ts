import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { DriverDef, NodeSpec, OpenContext } from '../../../registry/driver.js';
import { boolOption, stringOption } from '../../../registry/options.js';
import { compressionTypeFromHeader } from './compression.js';
import { INCOMPAT, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, V3_HEADER_LENGTH } from './constants.js';
import { isQcow2, parseHeader, type Qcow2Header } from './header.js';
import { clearStaleAutoclear } from './header-update.js';
import type { Qcow2Node } from './qcow2-node.js';
import { cacheOptions } from './runtime-options.js';
import { QCOW2_CREATE_OPTIONS } from './create-options.js';
import { findSnapshot, MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_SIZE, parseSnapshotTable, snapshotL1Problem, type Qcow2Snapshot } from './snapshots.js';

/** The fixed part of a snapshot table entry (spec §8). */
const ENTRY_FIXED = 40;

/**
 * The header, its extensions and the backing name, which all sit in cluster 0. Only that cluster
 * is read, as QEMU does: reading further would pull data clusters into the page cache, and on
 * ext4 that turns unwritten extents into "data" for every later SEEK_DATA (and so for map).
 */
async function readCluster0(file: BlockNode): Promise<Uint8Array> {
  const fixed = new Uint8Array(Math.min(V3_HEADER_LENGTH, file.size));
  await file.read(0, fixed);
  const bits = fixed.byteLength >= 24 ? new DataView(fixed.buffer).getUint32(20) : 0;
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) return fixed;
  const cluster0 = new Uint8Array(Math.min(2 ** bits, file.size));
  await file.read(0, cluster0);
  return cluster0;
}

/**
 * The snapshot table, read entry by entry so that only its own bytes are read (the data after
 * it must stay out of the page cache; see readCluster0). Sizes are checked by the parser.
 */
async function readSnapshots(file: BlockNode, h: Qcow2Header): Promise<{ snapshots: Qcow2Snapshot[]; length: number }> {
  if (h.nbSnapshots === 0) return { snapshots: [], length: 0 };
  const chunks: Uint8Array[] = [];
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots && pos + ENTRY_FIXED <= file.size && pos - h.snapshotsOffset <= MAX_SNAPSHOT_TABLE_SIZE; i++) {
    const fixed = new Uint8Array(ENTRY_FIXED);
    await file.read(pos, fixed);
    const dv = new DataView(fixed.buffer);
    const extra = dv.getUint32(36);
    const rest = extra + dv.getUint16(12) + dv.getUint16(14);
    // Check sizes before allocating: a hostile entry may claim gigabytes of extra data.
    if (extra > MAX_SNAPSHOT_EXTRA_DATA || pos + ENTRY_FIXED + rest - h.snapshotsOffset > MAX_SNAPSHOT_TABLE_SIZE) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' is corrupt: snapshot ${i} is too large`, { op: 'open', path: file.filename });
    }
    const entry = new Uint8Array(Math.ceil((ENTRY_FIXED + rest) / 8) * 8);
    entry.set(fixed);
    await file.read(pos + ENTRY_FIXED, entry.subarray(ENTRY_FIXED, Math.min(entry.byteLength, file.size - pos)));
    chunks.push(entry);
    pos += entry.byteLength;
  }
  const table = new Uint8Array(pos - h.snapshotsOffset);
  let at = 0;
  for (const c of chunks) {
    table.set(c, at);
    at += c.byteLength;
  }
  // A snapshot whose L1 table is misaligned or too large still opens, as in QEMU: check reports
  // it, and only loading that snapshot fails (usableSnapshot).
  return { snapshots: parseSnapshotTable(table, h.nbSnapshots, h.version), length: table.byteLength };
}

/** The snapshot `idOrName` (snapshot=), refused as QEMU refuses to load it when its L1 table is unusable. */
function usableSnapshot(file: BlockNode, h: Qcow2Header, snapshots: Qcow2Snapshot[], idOrName: string): Qcow2Snapshot {
  const path = file.filename;
  const snapshot = findSnapshot(snapshots, idOrName);
  if (!snapshot) throw new BlockError('ENOENT', `qcow2 image '${path}' has no snapshot '${idOrName}'`, { op: 'open', path });
  const problem = snapshotL1Problem(snapshot, 2 ** h.clusterBits);
  if (problem !== undefined) {
    throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: failed to load snapshot '${idOrName}': ${problem}`, { op: 'open', path });
  }
  return snapshot;
}

async function openBacking(spec: NodeSpec, h: Qcow2Header, file: BlockNode, ctx: OpenContext): Promise<BlockNode | undefined> {
  // `backing: null` (QEMU's -o backing=null, or json) opens the image without its chain.
  if (spec.backing === null) return undefined;
  if (spec.backing !== undefined) return ctx.openChild(spec.backing as NodeSpec | string, 'backing');
  if (h.backingFile === undefined) return undefined;
  return ctx.openReference(h.backingFile, { format: h.backingFormat, relativeTo: file.filename, role: 'backing', readOnly: true });
}

async function openDataFile(spec: NodeSpec, h: Qcow2Header, file: BlockNode, ctx: OpenContext): Promise<BlockNode> {
  if (!(h.incompatibleFeatures & INCOMPAT.DATA_FILE)) return file;
  if (spec['data-file'] !== undefined) return ctx.openChild(spec['data-file'] as NodeSpec | string, 'data-file');
  if (h.dataFile === undefined) {
    throw new BlockError('EINVAL', `qcow2 image '${file.filename}' needs an external data file, and names none; give one with data-file=`, { op: 'open', path: file.filename });
  }
  return ctx.openReference(h.dataFile, { format: 'file', relativeTo: file.filename, role: 'data-file' });
}

/** The image file as a qcow2 node needs it: locked against other writers, and growing as clusters are added. */
function exclusiveFile(spec: NodeSpec | string): NodeSpec | string {
  if (typeof spec === 'string') return { driver: 'file', filename: spec, exclusive: true, growable: true };
  // `file.filename=x` without a driver is a file too (the registry makes it one).
  if (spec.driver !== undefined && spec.driver !== 'file') return spec;
  return { ...spec, driver: 'file', exclusive: spec.exclusive ?? true, growable: spec.growable ?? true };
}

/**
 * What a writer must settle before its first write: refuse images marked corrupt (unless opened
 * to be checked), and clear the autoclear bits for things vdisk does not keep up to date
 * (persistent bitmaps), so no reader trusts them after our writes (spec §3). A check keeps them:
 * it writes no guest data, and it counts the bitmaps' clusters only while the bit says they are
 * valid (as QEMU does); the node clears them before a guest write instead.
 */
async function prepareForWriting(file: BlockNode, h: Qcow2Header, checking: boolean): Promise<void> {
  const path = file.filename;
  if (h.incompatibleFeatures & INCOMPAT.CORRUPT && !checking) {
    throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is marked corrupt and can only be opened read-only (repair it with vdisk check -r all)`, { op: 'open', path });
  }
  if (!checking) await clearStaleAutoclear(file, h);
}

async function repairDirty(node: Qcow2Node): Promise<void> {
  try {
    const result = await node.check('all');
    if (result.corruptions > 0) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${node.filename}' was left dirty and could not be repaired (${result.corruptions} errors)`, { op: 'open', path: node.filename });
    }
    await node.clearIncompatible(INCOMPAT.DIRTY);
  } catch (err) {
    await node.close();
    throw err;
  }
}

export const qcow2Driver: DriverDef = {
  name: 'qcow2',
  kind: 'format',
  options: ['file', 'backing', 'data-file', 'snapshot', 'check', 'l2-cache-size', 'l2-cache-entry-size', 'refcount-cache-size', 'cache-size', 'cache-clean-interval', 'lazy-refcounts', 'alloc-space'],
  probe: (head) => (isQcow2(head) ? 100 : 0),
  createOptions: QCOW2_CREATE_OPTIONS,
  // The node, create and measure load on first use: every command registers every driver, and
  // most of qcow2's modules are not needed to probe (start-up is most of a short command's time).
  create: async (req) => (await import('./create.js')).createQcow2(req),
  measure: async (req) => (await import('./measure.js')).measureQcow2(req),
  async open(spec, ctx) {
    if (spec.file === undefined) throw new BlockError('EINVAL', "qcow2: the 'file' child is required", { op: 'open' });
    const file = await ctx.openChild(exclusiveFile(spec.file as NodeSpec | string), 'file');
    const opened: BlockNode[] = [file];
    try {
      const header = parseHeader(await readCluster0(file), file.filename);
      const checking = boolOption(spec, 'check') ?? ctx.options.check ?? false;
      if (!file.readOnly && stringOption(spec, 'snapshot') === undefined) await prepareForWriting(file, header, checking);
      const { snapshots, length: snapshotTableLength } = await readSnapshots(file, header);
      const snapshotName = stringOption(spec, 'snapshot');
      const snapshot = snapshotName === undefined ? undefined : usableSnapshot(file, header, snapshots, snapshotName);
      const backing = await openBacking(spec, header, file, ctx);
      if (backing) opened.push(backing);
      const dataFile = await openDataFile(spec, header, file, ctx);
      if (dataFile !== file) opened.push(dataFile);
      const { Qcow2Node } = await import('./qcow2-node.js');
      const node = await Qcow2Node.open({
        file, header, dataFile, backing, snapshots, snapshotTableLength, snapshot, compression: compressionTypeFromHeader(header.compressionType),
      }, {
        nodeName: stringOption(spec, 'node-name'),
        readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly,
        ...cacheOptions(spec),
        lazyRefcounts: boolOption(spec, 'lazy-refcounts'),
        allocSpace: boolOption(spec, 'alloc-space'),
      });
      // Lazy refcounts left dirty by a crash: repair them before anything is written, as QEMU does.
      if (!node.readOnly && node.dirty && !checking) await repairDirty(node);
      return node;
    } catch (err) {
      for (const node of opened.reverse()) await node.close();
      throw err;
    }
  },
};
