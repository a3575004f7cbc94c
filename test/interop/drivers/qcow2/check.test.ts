/**
 * `vdisk check` against `qemu-img check` on a corpus of deliberately damaged qcow2 images.
 *
 * Every image is made by the REAL qemu-img/qemu-io (the builders of qcow2-images.ts), checked
 * clean by qemu-img, then damaged by editing bytes with the independent little parser of
 * qcow2-damage.ts (never with vdisk's own reading of the format). Each case then runs, on
 * separate copies of the damaged file:
 *
 *  - check:      `qemu-img check --output=json` and `vdisk check --output=json` must give the same
 *                exit status and the same classification: corruptions, leaks, check-errors, and
 *                print the same lines on stderr.
 *  - -r leaks:   the same, with leaks-fixed and corruptions-fixed; then `qemu-img check` of both
 *                repaired copies must classify them alike (leaks gone, corruptions kept), and
 *                the two repaired files must be the same bytes.
 *  - -r all:     the same; afterwards `qemu-img check` of vdisk's copy must agree with qemu-img
 *                check of QEMU's own repaired copy (exit 0 where QEMU repairs the damage), the
 *                two files must be the same bytes (rebuilt refcount structures included), and
 *                the data (`qemu-img convert -O raw`, and every internal snapshot) must be the
 *                same bytes wherever QEMU can still read its repaired copy.
 *
 * Where vdisk differs from QEMU for a principled reason the case says so below, with the
 * reason, and asserts what vdisk must do instead.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, truncate } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { nativeStatus } from '../../../../src/native/index.js';
import { assertBytesEqual } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run, runOk, type RunResult } from '../../../helpers/oracles.js';
import { buildCompressed, buildSnapshots, buildStandard, qemuCreate, qemuIo } from '../../../helpers/qcow2-images.js';
import { COPIED, Qcow2Bytes, cutFile } from '../../../helpers/qcow2-damage.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

const KiB = 1024;
const K64 = 64 * KiB;
const TiB = 1024 ** 4;
const OFFSET_MASK = 0x00fffffffffffe00n;

// ---- geometries: undamaged images made by QEMU ------------------------------------------------

interface Base {
  file: string;
  /** Internal snapshot names, read back by the data comparison too. */
  snapshots: string[];
}

/**
 * Guest cluster 10, which none of the builders used here writes: written and then discarded
 * last, it leaves a free cluster inside the file (QEMU never shrinks it) for the leak cases.
 */
async function addFreeCluster(file: string, clusterSize: number): Promise<void> {
  await qemuIo(file, [`write -P 0x99 ${10 * clusterSize} ${clusterSize}`, `discard ${10 * clusterSize} ${clusterSize}`]);
}

async function standard(dir: string, opts: { cluster_size: number; refcount_bits?: number; extended_l2?: boolean }): Promise<Base> {
  const img = await buildStandard(dir, '', opts, {}, []);
  await addFreeCluster(img.path, opts.cluster_size);
  return { file: img.path, snapshots: [] };
}

const GEOMETRIES = {
  '64k': (d) => standard(d, { cluster_size: K64 }),
  '512': (d) => standard(d, { cluster_size: 512 }),
  '64k-refcount1': (d) => standard(d, { cluster_size: K64, refcount_bits: 1 }),
  '512-refcount1': (d) => standard(d, { cluster_size: 512, refcount_bits: 1 }),
  'extended-l2': (d) => standard(d, { cluster_size: K64, extended_l2: true }),
  snapshots: async (d) => {
    const img = await buildSnapshots(d);
    await addFreeCluster(img.path, K64);
    return { file: img.path, snapshots: (img.snapshots ?? []).map((s) => s.name) };
  },
  compressed: async (d) => ({ file: (await buildCompressed(d, 'zlib', K64)).path, snapshots: [] }),
  // Two persistent bitmaps (64 KiB and 512 KiB granularity), made dirty by writes, so QEMU stores
  // their directory, tables and data clusters: references check must count (qcow2_check_bitmaps_refcounts).
  bitmaps: async (d) => {
    const file = path.join(d, 'bitmaps.qcow2');
    await qemuCreate(file, 64 * 1024 * KiB, { cluster_size: K64 });
    await runOk('qemu-img', ['bitmap', '--add', file, 'bm0']);
    await runOk('qemu-img', ['bitmap', '--add', '-g', '512k', file, 'bm1']);
    await qemuIo(file, ['write -P 0x11 0 1M', 'write -P 0x22 10M 3M', 'write -P 0x33 40M 64k']);
    await addFreeCluster(file, K64);
    return { file, snapshots: [] };
  },
} satisfies Record<string, (dir: string) => Promise<Base>>;
type Geometry = keyof typeof GEOMETRIES;

// ---- damage -----------------------------------------------------------------------------------

/** Edits the image in memory (saved afterwards); returns a length to cut the file to, if any. */
type Damage = (q: Qcow2Bytes) => number | void;

/** An active data cluster of its own (COPIED, refcount 1) that holds data (not a zero cluster). */
function ownData(q: Qcow2Bytes) {
  const d = q.dataEntries().find((e) => e.entry & COPIED && !(e.entry & 1n) && q.refcount(e.host / q.clusterSize) === 1);
  if (!d) throw new Error('the fixture has no data cluster of its own');
  return d;
}

/** An active preallocated zero cluster: an entry with a host offset that reads as zeros (QEMU's ZERO_ALLOC). */
function preallocatedZero(q: Qcow2Bytes) {
  const zero = (e: { at: number; entry: bigint }) => (q.extendedL2 ? (q.u64(e.at + 8) & 0xffffffffn) === 0n : (e.entry & 1n) !== 0n);
  const d = q.dataEntries().find(zero);
  if (!d) throw new Error('the fixture has no preallocated zero cluster');
  return d;
}

function firstL2(q: Qcow2Bytes) {
  const t = q.l2Tables()[0];
  if (!t) throw new Error('the fixture has no L2 table');
  return t;
}

/** Points an L2 entry elsewhere, keeping its flags. */
function repoint(q: Qcow2Bytes, at: number, entry: bigint, offset: number): void {
  q.setU64(at, (entry & ~OFFSET_MASK) | BigInt(offset));
}

/** A host cluster holding compressed data of at least two guest clusters. */
function sharedCompressedCluster(q: Qcow2Bytes): number {
  const uses = new Map<number, number>();
  for (const e of q.compressedEntries()) for (const c of e.clusters) uses.set(c, (uses.get(c) ?? 0) + 1);
  const found = [...uses].find(([, n]) => n >= 2);
  if (!found) throw new Error('the fixture has no host cluster shared by compressed clusters');
  return found[0];
}

const DAMAGES = {
  'leak-free-cluster': {
    what: 'a free cluster inside the file gets refcount 1',
    apply: (q) => {
      const c = q.freeClusters().find((n) => n > 0);
      if (c === undefined) throw new Error('the fixture has no free cluster');
      q.setRefcount(c, 1);
    },
  },
  'leak-raised': {
    what: "a data cluster's refcount raised from 1 to 2 (its COPIED flag is then wrong too)",
    apply: (q) => q.setRefcount(ownData(q).host / q.clusterSize, 2),
  },
  'refcount-0-data': {
    what: "a data cluster's refcount set to 0",
    apply: (q) => q.setRefcount(ownData(q).host / q.clusterSize, 0),
  },
  'refcount-0-l2': {
    what: "an L2 table's refcount set to 0",
    apply: (q) => q.setRefcount(firstL2(q).offset / q.clusterSize, 0),
  },
  'l2-into-header': {
    // Offset 0 means "unallocated", so the only way into cluster 0 is an offset inside it, which is
    // misaligned (hence 64 KiB clusters only: with 512-byte ones every offset is a whole cluster).
    what: 'an L2 entry points at 0x200, inside the header cluster',
    apply: (q) => { const d = ownData(q); repoint(q, d.at, d.entry, 0x200); },
  },
  'l2-into-reftable': {
    what: 'an L2 entry points at the refcount table',
    apply: (q) => { const d = ownData(q); repoint(q, d.at, d.entry, q.refcountTableOffset); },
  },
  'l1-onto-refblock': {
    what: 'an L1 entry points at the first refcount block (an L2 table overlapping refcounts)',
    apply: (q) => { const t = firstL2(q); q.setL1Entry(t.l1Index, COPIED | BigInt(q.refcountBlocks()[0]!)); },
  },
  'l2-misaligned': {
    what: "an L2 entry's offset moved 0x200 into its cluster",
    apply: (q) => { const d = ownData(q); q.setU64(d.at, d.entry + 0x200n); },
  },
  'l2-prealloc-misaligned': {
    // QEMU -r all turns the entry into a plain zero entry (fix_l2_entry_by_zero): the guest reads zeros either way.
    what: "a preallocated zero cluster's offset moved 0x200 into its cluster",
    apply: (q) => { const d = preallocatedZero(q); q.setU64(d.at, d.entry + 0x200n); },
  },
  'l1-misaligned': {
    what: "an L1 entry's offset moved 0x200 into its L2 table",
    apply: (q) => { const t = firstL2(q); q.setL1Entry(t.l1Index, q.l1Entry(t.l1Index) + 0x200n); },
  },
  'cut-in-data': {
    what: 'the file cut in the middle of a data cluster, the next data cluster gone',
    apply: (q) => q.cutInData(),
  },
  'cut-before-l2': {
    what: 'the file cut where its last L2 table starts',
    apply: (q) => q.lastL2Table(),
  },
  'cut-in-l2': {
    what: 'the file cut in the middle of its last L2 table',
    apply: (q) => q.lastL2Table() + q.clusterSize / 2,
  },
  'copied-l2-cleared': {
    what: 'COPIED cleared on an L2 entry whose cluster has refcount 1',
    apply: (q) => { const d = ownData(q); q.setU64(d.at, d.entry & ~COPIED); },
  },
  'copied-l1-cleared': {
    what: 'COPIED cleared on an L1 entry whose L2 table has refcount 1',
    apply: (q) => { const t = firstL2(q); q.setL1Entry(t.l1Index, q.l1Entry(t.l1Index) & ~COPIED); },
  },
  'l2-reserved-bit': {
    what: 'reserved bit 1 set in an L2 entry',
    apply: (q) => { const d = ownData(q); q.setU64(d.at, d.entry | 2n); },
  },
  'l1-reserved-bits': {
    what: 'reserved bits 1 and 57 set in an L1 entry (QEMU reads past them and keeps them)',
    apply: (q) => { const t = firstL2(q); q.setL1Entry(t.l1Index, q.l1Entry(t.l1Index) | 2n | (1n << 57n)); },
  },
  'l1-reserved-copied-cleared': {
    what: 'reserved bits 1 and 57 set and COPIED cleared in an L1 entry (the COPIED repair rewrites it, reserved bits and all)',
    apply: (q) => { const t = firstL2(q); q.setL1Entry(t.l1Index, (q.l1Entry(t.l1Index) & ~COPIED) | 2n | (1n << 57n)); },
  },
  'reftable-past-eof': {
    what: 'a refcount table entry names a refcount block past the end of the file',
    apply: (q) => q.setU64(q.refcountTableOffset + 8, BigInt(Math.ceil(q.buf.byteLength / q.clusterSize + 4) * q.clusterSize)),
  },
  'subcluster-bitmap': {
    what: 'an allocated extended L2 entry has subcluster 0 both allocated and zero',
    apply: (q) => { const d = ownData(q); q.setU64(d.at + 8, q.u64(d.at + 8) | (1n << 32n) | 1n); },
  },
  'shared-refcount-low': {
    what: 'a data cluster shared with the snapshots gets one reference too few (not 0)',
    apply: (q) => {
      const d = q.dataEntries().find((e) => !(e.entry & COPIED) && q.refcount(e.host / q.clusterSize) >= 2);
      if (!d) throw new Error('the fixture has no shared data cluster');
      q.setRefcount(d.host / q.clusterSize, q.refcount(d.host / q.clusterSize) - 1);
    },
  },
  'snapshot-l1-refcount-0': {
    what: "a snapshot's L1 table gets refcount 0",
    apply: (q) => q.setRefcount(q.snapshotEntries()[0]!.l1Offset / q.clusterSize, 0),
  },
  'snapshot-l1-misaligned': {
    what: "a snapshot table entry's L1 offset moved 0x200 off its cluster",
    apply: (q) => { const s = q.snapshotEntries()[0]!; q.setU64(s.at, BigInt(s.l1Offset + 0x200)); },
  },
  'snapshot-l1-too-large': {
    what: "a snapshot's L1 table claims 2^24 entries (128 MiB, more than QEMU's 32 MiB)",
    apply: (q) => { q.buf.writeUInt32BE(0x1000000, q.snapshotEntries()[1]!.at + 8); },
  },
  'compressed-leak': {
    what: 'a host cluster of compressed data gets one reference too many',
    apply: (q) => { const c = sharedCompressedCluster(q); q.setRefcount(c, q.refcount(c) + 1); },
  },
  'compressed-refcount-low': {
    what: 'a host cluster shared by compressed clusters gets refcount 1 (too low, not 0)',
    apply: (q) => q.setRefcount(sharedCompressedCluster(q), 1),
  },
  'compressed-refcount-0': {
    what: 'a host cluster of compressed data gets refcount 0',
    apply: (q) => q.setRefcount(sharedCompressedCluster(q), 0),
  },
  'compressed-copied': {
    what: 'COPIED set on a compressed L2 entry',
    apply: (q) => { const e = q.compressedEntries()[0]!; q.setU64(e.at, e.entry | COPIED); },
  },
} satisfies Record<string, { what: string; apply: Damage }>;
type DamageName = keyof typeof DAMAGES;

/**
 * Leaked clusters (as qemu-img check lists them) whose refcount block is also an active L2 table.
 * QEMU's overlap check refuses to write such a block (and marks the image corrupt), so those leaks
 * survive a repair, in QEMU's copy and in vdisk's; every other leak must be gone.
 */
function leaksInUnwritableBlocks(q: Qcow2Bytes, checkStderr: string): number[] {
  const l2Tables = new Set(q.l2Tables().map((t) => t.offset));
  return [...checkStderr.matchAll(/^Leaked cluster (\d+) /gm)].map((m) => Number(m[1])).filter((c) => l2Tables.has(q.refcountBlockOf(c)));
}

// ---- the corpus -------------------------------------------------------------------------------

interface Case {
  geometry: Geometry;
  damage: DamageName;
}

const CORPUS: Case[] = [
  ...(['leak-free-cluster', 'leak-raised', 'refcount-0-data', 'refcount-0-l2', 'l2-into-header', 'l2-into-reftable', 'l1-onto-refblock',
    'l2-misaligned', 'l2-prealloc-misaligned', 'l1-misaligned', 'cut-in-data', 'cut-before-l2', 'cut-in-l2', 'copied-l2-cleared',
    'copied-l1-cleared', 'l2-reserved-bit', 'l1-reserved-bits', 'l1-reserved-copied-cleared',
    'reftable-past-eof'] as const).map((damage): Case => ({ geometry: '64k', damage })),
  ...(['leak-free-cluster', 'leak-raised', 'refcount-0-data', 'refcount-0-l2', 'l2-into-reftable', 'l1-onto-refblock',
    'cut-in-data', 'cut-before-l2', 'cut-in-l2', 'copied-l2-cleared', 'copied-l1-cleared'] as const).map((damage): Case => ({ geometry: '512', damage })),
  ...(['leak-free-cluster', 'refcount-0-data', 'refcount-0-l2', 'l2-into-header', 'l2-into-reftable', 'l1-onto-refblock',
    'l2-misaligned', 'cut-in-data', 'copied-l2-cleared'] as const).map((damage): Case => ({ geometry: '64k-refcount1', damage })),
  ...(['leak-free-cluster', 'refcount-0-data', 'l2-into-reftable', 'l1-onto-refblock', 'cut-before-l2', 'copied-l1-cleared'] as const)
    .map((damage): Case => ({ geometry: '512-refcount1', damage })),
  ...(['leak-free-cluster', 'leak-raised', 'refcount-0-data', 'refcount-0-l2', 'l2-into-reftable', 'l1-onto-refblock',
    'l2-misaligned', 'l2-prealloc-misaligned', 'l1-misaligned', 'cut-in-data', 'copied-l2-cleared', 'copied-l1-cleared',
    'subcluster-bitmap'] as const).map((damage): Case => ({ geometry: 'extended-l2', damage })),
  ...(['leak-free-cluster', 'leak-raised', 'refcount-0-data', 'shared-refcount-low', 'snapshot-l1-refcount-0', 'snapshot-l1-misaligned', 'snapshot-l1-too-large',
    'copied-l2-cleared', 'l2-into-reftable'] as const).map((damage): Case => ({ geometry: 'snapshots', damage })),
  ...(['compressed-leak', 'compressed-refcount-low', 'compressed-refcount-0', 'compressed-copied', 'refcount-0-l2'] as const)
    .map((damage): Case => ({ geometry: 'compressed', damage })),
  ...(['leak-free-cluster', 'leak-raised', 'refcount-0-data', 'refcount-0-l2', 'copied-l2-cleared', 'l2-into-reftable'] as const)
    .map((damage): Case => ({ geometry: 'bitmaps', damage })),
];

// ---- running and comparing the two checkers ---------------------------------------------------

/** One run of a checker, as its exit status and JSON counters (absent counters are 0, as QEMU prints them). */
interface Verdict {
  code: number;
  /** False when the checker printed no report (QEMU's "Check failed", vdisk's open errors). */
  report: boolean;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  stderr: string;
}

function verdict(r: RunResult): Verdict {
  let j: Record<string, unknown> = {};
  let report = false;
  if (r.stdout.trim() !== '') {
    j = JSON.parse(r.stdout) as Record<string, unknown>;
    report = true;
  }
  const n = (k: string) => (typeof j[k] === 'number' ? j[k] : 0);
  return {
    code: r.code, report, corruptions: n('corruptions'), leaks: n('leaks'), checkErrors: n('check-errors'),
    corruptionsFixed: n('corruptions-fixed'), leaksFixed: n('leaks-fixed'), stderr: r.stderr,
  };
}

const qemuCheck = async (file: string, ...args: string[]) => verdict(await run('qemu-img', ['check', '--output=json', ...args, file]));

async function vdiskCheck(file: string, ...args: string[]): Promise<Verdict> {
  const v = verdict(await vdisk(['check', '--output=json', ...args, file]));
  assert.doesNotMatch(v.stderr, /internal error/, `vdisk check ${args.join(' ')} crashed: ${v.stderr}`);
  return v;
}

const summary = (v: Verdict) => `exit ${v.code}${v.report ? `, ${v.corruptions} corruptions, ${v.leaks} leaks, ${v.checkErrors} check-errors, `
  + `${v.corruptionsFixed} corruptions-fixed, ${v.leaksFixed} leaks-fixed` : ', no report'}\n${v.stderr.trim()}`;

/** Same exit status and, where both printed a report, the same counters. */
function assertSameVerdict(ours: Verdict, theirs: Verdict, what: string, fixed = false): void {
  const msg = `${what}\n--- vdisk: ${summary(ours)}\n--- qemu-img: ${summary(theirs)}`;
  assert.equal(ours.code, theirs.code, msg);
  if (!theirs.report) return;
  assert.ok(ours.report, msg);
  assert.equal(ours.corruptions, theirs.corruptions, msg);
  assert.equal(ours.leaks, theirs.leaks, msg);
  assert.equal(ours.checkErrors, theirs.checkErrors, msg);
  if (fixed) {
    assert.equal(ours.corruptionsFixed, theirs.corruptionsFixed, msg);
    assert.equal(ours.leaksFixed, theirs.leaksFixed, msg);
  }
}

/**
 * The same lines on stderr, word for word and in order (the double check's included), but for
 * where "Marking image as corrupt" falls: QEMU says it when it flushes its refcount cache on
 * close, after the double check; vdisk when the repair ends.
 */
function assertSameMessages(ours: Verdict, theirs: Verdict, what: string): void {
  const split = (stderr: string) => {
    // The tools name themselves ("qemu-img: Check failed", "vdisk check: Check failed").
    const lines = stderr.split('\n').map((l) => l.replace(/^(qemu-img|vdisk check): /, ''));
    const marking = lines.filter((l) => l.startsWith('qcow2: Marking image as corrupt'));
    return { marking, rest: lines.filter((l) => !marking.includes(l)) };
  };
  const [a, b] = [split(ours.stderr), split(theirs.stderr)];
  assert.deepEqual(a.rest, b.rest, `${what}: vdisk's messages differ from qemu-img's`);
  assert.deepEqual(a.marking, b.marking, `${what}: vdisk marks the image corrupt where qemu-img does not, or the other way round`);
}

/**
 * vdisk's repaired copy is byte for byte QEMU's: the same refcounts set, entries rewritten,
 * structures rebuilt in the same places, freed clusters discarded. Discarding needs the native
 * addon (hole punching; CI always has it): without it freed clusters keep their old bytes.
 */
async function assertSameFile(ours: string, theirs: string, what: string, geometry: Geometry): Promise<void> {
  if (!nativeStatus.loaded) return;
  // Principled difference: QEMU opened for repair loads the persistent bitmaps and stores them
  // again on close, in newly allocated clusters (a new directory, new tables, new data), whether
  // or not anything was repaired. vdisk keeps bitmaps where they are. The classification, the
  // messages, qemu-img check of both repaired files and the data must still agree.
  if (geometry === 'bitmaps') return;
  const [a, b] = [await readFile(ours), await readFile(theirs)];
  const at = a.findIndex((byte, i) => byte !== b[i]);
  assert.ok(a.byteLength === b.byteLength && at === -1,
    `${what}: vdisk's repaired file differs from QEMU's (${a.byteLength} vs ${b.byteLength} bytes, first difference at ${at})`);
}

/** `qemu-img convert -O raw` of the active state and of every snapshot; undefined where QEMU cannot read it. */
async function qemuData(file: string, snapshots: string[]): Promise<Map<string, Uint8Array | undefined>> {
  const out = new Map<string, Uint8Array | undefined>();
  for (const snap of [undefined, ...snapshots]) {
    const raw = `${file}.${snap ?? 'active'}.raw`;
    const r = await run('qemu-img', ['convert', '-O', 'raw', ...(snap ? ['-l', `snapshot.name=${snap}`] : []), file, raw]);
    out.set(snap ?? 'active', r.code === 0 ? await readFile(raw) : undefined);
  }
  return out;
}

// ---- the tests --------------------------------------------------------------------------------

describe('vdisk check against qemu-img check, damaged qcow2 images', { concurrency: 4 }, () => {
  let tmp: TmpDir;
  const bases = new Map<string, Promise<Base>>();
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-check-')));
  after(async () => tmp.cleanup());

  /** Each geometry is built once, by QEMU, and must check clean before anything damages it. */
  function base(name: Geometry): Promise<Base> {
    let b = bases.get(name);
    if (!b) {
      b = (async () => {
        const dir = path.join(tmp.dir, 'base', name);
        await mkdir(dir, { recursive: true });
        const built = await GEOMETRIES[name](dir);
        const r = await run('qemu-img', ['check', built.file]);
        assert.equal(r.code, 0, `the undamaged ${name} image must check clean: ${r.stdout}${r.stderr}`);
        return built;
      })();
      bases.set(name, b);
    }
    return b;
  }

  for (const c of CORPUS) {
    const damage: { what: string; apply: Damage } = DAMAGES[c.damage];
    it(`${c.geometry}: ${c.damage} (${damage.what})`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const { file: pristine, snapshots } = await base(c.geometry);
      const dir = path.join(tmp.dir, `${c.geometry}-${c.damage}`);
      await mkdir(dir);
      const damaged = path.join(dir, 'damaged.qcow2');
      await copyFile(pristine, damaged);
      const q = await Qcow2Bytes.load(damaged);
      const cut = damage.apply(q);
      await q.save();
      if (typeof cut === 'number') await cutFile(damaged, cut);
      const copy = async (name: string) => {
        const f = path.join(dir, name);
        await copyFile(damaged, f);
        return f;
      };

      const theirs = await qemuCheck(await copy('check-q.qcow2'));
      assert.notEqual(theirs.code, 0, `the damage must be visible to qemu-img check:\n${summary(theirs)}`);

      await t.test('check', async () => {
        const ours = await vdiskCheck(await copy('check-v.qcow2'));
        assertSameVerdict(ours, theirs, 'check --output=json');
        assertSameMessages(ours, theirs, 'check');
      });

      await t.test('check -r leaks', async () => {
        const [qf, vf] = [await copy('leaks-q.qcow2'), await copy('leaks-v.qcow2')];
        const unwritable = leaksInUnwritableBlocks(q, theirs.stderr);
        const qr = await qemuCheck(qf, '-r', 'leaks');
        const vr = await vdiskCheck(vf, '-r', 'leaks');
        const [qAfter, vAfter] = [await qemuCheck(qf), await qemuCheck(vf)];
        if (/ERROR need to rebuild refcount structures/.test(qr.stderr)) {
          // Principled difference. QEMU repairs a referenced cluster whose refcount is 0 (and a
          // refcount block whose own refcount is not 1) only by rebuilding all refcount structures,
          // which -r leaks does not allow: it prints "ERROR need to rebuild refcount structures",
          // counts a check error, repairs nothing and exits 1 (qcow2_check_refcounts). vdisk sets
          // refcounts in place and needs no rebuild, so -r leaks does what it says: it fixes every
          // leak and leaves the corruptions reported, exiting 2.
          // Leaks whose refcount block is also other metadata count as repaired, as QEMU counts
          // them, but stay, and the image is marked corrupt (see leaksInUnwritableBlocks).
          const msg = `-r leaks where QEMU needs a rebuild\n--- vdisk: ${summary(vr)}\n--- qemu-img check afterwards: ${summary(vAfter)}`;
          assert.equal(qr.code, 1, msg);
          assert.equal(vr.code, 2, msg);
          assert.equal(vr.leaksFixed, theirs.leaks, msg);
          assert.equal(vr.corruptionsFixed, 0, msg);
          assert.equal(vAfter.code, 2, msg);
          assert.equal(vAfter.leaks, unwritable.length, msg);
          if (unwritable.length) assert.match(vr.stderr, /Marking image as corrupt/, msg);
          // With no leak to fix nothing may change. Fixed leaks can change the corruption count:
          // COPIED flags depend on refcounts, and a refcount block that doubles as an L2 table
          // (l1-onto-refblock) changes what its "entries" point at.
          if (vr.leaksFixed === 0) assert.equal(vAfter.corruptions, theirs.corruptions, msg);
          return;
        }
        assertSameVerdict(vr, qr, 'check -r leaks', true);
        assertSameMessages(vr, qr, 'check -r leaks');
        assertSameVerdict(vAfter, qAfter, 'qemu-img check after -r leaks (vdisk repaired vs QEMU repaired)');
        assert.equal(vAfter.leaks, unwritable.length, 'no leak survives -r leaks, but those in a refcount block that is also an L2 table');
        await assertSameFile(vf, qf, '-r leaks', c.geometry);
      });

      await t.test('check -r all', async () => {
        const [qf, vf] = [await copy('all-q.qcow2'), await copy('all-v.qcow2')];
        const qr = await qemuCheck(qf, '-r', 'all');
        const vr = await vdiskCheck(vf, '-r', 'all');
        const [qAfter, vAfter] = [await qemuCheck(qf), await qemuCheck(vf)];
        assertSameVerdict(vr, qr, 'check -r all', true);
        assertSameMessages(vr, qr, 'check -r all');
        assertSameVerdict(vAfter, qAfter, 'qemu-img check after -r all (vdisk repaired vs QEMU repaired)');
        await assertSameFile(vf, qf, '-r all', c.geometry);
        const [qData, vData] = [await qemuData(qf, snapshots), await qemuData(vf, snapshots)];
        for (const [state, expected] of qData) {
          if (!expected) continue; // QEMU cannot read its own repaired copy: nothing to compare with
          const actual = vData.get(state);
          assert.ok(actual, `qemu-img convert reads QEMU's repaired copy (${state}) but not vdisk's`);
          assertBytesEqual(actual, expected, `${state} data of vdisk's repaired copy vs QEMU's`);
        }
      });
    });
  }

  it('-r all: misaligned preallocated zero entries up to a refcount block, whose overlap check fails the check (as QEMU does)', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dir = path.join(tmp.dir, 'prealloc-into-refblock');
    await mkdir(dir);
    const damaged = path.join(dir, 'damaged.qcow2');
    // 4 KiB clusters with 32-bit refcounts: a refcount block covers 4 MiB, so QEMU puts the
    // second one among the data, after a data cluster.
    await qemuCreate(damaged, 8 * 1024 * KiB, { cluster_size: 4096, refcount_bits: 32 });
    await qemuIo(damaged, ['write -P 0x11 0 5M']);
    const q = await Qcow2Bytes.load(damaged);
    const cs = q.clusterSize;
    const kinds = q.clusterKinds();
    const block = q.refcountBlocks().find((b) => kinds[b / cs - 1] === 'data');
    assert.ok(block, `a refcount block right after a data cluster: ${q.refcountBlocks().join(', ')}`);
    // L1 entry 0 names a table 0x200 into that data cluster: its last 0x200 bytes are the block's first.
    const table = block - cs + 0x200;
    q.setL1Entry(0, COPIED | BigInt(table));
    let bad = 0;
    for (let i = 0; i < (cs - 0x200) / 8; i++) {
      // A run of 100 misaligned preallocated zero entries, then one in three (separate runs).
      const damage = i < 100 || i % 3 === 0;
      q.setU64(table + i * 8, damage ? BigInt(5 * cs + 0x200 * (1 + (i % 7))) | 1n : 0n);
      if (damage) bad++;
    }
    // An entry of the block is two 32-bit refcounts: 0 and 0x201 read as one more such entry,
    // the first whose repair would overwrite the refcount block.
    const first = Math.floor(block / cs / 1024) * 1024;
    q.setRefcount(first + 10, 0);
    q.setRefcount(first + 11, 0x201);
    await q.save();
    const [qf, vf] = [path.join(dir, 'all-q.qcow2'), path.join(dir, 'all-v.qcow2')];
    await copyFile(damaged, qf);
    await copyFile(damaged, vf);
    const qr = await qemuCheck(qf, '-r', 'all');
    const vr = await vdiskCheck(vf, '-r', 'all');
    assert.match(qr.stderr, /ERROR: Overlap check failed/, summary(qr));
    assert.equal(qr.stderr.split('\n').filter((l) => l.startsWith('Repairing offset=')).length, bad + 1, summary(qr));
    assertSameVerdict(vr, qr, 'check -r all');
    // Word for word, but for the last line: each tool's own word for the failure (QEMU's
    // "Check failed: Input/output error"; vdisk's error, which names the write refused).
    const lines = (v: Verdict) => v.stderr.trimEnd().split('\n');
    const [ours, theirs] = [lines(vr), lines(qr)];
    assert.equal(theirs.pop(), 'qemu-img: Check failed: Input/output error');
    assert.match(ours.pop()!, /^vdisk check: Check of qcow2 image .* failed: repairing the L2 entry at 0x[0-9a-f]+ would overwrite the refcount block$/);
    assert.deepEqual(ours, theirs, "vdisk's messages differ from qemu-img's");
    // The entries before the refused one are repaired, the rest of the table is not, and the image is marked corrupt.
    await assertSameFile(vf, qf, '-r all', '64k');
    assertSameVerdict(await qemuCheck(vf), await qemuCheck(qf), 'qemu-img check after -r all (vdisk repaired vs QEMU repaired)');
  });

  it('a file grown far past its data (sparse, to 1 TiB), a data cluster moved out there: as qemu-img check says', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const { file: pristine } = await base('64k');
    const dir = path.join(tmp.dir, 'grown');
    await mkdir(dir);
    const q = await Qcow2Bytes.load(pristine);
    const d = ownData(q);
    // The last cluster of 1 TiB: no refcount block covers it, nor most of the file before it,
    // which the comparison of refcounts must not walk cluster by cluster (the fuzzer's case
    // 1086727064 took 12-22 s that way).
    repoint(q, d.at, d.entry, TiB - K64);
    const [ours, theirs] = [path.join(dir, 'vdisk.qcow2'), path.join(dir, 'qemu.qcow2')];
    for (const f of [ours, theirs]) {
      await q.save(f);
      await truncate(f, TiB);
    }
    const [v, e] = [await vdiskCheck(ours), await qemuCheck(theirs)];
    assertSameVerdict(v, e, 'grown file');
    assertSameMessages(v, e, 'grown file');
    assert.ok(e.corruptions > 0, 'qemu-img finds the moved cluster');
  });

  it('a raw image: exit 63, one line on stderr, nothing on stdout', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const raw = path.join(tmp.dir, 'plain.raw');
    await qemuCreate(raw, 1024 * KiB, {}, 'raw');
    const theirs = await run('qemu-img', ['check', raw]);
    assert.equal(theirs.code, 63);
    for (const args of [[raw], ['--output=json', raw], ['-f', 'raw', raw], ['-r', 'all', raw]]) {
      const r = await vdisk(['check', ...args]);
      assert.equal(r.code, 63, `vdisk check ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^[^\n]*does not support checks\n$/);
    }
  });

  it('a missing file: exit 1, one line on stderr', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const missing = path.join(tmp.dir, 'missing.qcow2');
    assert.equal((await run('qemu-img', ['check', missing])).code, 1);
    for (const args of [[missing], ['--output=json', missing], ['-r', 'all', missing]]) {
      const r = await vdisk(['check', ...args]);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^[^\n]*missing\.qcow2[^\n]*No such file or directory\n$/);
    }
  });
});
