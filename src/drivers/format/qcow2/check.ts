import { INCOMPAT } from './constants.js';
import { calculateRefcounts, type SnapshotL1 } from './check-calculate.js';
import { compareRefcounts } from './check-compare.js';
import { CheckContext, type CheckFix, type CheckResult, type CheckTarget } from './check-context.js';
import { checkCopied } from './check-copied.js';
import { RepairGuard, setIncompatible } from './check-overlap.js';
import { rebuildRefcountStructure } from './check-rebuild.js';
import { StoredRefcounts } from './check-refcounts.js';
import { parseSnapshotTable } from './snapshots.js';

export { CheckFailedError, type CheckFix, type CheckResult, type CheckTarget } from './check-context.js';

/**
 * qemu-img check for qcow2 (QEMU's qcow2_check_refcounts and what qcow2_co_check_locked does
 * around it): counts every reference to every host cluster, compares with the stored refcounts,
 * checks the COPIED flags, and repairs what `fix` allows: leaks with 'leaks'; with 'all' also
 * refcounts too low, wrong COPIED flags, misaligned preallocated entries, refcount blocks past
 * the end of the file, and (by rebuilding them) broken refcount structures.
 *
 * One difference from QEMU, on purpose: where QEMU needs a rebuild, -r leaks still repairs the
 * leaks in place (QEMU refuses and repairs nothing), since that needs no rebuild here.
 */
export async function checkQcow2(t: CheckTarget, fix: CheckFix): Promise<CheckResult> {
  const ctx = new CheckContext(t);
  const stopListening = t.signal.listen((line) => ctx.say(line));
  try {
    return await check(ctx, fix);
  } finally {
    stopListening();
  }
}

async function check(ctx: CheckContext, fix: CheckFix): Promise<CheckResult> {
  const { t } = ctx;
  const { res } = ctx;
  const snapshots = await readSnapshotL1s(ctx);
  const guard = new RepairGuard(ctx, () => snapshots);
  const stored = new StoredRefcounts(ctx, guard);

  let { refs, rebuild } = await calculateRefcounts(ctx, guard, snapshots, fix);
  const counted = { ...res, messages: [] };
  const compared = await compareRefcounts(ctx, refs, stored, 'none');
  let highest = compared.highestCluster;
  rebuild ||= compared.rebuild;

  if (rebuild && fix === 'all') {
    const before = { corruptions: res.corruptions, leaks: res.leaks };
    ctx.say('Rebuilding refcount structure');
    await rebuildRefcountStructure(ctx, guard, refs);
    stored.rebuilt();
    // Count again against the new structure; it leaks the old one, which is freed now. The
    // counters of that comparison are not reported, but a leak it cannot fix is.
    res.corruptions = 0;
    res.leaks = 0;
    ({ refs } = await calculateRefcounts(ctx, guard, snapshots, 'none'));
    const kept = { corruptions: res.corruptions, leaks: res.leaks, checkErrors: res.checkErrors, corruptionsFixed: res.corruptionsFixed, leaksFixed: res.leaksFixed };
    res.corruptions = res.leaks = res.checkErrors = res.corruptionsFixed = res.leaksFixed = 0;
    const again = await compareRefcounts(ctx, refs, stored, 'leaks');
    if (again.rebuild) ctx.say('ERROR rebuilt refcount structure is still broken');
    highest = again.highestCluster;
    const freshLeaks = res.leaks;
    Object.assign(res, kept);
    if (res.corruptions < before.corruptions) res.corruptionsFixed += before.corruptions - res.corruptions;
    if (res.leaks < before.leaks) res.leaksFixed += before.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix !== 'none' && (res.leaks || res.corruptions)) {
    // Compare again, repairing this time, from the counters as counting left them.
    Object.assign(res, { ...counted, messages: res.messages });
    highest = (await compareRefcounts(ctx, refs, stored, fix)).highestCluster;
  }

  await checkCopied(ctx, guard, stored, fix);
  await stored.flush();
  res.imageEndOffset = (highest + 1) * ctx.cs;
  // A repaired image is consistent again: QEMU clears the dirty and corrupt bits then.
  if (fix !== 'none' && !res.checkErrors && !res.corruptions && !guard.refused) {
    await setIncompatible(ctx, t.header.incompatibleFeatures & ~(INCOMPAT.DIRTY | INCOMPAT.CORRUPT));
  }
  return res;
}

/** The snapshots' L1 tables, from the snapshot table itself (the node opened it, so it parses). */
async function readSnapshotL1s(ctx: CheckContext): Promise<SnapshotL1[]> {
  const table = ctx.t.snapshotTable();
  const h = ctx.t.header;
  if (!table || h.nbSnapshots === 0) return [];
  const bytes = await ctx.readRaw(table.offset, table.length);
  return parseSnapshotTable(bytes, h.nbSnapshots, h.version).map((s) => ({ id: s.id, name: s.name, offset: s.l1TableOffset, size: s.l1Size }));
}
