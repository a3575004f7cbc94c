import type { BlockNode } from '../../../core/block-node.js';
import { AUTOCLEAR } from './constants.js';
import type { Qcow2Header } from './header.js';

/** Byte offsets of the v3 header's feature fields (spec §2). */
const FEATURE_FIELD = { incompatible: 72, compatible: 80, autoclear: 88 } as const;

/**
 * Rewrites one 64-bit feature field of an open image's header in place and flushes, so the bit
 * is on disk before whatever it guards (the dirty bit before unflushed refcounts, the corrupt
 * bit before the refused write is reported).
 */
export async function writeFeatureField(file: BlockNode, field: keyof typeof FEATURE_FIELD, value: bigint): Promise<void> {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value);
  await file.write(FEATURE_FIELD[field], bytes);
  await file.flush();
}

/**
 * Clears the autoclear bits for what vdisk does not keep up to date (persistent bitmaps; the
 * raw data file stays), before the first guest write, so that no reader trusts them afterwards.
 */
export async function clearStaleAutoclear(file: BlockNode, h: Qcow2Header): Promise<void> {
  const keep = h.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW;
  if (h.version < 3 || keep === h.autoclearFeatures) return;
  await writeFeatureField(file, 'autoclear', keep);
  h.autoclearFeatures = keep;
}
