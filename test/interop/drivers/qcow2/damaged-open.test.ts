/**
 * Opening damaged qcow2 images, against QEMU 7.2: which damage refuses the open, which only the
 * use of the damaged structure, and what a writer leaves behind.
 *
 * QEMU opens an image whose metadata is damaged in ways `qemu-img check` reports (a snapshot
 * whose L1 table is misaligned or too large, refcount-table entries that are misaligned or have
 * reserved bits set, L1 entries with reserved bits set) and fails only what follows the bad entry.
 * vdisk must do the same, so that such an image can be read, copied and checked. For each case,
 * on copies of one damaged file (made by QEMU, damaged with the independent byte editor of
 * qcow2-damage.ts):
 *
 *  - read-only: `qemu-img convert -O raw` and vdisk read the same bytes, or both fail;
 *  - check: `vdisk check` gives `qemu-img check`'s exit status, counters and messages;
 *  - snapshots: every internal snapshot loads (the same bytes) or fails in both, and vdisk's
 *    error gives QEMU's reason ("Snapshot L1 table offset invalid");
 *  - writing: the same qemu-io commands through `qemu-io` and `vdisk io` succeed or fail alike,
 *    and `qemu-img check` then classifies the two files alike (corrupt bit included).
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BlockError } from '../../../../src/core/errors.js';
import { open } from '../../../../src/registry/index.js';
import { assertBytesEqual } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run } from '../../../helpers/oracles.js';
import { buildSnapshots, qemuCreate, qemuIo } from '../../../helpers/qcow2-images.js';
import { Qcow2Bytes } from '../../../helpers/qcow2-damage.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { cmdArgs } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Base {
  file: string;
  snapshots: string[];
}

/** 256 MiB, 64 KiB clusters, data in the first L2 table's range only. */
async function plain(dir: string): Promise<Base> {
  const file = path.join(dir, 'plain.qcow2');
  await qemuCreate(file, 256 * MiB, { cluster_size: 64 * KiB });
  await qemuIo(file, ['write -P 0x11 0 128k', 'write -P 0x12 1M 64k']);
  return { file, snapshots: [] };
}

async function snapshots(dir: string): Promise<Base> {
  const img = await buildSnapshots(dir);
  return { file: img.path, snapshots: (img.snapshots ?? []).map((s) => s.name) };
}

const BASES = { plain, snapshots } satisfies Record<string, (dir: string) => Promise<Base>>;

interface Case {
  base: keyof typeof BASES;
  what: string;
  damage: (q: Qcow2Bytes) => void;
  /** qemu-io commands for the writing test: an in-place write and allocating ones. */
  writes: string[];
}


/** In place (guest cluster 0 is ours alone), then two allocations, the second in a new L2 table. */
const WRITES = ['write -P 0x33 0 4k', 'write -P 0x34 2M 64k', 'write -P 0x35 200M 64k'];

const CASES: Record<string, Case> = {
  'reftable-misaligned': {
    // QEMU reads fine; the first allocation fails (EIO) and marks the image corrupt, after which the node refuses I/O.
    base: 'plain',
    what: 'refcount table entry 0 moved 0x200 into its refcount block',
    damage: (q) => q.setU64(q.refcountTableOffset, q.u64(q.refcountTableOffset) + 0x200n),
    writes: WRITES,
  },
  'reftable-reserved-bit': {
    // QEMU masks reserved bits off at every use: everything works, check reports the entry.
    base: 'plain',
    what: 'reserved bit 0 set in refcount table entry 0',
    damage: (q) => q.setU64(q.refcountTableOffset, q.u64(q.refcountTableOffset) | 1n),
    writes: WRITES,
  },
  'l1-reserved-bit-low': {
    base: 'plain',
    what: 'reserved bit 1 set in L1 entry 0',
    damage: (q) => q.setL1Entry(0, q.l1Entry(0) | 2n),
    writes: WRITES,
  },
  'l1-reserved-bit-high': {
    base: 'plain',
    what: 'reserved bit 57 set in L1 entry 0',
    damage: (q) => q.setL1Entry(0, q.l1Entry(0) | (1n << 57n)),
    writes: WRITES,
  },
  'snapshot-l1-misaligned': {
    base: 'snapshots',
    what: "the first snapshot's L1 table offset moved 0x200 off its cluster",
    damage: (q) => { const s = q.snapshotEntries()[0]!; q.setU64(s.at, BigInt(s.l1Offset + 0x200)); },
    writes: ['write -P 0x33 0 4k', 'write -P 0x34 3M 64k'],
  },
  'snapshot-l1-too-large': {
    base: 'snapshots',
    what: "the second snapshot's L1 table claims 2^24 entries (128 MiB, more than QEMU's 32 MiB)",
    damage: (q) => { q.buf.writeUInt32BE(0x1000000, q.snapshotEntries()[1]!.at + 8); },
    writes: ['write -P 0x33 0 4k', 'write -P 0x34 3M 64k'],
  },
};

/** What a run of a tool came to: success, or the error text. */
type Outcome = { ok: true; data?: Uint8Array } | { ok: false; error: string };

async function qemuRead(file: string, snapshot?: string): Promise<Outcome> {
  const raw = `${file}.${snapshot ?? 'active'}.raw`;
  const r = await run('qemu-img', ['convert', '-O', 'raw', ...(snapshot ? ['-l', `snapshot.name=${snapshot}`] : []), file, raw]);
  return r.code === 0 ? { ok: true, data: await readFile(raw) } : { ok: false, error: r.stderr.trim() };
}

async function vdiskRead(file: string, snapshot?: string): Promise<Outcome> {
  try {
    const node = await open(snapshot ? { driver: 'qcow2', file, snapshot } : file, { readOnly: true });
    try {
      const data = new Uint8Array(node.size);
      await node.read(0, data);
      return { ok: true, data };
    } finally {
      await node.close();
    }
  } catch (err) {
    assert.ok(err instanceof BlockError, `vdisk fails with a BlockError, not ${String(err)}`);
    assert.doesNotMatch(err.message, /\n/, 'one line');
    return { ok: false, error: err.message };
  }
}

function assertSameOutcome(ours: Outcome, theirs: Outcome, what: string): void {
  assert.equal(ours.ok, theirs.ok, `${what}: vdisk ${ours.ok ? 'succeeds' : `fails (${(ours as { error: string }).error})`}, `
    + `QEMU ${theirs.ok ? 'succeeds' : `fails (${(theirs as { error: string }).error})`}`);
  if (ours.ok && theirs.ok && theirs.data) assertBytesEqual(ours.data!, theirs.data, what);
}

/** qemu-img check's verdict on a file: exit status, counters and the corrupt bit. */
async function checkVerdict(file: string): Promise<Record<string, unknown>> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  const j = r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, number>) : {};
  const info = await run('qemu-img', ['info', '--output=json', '-U', file]);
  const corrupt = info.code === 0 ? (JSON.parse(info.stdout)['format-specific']?.data?.corrupt ?? false) : 'unreadable';
  return { code: r.code, corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0, 'check-errors': j['check-errors'] ?? 0, corrupt };
}

describe('opening damaged qcow2 images as QEMU does', { concurrency: 2 }, () => {
  let tmp: TmpDir;
  const bases = new Map<string, Promise<Base>>();
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-damaged-open-')));
  after(async () => tmp.cleanup());

  function base(name: keyof typeof BASES): Promise<Base> {
    let b = bases.get(name);
    if (!b) {
      b = (async () => {
        const dir = path.join(tmp.dir, 'base', name);
        await mkdir(dir, { recursive: true });
        return BASES[name](dir);
      })();
      bases.set(name, b);
    }
    return b;
  }

  for (const [name, c] of Object.entries(CASES)) {
    it(`${name} (${c.what})`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const b = await base(c.base);
      const dir = path.join(tmp.dir, name);
      await mkdir(dir);
      const damaged = path.join(dir, 'damaged.qcow2');
      await copyFile(b.file, damaged);
      const q = await Qcow2Bytes.load(damaged);
      c.damage(q);
      await q.save();
      const copy = async (to: string) => {
        const f = path.join(dir, to);
        await copyFile(damaged, f);
        return f;
      };

      await t.test('read-only', async () => {
        assertSameOutcome(await vdiskRead(await copy('ro-v.qcow2')), await qemuRead(await copy('ro-q.qcow2')), 'the active state');
      });

      await t.test('check', async () => {
        // qemu-img adds "qemu-img: Check failed" when the check had errors; vdisk's CLI words its own failure line.
        const lines = (stderr: string) => stderr.split('\n').filter((l) => l !== '' && !/^(qemu-img|vdisk check): /.test(l));
        const qr = await run('qemu-img', ['check', '--output=json', await copy('check-q.qcow2')]);
        const vr = await vdisk(['check', '--output=json', await copy('check-v.qcow2')]);
        const counters = (stdout: string) => {
          const j = stdout.trim() ? (JSON.parse(stdout) as Record<string, number>) : {};
          return [j.corruptions ?? 0, j.leaks ?? 0, j['check-errors'] ?? 0];
        };
        const msg = `qemu-img check: exit ${qr.code}\n${qr.stderr}\nvdisk check: exit ${vr.code}\n${vr.stderr}`;
        assert.equal(vr.code, qr.code, msg);
        assert.deepEqual(counters(vr.stdout), counters(qr.stdout), msg);
        assert.deepEqual(lines(vr.stderr), lines(qr.stderr), msg);
      });

      await t.test('snapshots', async () => {
        for (const snap of b.snapshots) {
          const theirs = await qemuRead(await copy(`snap-q-${snap}.qcow2`), snap);
          const ours = await vdiskRead(await copy(`snap-v-${snap}.qcow2`), snap);
          assertSameOutcome(ours, theirs, `snapshot ${snap}`);
          if (!theirs.ok) {
            const reason = /Failed to load snapshot: (.*)$/m.exec(theirs.error)?.[1];
            assert.ok(reason, `QEMU's error names its reason: ${theirs.error}`);
            assert.ok(!ours.ok && ours.error.endsWith(`: ${reason}`), `vdisk's error gives QEMU's reason "${reason}": ${(ours as { error: string }).error}`);
          }
        }
      });

      await t.test('writing', async () => {
        const [qf, vf] = [await copy('rw-q.qcow2'), await copy('rw-v.qcow2')];
        const qr = await run('qemu-io', ['-f', 'qcow2', ...cmdArgs(c.writes), qf]);
        const vr = await vdisk(['io', '-f', 'qcow2', ...cmdArgs(c.writes), vf]);
        const failed = (r: { code: number; stdout: string; stderr: string }) => r.code !== 0 || /failed/.test(r.stdout + r.stderr);
        assert.equal(failed(vr), failed(qr), `qemu-io: ${qr.stdout}${qr.stderr}\nvdisk io: ${vr.stdout}${vr.stderr}`);
        assert.deepEqual(await checkVerdict(vf), await checkVerdict(qf), 'qemu-img check of the written files (vdisk, QEMU)');
        assertSameOutcome(await qemuRead(vf), await qemuRead(qf), 'the data written');
      });
    });
  }
});
