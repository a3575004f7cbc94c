import type { Extent } from '../../core/types.js';
import {
  CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, encodeAllocationDepth, encodeAllocationStatus,
} from '../protocol.js';
import type { NbdExport } from './export.js';

/** A metadata context the server can report on, with the status word it gives each extent. */
export interface MetaContext {
  /** The id sent in NBD_REP_META_CONTEXT and in BLOCK_STATUS chunks (QEMU's numbering). */
  readonly id: number;
  readonly name: string;
  status(e: Extent): number;
}

const BASE_ALLOCATION: MetaContext = { id: 0, name: CONTEXT_BASE_ALLOCATION, status: encodeAllocationStatus };

const ALLOCATION_DEPTH: MetaContext = { id: 1, name: CONTEXT_QEMU_ALLOCATION_DEPTH, status: encodeAllocationDepth };

export function availableContexts(exp: NbdExport): MetaContext[] {
  return exp.allocationDepth ? [BASE_ALLOCATION, ALLOCATION_DEPTH] : [BASE_ALLOCATION];
}

/**
 * The contexts a LIST or SET query selects. Unknown names select nothing (not an error). A bare
 * namespace (`base:`, `qemu:`) lists the whole namespace but, in SET, selects nothing, as the
 * spec says of `base:`; no queries at all lists everything and sets nothing.
 */
export function selectContexts(exp: NbdExport, queries: readonly string[], list: boolean): MetaContext[] {
  const available = availableContexts(exp);
  if (queries.length === 0) return list ? available : [];
  const chosen = new Set<MetaContext>();
  for (const q of queries) {
    for (const c of available) {
      const wildcard = list && q.endsWith(':') && c.name.startsWith(q);
      if (wildcard || c.name === q) chosen.add(c);
    }
  }
  return [...chosen].sort((a, b) => a.id - b.id);
}
