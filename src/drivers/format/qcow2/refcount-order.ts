import { BlockError } from '../../../core/errors.js';
import { InMemoryRefcounts } from './check-imrt.js';
import type { Qcow2Internals } from './qcow2-node.js';
import { readEntry, writeEntry } from './refcounts.js';

/**
 * Gives the image refcounts of another width (qemu-img amend -o refcount_bits; QEMU's
 * qcow2_change_refcount_order): every count is read at the old width, a new refcount table and
 * new refcount blocks are laid out on clusters the old structures leave free, written and
 * flushed; then one write inside the header's first sector switches the table and the width
 * together. A crash before that write leaves the old structures in charge (the new ones leak);
 * after it the new ones, which already count the old ones as free. `progress(done, total)`
 * counts refcount blocks.
 */
export async function changeRefcountOrder(p: Qcow2Internals, order: number, progress: (done: number, total: number) => void): Promise<void> {
  const { file, header: h } = p;
  if (h.version < 3) throw new BlockError('EINVAL', 'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)', { op: 'amend' });
  const cs = 2 ** h.clusterBits;
  const bits = 2 ** order;
  await p.writeback.flush();
  const { refs, old } = await readCounts(p, bits);
  const layout = layOut(refs, bits, cs);
  // The old structures are free once the header names the new ones.
  for (const c of old) refs.set(c, 0);

  const perBlock = (cs * 8) / bits;
  let done = 0;
  for (const [index, at] of layout.blocks) {
    const block = new Uint8Array(cs);
    for (let k = 0; k < perBlock; k++) {
      const n = refs.get(index * perBlock + k);
      if (n !== 0) writeEntry(block, k, bits, n);
    }
    await file.write(at * cs, block);
    progress(++done, layout.blocks.size + 1);
  }
  const table = new Uint8Array(layout.tableClusters * cs);
  const tv = new DataView(table.buffer);
  for (const [index, at] of layout.blocks) tv.setBigUint64(index * 8, BigInt(at * cs));
  await file.write(layout.tableAt * cs, table);
  await file.flush();

  // Bytes 48–99 of the header: the refcount table's place and size, the fields between as they
  // are, and the refcount order. All in sector 0, so the switch is one write that lands whole.
  const fields = new Uint8Array(52);
  const fv = new DataView(fields.buffer);
  fv.setBigUint64(0, BigInt(layout.tableAt * cs));
  fv.setUint32(8, layout.tableClusters);
  fv.setUint32(12, h.nbSnapshots);
  fv.setBigUint64(16, BigInt(h.snapshotsOffset));
  fv.setBigUint64(24, h.incompatibleFeatures);
  fv.setBigUint64(32, h.compatibleFeatures);
  fv.setBigUint64(40, h.autoclearFeatures);
  fv.setUint32(48, order);
  await file.write(48, fields);
  await file.flush();
  Object.assign(h, { refcountTableOffset: layout.tableAt * cs, refcountTableClusters: layout.tableClusters, refcountOrder: order });
  p.refcounts.forget();
  p.guard.invalidate();
  progress(done + 1, layout.blocks.size + 1);
}

/**
 * Every cluster's count, read block by block from the old structures (after a flush, the disk
 * is current), checked against the new width; and the clusters the old structures take.
 */
async function readCounts(p: Qcow2Internals, bits: number): Promise<{ refs: InMemoryRefcounts; old: number[] }> {
  const { file } = p;
  const current = await p.refcounts.get();
  const cs = current.clusterSize;
  const refs = new InMemoryRefcounts(Math.ceil(file.size / cs), bits);
  const range = current.tableRange;
  const old = Array.from({ length: range.clusters }, (_, i) => range.offset / cs + i);
  const block = new Uint8Array(cs);
  for (const [index, offset] of current.table.entries()) {
    if (offset === 0) continue;
    if (offset % cs !== 0 || offset + cs > file.size) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' is corrupt: refcount block ${index} at 0x${offset.toString(16)} cannot be read; repair it with vdisk check -r all`, { op: 'amend' });
    }
    old.push(offset / cs);
    await file.read(offset, block);
    for (let k = 0; k < current.perBlock; k++) {
      const n = readEntry(block, k, current.bits);
      if (n === 0) continue;
      const cluster = index * current.perBlock + k;
      if (n > refs.max) {
        throw new BlockError('EINVAL', `Cannot decrease refcount entry width to ${bits} bits: Cluster at offset 0x${(cluster * cs).toString(16)} has a refcount of ${n}`, { op: 'amend' });
      }
      refs.set(cluster, n);
    }
  }
  return { refs, old };
}

interface Layout {
  /** Cluster of each new refcount block, by table index. */
  blocks: Map<number, number>;
  tableAt: number;
  tableClusters: number;
}

/**
 * Places a refcount block for every range that has a counted cluster, and the table after
 * them, on clusters nothing uses. Each placement is counted in `refs` and may itself need a
 * block or a longer table, so this repeats until nothing new is needed.
 */
function layOut(refs: InMemoryRefcounts, bits: number, cs: number): Layout {
  const perBlock = (cs * 8) / bits;
  const perTableCluster = cs / 8;
  const blocks = new Map<number, number>();
  let tableAt = -1;
  let tableClusters = 0;
  let hint = 0;
  for (let changed = true; changed;) {
    changed = false;
    for (let index = 0; index * perBlock < refs.length; index++) {
      if (blocks.has(index) || !anyCounted(refs, index * perBlock, (index + 1) * perBlock)) continue;
      hint = refs.allocate(1, hint);
      blocks.set(index, hint);
      changed = true;
    }
    const needed = Math.max(1, Math.ceil((Math.max(...blocks.keys()) + 1) / perTableCluster));
    if (needed !== tableClusters) {
      for (let i = 0; i < tableClusters; i++) refs.set(tableAt + i, 0);
      tableAt = refs.allocate(needed, hint);
      tableClusters = needed;
      changed = true;
    }
  }
  return { blocks, tableAt, tableClusters };
}

function anyCounted(refs: InMemoryRefcounts, from: number, to: number): boolean {
  for (let c = from; c < Math.min(to, refs.length); c++) if (refs.get(c) !== 0) return true;
  return false;
}
