import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { open } from '../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { needTools, run } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { nbdkit } from '../drivers/nbd/servers.js';
import { interruptWhenMoving } from './job-chains.js';

const MiB = 1024 * 1024;

test('Ctrl-C stops a convert between requests: one-line message, and the qcow2 target checks clean and holds only source bytes', async (t) => {
  if (!needTools(t, 'nbdkit', 'qemu-img')) return;
  const tmp = await makeTmpDir('vdisk-convert-cancel-');
  t.after(() => tmp.cleanup());
  const size = 128 * MiB;
  const source = tmp.path('source.raw');
  await writeFile(source, pattern(size, 11));
  // The delay filter slows every read, so the copy is surely still running when interrupted.
  const server = await nbdkit(tmp.path('nbd.sock'), ['file', source, 'rdelay=40ms'], ['--filter=delay']);
  t.after(() => server.stop());
  const target = tmp.path('out.qcow2');

  const { code, stdout, stderr } = await interruptWhenMoving(['convert', '-p', '-O', 'qcow2', server.uri, target]);
  assert.equal(code, 1, stderr);
  assert.equal(stderr, 'vdisk convert: The job was cancelled: interrupted by SIGINT\n');
  assert.ok(!stdout.includes('(100.00/100%)'), 'the copy did not finish');

  const check = await run('qemu-img', ['check', '-f', 'qcow2', target]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  // Writes go in order: a prefix of the source is there, nothing else.
  const expected = await readFile(source);
  await using node = await open(target, { format: 'qcow2', readOnly: true });
  let copied = 0;
  for await (const e of node.extents(0, node.size)) {
    if (!e.data) continue;
    assert.equal(e.offset, copied, 'the data written is one prefix');
    const got = new Uint8Array(e.length);
    await node.read(e.offset, got);
    assertBytesEqual(got, expected.subarray(e.offset, e.offset + e.length), 'copied bytes', e.offset);
    copied += e.length;
  }
  assert.ok(copied > 0 && copied < size, `${copied} of ${size} bytes copied`);
});
