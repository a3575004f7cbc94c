import { L1E_OFFSET_MASK } from './constants.js';
import { CheckFailedError, type CheckContext } from './check-context.js';
import { writeFeatureField } from './header-update.js';

/** Metadata a repair write must not land on, named as QEMU's overlap check names it. */
export type Metadata =
  | 'qcow2_header' | 'active L1 table' | 'refcount table' | 'snapshot table' | 'inactive L1 table' | 'active L2 table' | 'refcount block';

/** The order QEMU tests them in, so a write over two kinds reports the one QEMU reports. */
const ORDER: readonly Metadata[] = [
  'qcow2_header', 'active L1 table', 'refcount table', 'snapshot table', 'inactive L1 table', 'active L2 table', 'refcount block',
];

/**
 * QEMU's pre-write overlap check for the writes a repair makes (qcow2_pre_write_overlap_check
 * in its default "cached" mode, which leaves out inactive L2 tables): on a damaged image one
 * structure can sit on another (an L1 entry naming a refcount block as its L2 table), and
 * repairing one would overwrite the other. Such a write is refused and the image marked corrupt.
 */
export class RepairGuard {
  /** Host cluster → the metadata kinds on it; built on first use, dropped when tables move. */
  private map: Map<number, Metadata[]> | undefined;
  private signalled = false;

  constructor(private readonly ctx: CheckContext, private readonly snapshotL1s: () => readonly { offset: number; size: number }[]) {}

  /** Forget the map: the refcount structures moved (a rebuild). */
  refresh(): void {
    this.map = undefined;
  }

  /** The first metadata (in QEMU's order) that writing [offset, offset + length) would overwrite, other than `own`. */
  overlap(offset: number, length: number, own?: Metadata): Metadata | undefined {
    const map = (this.map ??= this.build());
    const cs = this.ctx.cs;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / cs);
    const kinds: Metadata[] = [];
    for (let c = first; c <= last; c++) kinds.push(...(map.get(c) ?? []));
    // The snapshots' L1 tables as ranges: a damaged entry may claim gigabytes of them.
    const inactive = this.snapshotL1s().some((s) => s.size > 0 && s.offset < (last + 1) * cs && s.offset + s.size * 8 > first * cs);
    if (inactive) kinds.push('inactive L1 table');
    let found: Metadata | undefined;
    for (const kind of kinds) {
      if (kind !== own && (found === undefined || ORDER.indexOf(kind) < ORDER.indexOf(found))) found = kind;
    }
    return found;
  }

  /** Marks the image corrupt for a refused write, through the image's signal (which says so once, as QEMU does). */
  async refuse(kind: Metadata): Promise<void> {
    this.signalled = true;
    await this.ctx.t.signal.signal(`Preventing invalid write on metadata (overlaps with ${kind})`);
  }

  /**
   * Refuses a repair write the check cannot do without (QEMU then fails the check): marks the
   * image corrupt, says `line` if given, and returns the error to throw.
   */
  async fail(kind: Metadata, what: string, line?: string): Promise<CheckFailedError> {
    await this.refuse(kind);
    if (line !== undefined) this.ctx.say(line);
    this.ctx.res.checkErrors++;
    return new CheckFailedError(this.ctx.res.messages, this.ctx.t, `${what} would overwrite the ${kind}`);
  }

  /** Whether a write was refused (and the image marked corrupt) during this check. */
  get refused(): boolean {
    return this.signalled;
  }

  private build(): Map<number, Metadata[]> {
    const { t, cs } = this.ctx;
    const h = t.header;
    const map = new Map<number, Metadata[]>();
    const mark = (offset: number, bytes: number, kind: Metadata) => {
      // A damaged entry may point past 2^53, where no write can land (and c++ would stand still).
      if (bytes <= 0 || offset + bytes > Number.MAX_SAFE_INTEGER) return;
      for (let c = Math.floor(offset / cs); c <= Math.floor((offset + bytes - 1) / cs); c++) {
        const kinds = map.get(c);
        if (kinds) kinds.push(kind);
        else map.set(c, [kind]);
      }
    };
    mark(0, cs, 'qcow2_header');
    mark(h.l1TableOffset, h.l1Size * 8, 'active L1 table');
    const reftable = t.refcounts.tableRange;
    mark(reftable.offset, reftable.clusters * cs, 'refcount table');
    const snapshotTable = t.snapshotTable();
    if (snapshotTable) mark(snapshotTable.offset, snapshotTable.length, 'snapshot table');
    for (const e of t.l1Entries()) {
      const l2 = Number(e & L1E_OFFSET_MASK);
      if (l2) mark(l2, cs, 'active L2 table');
    }
    for (const block of t.refcounts.table) if (block) mark(block, cs, 'refcount block');
    return map;
  }
}

/** Rewrites the incompatible-features field (v3 only; v2 has none) and flushes it. */
export async function setIncompatible(ctx: CheckContext, value: bigint): Promise<void> {
  const { t } = ctx;
  if (t.header.version < 3 || t.header.incompatibleFeatures === value) return;
  await writeFeatureField(t.file, 'incompatible', value);
  t.header.incompatibleFeatures = value;
}
