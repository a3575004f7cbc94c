import { INCOMPAT, L1E_OFFSET_MASK, OFLAG_COPIED } from './constants.js';
import type { CheckContext, CheckFix } from './check-context.js';
import type { RepairGuard } from './check-overlap.js';
import { entryOffset } from './l2-entry.js';
import type { StoredRefcounts } from './check-refcounts.js';

/**
 * QEMU's check_oflag_copied: in the active tables, COPIED must say "refcount is 1". 'all'
 * repairs it; 'leaks' too when the refcounts are otherwise consistent (then they can be
 * trusted). A refcount that cannot be read skips the entry silently: compare already said so.
 */
export async function checkCopied(ctx: CheckContext, guard: RepairGuard, stored: StoredRefcounts, fix: CheckFix): Promise<void> {
  const { t, res, cs } = ctx;
  const h = t.header;
  const repair = fix === 'all' || (fix === 'leaks' && !res.checkErrors && !res.corruptions && !res.leaks);
  const dataFile = (h.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
  const extended = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
  const entrySize = extended ? 16 : 8;
  const refcountOf = (offset: number) => stored.get(Math.floor(offset / cs)).catch(() => undefined);
  const report = (what: string) => {
    ctx.say(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED ${what}`);
    if (repair) res.corruptionsFixed++;
    else res.corruptions++;
  };

  // A damaged L1 can name one L2 table thousands of times; each naming is reported, as QEMU
  // does, but the table's findings are worked out once (and are none once it is repaired).
  const findings = new Map<number, { line: string; index: number; copied: boolean }[]>();
  for (const [index, l1Entry] of t.l1Entries().entries()) {
    const l2 = Number(l1Entry & L1E_OFFSET_MASK);
    if (l2 === 0) continue;
    const l2Refcount = await refcountOf(l2);
    if (l2Refcount !== undefined && ((l1Entry & OFLAG_COPIED) !== 0n) !== (l2Refcount === 1)) {
      if (repair) {
        const clash = guard.overlap(h.l1TableOffset + index * 8, 8, 'active L1 table');
        if (clash !== undefined) throw await guard.fail(clash, `repairing L1 entry ${index}`);
        await t.setCopied('l1', h.l1TableOffset, index, l2Refcount === 1);
      }
      report(`L2 cluster: l1_index=${index} l1_entry=${l1Entry.toString(16)} refcount=${l2Refcount}`);
    }

    let found = findings.get(l2);
    // Read only where the table's findings are worked out (also the only time it is repaired);
    // a table past the end of the file reads as zeros, so it has none.
    let table: Uint8Array = new Uint8Array(0);
    if (!found && l2 >= t.file.size) findings.set(l2, (found = []));
    if (!found) {
      table = await ctx.readL2(l2);
      found = [];
      const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
      for (let i = 0; i < cs / entrySize; i++) {
        // Halves as numbers (see walkL2): the BigInt only for a message.
        const hi = dv.getUint32(i * entrySize);
        const lo = dv.getUint32(i * entrySize + 4);
        if (hi === 0 && lo === 0) continue;
        const copied = (hi & 0x80000000) !== 0;
        const host = entryOffset(hi, lo);
        if (hi & 0x40000000 || (!extended && lo & 1 && host === 0)) continue;
        if (host === 0 && !(dataFile && copied)) continue;
        // Clusters of an external data file always have refcount 1.
        const refcount = dataFile ? 1 : await refcountOf(host);
        if (refcount === undefined || copied === (refcount === 1)) continue;
        const entry = (BigInt(hi) << 32n) | BigInt(lo);
        found.push({ line: `data cluster: l2_entry=${entry.toString(16)} refcount=${refcount}`, index: i, copied: refcount === 1 });
      }
      findings.set(l2, found);
    }
    for (const f of found) report(f.line);
    const wrong = found;
    if (!repair || wrong.length === 0) continue;
    const clash = guard.overlap(l2, cs, 'active L2 table');
    if (clash !== undefined) {
      throw await guard.fail(clash, `repairing the L2 table at 0x${l2.toString(16)}`, 'ERROR: Could not write L2 table; metadata overlap check failed: Input/output error');
    }
    if (l2 % cs === 0 && l2 + cs <= t.file.size) {
      // The image's cached table: the image writes it back with its other tables.
      for (const w of wrong) await t.setCopied('l2', l2, w.index, w.copied);
    } else {
      // A misaligned table, or one cut short by the end of the file: written where it is, as QEMU does.
      const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
      for (const w of wrong) {
        const at = w.index * entrySize;
        dv.setBigUint64(at, w.copied ? dv.getBigUint64(at) | OFLAG_COPIED : dv.getBigUint64(at) & ~OFLAG_COPIED);
      }
      await t.file.write(l2, table);
    }
    // Repaired: the next naming of this table finds it right.
    findings.set(l2, []);
  }
}
