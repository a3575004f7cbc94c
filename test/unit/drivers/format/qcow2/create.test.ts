/**
 * qcow2 create without QEMU: option checking (every bad value is one EINVAL line and touches no
 * file), the layout numbers QEMU produces (taken from qemu-img 7.2 images; the interop test
 * compares against qemu-img itself), the header writer against the driver's own parser, and the
 * files that come out.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BlockError } from '../../../../../src/core/errors.js';
import { COMPAT, EXT, INCOMPAT, AUTOCLEAR } from '../../../../../src/drivers/format/qcow2/constants.js';
import { l1EntriesFor, parseQemuSize } from '../../../../../src/drivers/format/qcow2/create-options.js';
import { createQcow2, parseQcow2CreateRequest, planQcow2Layout, QCOW2_CREATE_OPTIONS } from '../../../../../src/drivers/format/qcow2/create.js';
import { parseHeader } from '../../../../../src/drivers/format/qcow2/header.js';
import { headerBytesNeeded, writeHeaderCluster, type HeaderImage } from '../../../../../src/drivers/format/qcow2/header-writer.js';
import { applyLocks, permissionsFor } from '../../../../../src/drivers/protocol/file/locking.js';
import { native } from '../../../../../src/native/index.js';
import { needNative } from '../../../../helpers/native.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

const K = 1024;
const M = K * K;
const G = M * K;

function plan(size: number, options: Record<string, string> = {}) {
  return planQcow2Layout(parseQcow2CreateRequest({ filename: 'x.qcow2', size, options }));
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

describe('qcow2 create: option checking', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-create-')));
  after(async () => tmp.cleanup());

  it('lists the options it accepts', () => {
    for (const o of ['cluster_size', 'compat', 'lazy_refcounts', 'refcount_bits', 'extended_l2', 'preallocation', 'data_file',
      'data_file_raw', 'compression_type', 'backing_file', 'backing_fmt', 'size']) {
      assert.ok(QCOW2_CREATE_OPTIONS.some((d) => d.name === o), o);
    }
  });

  // Every bad value: [options, size, message pattern]. Messages are qemu-img's where it has one.
  const BAD: [Record<string, string>, number, RegExp][] = [
    [{ cluster_size: '1000' }, M, /^Cluster size must be a power of two between 512 and 2048k$/],
    [{ cluster_size: '256' }, M, /^Cluster size must be a power of two between 512 and 2048k$/],
    [{ cluster_size: '4M' }, M, /^Cluster size must be a power of two between 512 and 2048k$/],
    [{ cluster_size: '0' }, M, /^Cluster size must be a power of two/],
    [{ cluster_size: '1.5k' }, M, /^Cluster size must be a power of two/],
    [{ cluster_size: 'abc' }, M, /^Parameter 'cluster_size' expects a non-negative number below 2\^64/],
    [{ cluster_size: '' }, M, /^Parameter 'cluster_size' expects a non-negative number/],
    [{ cluster_size: '-512' }, M, /^Parameter 'cluster_size' expects a non-negative number/],
    [{ compat: '0.9' }, M, /^Invalid compatibility level: '0\.9'/],
    [{ compat: '' }, M, /^Invalid compatibility level: ''/],
    [{ compat: '0.10', lazy_refcounts: 'on' }, M, /^Lazy refcounts only supported with compatibility level 1\.1 and above/],
    [{ lazy_refcounts: 'maybe' }, M, /^Parameter 'lazy_refcounts' expects 'on' or 'off'$/],
    [{ lazy_refcounts: 'ON' }, M, /^Parameter 'lazy_refcounts' expects 'on' or 'off'$/],
    [{ refcount_bits: '3' }, M, /^Refcount width must be a power of two and may not exceed 64 bits$/],
    [{ refcount_bits: '128' }, M, /^Refcount width must be a power of two/],
    [{ refcount_bits: '0' }, M, /^Refcount width must be a power of two/],
    [{ refcount_bits: '-1' }, M, /^Refcount width must be a power of two/],
    [{ refcount_bits: 'x' }, M, /^Parameter 'refcount_bits' expects a number$/],
    [{ refcount_bits: '16k' }, M, /^Parameter 'refcount_bits' expects a number$/],
    [{ compat: '0.10', refcount_bits: '8' }, M, /^Different refcount widths than 16 bits require compatibility level 1\.1/],
    [{ extended_l2: 'on', cluster_size: '8k' }, M, /^Extended L2 entries are only supported with cluster sizes of at least 16384 bytes$/],
    [{ extended_l2: 'on', compat: '0.10' }, M, /^Extended L2 entries are only supported with compatibility level 1\.1/],
    [{ extended_l2: 'maybe' }, M, /^Parameter 'extended_l2' expects 'on' or 'off'$/],
    [{ compression_type: 'lz4' }, M, /^Parameter 'compression_type' does not accept value 'lz4'/],
    [{ compression_type: 'zstd', compat: '0.10' }, M, /^Non-zlib compression type is only supported with compatibility level 1\.1/],
    [{ preallocation: 'bogus' }, M, /^Parameter 'preallocation' does not accept value 'bogus'/],
    [{ preallocation: 'FULL' }, M, /^Parameter 'preallocation' does not accept value 'FULL'/],
    [{ data_file_raw: 'on' }, M, /^data-file-raw requires data-file$/],
    [{ data_file_raw: 'perhaps', data_file: 'd.raw' }, M, /^Parameter 'data_file_raw' expects 'on' or 'off'$/],
    [{ data_file: 'd.raw', compat: '0.10' }, M, /^External data files are only supported with compatibility level 1\.1/],
    [{ data_file: '' }, M, /^Expected data file name, got empty string$/],
    [{ backing_fmt: 'raw' }, M, /^Backing format cannot be used without backing file$/],
    [{ backing_file: 'b.raw' }, M, /^Backing file specified without backing format$/],
    [{ backing_file: '' }, M, /^Expected backing file name, got empty string$/],
    [{ backing_file: 'b.raw', backing_fmt: '' }, M, /^Unknown driver ''$/],
    [{ backing_file: 'b.raw', backing_fmt: 'raw', preallocation: 'metadata' }, M, /^Backing file and preallocation can only be used at the same time if extended_l2 is on$/],
    [{ data_file: 'd.raw', data_file_raw: 'on', backing_file: 'b.raw', backing_fmt: 'raw' }, M, /^Backing file and data-file-raw cannot be used at the same time$/],
    [{ backing_file: 'b'.repeat(1024), backing_fmt: 'raw' }, M, /^Could not assign backing file 'b+': the name is longer than 1023 bytes$/],
    [{ cluster_size: '512', backing_file: 'b'.repeat(400), backing_fmt: 'raw' }, M, /^Could not assign backing file 'b+' with format 'raw': No space left on device/],
    [{ cluster_size: '512', data_file: 'd'.repeat(400) }, M, /^Could not update qcow2 header: No space left on device/],
    [{ encrypt: 'on' }, M, /^Invalid parameter 'encrypt'$/],
    [{}, 3 * 2 ** 50, /^The image size is too large for file format 'qcow2' \(try using a larger cluster size\)$/],
    [{ cluster_size: '512' }, 128 * G + 512, /^The image size is too large for file format 'qcow2'/],
    [{}, -1, /^Invalid image size specified/],
    [{}, 0.5, /^Invalid image size specified/],
  ];

  for (const [options, size, message] of BAD) {
    it(`refuses ${JSON.stringify(options).slice(0, 80)} size=${size}`, async () => {
      const file = tmp.path(`bad-${Math.random().toString(36).slice(2)}.qcow2`);
      const data = options.data_file ? tmp.path(options.data_file) : undefined;
      const opts = data ? { ...options, data_file: data } : options;
      await assert.rejects(createQcow2({ filename: file, size, options: opts }), (err: unknown) => {
        assert.ok(err instanceof BlockError, String(err));
        assert.equal(err.code, 'EINVAL');
        assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
        assert.match(err.message, message);
        return true;
      });
      assert.equal(await exists(file), false, 'no image file is left behind');
      if (data) assert.equal(await exists(data), false, 'no data file is left behind');
    });
  }

  it('leaves an existing file untouched when an option is bad', async () => {
    const file = tmp.path('existing.qcow2');
    await writeFile(file, 'precious contents');
    const before = await stat(file);
    await assert.rejects(createQcow2({ filename: file, size: M, options: { refcount_bits: '3' } }), { code: 'EINVAL' });
    assert.equal(await readFile(file, 'utf8'), 'precious contents');
    assert.equal((await stat(file)).mtimeMs, before.mtimeMs);
  });

  it('leaves an image untouched when another process holds it locked (E_LOCKED)', async (t) => {
    if (!needNative(t)) return;
    const file = tmp.path('locked.qcow2');
    await writeFile(file, 'in use');
    const holder = await open(file, 'r+');
    try {
      const { perm, shared } = permissionsFor(true, true);
      await applyLocks(native!, holder.fd, file, perm, shared);
      await assert.rejects(createQcow2({ filename: file, size: M, options: {} }), (err: unknown) => {
        assert.ok(err instanceof BlockError && err.code === 'E_LOCKED', String(err));
        assert.ok(!err.message.includes('\n'));
        return true;
      });
    } finally {
      await holder.close();
    }
    assert.equal(await readFile(file, 'utf8'), 'in use');
  });

  it('fails with one ENOTSUP line for preallocation=falloc without the native addon, creating nothing', async () => {
    const file = tmp.path('falloc-no-native.qcow2');
    const here = path.dirname(fileURLToPath(import.meta.url));
    const module = path.resolve(here, '../../../../../src/drivers/format/qcow2/create.ts');
    const script = `import(${JSON.stringify(module)}).then((m) => m.createQcow2({ filename: ${JSON.stringify(file)}, size: 1048576, options: { preallocation: 'falloc' } }))
      .then(() => console.log('created'), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })));`;
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', '-e', script], { env: { ...process.env, VDISK_NO_NATIVE: '1' } }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
    });
    const result = JSON.parse(out.trim()) as { code: string; message: string };
    assert.equal(result.code, 'ENOTSUP');
    assert.match(result.message, /^preallocation=falloc needs the native addon/);
    assert.equal(await exists(file), false);
  });

  it('accepts QEMU spellings', () => {
    const p = parseQcow2CreateRequest({
      filename: 'x', size: 1000,
      options: { cluster_size: '0.5k', compat: 'v3', lazy_refcounts: 'yes', refcount_bits: '010', extended_l2: 'n', data_file: 'd', data_file_raw: 'true' },
    });
    assert.equal(p.size, 1024, 'rounded up to 512 bytes');
    assert.equal(p.clusterBits, 9);
    assert.equal(p.version, 3);
    assert.equal(p.lazyRefcounts, true);
    assert.equal(p.refcountOrder, 3, 'refcount_bits=010 is octal, as strtoull reads it');
    assert.equal(p.extendedL2, false);
    assert.equal(p.preallocation, 'metadata', 'data_file_raw forces metadata preallocation');
    assert.equal(parseQcow2CreateRequest({ filename: 'x', size: 0, options: { compat: 'v2' } }).version, 2);
    assert.equal(parseQemuSize('64K'), 65536);
    assert.equal(parseQemuSize('0x10000'), 65536);
    assert.equal(parseQemuSize('65536b'), 65536);
    assert.equal(parseQemuSize('2m'), 2 * M);
    assert.equal(parseQemuSize('1e3'), undefined);
    assert.equal(parseQemuSize('1.5'), undefined);
  });

  it('defaults: 64 KiB clusters even with extended L2, v3, 16-bit refcounts, zlib, no preallocation', () => {
    const p = parseQcow2CreateRequest({ filename: 'x', size: 1, options: { extended_l2: 'on' } });
    assert.deepEqual(
      [p.size, p.clusterBits, p.version, p.refcountOrder, p.compressionType, p.preallocation, p.lazyRefcounts],
      [512, 16, 3, 4, 0, 'off', false],
    );
  });
});

describe('qcow2 create: layout numbers', () => {
  it('L1 entries around the edges of L2 coverage', () => {
    const cases: [number, number, boolean, number][] = [
      // cluster bits, size, extended L2, L1 entries
      [16, 0, false, 0],
      [16, 512, false, 1],
      [16, 512 * M - 512, false, 1],
      [16, 512 * M, false, 1],
      [16, 512 * M + 512, false, 2],
      [16, 100 * G, false, 200],
      [16, 256 * M, true, 1],
      [16, 256 * M + 512, true, 2],
      [9, 32 * K, false, 1],
      [9, 32 * K + 512, false, 2],
      [9, 128 * G, false, 4 * M],
      [12, 2 * M, false, 1],
      [12, 2 * M + 512, false, 2],
      [21, 512 * G, false, 1],
      [21, 512 * G + 512, false, 2],
      [21, 256 * G + 512, true, 2],
    ];
    for (const [bits, size, ext, entries] of cases) {
      assert.equal(l1EntriesFor(size, bits, ext), entries, `cluster 2^${bits} size ${size} extl2 ${ext}`);
      const options: Record<string, string> = { cluster_size: String(2 ** bits) };
      if (ext) options.extended_l2 = 'on';
      if (size * 8 / 2 ** bits < 1e7) assert.equal(plan(size, options).l1Size, entries);
    }
  });

  // Offsets and lengths as qemu-img 7.2 leaves them.
  const QEMU: [string, number, Record<string, string>, { length: number; l1: [number, number]; reftable: [number, number] }][] = [
    ['empty', 0, {}, { length: 196608, l1: [0, 0], reftable: [65536, 1] }],
    ['1 MiB: the L1 table is written to its last byte', M, {}, { length: 196616, l1: [196608, 1], reftable: [65536, 1] }],
    ['1 GiB', G, {}, { length: 196624, l1: [196608, 2], reftable: [65536, 1] }],
    ['100 GiB', 100 * G, {}, { length: 198208, l1: [196608, 200], reftable: [65536, 1] }],
    ['4 KiB clusters', G, { cluster_size: '4k' }, { length: 16384, l1: [12288, 512], reftable: [4096, 1] }],
    ['512-byte clusters, 100 GiB: the refcount table moves', 100 * G, { cluster_size: '512' }, { length: 26348544, l1: [1536, 3276800], reftable: [26345984, 5] }],
    ['metadata preallocation', M, { preallocation: 'metadata' }, { length: 1376256, l1: [196608, 1], reftable: [65536, 1] }],
    ['falloc: new refcount table after the L1 table', M, { preallocation: 'falloc' }, { length: 1376256, l1: [196608, 1], reftable: [262144, 1] }],
    ['falloc of nothing still moves the refcount table', 0, { preallocation: 'falloc' }, { length: 262144, l1: [0, 0], reftable: [196608, 1] }],
    ['data file, metadata', M, { data_file: 'd', preallocation: 'metadata' }, { length: 327680, l1: [196608, 1], reftable: [65536, 1] }],
  ];
  for (const [name, size, options, want] of QEMU) {
    it(name, () => {
      const l = plan(size, options);
      const h = l.header();
      assert.deepEqual(
        { length: l.file.length, l1: [h.l1TableOffset, h.l1Size], reftable: [h.refcountTableOffset, h.refcountTableClusters] },
        want,
      );
    });
  }

  it('metadata preallocation: L2 table first, data clusters right after it, COPIED set', () => {
    const l = plan(M, { preallocation: 'metadata' });
    assert.equal(l.l1[0], 4 * 65536);
    assert.deepEqual(l.l2Runs.get(0), [0, 16, 5 * 65536]);
  });

  it('falloc: the first L2 table reuses the freed refcount table cluster; data after the new table', () => {
    const l = plan(M, { preallocation: 'falloc' });
    assert.equal(l.l1[0], 65536);
    assert.deepEqual(l.l2Runs.get(0), [0, 16, 5 * 65536]);
    assert.deepEqual(l.file.falloc, [{ offset: 327680, length: M }]);
    assert.equal(l.staleReftables.length, 1, 'the old table stays on disk as it was');
  });

  it('data file: identity mapping, copy-on-write of the tail of an unaligned last cluster', () => {
    const l = plan(M - 512, { data_file: 'd', preallocation: 'full' });
    assert.deepEqual(l.l2Runs.get(0), [0, 16, 0]);
    assert.deepEqual(l.data!.zeros, [{ offset: M - 512, length: 512 }]);
    assert.equal(l.data!.length, M, 'QEMU never fills the data file in this case: it is already long enough');
    const aligned = plan(M, { data_file: 'd', preallocation: 'falloc' });
    assert.deepEqual(aligned.data!.falloc, [{ offset: 0, length: M }]);
    assert.equal(plan(M, { data_file: 'd' }).data!.length, M);
  });
});

describe('qcow2 create: header writer', () => {
  const base: HeaderImage = {
    version: 3, clusterBits: 16, size: G, l1Size: 2, l1TableOffset: 196608, refcountTableOffset: 65536, refcountTableClusters: 1,
    incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, refcountOrder: 4, compressionType: 0,
  };
  const buf = (h: HeaderImage) => {
    const out = new Uint8Array(2 ** h.clusterBits);
    writeHeaderCluster(h, out);
    return out;
  };

  it('v3: 112-byte header, feature name table, parses back', () => {
    const h = { ...base, l1Size: 4, incompatibleFeatures: INCOMPAT.COMPRESSION | INCOMPAT.EXTL2, compatibleFeatures: COMPAT.LAZY_REFCOUNTS, compressionType: 1 };
    const out = buf(h);
    const dv = new DataView(out.buffer);
    assert.equal(dv.getUint32(100), 112);
    assert.equal(out[104], 1);
    assert.equal(dv.getUint32(112), EXT.FEATURE_TABLE);
    assert.equal(dv.getUint32(116), 8 * 48);
    const p = parseHeader(out, 'x');
    assert.equal(p.version, 3);
    assert.equal(p.size, G);
    assert.equal(p.compressionType, 1);
    assert.equal(p.compatibleFeatures, COMPAT.LAZY_REFCOUNTS);
    assert.deepEqual(p.featureNames.map((f) => `${f.type}:${f.bit}:${f.name}`), [
      'incompatible:0:dirty bit', 'incompatible:1:corrupt bit', 'incompatible:2:external data file', 'incompatible:3:compression type',
      'incompatible:4:extended L2 entries', 'compatible:0:lazy refcounts', 'autoclear:0:bitmaps', 'autoclear:1:raw external data',
    ]);
  });

  it('no feature table for clusters of 4 KiB and less, nor for v2', () => {
    assert.equal(new DataView(buf({ ...base, clusterBits: 12, l1Size: 512 }).buffer).getUint32(112), 0);
    const v2 = buf({ ...base, version: 2 });
    assert.equal(new DataView(v2.buffer).getUint32(72), 0);
    assert.equal(parseHeader(v2, 'x').headerLength, 72);
  });

  it('backing format, then data file, then end marker, then the backing file name', () => {
    const h = { ...base, backingFile: 'base image.qcow2', backingFormat: 'qcow2', dataFile: 'data.raw', incompatibleFeatures: INCOMPAT.DATA_FILE, autoclearFeatures: 0n };
    const out = buf(h);
    const dv = new DataView(out.buffer);
    assert.equal(dv.getUint32(112), EXT.BACKING_FORMAT);
    assert.equal(dv.getUint32(116), 5);
    assert.equal(dv.getUint32(128), EXT.DATA_FILE);
    assert.equal(dv.getUint32(144), EXT.FEATURE_TABLE);
    const end = 144 + 8 + 384;
    assert.equal(dv.getBigUint64(end), 0n);
    assert.equal(Number(dv.getBigUint64(8)), end + 8, 'the name follows the end marker');
    assert.equal(headerBytesNeeded(h), end + 8 + 16);
    const p = parseHeader(out, 'x');
    assert.deepEqual([p.backingFile, p.backingFormat, p.dataFile], ['base image.qcow2', 'qcow2', 'data.raw']);
    assert.equal(p.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW, 0n);
  });
});

describe('qcow2 create: files', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-create-files-')));
  after(async () => tmp.cleanup());

  it('writes an image the driver parses, of QEMU length, replacing an old file', async () => {
    const file = tmp.path('new.qcow2');
    await writeFile(file, new Uint8Array(1_000_000).fill(0xee));
    await createQcow2({ filename: file, size: G + 1, options: { lazy_refcounts: 'on' } });
    const bytes = await readFile(file);
    assert.equal(bytes.byteLength, 196632, 'the L1 table (3 entries) ends the file');
    const h = parseHeader(bytes, file);
    assert.deepEqual([h.size, h.l1Size, h.l1TableOffset, h.refcountTableOffset], [G + 512, 3, 196608, 65536]);
    assert.equal(h.compatibleFeatures, COMPAT.LAZY_REFCOUNTS);
    // Refcounts of clusters 0-3 are 1, the rest 0.
    const refblock = new DataView(bytes.buffer, bytes.byteOffset + 131072, 65536);
    assert.deepEqual([0, 1, 2, 3, 4].map((i) => refblock.getUint16(i * 2)), [1, 1, 1, 1, 0]);
    assert.equal(bytes.subarray(65536 + 8, 131072).some((b) => b !== 0), false, 'nothing of the old file survives');
  });

  it('creates (and truncates) the data file at the virtual size', async () => {
    const file = tmp.path('with-data.qcow2');
    const data = tmp.path('with-data.raw');
    await writeFile(data, new Uint8Array(5 * M).fill(1));
    await createQcow2({ filename: file, size: 3 * M, options: { data_file: data, data_file_raw: 'on' } });
    assert.equal((await stat(data)).size, 3 * M);
    assert.equal((await readFile(data)).some((b) => b !== 0), false);
    const h = parseHeader(await readFile(file), file);
    assert.equal(h.dataFile, data);
    assert.equal(h.incompatibleFeatures & INCOMPAT.DATA_FILE, INCOMPAT.DATA_FILE);
    assert.equal(h.autoclearFeatures, AUTOCLEAR.DATA_FILE_RAW);
  });

  it('preallocation=full writes zeros; falloc reserves the data area', async (t) => {
    const full = tmp.path('full.qcow2');
    await createQcow2({ filename: full, size: 4 * M, options: { preallocation: 'full', cluster_size: '4k' } });
    const st = await stat(full);
    assert.ok(st.blocks * 512 >= 4 * M, `allocated ${st.blocks * 512}`);
    if (!needNative(t)) return;
    const falloc = tmp.path('falloc.qcow2');
    await createQcow2({ filename: falloc, size: 4 * M, options: { preallocation: 'falloc' } });
    assert.ok((await stat(falloc)).blocks * 512 >= 4 * M);
  });
});
