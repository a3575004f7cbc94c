import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import type { HostAllocation } from '../../../../../src/drivers/format/qcow2/host-alloc.js';
import type { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../../../../src/registry/index.js';
import { vdisk } from '../../../../helpers/cli.js';
import { assertClean, newQcow2, readAll } from '../../../../helpers/qcow2-node.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';
import { assertBytesEqual, pattern } from '../../../../helpers/bytes.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Fills the allocation's runs from `data` (guest bytes from the allocation's start), as an outside writer would. */
async function fill(a: HostAllocation, data: Uint8Array, only?: { offset: number; length: number }[]): Promise<void> {
  for (const w of only ?? [{ offset: a.offset, length: a.length }]) {
    for (const r of a.runs) {
      const from = Math.max(r.offset, w.offset);
      const to = Math.min(r.offset + r.length, w.offset + w.length);
      if (from < to) await a.file.write(r.host + from - r.offset, data.subarray(from - a.offset, to - a.offset));
    }
  }
}

test('new clusters: one contiguous host run past the data, filled from outside, linked at commit, clean', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  let node = await img.node();
  const cs = 64 * KiB;
  const data = pattern(4 * cs, 1);
  const a = await node.allocateHostRange(2 * cs, 4 * cs);
  assert.ok(a, 'unallocated clusters qualify');
  assert.equal(a.runs.length, 1, 'one contiguous host run');
  assert.equal(a.granule, cs);
  assert.ok(node.file!.size >= a.runs[0]!.host + 4 * cs, 'the file node covers the new clusters before anything points at them');
  assertBytesEqual(await readAll(node, 2 * cs, 4 * cs), new Uint8Array(4 * cs), 'before the commit, the range reads as before');
  await fill(a, data);
  assertBytesEqual(await readAll(node, 2 * cs, 4 * cs), new Uint8Array(4 * cs), 'filled but not linked: still as before');
  await a.commit();
  assertBytesEqual(await readAll(node, 2 * cs, 4 * cs), data, 'after the commit');
  const status = await node.blockStatus(2 * cs, 4 * cs);
  assert.equal(status.hostOffset, a.runs[0]!.host);
  await assertClean(node, 'after commit');
  await node.close();
  node = await img.node();
  assertBytesEqual(await readAll(node, 2 * cs, 4 * cs), data, 'after reopening');
  await assertClean(node, 'reopened');
  await node.close();
});

test('abort gives the clusters back: nothing points at them, no leak, and the next allocation reuses them', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  const node = await img.node();
  const cs = 64 * KiB;
  // Something allocated after them, so the given-back clusters are not at the end of the file.
  const a = await node.allocateHostRange(0, 3 * cs);
  assert.ok(a);
  await node.write(5 * cs, pattern(cs, 9));
  await fill(a, pattern(3 * cs, 2));
  await a.abort();
  await assert.rejects(a.commit(), /committed or aborted already/);
  assertBytesEqual(await readAll(node, 0, 3 * cs), new Uint8Array(3 * cs), 'the range reads as before');
  await node.flush();
  await assertClean(node, 'after abort');
  const b = await node.allocateHostRange(cs, 3 * cs);
  assert.ok(b);
  assert.equal(b.runs[0]!.host, a.runs[0]!.host, 'the given-back clusters are allocated again');
  await fill(b, pattern(3 * cs, 3));
  await b.commit();
  assertBytesEqual(await readAll(node, cs, 3 * cs), pattern(3 * cs, 3), 'the reused clusters');
  await assertClean(node, 'after reuse');
  await node.close();
});

test('ordinary writes: to a pending cluster they wait for the link and land on top; next door they go ahead', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  const node = await img.node();
  const cs = 64 * KiB;
  const a = await node.allocateHostRange(cs, 2 * cs);
  assert.ok(a);
  assert.equal(await node.allocateHostRange(0, 2 * cs), undefined, 'a range with a pending cluster does not qualify');
  const copied = pattern(2 * cs, 4);
  await fill(a, copied);
  let overlapDone = false;
  const overlap = node.write(cs + 4 * KiB, pattern(8 * KiB, 5)).then(() => (overlapDone = true));
  // Spanning a pending cluster and the free one after it.
  const spanning = node.write(2 * cs + cs / 2, pattern(cs, 6));
  await node.write(0, pattern(cs, 7));
  await node.write(3 * cs + cs / 2, pattern(cs / 2, 8));
  await node.flush();
  assert.equal(overlapDone, false, 'the write into a pending cluster waits for its link');
  await a.commit();
  await Promise.all([overlap, spanning]);
  const want = new Uint8Array(4 * cs);
  want.set(pattern(cs, 7), 0);
  want.set(copied, cs);
  want.set(pattern(8 * KiB, 5), cs + 4 * KiB);
  want.set(pattern(cs, 6), 2 * cs + cs / 2);
  want.set(pattern(cs / 2, 8), 3 * cs + cs / 2);
  assertBytesEqual(await readAll(node, 0, 4 * cs), want, 'everything in place');
  await assertClean(node, 'after the race');
  await node.close();
});

test('concurrent allocations and writes, many at once, check clean and read back', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  const node = await img.node();
  const cs = 64 * KiB;
  const want = new Uint8Array(8 * MiB);
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < 16; i++) {
    const at = i * 8 * cs;
    const data = pattern(4 * cs, 100 + i);
    want.set(data, at);
    jobs.push((async () => {
      const a = await node.allocateHostRange(at, 4 * cs);
      assert.ok(a);
      await fill(a, data);
      if (i % 5 === 4) {
        await a.abort();
        want.fill(0, at, at + 4 * cs);
      } else {
        await a.commit();
      }
    })());
    const w = pattern(cs, 200 + i);
    want.set(w, at + 5 * cs);
    jobs.push(node.write(at + 5 * cs, w));
    if (i % 4 === 0) jobs.push(node.flush());
  }
  await Promise.all(jobs);
  assertBytesEqual(await readAll(node, 0, 8 * MiB), want, 'all of it');
  await node.flush();
  await assertClean(node, 'after the crowd');
  await node.close();
});

test('clusters that are ours are written in place (no metadata change); mixed with new ones in one range', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  const node = await img.node();
  const cs = 64 * KiB;
  await node.write(cs, pattern(cs, 1));
  const before = await node.blockStatus(cs, cs);
  const a = await node.allocateHostRange(0, 3 * cs);
  assert.ok(a);
  const hostOf = (g: number) => a.runs.find((r) => g >= r.offset && g < r.offset + r.length)!;
  assert.equal(hostOf(cs).host + cs - hostOf(cs).offset, before.hostOffset, 'the allocated cluster keeps its place');
  const data = pattern(3 * cs, 2);
  await fill(a, data);
  await a.commit();
  assertBytesEqual(await readAll(node, 0, 3 * cs), data, 'read back');
  await assertClean(node, 'mixed');
  await node.close();
});

test('what does not qualify: partial clusters, compressed clusters, past the end', async (t) => {
  const img = await newQcow2(t, 'cluster_size=65536', 8 * MiB);
  const node = await img.node();
  const cs = 64 * KiB;
  assert.equal(await node.allocateHostRange(512, cs), undefined, 'unaligned start');
  assert.equal(await node.allocateHostRange(0, cs + 512), undefined, 'unaligned length');
  assert.equal(await node.allocateHostRange(8 * MiB - cs, 2 * cs), undefined, 'past the end');
  await node.writeCompressed(2 * cs, new Uint8Array(cs).fill(3));
  assert.equal((await node.blockStatus(2 * cs, cs)).compressed, true);
  assert.equal(await node.allocateHostRange(0, 4 * cs), undefined, 'a compressed cluster in the range');
  await assertClean(node, 'nothing changed');
  await node.close();
});

test('extended L2: written subclusters are allocated, the others read as before (backing data, or zeros where zeroed)', async (t) => {
  const tmp = await makeTmpDir('vdisk-host-alloc-');
  t.after(() => tmp.cleanup());
  const cs = 128 * KiB;
  const ss = cs / 32;
  const base = tmp.path('base.raw');
  const backing = pattern(2 * MiB, 9);
  await writeFile(base, backing);
  const path = tmp.path('top.qcow2');
  const r = await vdisk(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs},extended_l2=on`, '-b', base, '-F', 'raw', path, '2M']);
  assert.equal(r.code, 0, r.stderr);
  const node = (await open(path, { format: 'qcow2' })) as Qcow2Node;
  // Cluster 1 has zero subclusters (10-13) that the allocation writes only in part.
  await node.writeZeroes(cs + 10 * ss, 4 * ss);
  const a = await node.allocateHostRange(0, 2 * cs);
  assert.ok(a);
  assert.equal(a.granule, ss);
  const data = pattern(2 * cs, 5);
  const written = [{ offset: 0, length: 3 * ss }, { offset: cs + 8 * ss, length: 3 * ss }, { offset: cs + 31 * ss, length: ss }];
  await fill(a, data, written);
  await assert.rejects(a.commit([{ offset: ss / 2, length: ss }]), /whole units/);
  // That commit failed and gave the clusters back; allocate again.
  const b = await node.allocateHostRange(0, 2 * cs);
  assert.ok(b);
  await fill(b, data, written);
  await b.commit(written);
  const want = backing.slice(0, 2 * cs);
  want.fill(0, cs + 10 * ss, cs + 14 * ss);
  for (const w of written) want.set(data.subarray(w.offset, w.offset + w.length), w.offset);
  assertBytesEqual(await readAll(node, 0, 2 * cs), want, 'written subclusters; backing data and zeros elsewhere');
  const map = [];
  for await (const e of node.extents(0, 2 * cs)) map.push([e.offset, e.length, e.zero, e.depth]);
  assert.deepEqual(map, [
    [0, 3 * ss, false, 0],
    [3 * ss, cs + 5 * ss, false, 1],
    [cs + 8 * ss, 3 * ss, false, 0],
    // Subclusters 11-13 were zeroed and not written: still zero.
    [cs + 11 * ss, 3 * ss, true, 0],
    [cs + 14 * ss, 17 * ss, false, 1],
    [cs + 31 * ss, ss, false, 0],
  ]);
  await node.flush();
  await assertClean(node, 'extended L2');
  await node.close();
});
