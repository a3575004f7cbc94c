import assert from 'node:assert/strict';
import { copyFile, open, readFile } from 'node:fs/promises';
import { test } from 'node:test';
import {
  findSnapshot, MAX_SNAPSHOT_TABLE_SIZE, parseSnapshotTable, parseSnapshotTableWithSize, serializeSnapshotTable,
  snapshotInfoJson, snapshotTableHuman, type Qcow2Snapshot,
} from '../../../../../src/drivers/format/qcow2/snapshots.js';
import { pattern } from '../../../../helpers/bytes.js';
import { needTools, runOk } from '../../../../helpers/oracles.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

// Dates print in local time, in qemu-img (which inherits this) as in our formatter.
process.env.TZ = 'UTC';

function snap(over: Partial<Qcow2Snapshot> = {}): Qcow2Snapshot {
  return {
    l1TableOffset: 0x50000, l1Size: 2, id: '1', name: 'base', dateSec: 1700000000, dateNsec: 123456789,
    vmClockNsec: 0, vmStateSize: 0, diskSize: 1 << 30, icount: undefined, extraData: new Uint8Array(24), ...over,
  };
}

/** The parser fills extraData from the bytes written; compare everything else. */
const visible = (s: Qcow2Snapshot) => ({ ...s, extraData: undefined });

function expectCorrupt(fn: () => unknown, re: RegExp, what: string): void {
  assert.throws(fn, (err: any) => {
    assert.equal(err?.name, 'BlockError', `${what}: ${err}`);
    assert.equal(err.code, 'E_CORRUPT', `${what}: ${err.message}`);
    assert.match(err.message, re, what);
    assert.ok(!err.message.includes('\n'), `${what}: one line`);
    return true;
  }, what);
}

/** A 40-byte entry header with the given sizes (the rest zero), for hostile tables. */
function rawEntry(idSize: number, nameSize: number, extraSize: number, fill = 0): Uint8Array {
  const out = new Uint8Array(40 + Math.min(extraSize, 4096) + idSize + nameSize).fill(fill);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, 0x50000n);
  dv.setUint16(12, idSize);
  dv.setUint16(14, nameSize);
  dv.setUint32(36, extraSize);
  if (extraSize >= 16) dv.setBigUint64(48, 1n << 20n);
  return out;
}

test('serialise then parse gives the same snapshots, entries 8-byte aligned', () => {
  const snaps = [
    snap(),
    snap({ id: '2', name: 'with icount', icount: 123456789, vmClockNsec: 5e12, vmStateSize: 1536 * 1024 }),
    snap({ id: '3', name: 'ünïcödé ☃', icount: -5, extraData: Uint8Array.from({ length: 40 }, (_, i) => i) }),
    snap({ id: '4', name: '', diskSize: 4096, extraData: new Uint8Array(16) }),
    snap({ id: '10', name: 'big state', vmStateSize: 2 ** 40 }),
  ];
  const table = serializeSnapshotTable(snaps);
  assert.equal(table.byteLength % 8, 0);
  const parsed = parseSnapshotTableWithSize(table, snaps.length, 3);
  assert.deepEqual(parsed.snapshots.map(visible), snaps.map(visible));
  assert.ok(parsed.byteLength <= table.byteLength && parsed.byteLength > table.byteLength - 8);
  // Unknown extra data (bytes 24..40 of entry 3) survives; the known fields are rewritten.
  assert.deepEqual([...parsed.snapshots[2]!.extraData.subarray(24)], Array.from({ length: 16 }, (_, i) => i + 24));
  assert.deepEqual(serializeSnapshotTable(parsed.snapshots), table, 'serialise(parse(x)) is x');
  // Entry starts: each on a multiple of 8.
  const dv = new DataView(table.buffer);
  const starts: number[] = [];
  let p = 0;
  for (const s of parsed.snapshots) {
    assert.equal(p % 8, 0);
    starts.push(p);
    assert.equal(Number(dv.getBigUint64(p)), s.l1TableOffset);
    p = (p + 40 + dv.getUint32(p + 36) + dv.getUint16(p + 12) + dv.getUint16(p + 14) + 7) & ~7;
  }
  // A state over 4 GiB leaves the 32-bit field 0, as QEMU writes it for old readers.
  assert.equal(dv.getUint32(starts[4]! + 32), 0);
  assert.equal(dv.getBigUint64(starts[4]! + 40), 2n ** 40n);
  assert.equal(dv.getUint32(starts[1]! + 32), 1536 * 1024);
});

test('v2 entries may lack extra data; the known fields go as far as it reaches', () => {
  const v2 = [
    snap({ extraData: new Uint8Array(0), diskSize: undefined, vmStateSize: 4096 }),
    snap({ id: '2', extraData: new Uint8Array(8), diskSize: undefined, vmStateSize: 2 ** 33 }),
    snap({ id: '3', extraData: new Uint8Array(16) }),
  ];
  const table = serializeSnapshotTable(v2);
  const parsed = parseSnapshotTable(table, 3, 2);
  assert.deepEqual(parsed.map(visible), v2.map(visible));
  assert.deepEqual(parsed.map((s) => s.extraData.byteLength), [0, 8, 16]);
  expectCorrupt(() => parseSnapshotTable(table, 3, 3), /entry 0 is incomplete/, 'the same table as v3');
  // A disk size or icount that is set makes the entry grow to hold it.
  const grown = parseSnapshotTable(serializeSnapshotTable([snap({ extraData: new Uint8Array(0), icount: 7 })]), 1, 3);
  assert.equal(grown[0]!.extraData.byteLength, 24);
  assert.equal(grown[0]!.icount, 7);
});

test('findSnapshot looks at IDs first, then names', () => {
  const snaps = [snap({ id: '1', name: '2' }), snap({ id: '2', name: 'two' }), snap({ id: '3', name: 'two' })];
  assert.equal(findSnapshot(snaps, '2'), snaps[1]);
  assert.equal(findSnapshot(snaps, 'two'), snaps[1], 'the first of equal names');
  assert.equal(findSnapshot(snaps, '1'), snaps[0]);
  assert.equal(findSnapshot(snaps, 'nope'), undefined);
  assert.equal(findSnapshot([], '1'), undefined);
});

test('info JSON: QEMU 7.2 key order, icount only when known, clock split in seconds', () => {
  const s = snap({ vmClockNsec: 3 * 3600e9 + 999_999_999, icount: 42, vmStateSize: 1 << 20 });
  const j = snapshotInfoJson(s);
  assert.deepEqual(Object.keys(j), ['icount', 'vm-clock-nsec', 'name', 'date-sec', 'date-nsec', 'vm-clock-sec', 'id', 'vm-state-size']);
  assert.deepEqual(j, {
    icount: 42, 'vm-clock-nsec': 999_999_999, name: 'base', 'date-sec': 1700000000, 'date-nsec': 123456789,
    'vm-clock-sec': 10800, id: '1', 'vm-state-size': 1048576,
  });
  assert.ok(!('icount' in snapshotInfoJson(snap())));
  // qemu-img shows names cut to 255 bytes and IDs to 127 (fixed arrays in QEMUSnapshotInfo).
  const long = snapshotInfoJson(snap({ id: '9'.repeat(200), name: 'n'.repeat(300) }));
  assert.equal(long.name, 'n'.repeat(255));
  assert.equal(long.id, '9'.repeat(127));
});

test('human lines: widths in bytes, local dates, clock as h:mm:ss.ms', () => {
  const lines = snapshotTableHuman([
    snap({ id: '1', name: 'a', vmStateSize: 0, icount: 0 }),
    snap({ id: '12345678901', name: 'x'.repeat(16), vmClockNsec: 123 * 3600e9 + 4 * 60e9 + 5e9 + 678_900_000, vmStateSize: 1536 * 1024 }),
    snap({ id: '2', name: 'é', icount: 12345 }),
  ]);
  assert.deepEqual(lines, [
    'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT',
    '1         a                     0 B 2023-11-14 22:13:20 00:00:00.000          0',
    '12345678901 xxxxxxxxxxxxxxxx  1.5 MiB 2023-11-14 22:13:20123:04:05.678           ',
    '2         é                    0 B 2023-11-14 22:13:20 00:00:00.000      12345',
  ]);
});

test('hostile tables are E_CORRUPT naming the entry', () => {
  const good = serializeSnapshotTable([snap(), snap({ id: '2', name: 'second' })]);
  expectCorrupt(() => parseSnapshotTable(good, 65537, 3), /Too many/, 'count over 65536');
  expectCorrupt(() => parseSnapshotTable(good, -1, 3), /Too many/, 'negative count');
  expectCorrupt(() => parseSnapshotTable(good, 3, 3), /entry 2 is truncated/, 'more entries than bytes');
  expectCorrupt(() => parseSnapshotTable(new Uint8Array(0), 1, 2), /entry 0 is truncated/, 'empty table');
  expectCorrupt(() => parseSnapshotTable(good.subarray(0, 39), 1, 3), /entry 0 is truncated/, 'cut header');
  for (let cut = 40; cut < 72; cut += 7) {
    expectCorrupt(() => parseSnapshotTable(good.subarray(0, cut), 1, 3), /entry 0 is truncated/, `cut at ${cut}`);
  }
  expectCorrupt(() => parseSnapshotTable(rawEntry(0, 0, 16).subarray(0, 56).fill(0xff, 12, 16), 1, 3), /entry 0 is truncated/, 'id/name sizes past the end');
  expectCorrupt(() => parseSnapshotTable(rawEntry(1, 1, 1025), 1, 3), /Too much extra metadata in qcow2 snapshot table entry 0/, 'extra data over 1024');
  expectCorrupt(() => parseSnapshotTable(rawEntry(1, 1, 0xffffffff), 1, 2), /Too much extra metadata/, 'extra data 4 GiB');
  const second = new Uint8Array([...good.subarray(0, 72), ...rawEntry(1, 1, 2000)]);
  expectCorrupt(() => parseSnapshotTable(second, 2, 3), /entry 1/, 'the error names the entry');
  const wide = rawEntry(1, 1, 16);
  new DataView(wide.buffer).setBigUint64(0, 1n << 60n);
  expectCorrupt(() => parseSnapshotTable(wide, 1, 3), /entry 0: L1 table offset \d+ is out of range/, 'L1 offset past 2^53');
  const bigDisk = rawEntry(1, 1, 16);
  new DataView(bigDisk.buffer).setBigUint64(48, 1n << 63n);
  expectCorrupt(() => parseSnapshotTable(bigDisk, 1, 3), /entry 0: disk size/, 'disk size past 2^53');
  const bigState = rawEntry(1, 1, 16);
  new DataView(bigState.buffer).setBigUint64(40, 0xffffffffffffffffn);
  expectCorrupt(() => parseSnapshotTable(bigState, 1, 3), /entry 0: VM state size/, 'VM state past 2^53');
});

test('a table past 64 MiB is refused, not read on', () => {
  // 1100 entries of 61 KiB names: 67 MB of table, all within the buffer.
  const entry = rawEntry(0, 61 * 1024, 16);
  const count = Math.ceil((MAX_SNAPSHOT_TABLE_SIZE + 1) / entry.byteLength) + 1;
  const table = new Uint8Array(count * entry.byteLength + 8);
  for (let i = 0; i < count; i++) table.set(entry, i * ((entry.byteLength + 7) & ~7));
  expectCorrupt(() => parseSnapshotTable(table, count, 3), /too big/, '64 MiB');
});

test('random tables give snapshots or E_CORRUPT, nothing else', () => {
  for (let seed = 1; seed <= 3000; seed++) {
    const bytes = pattern(64 + (seed % 700), seed);
    // Small sizes now and then, so that some entries parse and the next ones are tested too.
    if (seed % 3 === 0) {
      bytes.set([0, seed % 7, 0, seed % 11], 12);
      bytes.set([0, 0, 0, 8 * (seed % 4)], 36);
    }
    try {
      const r = parseSnapshotTable(bytes, 1 + (seed % 4), 2 + (seed % 2));
      for (const s of r) assert.ok(Number.isSafeInteger(s.l1TableOffset));
    } catch (err: any) {
      assert.equal(err?.code, 'E_CORRUPT', `seed ${seed}: ${err}`);
    }
  }
});

test('serialising refuses what the format cannot hold', () => {
  const bad: [Partial<Qcow2Snapshot>, RegExp][] = [
    [{ extraData: new Uint8Array(1025) }, /extra data/],
    [{ name: 'n'.repeat(65536) }, /longer than 65535/],
    [{ dateSec: -1 }, /date/],
    [{ l1Size: 2 ** 32 }, /L1 size/],
    [{ l1TableOffset: 1.5 }, /L1 table offset/],
  ];
  for (const [over, re] of bad) {
    assert.throws(() => serializeSnapshotTable([snap(over)]), (err: any) => err.code === 'EINVAL' && re.test(err.message), String(re));
  }
});

// ---- against qemu-img ---------------------------------------------------------------------------

interface ImageTable { table: Uint8Array; count: number; version: number; offset: number }

async function readTable(file: string): Promise<ImageTable> {
  const img = new Uint8Array(await readFile(file));
  const dv = new DataView(img.buffer);
  const version = dv.getUint32(4);
  const count = dv.getUint32(60);
  const offset = Number(dv.getBigUint64(64));
  return { table: img.subarray(offset), count, version, offset };
}

async function qemuSnapshots(file: string): Promise<{ json: unknown[]; human: string[]; size: number }> {
  const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', file]));
  const list = (await runOk('qemu-img', ['snapshot', '-l', file])).split('\n');
  assert.equal(list[0], 'Snapshot list:');
  return { json: info.snapshots ?? [], human: list.slice(1).filter((l) => l !== ''), size: info['virtual-size'] };
}

/** Same objects with the same key order. */
function assertJsonSame(actual: unknown[], expected: unknown[], what: string): void {
  assert.deepEqual(actual, expected, what);
  assert.equal(JSON.stringify(actual), JSON.stringify(expected), `${what}: key order`);
}

const NAMES = ['a', 'snap two', '1', 'ünïcödé', 'x'.repeat(16), 'y'.repeat(17), 'a name of some length for the table, 60 bytes or so......'];

test('reads the tables qemu-img writes (v2 and v3) and prints what qemu-img prints', async (t) => {
  if (!needTools(t, 'qemu-img')) return;
  const tmp = await makeTmpDir();
  try {
    for (const compat of ['0.10', '1.1']) {
      const file = tmp.path(`snap-${compat}.qcow2`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, file, '64M']);
      for (const [i, name] of NAMES.entries()) {
        // v3 can grow with snapshots: later entries then carry a different disk size.
        if (compat === '1.1' && i === 4) await runOk('qemu-img', ['resize', '-q', file, '128M']);
        await runOk('qemu-img', ['snapshot', '-c', name, file]);
      }
      const { table, count, version } = await readTable(file);
      assert.equal(version, compat === '0.10' ? 2 : 3);
      const parsed = parseSnapshotTableWithSize(table, count, version);
      const snaps = parsed.snapshots;
      assert.deepEqual(snaps.map((s) => s.name), NAMES);
      assert.deepEqual(snaps.map((s) => s.id), NAMES.map((_, i) => String(i + 1)));
      assert.deepEqual(snaps.map((s) => s.diskSize),
        NAMES.map((_, i) => (compat === '1.1' && i >= 4 ? 128 : 64) * 1024 * 1024), `${compat} disk sizes`);
      for (const s of snaps) assert.equal(s.l1TableOffset % 65536, 0);
      const q = await qemuSnapshots(file);
      assertJsonSame(snaps.map(snapshotInfoJson), q.json, `${compat} info JSON`);
      assert.deepEqual(snapshotTableHuman(snaps), q.human, `${compat} snapshot -l`);
      // Byte for byte what QEMU wrote, up to the end of the last name.
      assert.deepEqual(serializeSnapshotTable(snaps).subarray(0, parsed.byteLength), table.subarray(0, parsed.byteLength));
    }
  } finally {
    await tmp.cleanup();
  }
});

test('QEMU resolves a snapshot as findSnapshot does (ID before name)', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const tmp = await makeTmpDir();
  try {
    const file = tmp.path('find.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']);
    // Snapshot i holds byte 0x11 * i at offset 0; names collide with IDs on purpose.
    const names = ['2', 'two', '1'];
    for (const [i, name] of names.entries()) {
      await runOk('qemu-io', ['-c', `write -P ${0x11 * (i + 1)} 0 512`, file]);
      await runOk('qemu-img', ['snapshot', '-c', name, file]);
    }
    const { table, count, version } = await readTable(file);
    const snaps = parseSnapshotTable(table, count, version);
    // `convert -l` (like `snapshot -a`) takes an ID first, then a name. (`snapshot -d` in 7.2
    // matches names only.)
    for (const key of ['1', '2', '3', 'two']) {
      const want = findSnapshot(snaps, key)!;
      const out = tmp.path(`from-${key}.raw`);
      await runOk('qemu-img', ['convert', '-l', key, '-O', 'raw', file, out]);
      const got = (await readFile(out))[0]!;
      assert.equal(got, 0x11 * Number(want.id), `"${key}" → ID ${want.id}`);
    }
    assert.equal(findSnapshot(snaps, 'nope'), undefined);
  } finally {
    await tmp.cleanup();
  }
});

test('tables we write are read by qemu-img as we read them', async (t) => {
  if (!needTools(t, 'qemu-img')) return;
  const tmp = await makeTmpDir();
  try {
    for (const compat of ['0.10', '1.1']) {
      const file = tmp.path(`ours-${compat}.qcow2`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, file, '64M']);
      for (const name of ['a', 'b', 'c', 'd', 'e']) await runOk('qemu-img', ['snapshot', '-c', name, file]);
      const { table, count, version, offset } = await readTable(file);
      const base = parseSnapshotTable(table, count, version);
      const v2 = compat === '0.10';
      const crafted = [
        { ...base[0]!, id: '12345678901', name: 'x'.repeat(300), icount: undefined, vmStateSize: 1536 * 1024,
          vmClockNsec: 123 * 3600e9 + 4 * 60e9 + 5e9 + 678_901_234 },
        { ...base[1]!, name: 'é', icount: 12345, extraData: Uint8Array.from({ length: 40 }, (_, i) => i) },
        { ...base[2]!, id: '123456789', name: 'z'.repeat(18), icount: -7, vmStateSize: 5 * 2 ** 30 },
        { ...base[3]!, name: 'x'.repeat(254) + 'é', extraData: new Uint8Array(16), icount: undefined },
        v2 ? { ...base[4]!, name: 'no extra data', extraData: new Uint8Array(0), diskSize: undefined, icount: undefined }
          : { ...base[4]!, name: 'sixteen', extraData: new Uint8Array(16), diskSize: 32 * 1024 * 1024, icount: undefined },
      ];
      const ours = serializeSnapshotTable(crafted);
      // The table's cluster is QEMU's; ours must fit it so that refcounts stay right.
      assert.ok((offset % 65536) + ours.byteLength <= 65536);
      const copy = tmp.path(`ours-${compat}-copy.qcow2`);
      await copyFile(file, copy);
      const fh = await open(copy, 'r+');
      await fh.write(ours, 0, ours.byteLength, offset);
      await fh.close();
      await runOk('qemu-img', ['check', copy]);
      const back = parseSnapshotTable((await readTable(copy)).table, count, version);
      assert.deepEqual(back.map(visible), crafted.map(visible));
      const q = await qemuSnapshots(copy);
      assertJsonSame(back.map(snapshotInfoJson), q.json, `${compat} info JSON`);
      assert.deepEqual(snapshotTableHuman(back), q.human, `${compat} snapshot -l`);
    }
  } finally {
    await tmp.cleanup();
  }
});
