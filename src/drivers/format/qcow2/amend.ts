import { BlockError } from '../../../core/errors.js';
import { downgradeToV2, upgradeToV3 } from './amend-version.js';
import { AUTOCLEAR, COMPAT, INCOMPAT } from './constants.js';
import { writeFeatureField } from './header-update.js';
import { rewriteHeader } from './header-rewrite.js';
import type { Qcow2Internals, Qcow2Node } from './qcow2-node.js';
import { changeRefcountOrder } from './refcount-order.js';

/** The `-o` options qemu-img amend takes for qcow2, parsed; absent ones change nothing. */
export interface Qcow2AmendOptions {
  size?: number | undefined;
  compat?: string | undefined;
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
  dataFile?: string | undefined;
  dataFileRaw?: boolean | undefined;
  lazyRefcounts?: boolean | undefined;
  refcountBits?: number | undefined;
  /** Some `encrypt.*` option was given. */
  encryption?: boolean | undefined;
}

export interface Qcow2AmendHooks {
  /** Changes the virtual size (the caller's resize, which knows how to fill a grown range). */
  resize(size: number): Promise<void>;
  /** Overall progress, 0–100. */
  progress?(percent: number): void;
}

/** qemu-img amend's compat spellings. */
const VERSIONS: Record<string, 2 | 3> = { '0.10': 2, v2: 2, '1.1': 3, v3: 3 };

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'amend' });
}

/**
 * qemu-img amend for qcow2 (QEMU's qcow2_amend_options), step by step in QEMU's order: checks
 * of the options, upgrade, refcount width, data file bits, the backing file (which amend may
 * only repeat), lazy refcounts, size, and downgrade last. A failing step leaves what earlier
 * steps did, as in QEMU, and the image consistent.
 *
 * While amend runs, refcounts are kept accurate (lazy refcounts off): every step then leaves a
 * consistent image behind, and nothing marks a v2 image dirty. At the end the node follows
 * what the header says.
 */
export async function amendQcow2(node: Qcow2Node, o: Qcow2AmendOptions, hooks: Qcow2AmendHooks): Promise<void> {
  const h = node.header;
  const oldVersion = h.version;
  if (o.encryption) throw invalid("Can't amend encryption options - encryption not present");
  let newVersion = oldVersion;
  if (o.compat !== undefined) {
    const v = VERSIONS[o.compat];
    if (v === undefined) throw invalid(`Unknown compatibility level ${o.compat}`);
    newVersion = v;
  }
  if (o.dataFile !== undefined && !(h.incompatibleFeatures & INCOMPAT.DATA_FILE)) {
    throw invalid('data-file can only be set for images that use an external data file');
  }
  const isRaw = (h.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) !== 0n;
  if (o.dataFileRaw && !isRaw) throw invalid('data-file-raw cannot be set on existing images');
  const refcountBits = o.refcountBits ?? 2 ** h.refcountOrder;
  if (refcountBits <= 0 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw invalid('Refcount width must be a power of two and may not exceed 64 bits');
  }
  const wantLazy = o.lazyRefcounts ?? (h.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n;
  const steps = Number(newVersion !== oldVersion) + Number(refcountBits !== 2 ** h.refcountOrder);
  const progress = stepProgress(steps, hooks.progress);

  try {
    await node.maintain('amend', async (p) => {
      await settleLazyRefcounts(p);
      if (newVersion > oldVersion) await upgradeToV3(p, progress.step());
      if (refcountBits !== 2 ** h.refcountOrder) {
        if (newVersion < 3 && refcountBits !== 16) {
          throw invalid('Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
        }
        await changeRefcountOrder(p, Math.log2(refcountBits), progress.step());
      }
      const raw = o.dataFileRaw ?? isRaw;
      const dataFile = o.dataFile === undefined ? h.dataFile : o.dataFile || undefined;
      const autoclearFeatures = raw ? h.autoclearFeatures | AUTOCLEAR.DATA_FILE_RAW : h.autoclearFeatures & ~AUTOCLEAR.DATA_FILE_RAW;
      await rewriteHeader(p.file, h, { ...h, autoclearFeatures, dataFile });
      if ((o.backingFile !== undefined || o.backingFormat !== undefined) && (o.backingFile !== h.backingFile || o.backingFormat !== h.backingFormat)) {
        throw invalid("Cannot amend the backing file; use 'vdisk rebase' instead");
      }
      await setLazyRefcounts(p, wantLazy, newVersion);
    });
    if (o.size) await hooks.resize(o.size);
    if (newVersion < oldVersion) await node.maintain('amend', (p) => downgradeToV2(p, progress.step()));
  } finally {
    await node.maintain('amend', async (p) => {
      p.lazy.enabled = h.version >= 3 && (h.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n;
    }).catch(() => undefined);
  }
}

/** Everything on disk and the dirty bit cleared (QEMU's qcow2_mark_clean), then accurate refcounts. */
async function settleLazyRefcounts(p: Qcow2Internals): Promise<void> {
  await p.writeback.flush();
  await p.lazy.afterCleanFlush();
  p.lazy.enabled = false;
}

async function setLazyRefcounts(p: Qcow2Internals, on: boolean, version: number): Promise<void> {
  const h = p.header;
  if (on === ((h.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n)) return;
  if (on && version < 3) {
    throw invalid('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  const compatible = on ? h.compatibleFeatures | COMPAT.LAZY_REFCOUNTS : h.compatibleFeatures & ~COMPAT.LAZY_REFCOUNTS;
  await writeFeatureField(p.file, 'compatible', compatible);
  h.compatibleFeatures = compatible;
}

/** Turns each step's (done, total) into overall percent, the steps weighted alike. */
function stepProgress(steps: number, report: ((percent: number) => void) | undefined): { step(): (done: number, total: number) => void } {
  let started = 0;
  return {
    step() {
      const index = started++;
      return (done, total) => report?.(((index + (total > 0 ? done / total : 1)) / Math.max(steps, 1)) * 100);
    },
  };
}
