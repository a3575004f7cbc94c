/**
 * Crash order of the qcow2 allocate path, by simulation: the image lives on a CrashDisk (a disk
 * with a volatile write cache that logs every change and flush), a workload of small writes
 * crowds into fresh clusters with guest flushes racing them, and then many crash images are
 * cut from the log: after every flush and at random points, each with a random subset of the
 * unflushed changes. For every crash image QEMU must find no corruption (`qemu-img check`;
 * leaked clusters are a crash's right) and, read by `qemu-img convert`, every guest write
 * must show either its own bytes or what was there before it (never zeros over backing data,
 * never stale bytes), and its own bytes wherever a guest flush that began after it had ended.
 *
 * Configurations: no backing file; a raw backing file with 4 KiB islands of data that writes
 * cover exactly (zeros around them: the new cluster is zeroed cheaply, but its entry must not
 * point at the zeros before the data is there, or a crash would show zeros over the island).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
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
const SIZE = 8 * MiB;
const CLUSTER = 64 * KiB;
const SLOT = 4 * KiB;
const ROUNDS = 40;
/** The clusters the workload writes: few enough that zeroed and discarded ones are written again. */
const POOL = 20;
/** Crash points cut at random, besides one after every flush. */
const RANDOM_POINTS = 40;

/** One guest request's effect on one 4 KiB slot: the slot's bytes after it, and its ack label. */
interface Version {
  bytes: Uint8Array;
  label: string;
}

/**
 * The guest disk as a list of versions per slot: a crash may show, for each byte, its value in
 * any version from the last one a completed guest flush made durable on; none older, nothing
 * else. (Per byte, not per slot: two unflushed writes to one slot may each land in part, as
 * on a real disk, the later one's bytes without the earlier one's.)
 */
class SlotModel {
  readonly slots: Version[][];
  constructor(baseline: Uint8Array) {
    this.slots = Array.from({ length: baseline.byteLength / SLOT }, (_, i) => [{ bytes: baseline.slice(i * SLOT, (i + 1) * SLOT), label: 'initial' }]);
  }

  /** Records a request over [offset, offset + length): `fill` writes its bytes into a slot copy. */
  record(offset: number, length: number, label: string, fill: (slot: Uint8Array, from: number, to: number, at: number) => void): void {
    for (let s = Math.floor(offset / SLOT); s * SLOT < offset + length; s++) {
      const bytes = this.slots[s]!.at(-1)!.bytes.slice();
      const from = Math.max(offset, s * SLOT) - s * SLOT;
      const to = Math.min(offset + length, (s + 1) * SLOT) - s * SLOT;
      fill(bytes, from, to, s * SLOT + from - offset);
      this.slots[s]!.push({ bytes, label });
    }
  }
}

let tmp: TmpDir;
before(async () => (tmp = await makeTmpDir('vdisk-alloc-crash-')));
after(() => tmp.cleanup());

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A registry that opens the one CrashDisk of a test as `{ driver: 'crash-disk' }`. */
function withDisk(disk: CrashDisk): Registry {
  const driver: DriverDef = { name: 'crash-disk', kind: 'protocol', options: ['filename'], open: async () => disk };
  return new Registry([...registry.list(), driver]);
}

/**
 * Island slots of the backing file: one in each of the ROUNDS clusters after the pool, at slot
 * (cluster % 7) + 2. Each round's first write covers the next island exactly.
 */
function islands(): number[] {
  const out: number[] = [];
  for (let c = POOL; c < POOL + ROUNDS; c++) out.push(c * CLUSTER + ((c % 7) + 2) * SLOT);
  return out;
}

async function runConfig(t: TestContext, name: string, withBacking: boolean, seed: number): Promise<void> {
  const dir = `${tmp.dir}/${seed.toString(16)}`;
  await runOk('mkdir', ['-p', dir]);
  const baseline = new Uint8Array(SIZE);
  const createArgs = ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536'];
  if (withBacking) {
    const base = `${dir}/base.raw`;
    await writeFile(base, '');
    await runOk('truncate', ['-s', String(SIZE), base]);
    const r = new Rng(seed ^ 0x5a5a);
    const cmds: string[] = [];
    for (const at of islands()) {
      const byte = uniformInt(r, 1, 255);
      cmds.push('-c', `write -P ${byte} ${at} ${SLOT}`);
      baseline.fill(byte, at, at + SLOT);
    }
    await runOk('qemu-io', ['-f', 'raw', ...cmds, base]);
    createArgs.push('-b', base, '-F', 'raw');
  }
  const image = `${dir}/image.qcow2`;
  await runOk('qemu-img', [...createArgs, image, String(SIZE)]);
  // Changes and flushes stay in flight a few turns, one in five far longer: a data write can
  // then outlast a whole flush of the tables that point at it.
  const timing = new Rng(seed ^ 0x7777);
  const disk = new CrashDisk(new Uint8Array(await readFile(image)), image,
    () => (uniformInt(timing, 0, 4) === 0 ? uniformInt(timing, 5, 40) : uniformInt(timing, 0, 2)));
  const node = await withDisk(disk).open({ driver: 'qcow2', file: { driver: 'crash-disk' } });

  // The workload: rounds of concurrent writes into a few clusters, a guest flush racing them;
  // now and then whole clusters zeroed (kept allocated unless unmap) or discarded, whose host
  // clusters later writes zero again or get anew.
  const rng = new Rng(seed);
  const model = new SlotModel(baseline);
  const islandSlots = islands();
  let requests = 0;
  let flushes = 0;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const pending: Promise<void>[] = [];
      const clusters = [uniformInt(rng, 0, POOL - 1), uniformInt(rng, 0, POOL - 1)];
      const busy = new Set<number>();
      const roll = uniformInt(rng, 0, 5);
      if (round > 2 && roll < 3) {
        // A zero write or discard of one earlier cluster, alone in its slots this round.
        const at = clusters[0]! * CLUSTER;
        const label = `r:${++requests}`;
        for (let s = at / SLOT; s < (at + CLUSTER) / SLOT; s++) busy.add(s);
        model.record(at, CLUSTER, label, (slot, from, to) => slot.fill(0, from, to));
        const op = roll === 0 ? node.discard(at, CLUSTER) : node.writeZeroes(at, CLUSTER, { mayUnmap: roll === 1 });
        pending.push(op.then(() => disk.mark(label)));
      }
      for (let k = 0; k < 8; k++) {
        // The first write of a round covers a backing island exactly (a fresh cluster with
        // zeros around the island); the others go to slots of this round's clusters.
        const island = withBacking && k === 0;
        let at = island ? islandSlots[round]! : clusters[k % 2]! * CLUSTER + uniformInt(rng, 0, CLUSTER / SLOT - 1) * SLOT;
        if (busy.has(at / SLOT)) continue;
        busy.add(at / SLOT);
        // Some writes are smaller and unaligned inside their slot.
        const length = island || uniformInt(rng, 0, 3) > 0 ? SLOT : uniformInt(rng, 1, SLOT - 600);
        if (length < SLOT) at += uniformInt(rng, 0, SLOT - length);
        const data = new Uint8Array(length);
        for (let i = 0; i < length; i++) data[i] = uniformInt(rng, 1, 255);
        const label = `r:${++requests}`;
        model.record(at, length, label, (slot, from, to, src) => slot.set(data.subarray(src, src + to - from), from));
        pending.push(node.write(at, data).then(() => disk.mark(label)));
      }
      if (round % 4 !== 3) {
        // Some turns in, so that flushes meet the round's writes at every stage of their way.
        const k = ++flushes;
        pending.push(turns(uniformInt(rng, 0, 40)).then(() => markedFlush(disk, node, k)));
      }
      await Promise.all(pending);
    }
  } finally {
    await node.close();
  }
  const allocating = disk.count((c) => c.kind === 'zero' && c.allocate === true);
  assert.ok(allocating > 10, `the allocate path was taken (${allocating} allocate zero writes)`);

  checkOrder(disk, name);

  // Crash points: after every flush of the disk, and at random events.
  const points = new Set<number>();
  disk.log.forEach((e, i) => e.t === 'flush-end' && points.add(i));
  const pick = new Rng(seed + 1);
  for (let i = 0; i < RANDOM_POINTS; i++) points.add(uniformInt(pick, 0, disk.log.length - 1));
  let judged = 0;
  for (const at of [...points].sort((a, b) => a - b)) {
    await judge(disk, at, pick, model, dir, `${name}, crash after event ${at} of ${disk.log.length} (seed ${seed})`);
    judged++;
  }
  t.diagnostic(`${name}: ${requests} requests, ${allocating} allocate zero writes, ${judged} crash images judged`);
}

/**
 * The order rule itself, read off the log: a cluster zeroed by an allocate zero write is
 * flushed before any L2 table is next written (that write may carry the entry pointing at it).
 * The crash images find a broken order only where timing lets them; this finds it always.
 */
function checkOrder(disk: CrashDisk, name: string): void {
  const tables = l2Tables(disk);
  const ev = disk.log;
  ev.forEach((e, i) => {
    if (e.t !== 'end' || e.change.kind !== 'zero' || !e.change.allocate) return;
    let flushed = false;
    for (let j = i + 1; j < ev.length; j++) {
      const f = ev[j]!;
      if (f.t === 'flush-start') flushed = true;
      if (f.t === 'start' && f.change.kind === 'write' && tables.has(f.change.offset)) {
        assert.ok(flushed, `${name}: the allocate zero write ending at event ${i} (host ${e.change.offset}) was not flushed before the L2 table at ${f.change.offset} was written (event ${j})`);
        return;
      }
    }
  });
}

/** One crash image: QEMU's check, then every slot against the versions the model allows. */
async function judge(disk: CrashDisk, at: number, rng: Rng, model: SlotModel, dir: string, what: string): Promise<void> {
  const guest = await crashedGuest(disk, at, rng, dir, what);
  // Requests acknowledged before a guest flush began that itself ended by this point are durable.
  const { marks, durableBefore } = durability(disk, at);
  model.slots.forEach((versions, s) => {
    let first = 0;
    versions.forEach((v, i) => {
      const acked = marks.get(v.label);
      if (acked !== undefined && acked < durableBefore) first = i;
    });
    const got = guest.subarray(s * SLOT, (s + 1) * SLOT);
    const allowed = versions.slice(first);
    if (allowed.some((v) => Buffer.compare(got, v.bytes) === 0)) return;
    const bad = got.findIndex((b, i) => !allowed.some((v) => v.bytes[i] === b));
    assert.equal(bad, -1, `${what}: byte ${s * SLOT + bad} reads ${got[bad]}, in none of versions ${first}..${versions.length - 1} ` +
      `(${versions.map((v) => v.label).join(', ')}) of its slot; lost or stale data`);
  });
}

describe('qcow2 allocate path: crash images cut from a simulated write cache, judged by QEMU', () => {
  it('no backing file', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    await runConfig(t, 'no backing file', false, 0xc4a50001);
  });

  for (const lazy of [false, true]) it(`a flush while the guest bytes are still in flight flushes the zeroing before the L2 table${lazy ? ', lazy refcounts' : ''}`, async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const image = `${tmp.dir}/order${lazy ? '-lazy' : ''}.qcow2`;
    // With lazy refcounts no refcount flush comes before the tables to flush the data by chance.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `lazy_refcounts=${lazy ? 'on' : 'off'}`, image, String(SIZE)]);
    // The guest's 4 KiB data writes take long; everything else lands at once.
    const disk = new CrashDisk(new Uint8Array(await readFile(image)), image, (c) => (c?.kind === 'write' && c.length === SLOT ? 50 : 0));
    const node = await withDisk(disk).open({ driver: 'qcow2', file: { driver: 'crash-disk' } });
    try {
      // A fresh cluster (its refcount flush would hide a missing data flush), then a zero cluster
      // that keeps its host cluster and stale bytes (no refcount changes: nothing else flushes).
      await node.write(3 * CLUSTER, new Uint8Array(CLUSTER).fill(9));
      await node.writeZeroes(3 * CLUSTER, CLUSTER);
      await node.flush();
      for (const at of [CLUSTER, 3 * CLUSTER]) {
        const write = node.write(at + SLOT, new Uint8Array(SLOT).fill(7));
        // Queued behind the write's allocation: runs while its data write is in flight.
        await turns(2);
        await node.flush();
        await write;
        // And once more, so that nothing is left marked unflushed for the next one.
        await node.flush();
      }
    } finally {
      await node.close();
    }
    assert.equal(disk.count((c) => c.kind === 'zero' && c.allocate === true), 2);
    checkOrder(disk, 'a flush racing the data write');
  });

  it('raw backing file with islands of data', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    await runConfig(t, 'raw backing file', true, 0xc4a50002);
  });
});
