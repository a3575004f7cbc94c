import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileDriver } from '../../../src/drivers/protocol/file/index.js';
import { rawDriver } from '../../../src/drivers/format/raw/index.js';
import { Registry } from '../../../src/registry/index.js';
import { pattern } from '../../helpers/bytes.js';
import { QFI_MAGIC, qfiFormat } from '../../helpers/test-formats.js';
import { makeTmpDir } from '../../helpers/tmp.js';

// A format that probes 'QFI\xfb' is registered here, as qcow2 will be in the real registry.
const registry = new Registry([fileDriver, rawDriver, qfiFormat]);
const SIZE = 64 * 1024;

async function image(t: { after(fn: () => Promise<void>): void }) {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('guest.img');
  await writeFile(path, pattern(SIZE, 3));
  return path;
}

const header = () => {
  const h = new Uint8Array(512);
  h.set(QFI_MAGIC);
  return h;
};

test('a probed raw image refuses a write that would make sector 0 probe as another format', async (t) => {
  const path = await image(t);
  await using node = await registry.open(path);
  assert.equal(node.driver, 'raw');
  for (const [off, data] of [[0, header()], [0, QFI_MAGIC], [0, new Uint8Array([...QFI_MAGIC, 1, 2, 3])]] as const) {
    await assert.rejects(node.write(off, data), (err: any) => {
      assert.equal(err.code, 'EPERM');
      assert.match(err.message, /qfi/);
      return true;
    });
  }
  assert.deepEqual(new Uint8Array(await readFile(path)), pattern(SIZE, 3), 'the refused writes changed the image');
});

test('the guard sees the merged sector: completing the magic byte by byte is refused too', async (t) => {
  const path = await image(t);
  await using node = await registry.open(path);
  await node.write(0, QFI_MAGIC.subarray(0, 3));
  await assert.rejects(node.write(3, QFI_MAGIC.subarray(3)), { code: 'EPERM' });
  const head = new Uint8Array(4);
  await node.read(0, head);
  assert.deepEqual(head, new Uint8Array([...QFI_MAGIC.subarray(0, 3), pattern(SIZE, 3)[3]!]));
});

test('other writes to a probed raw image, including sector 0 and the magic elsewhere, are allowed', async (t) => {
  const path = await image(t);
  await using node = await registry.open(path);
  await node.write(0, new Uint8Array(512).fill(9));
  await node.write(512, header());
  await node.write(1, QFI_MAGIC);
  await node.writeZeroes(0, 4096);
  const back = new Uint8Array(4096);
  await node.read(0, back);
  assert.deepEqual(back, new Uint8Array(4096));
});

test('with the format named explicitly, or no format that probes it, the write is allowed', async (t) => {
  const path = await image(t);
  {
    await using node = await registry.open(path, { format: 'raw' });
    await node.write(0, header());
  }
  assert.deepEqual(new Uint8Array(await readFile(path)).subarray(0, 4), QFI_MAGIC);
  // Now it probes as qfi: the magic is taken at its word.
  await assert.rejects(registry.open(path), { code: 'E_UNSUPPORTED_FEATURE' });

  const other = await image(t);
  {
    // With no format that probes this magic, raw has nothing to guard against.
    await using node = await new Registry([fileDriver, rawDriver]).open(other);
    await node.write(0, header());
  }
  assert.deepEqual(new Uint8Array(await readFile(other)).subarray(0, 4), QFI_MAGIC);
});

test('the guard also holds through a 4 KiB read-modify-write', async (t) => {
  const path = await image(t);
  // json: opens name their format, so the probed flag is set by hand as probing would.
  await using node = await registry.open({ driver: 'raw', probed: true, file: { driver: 'file', filename: path, 'request-alignment': 4096 } });
  await assert.rejects(node.write(0, QFI_MAGIC), { code: 'EPERM' });
  await node.write(4, QFI_MAGIC);
  assert.deepEqual(new Uint8Array(await readFile(path)).subarray(0, 4), pattern(SIZE, 3).subarray(0, 4));
});

test('concurrent partial writes cannot assemble the magic between them', async (t) => {
  const path = await image(t);
  await using node = await registry.open(path);
  const results = await Promise.allSettled([node.write(0, QFI_MAGIC.subarray(0, 2)), node.write(2, QFI_MAGIC.subarray(2))]);
  assert.equal(results.filter((r) => r.status === 'rejected').length, 1, 'exactly one of the two halves must be refused');
  assert.notDeepEqual(new Uint8Array(await readFile(path)).subarray(0, 4), QFI_MAGIC);
});

test('zero writes cannot complete a magic that ends in a zero byte', async (t) => {
  // 'QED\0' is such a magic; a guest could write 'QEDx' and then zero the last byte.
  const qed = new Uint8Array([0x51, 0x45, 0x44, 0]);
  const r = new Registry([fileDriver, rawDriver, {
    name: 'qed-like', kind: 'format', options: ['file'],
    probe: (h) => (qed.every((b, i) => h[i] === b) ? 100 : 0),
    open: () => Promise.reject(new Error('probe only')),
  }]);
  const path = await image(t);
  await using node = await r.open(path);
  await node.write(0, new Uint8Array([0x51, 0x45, 0x44, 0x78]));
  await assert.rejects(node.writeZeroes(3, 1), { code: 'EPERM' });
  await assert.rejects(node.write(3, new Uint8Array(1)), { code: 'EPERM' });
  node.detectZeroes = 'unmap';
  await assert.rejects(node.write(0, new Uint8Array(8)).then(() => node.write(0, new Uint8Array([0x51, 0x45, 0x44]))), { code: 'EPERM' });
  const head = new Uint8Array(4);
  await node.read(0, head);
  assert.notDeepEqual(head, qed);
});
