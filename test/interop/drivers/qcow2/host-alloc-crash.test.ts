/**
 * Crash order of data written from outside the qcow2 driver into clusters it allocated for it
 * (host-alloc.ts: allocate, fill, then link or give back), by simulation: the image lives on a
 * CrashDisk (a disk with a volatile write cache that logs every change and flush), a workload
 * of such allocations races ordinary writes and guest flushes, and crash images are cut after
 * every flush and at random points, each with a random subset of the unflushed changes. QEMU
 * must find no corruption in any (`qemu-img check`; leaked clusters are a crash's right), and,
 * read by `qemu-img convert`, every byte of a cluster must read as in one of its versions from the last one
 * a completed guest flush made durable on: never the bytes of an allocation that was given
 * back, never unwritten clusters (zeros or stale bytes) where a linked allocation's data was due.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { Qcow2Node } from '../../../../src/drivers/format/qcow2/qcow2-node.js';
import type { DriverDef } from '../../../../src/registry/driver.js';
import { registry, Registry } from '../../../../src/registry/index.js';
import { CrashDisk } from '../../../helpers/crash-disk.js';
import { crashedGuest, durability, l2Tables, markedFlush } from '../../../helpers/crash-judge.js';
import { needTools, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { uniformInt } from '../../../helpers/uniform-int.js';
import { Rng } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;
const CLUSTER = 64 * KiB;
const CLUSTERS = SIZE / CLUSTER;
const ROUNDS = 24;
const RANDOM_POINTS = 40;

let tmp: TmpDir;
before(async () => (tmp = await makeTmpDir('vdisk-host-alloc-crash-')));
after(() => tmp.cleanup());

function withDisk(disk: CrashDisk): Registry {
  const driver: DriverDef = { name: 'crash-disk', kind: 'protocol', options: ['filename'], open: async () => disk };
  return new Registry([...registry.list(), driver]);
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A host run written from outside for an allocation that was linked: its range, its bytes, its commit's mark. */
interface Fill {
  host: number;
  end: number;
  byte: number;
  label: string;
}

/** Per cluster, its versions in the order they were acknowledged (the first: zeros, as created). */
type Versions = { fill: number; label: string }[][];

async function runConfig(t: TestContext, name: string, lazy: boolean, seed: number): Promise<void> {
  const dir = `${tmp.dir}/${seed.toString(16)}`;
  await runOk('mkdir', ['-p', dir]);
  const image = `${dir}/image.qcow2`;
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER},lazy_refcounts=${lazy ? 'on' : 'off'}`, image, String(SIZE)]);
  // Changes stay in flight a few turns, one in five far longer: a fill can outlast a whole flush.
  const timing = new Rng(seed ^ 0x7777);
  const disk = new CrashDisk(new Uint8Array(await readFile(image)), image,
    () => (uniformInt(timing, 0, 4) === 0 ? uniformInt(timing, 5, 40) : uniformInt(timing, 0, 2)));
  const node = (await withDisk(disk).open({ driver: 'qcow2', file: { driver: 'crash-disk' }, 'lazy-refcounts': lazy })) as Qcow2Node;
  const versions: Versions = Array.from({ length: CLUSTERS }, () => [{ fill: 0, label: 'initial' }]);
  const rng = new Rng(seed);
  let requests = 0;
  let flushes = 0;
  let allocations = 0;
  let aborted = 0;
  let fill = 0;
  const fills: Fill[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const busy = new Set<number>();
      const pending: Promise<void>[] = [];
      const free = (first: number, count: number) => {
        for (let c = first; c < first + count; c++) if (c >= CLUSTERS || busy.has(c)) return false;
        for (let c = first; c < first + count; c++) busy.add(c);
        return true;
      };
      for (let k = 0; k < 3; k++) {
        const first = uniformInt(rng, 0, CLUSTERS - 1);
        const count = uniformInt(rng, 1, 4);
        if (!free(first, count)) continue;
        const byte = (++fill % 255) + 1;
        const abort = uniformInt(rng, 0, 4) === 0;
        const label = `a:${++requests}`;
        pending.push((async () => {
          // Clusters holding data already are written in place: an abort leaves what landed there.
          const inPlace: number[] = [];
          for (let c = first; c < first + count; c++) if ((await node.blockStatus(c * CLUSTER, CLUSTER)).data) inPlace.push(c);
          const a = await node.allocateHostRange(first * CLUSTER, count * CLUSTER);
          // A range holding clusters of an earlier round's ordinary writes (ours, in place) qualifies too.
          assert.ok(a, `allocation of clusters ${first}+${count}`);
          allocations++;
          await Promise.all(a.runs.map((r) => a.file.write(r.host, new Uint8Array(r.length).fill(byte))));
          if (abort) {
            aborted++;
            await a.abort();
            for (const c of inPlace) versions[c]!.push({ fill: byte, label });
            disk.mark(label);
            return;
          }
          await a.commit();
          for (const r of a.runs) fills.push({ host: r.host, end: r.host + r.length, byte, label });
          for (let c = first; c < first + count; c++) versions[c]!.push({ fill: byte, label });
          disk.mark(label);
        })());
      }
      for (let k = 0; k < 2; k++) {
        const c = uniformInt(rng, 0, CLUSTERS - 1);
        if (!free(c, 1)) continue;
        const byte = (++fill % 255) + 1;
        const label = `w:${++requests}`;
        pending.push(node.write(c * CLUSTER, new Uint8Array(CLUSTER).fill(byte)).then(() => {
          versions[c]!.push({ fill: byte, label });
          disk.mark(label);
        }));
      }
      if (round % 3 !== 2) {
        const k = ++flushes;
        pending.push(turns(uniformInt(rng, 0, 30)).then(() => markedFlush(disk, node, k)));
      }
      await Promise.all(pending);
    }
  } finally {
    await node.close();
  }
  assert.ok(allocations > 20 && aborted > 0, `${allocations} allocations, ${aborted} aborted`);

  checkOrder(disk, fills, name);

  const points = new Set<number>();
  disk.log.forEach((e, i) => e.t === 'flush-end' && points.add(i));
  const pick = new Rng(seed + 1);
  for (let i = 0; i < RANDOM_POINTS; i++) points.add(uniformInt(pick, 0, disk.log.length - 1));
  points.add(disk.log.length - 1);
  for (const at of [...points].sort((a, b) => a - b)) {
    await judge(disk, at, pick, versions, dir, `${name}, crash after event ${at} of ${disk.log.length} (seed ${seed})`);
  }
  t.diagnostic(`${name}: ${allocations} allocations (${aborted} aborted), ${requests} requests, ${points.size} crash images judged`);
}

/**
 * The order rule itself, read off the log: data written into allocated clusters is flushed
 * before any L2 table is written after the link (that write may carry the entry pointing at
 * it). The crash images find a broken order only where timing lets them; this finds it always.
 */
function checkOrder(disk: CrashDisk, fills: Fill[], name: string): void {
  const tables = l2Tables(disk);
  const ev = disk.log;
  for (const f of fills) {
    const linked = ev.findIndex((e) => e.t === 'mark' && e.label === f.label);
    // The fill's last write to land, before the link (the caller waits for its writes).
    let landed = -1;
    ev.forEach((e, i) => {
      if (i < linked && e.t === 'end' && e.change.kind === 'write' && e.change.offset >= f.host && e.change.offset < f.end && e.change.data?.[0] === f.byte) landed = i;
    });
    assert.ok(landed >= 0 && linked > landed, `${name}: ${f.label}'s data is in the log before its link`);
    let flushed = false;
    for (let j = landed + 1; j < ev.length; j++) {
      const e = ev[j]!;
      if (e.t === 'flush-start') flushed = true;
      if (j > linked && e.t === 'start' && e.change.kind === 'write' && tables.has(e.change.offset)) {
        assert.ok(flushed, `${name}: ${f.label}'s data (landed at event ${landed}) was not flushed before the L2 table at ${e.change.offset} was written after its link (event ${j})`);
        break;
      }
    }
  }
}

async function judge(disk: CrashDisk, at: number, rng: Rng, versions: Versions, dir: string, what: string): Promise<void> {
  const guest = await crashedGuest(disk, at, rng, dir, what);
  // Requests acknowledged before a guest flush began that itself ended by this point are durable.
  const { marks, durableBefore } = durability(disk, at);
  versions.forEach((list, c) => {
    let first = 0;
    list.forEach((v, i) => {
      const acked = marks.get(v.label);
      if (acked !== undefined && acked < durableBefore) first = i;
    });
    const allowed = new Set(list.slice(first).map((v) => v.fill));
    const got = guest.subarray(c * CLUSTER, (c + 1) * CLUSTER);
    // Per byte: an unflushed write in place may land in part.
    const bad = got.findIndex((b) => !allowed.has(b));
    assert.equal(bad, -1, `${what}: byte ${bad} of cluster ${c} reads ${got[bad]}, in none of its versions ${first}.. (${list.map((v) => `${v.label}=${v.fill}`).join(', ')})`);
  });
}

describe('qcow2 host allocations: crash images cut from a simulated write cache, judged by QEMU', () => {
  for (const lazy of [false, true]) it(`a link alone, then a flush: the data is flushed before the L2 table${lazy ? ', lazy refcounts' : ''}`, async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const image = `${tmp.dir}/alone${lazy ? '-lazy' : ''}.qcow2`;
    // With lazy refcounts no refcount flush comes before the tables to flush the data by chance.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER},lazy_refcounts=${lazy ? 'on' : 'off'}`, image, String(SIZE)]);
    const disk = new CrashDisk(new Uint8Array(await readFile(image)), image, () => 0);
    const node = (await withDisk(disk).open({ driver: 'qcow2', file: { driver: 'crash-disk' }, 'lazy-refcounts': lazy })) as Qcow2Node;
    const fills: Fill[] = [];
    try {
      // The L2 table exists and is clean: the link is the only metadata change before the flush.
      await node.write(0, new Uint8Array(CLUSTER).fill(1));
      await node.flush();
      for (const [k, at] of [2, 5].entries()) {
        const a = await node.allocateHostRange(at * CLUSTER, 2 * CLUSTER);
        assert.ok(a);
        const byte = 10 + k;
        await Promise.all(a.runs.map((r) => a.file.write(r.host, new Uint8Array(r.length).fill(byte))));
        await a.commit();
        const label = `a:${k}`;
        disk.mark(label);
        for (const r of a.runs) fills.push({ host: r.host, end: r.host + r.length, byte, label });
        await node.flush();
      }
    } finally {
      await node.close();
    }
    checkOrder(disk, fills, 'a link alone');
  });

  for (const [lazy, seed] of [[false, 0xa110c001], [true, 0xa110c002]] as const) {
    it(lazy ? 'lazy refcounts' : 'accurate refcounts', async (t) => {
      if (!needTools(t, 'qemu-img')) return;
      await runConfig(t, lazy ? 'lazy refcounts' : 'accurate refcounts', lazy, seed);
    });
  }
});
