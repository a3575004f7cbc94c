/**
 * rewriteHeader as a crash would see it: every state the file can be left in (the writes before
 * the crash landed, and of the write in flight any subset of its 512-byte sectors) must hold a
 * header that parses and is the old one or the new one, for the changes it claims to make safely.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseHeader, type Qcow2Header } from '../../../../../src/drivers/format/qcow2/header.js';
import { rewriteHeader } from '../../../../../src/drivers/format/qcow2/header-rewrite.js';
import { writeHeaderCluster } from '../../../../../src/drivers/format/qcow2/header-writer.js';
import { RecordingNode } from '../../../../helpers/test-nodes.js';

const CLUSTER_BITS = 16;
const CS = 2 ** CLUSTER_BITS;
const SECTOR = 512;

/** A file whose cluster 0 holds a v3 header naming `backing`, and the header parsed from it. */
function image(backing: string | undefined, format: string | undefined, version: 2 | 3 = 3): { file: RecordingNode; h: Qcow2Header } {
  const file = new RecordingNode({ size: 4 * CS });
  writeHeaderCluster({
    version, clusterBits: CLUSTER_BITS, size: 64 * 1024 * 1024, l1Size: 1, l1TableOffset: 3 * CS, refcountTableOffset: CS,
    refcountTableClusters: 1, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, refcountOrder: 4,
    compressionType: 0, backingFile: backing, backingFormat: format,
  }, file.bytes);
  return { file, h: parseHeader(file.bytes.slice(0, CS), 'test.qcow2') };
}

/** Runs the rewrite, keeping each write's bytes. */
async function rewrite(file: RecordingNode, h: Qcow2Header, next: Qcow2Header): Promise<{ offset: number; data: Uint8Array }[]> {
  const writes: { offset: number; data: Uint8Array }[] = [];
  const write = file.write.bind(file);
  file.write = async (offset, data, opts) => {
    writes.push({ offset, data: data.slice() });
    return write(offset, data, opts);
  };
  await rewriteHeader(file, h, next);
  return writes;
}

/** What matters of a header for these changes. */
function essence(h: Qcow2Header): unknown {
  return { version: h.version, backing: h.backingFile, format: h.backingFormat, compat: String(h.compatibleFeatures), l1: h.l1TableOffset, reftable: h.refcountTableOffset };
}

/** Every crash state of `writes` applied over `before`, each as the header it parses to (or the parse error). */
function crashStates(before: Uint8Array, writes: { offset: number; data: Uint8Array }[]): (Qcow2Header | Error)[] {
  const states: (Qcow2Header | Error)[] = [];
  const disk = before.slice();
  for (const w of writes) {
    const first = Math.floor(w.offset / SECTOR);
    const last = Math.floor((w.offset + w.data.byteLength - 1) / SECTOR);
    const sectors = last - first + 1;
    assert.ok(sectors <= 8, `a write of ${sectors} sectors`);
    for (let mask = 0; mask < 2 ** sectors; mask++) {
      const torn = disk.slice();
      for (let s = 0; s < sectors; s++) {
        if (!(mask & (1 << s))) continue;
        const from = Math.max(w.offset, (first + s) * SECTOR);
        const to = Math.min(w.offset + w.data.byteLength, (first + s + 1) * SECTOR);
        torn.set(w.data.subarray(from - w.offset, to - w.offset), from);
      }
      try {
        states.push(parseHeader(torn, 'test.qcow2'));
      } catch (err) {
        states.push(err as Error);
      }
    }
    disk.set(w.data, w.offset);
  }
  return states;
}

describe('qcow2 header rewrite', () => {
  const SAFE: { name: string; from: [string | undefined, string | undefined]; to: [string | undefined, string | undefined] }[] = [
    { name: 'a longer backing file name', from: ['base.qcow2', 'qcow2'], to: ['../images/a-much-longer-name-for-the-base.qcow2', 'qcow2'] },
    { name: 'a shorter backing file name', from: ['../images/a-much-longer-name-for-the-base.qcow2', 'qcow2'], to: ['b.qcow2', 'qcow2'] },
    { name: 'a name of the same length', from: ['base1.qcow2', 'qcow2'], to: ['base2.qcow2', 'qcow2'] },
    { name: 'another name and format', from: ['base.qcow2', 'qcow2'], to: ['base.raw', 'raw'] },
    { name: 'a backing file where there was none (no feature table to move: small header)', from: [undefined, undefined], to: ['base.raw', 'raw'] },
  ];

  for (const c of SAFE) {
    it(`${c.name}: every crash state is the old header or the new one`, async () => {
      const { file, h } = image(...c.from);
      const before = file.bytes.slice(0, CS);
      const old = essence(h);
      const next = { ...h, backingFile: c.to[0], backingFormat: c.to[1] };
      const wanted = essence(next);
      const writes = await rewrite(file, h, next);
      assert.ok(writes.length > 0);
      for (const state of crashStates(before, writes)) {
        assert.ok(!(state instanceof Error), `a crash state does not parse: ${state instanceof Error ? state.message : ''}`);
        const e = essence(state);
        assert.ok(JSON.stringify(e) === JSON.stringify(old) || JSON.stringify(e) === JSON.stringify(wanted), `crash state ${JSON.stringify(e)}`);
      }
      assert.deepEqual(essence(parseHeader(file.bytes.slice(0, CS), 'test.qcow2')), wanted, 'the final header');
      assert.deepEqual(essence(h), wanted, 'the header in memory follows');
      // Every write was flushed before the next one.
      const hooks = file.calls.filter((call) => call.hook === 'write' || call.hook === 'flush').map((call) => call.hook);
      assert.equal(hooks.at(-1), 'flush');
      for (let i = 1; i < hooks.length; i++) if (hooks[i] === 'write') assert.equal(hooks[i - 1], 'flush', 'a flush between writes');
    });
  }

  it('a change inside one sector is one write there', async () => {
    const { file, h } = image('base.qcow2', 'qcow2');
    const writes = await rewrite(file, h, { ...h, compatibleFeatures: 1n });
    assert.equal(writes.length, 1);
    assert.equal(Math.floor(writes[0]!.offset / SECTOR), Math.floor((writes[0]!.offset + writes[0]!.data.byteLength - 1) / SECTOR));
    assert.equal(parseHeader(file.bytes.slice(0, CS), 'x').compatibleFeatures, 1n);
  });

  it('nothing to change writes nothing', async () => {
    const { file, h } = image('base.qcow2', 'qcow2');
    assert.deepEqual(await rewrite(file, h, { ...h }), []);
  });

  const OTHERS: { name: string; from: [string | undefined, string | undefined, 2 | 3]; next: (h: Qcow2Header) => Qcow2Header }[] = [
    { name: 'removing the backing file', from: ['base.qcow2', 'qcow2', 3], next: (h) => ({ ...h, backingFile: undefined, backingFormat: undefined }) },
    { name: 'v3 to v2', from: ['base.qcow2', 'qcow2', 3], next: (h) => ({ ...h, version: 2 }) },
    { name: 'v2 to v3', from: ['base.qcow2', 'qcow2', 2], next: (h) => ({ ...h, version: 3 }) },
  ];
  for (const c of OTHERS) {
    it(`${c.name}: the new header, as QEMU would write it`, async () => {
      const { file, h } = image(...c.from);
      const next = c.next(h);
      await rewrite(file, h, next);
      const expected = new Uint8Array(CS);
      writeHeaderCluster({ ...next, backingFormat: next.backingFile === undefined ? undefined : next.backingFormat }, expected);
      const parsed = parseHeader(file.bytes.slice(0, CS), 'x');
      assert.deepEqual(essence(parsed), essence(parseHeader(expected, 'x')));
      assert.equal(parsed.headerLength, next.version === 2 ? 72 : 112);
    });
  }
});
