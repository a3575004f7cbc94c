import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { DriverDef, NodeSpec, OpenContext } from '../../../registry/driver.js';
import { boolOption, numberOption, stringOption } from '../../../registry/options.js';
import { compressionTypeFromHeader } from './compression.js';
import { INCOMPAT } from './constants.js';
import { isQcow2, parseHeader, type Qcow2Header } from './header.js';
import { Qcow2Node } from './qcow2-node.js';
import { findSnapshot, parseSnapshotTable, type Qcow2Snapshot } from './snapshots.js';

export { Qcow2Node } from './qcow2-node.js';

/** The header, its extensions and the backing name all sit in cluster 0 (at most 2 MiB). */
const HEADER_READ = 2 * 1024 * 1024;

async function readSnapshots(file: BlockNode, h: Qcow2Header): Promise<Qcow2Snapshot[]> {
  if (h.nbSnapshots === 0) return [];
  // Entries are variable-sized; QEMU caps the table at 64 MiB, and it must lie inside the file.
  const length = Math.min(64 * 1024 * 1024, file.size - h.snapshotsOffset);
  if (length <= 0) throw new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' is corrupt: the snapshot table lies past the end of the file`, { op: 'open', path: file.filename });
  const table = new Uint8Array(length);
  await file.read(h.snapshotsOffset, table);
  return parseSnapshotTable(table, h.nbSnapshots, h.version);
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

export const qcow2Driver: DriverDef = {
  name: 'qcow2',
  kind: 'format',
  options: ['file', 'backing', 'data-file', 'snapshot', 'l2-cache-size', 'l2-cache-entry-size', 'refcount-cache-size', 'cache-size', 'cache-clean-interval', 'lazy-refcounts'],
  probe: (head) => (isQcow2(head) ? 100 : 0),
  async open(spec, ctx) {
    if (spec.file === undefined) throw new BlockError('EINVAL', "qcow2: the 'file' child is required", { op: 'open' });
    const file = await ctx.openChild(spec.file as NodeSpec | string, 'file');
    const opened: BlockNode[] = [file];
    try {
      const head = new Uint8Array(Math.min(HEADER_READ, file.size));
      await file.read(0, head);
      const header = parseHeader(head, file.filename);
      const snapshots = await readSnapshots(file, header);
      const snapshotName = stringOption(spec, 'snapshot');
      const snapshot = snapshotName === undefined ? undefined : findSnapshot(snapshots, snapshotName);
      if (snapshotName !== undefined && !snapshot) {
        throw new BlockError('ENOENT', `qcow2 image '${file.filename}' has no snapshot '${snapshotName}'`, { op: 'open', path: file.filename });
      }
      const backing = await openBacking(spec, header, file, ctx);
      if (backing) opened.push(backing);
      const dataFile = await openDataFile(spec, header, file, ctx);
      if (dataFile !== file) opened.push(dataFile);
      return await Qcow2Node.open({
        file, header, dataFile, backing, snapshots, snapshot, compression: compressionTypeFromHeader(header.compressionType),
      }, {
        nodeName: stringOption(spec, 'node-name'),
        readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly,
        l2CacheSize: numberOption(spec, 'l2-cache-size') ?? numberOption(spec, 'cache-size'),
        refcountCacheSize: numberOption(spec, 'refcount-cache-size'),
      });
    } catch (err) {
      for (const node of opened.reverse()) await node.close();
      throw err;
    }
  },
};
