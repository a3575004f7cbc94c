import { isAllZero } from '../core/zero-detect.js';
import type { CompressedTarget } from './compressed-target.js';

/** Part of a data buffer bound for a compressed target: compressed clusters to store, or zeros. */
export type PreparedPart =
  | { zero: false; offset: number; length: number; commit: () => Promise<void> }
  | { zero: true; offset: number; length: number };

/**
 * Turns a data buffer of whole target clusters into compressed writes (qemu-img convert -c's
 * convert_co_write): a cluster that is all zeros is only a zero run while sparse detection is on
 * (-S 0 compresses zeros too); runs of other clusters are compressed in one request each, all
 * at once. Nothing is stored here: the caller commits the parts in its write order.
 *
 * The sources may end inside the target's last cluster (a target is created in whole sectors,
 * and may be larger with -n): that cluster is padded with zeros to its end, or the target's.
 */
export async function prepareCompressed(target: CompressedTarget, offset: number, data: Uint8Array, sparse: boolean): Promise<PreparedPart[]> {
  const cs = target.clusterSize;
  const end = offset + data.byteLength;
  const padded = Math.min(end + (cs - (end % cs)) % cs, target.size);
  if (padded > end) {
    const whole = new Uint8Array(padded - offset);
    whole.set(data);
    data = whole;
  }
  const runs: { zero: boolean; start: number; end: number }[] = [];
  for (let pos = 0; pos < data.byteLength;) {
    const end = Math.min(data.byteLength, pos + cs - ((offset + pos) % cs));
    const zero = sparse && isAllZero(data.subarray(pos, end));
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.end = end;
    else runs.push({ zero, start: pos, end });
    pos = end;
  }
  return Promise.all(runs.map(async (r): Promise<PreparedPart> => {
    const at = offset + r.start;
    const length = r.end - r.start;
    if (r.zero) return { zero: true, offset: at, length };
    const write = await target.prepareCompressedWrite(at, data.subarray(r.start, r.end));
    return { zero: false, offset: at, length, commit: () => write.commit() };
  }));
}
