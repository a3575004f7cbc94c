import { errnoText, type CheckContext, type CheckFix } from './check-context.js';
import type { InMemoryRefcounts } from './check-imrt.js';
import type { StoredRefcounts } from './check-refcounts.js';

/** What a comparison found beyond the counters: whether a rebuild is needed, and the last cluster in use. */
export interface Comparison {
  /** A referenced cluster has refcount 0: only a rebuild of the refcount structures repairs that. */
  rebuild: boolean;
  highestCluster: number;
}

/**
 * QEMU's compare_refcounts: the stored refcount of every cluster against the references
 * counted. `fix` repairs leaks (stored too high) and, with 'all', refcounts too low but not
 * zero; a referenced cluster with refcount 0 asks for a rebuild instead.
 */
export async function compareRefcounts(ctx: CheckContext, refs: InMemoryRefcounts, stored: StoredRefcounts, fix: CheckFix): Promise<Comparison> {
  const { res } = ctx;
  let rebuild = false;
  let highestCluster = 0;
  // The first cluster at or after c whose refcount block is stored. Before it every refcount
  // is 0, so only referenced clusters can differ: a file grown huge and sparse is not walked
  // cluster by cluster.
  let storedFrom = 0;
  for (let c = 0; c < refs.length; c++) {
    if (c > storedFrom) storedFrom = stored.nextStored(c, refs.length);
    while (c < storedFrom && refs.get(c) === 0) c++;
    if (c === refs.length) break;
    let refcount: number;
    try {
      refcount = c < storedFrom ? 0 : await stored.get(c);
    } catch (err) {
      ctx.say(`Can't get refcount for cluster ${c}: ${errnoText(err)}`);
      res.checkErrors++;
      continue;
    }
    const references = refs.get(c);
    if (refcount > 0 || references > 0) highestCluster = c;
    if (refcount === references) continue;
    const leak = refcount > references;
    const fixing = refcount !== 0 && (leak ? fix !== 'none' : fix === 'all');
    if (refcount === 0) rebuild = true;
    ctx.say(`${fixing ? 'Repairing' : leak ? 'Leaked' : 'ERROR'} cluster ${c} refcount=${refcount} reference=${references}`);
    if (fixing) {
      try {
        await stored.set(c, references);
        if (leak) res.leaksFixed++;
        else res.corruptionsFixed++;
        continue;
      } catch {
        // Not repaired: counted below, as QEMU counts a failed update_refcount.
      }
    }
    if (leak) res.leaks++;
    else res.corruptions++;
  }
  return { rebuild, highestCluster };
}
