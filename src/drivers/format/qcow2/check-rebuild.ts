import type { CheckContext } from './check-context.js';
import type { InMemoryRefcounts } from './check-imrt.js';
import type { RepairGuard } from './check-overlap.js';
import { writeEntry } from './refcounts.js';

/**
 * QEMU's rebuild_refcount_structure: new refcount blocks and a new refcount table, made from
 * the references counted alone, for damage that refcounts set in place cannot repair (a
 * referenced cluster with refcount 0, a refcount block that is also something else, or one
 * whose table entry is unusable). The new structures go to clusters nothing references; the
 * header is switched to them last, so a crash before that leaves the old ones in charge; then
 * the image's refcount reader reads the new ones. The old ones are unreferenced by now: the
 * caller's next comparison frees them as leaks.
 *
 * `refs` gains the clusters the new structures take. Each block written is the slice of `refs`
 * it covers, so it counts itself and the table.
 */
export async function rebuildRefcountStructure(ctx: CheckContext, guard: RepairGuard, refs: InMemoryRefcounts): Promise<void> {
  const { t, cs } = ctx;
  const h = t.header;
  const bits = 2 ** h.refcountOrder;
  const perBlock = (cs * 8) / bits;
  const perTableCluster = cs / 8;
  /** New refcount block offsets by table index (0: none). */
  const table: number[] = [];

  const write = async (offset: number, bytes: Uint8Array, what: string) => {
    const clash = guard.overlap(offset, bytes.byteLength);
    if (clash !== undefined) throw await guard.fail(clash, `writing the new ${what} at 0x${offset.toString(16)}`);
    await t.file.write(offset, bytes);
  };

  /**
   * Writes the refcount block of every cluster in use in [from, to), allocating the blocks that
   * do not exist yet; returns whether the table had to grow for them. A block allocated past
   * `to` extends the range, because the block that counts it must be written too.
   */
  const writeBlocks = async (from: number, to: number): Promise<boolean> => {
    let grew = false;
    let hint = 0;
    for (let c = from; c < to; c++) {
      if (refs.get(c) === 0) continue;
      const index = Math.floor(c / perBlock);
      const first = index * perBlock;
      if (!table[index]) {
        // Never place a block inside a range whose block is already written: it would not count it.
        hint = refs.allocate(1, Math.max(hint, first));
        to = Math.max(to, hint + 1);
        if (table.length <= index) {
          const entries = Math.ceil((index + 1) / perTableCluster) * perTableCluster;
          while (table.length < entries) table.push(0);
          grew = true;
        }
        table[index] = hint * cs;
      }
      const block = new Uint8Array(cs);
      for (let k = 0; k < perBlock; k++) {
        const n = refs.get(first + k);
        if (n !== 0) writeEntry(block, k, bits, n);
      }
      await write(table[index]!, block, 'refcount block');
      c = first + perBlock - 1;
    }
    return grew;
  };

  await writeBlocks(0, refs.length);
  // The table's own clusters may need blocks that make it grow; then it needs a new place.
  let tableAt: number;
  let tableClusters: number;
  do {
    tableClusters = table.length / perTableCluster;
    tableAt = refs.allocate(tableClusters, 0);
  } while (await writeBlocks(tableAt, tableAt + tableClusters));

  const raw = new Uint8Array(tableClusters * cs);
  const dv = new DataView(raw.buffer);
  table.forEach((offset, i) => dv.setBigUint64(i * 8, BigInt(offset)));
  await write(tableAt * cs, raw, 'refcount table');
  await t.file.flush();
  const field = new Uint8Array(12);
  const fv = new DataView(field.buffer);
  fv.setBigUint64(0, BigInt(tableAt * cs));
  fv.setUint32(8, tableClusters);
  await t.file.write(48, field);
  await t.file.flush();
  h.refcountTableOffset = tableAt * cs;
  h.refcountTableClusters = tableClusters;
  await t.reloadRefcounts();
  guard.refresh();
}
