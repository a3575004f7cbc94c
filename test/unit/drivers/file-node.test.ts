import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { FileNode } from '../../../src/drivers/protocol/file/index.js';
import { openFds } from '../../helpers/fds.js';
import { needNative } from '../../helpers/native.js';
import { makeTmpDir } from '../../helpers/tmp.js';

test('open errors are one-line BlockErrors with the path, and leak nothing', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await mkdir(tmp.path('dir'));
  await writeFile(tmp.path('a.img'), new Uint8Array(4096));
  const before = openFds();
  for (const [opts, code] of [
    [{ filename: tmp.path('missing.img') }, 'ENOENT'],
    [{ filename: tmp.path('dir') }, 'EINVAL'],
    [{ filename: '' }, 'EINVAL'],
    [{ filename: tmp.path('a.img'), requestAlignment: 3000 }, 'EINVAL'],
    [{ filename: tmp.path('a.img'), requestAlignment: 0 }, 'EINVAL'],
  ] as const) {
    await assert.rejects(FileNode.open(opts), (err: unknown) => {
      assert.ok(err instanceof BlockError, String(err));
      assert.equal(err.code, code, `${JSON.stringify(opts)}: ${err.message}`);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });
  }
  assert.ok(openFds() <= before, 'descriptors leaked');
});

test('a read-only open reads but refuses writes; the file is unchanged', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.img');
  await writeFile(path, new Uint8Array(8192).fill(3));
  await using node = await FileNode.open({ filename: path, readOnly: true });
  assert.equal(node.caps.writable, false);
  const buf = new Uint8Array(8192);
  await node.read(0, buf);
  assert.deepEqual(buf, new Uint8Array(8192).fill(3));
  await assert.rejects(node.write(0, new Uint8Array(1)), { code: 'EROFS' });
  assert.deepEqual(new Uint8Array(await readFile(path)), new Uint8Array(8192).fill(3));
});

test('an exclusive writer (a format owning the file) keeps other writers out; plain raw writers share', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.img');
  await writeFile(path, new Uint8Array(4096));
  {
    await using owner = await FileNode.open({ filename: path, exclusive: true });
    await assert.rejects(FileNode.open({ filename: path, exclusive: true }), { code: 'E_LOCKED' });
    await assert.rejects(FileNode.open({ filename: path }), { code: 'E_LOCKED' });
    // Readers that tolerate a writer are fine; locking=off opts out of the protocol.
    await (await FileNode.open({ filename: path, readOnly: true })).close();
    await (await FileNode.open({ filename: path, locking: 'off' })).close();
    await owner.write(0, new Uint8Array([1]));
  }
  // Closed images are free again, and plain writers coexist as QEMU's raw nodes do.
  const w1 = await FileNode.open({ filename: path });
  const w2 = await FileNode.open({ filename: path });
  await assert.rejects(FileNode.open({ filename: path, exclusive: true }), { code: 'E_LOCKED' });
  await Promise.all([w1.close(), w2.close()]);
  await (await FileNode.open({ filename: path, exclusive: true })).close();
});
