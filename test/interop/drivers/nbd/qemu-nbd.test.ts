import assert from 'node:assert/strict';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { BlockNode } from '../../../../src/core/block-node.js';
import { BlockError } from '../../../../src/core/errors.js';
import { NbdClient } from '../../../../src/nbd/client/client.js';
import { open } from '../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { qemuNbd, qemuNbdTcp } from './servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;

/**
 * One workload through the nbd driver and, byte for byte, on a model: pattern writes (aligned,
 * unaligned, FUA, bigger than the 32 MiB payload limit is not needed: 3 MiB spans requests),
 * zero writes with and without unmapping, discards and flushes. Returns the model.
 */
async function workload(node: BlockNode, model: Uint8Array): Promise<void> {
  const write = async (offset: number, data: Uint8Array, fua = false) => {
    await node.write(offset, data, { fua });
    model.set(data, offset);
  };
  const zero = async (offset: number, length: number, mayUnmap: boolean) => {
    await node.writeZeroes(offset, length, { mayUnmap });
    model.fill(0, offset, offset + length);
  };
  await Promise.all([
    write(0, pattern(64 * KiB, 1)),
    write(100 * KiB + 3, pattern(5000, 2), true),
    write(1 * MiB, pattern(3 * MiB, 3)),
    write(SIZE - 777, pattern(777, 4)),
  ]);
  await zero(1 * MiB + 4096, 64 * KiB, true);
  await zero(2 * MiB + 1, 100 * KiB, false);
  await zero(3 * MiB, 512 * KiB, true);
  // Discard leaves undefined contents: the model takes whatever the export now reads there.
  await node.discard(5 * MiB, 1 * MiB);
  const after = new Uint8Array(1 * MiB);
  await node.read(5 * MiB, after);
  model.set(after, 5 * MiB);
  await node.flush();
  const all = new Uint8Array(SIZE);
  await node.read(0, all);
  assertBytesEqual(all, model, 'read back over nbd');
}

describe('nbd driver against qemu-nbd', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-nbd-')));
  after(async () => tmp.cleanup());

  for (const format of ['raw', 'qcow2'] as const) {
    it(`reads and writes a ${format} export: qemu-img compare finds the image equal to the model`, async (t) => {
      if (!needTools(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
      const img = tmp.path(`rw.${format}`);
      await runOk('qemu-img', ['create', '-q', '-f', format, img, String(SIZE)]);
      await runOk('qemu-io', ['-f', format, '-c', 'write -P 0x5a 512k 256k', '-c', 'write -P 0x77 6M 1M', img]);
      const model = new Uint8Array(SIZE);
      model.fill(0x5a, 512 * KiB, 768 * KiB);
      model.fill(0x77, 6 * MiB, 7 * MiB);
      const server = await qemuNbd(tmp.path(`rw-${format}.sock`), img, ['-f', format]);
      try {
        const node = await open(server.uri, { format: 'raw' });
        try {
          assert.equal(node.size, SIZE);
          assert.equal(node.file?.driver, 'nbd');
          assert.equal(node.caps.fua, 'native');
          assert.equal(node.caps.zero, 'native');
          await workload(node, model);
        } finally {
          await node.close();
        }
      } finally {
        await server.stop();
      }
      const modelFile = tmp.path(`model-${format}.raw`);
      await writeFile(modelFile, model);
      const cmp = await run('qemu-img', ['compare', '-f', format, '-F', 'raw', img, modelFile]);
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
      if (format === 'qcow2') await runOk('qemu-img', ['check', '-q', img]);
    });
  }

  it('vdisk map and info over nbd print what qemu-img prints for the same URI', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
    const base = tmp.path('map-base.qcow2');
    const top = tmp.path('map-top.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -z 1M 64k', '-c', 'write -P 3 5M 1M', base]);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 2M 64k', '-c', 'write -z 5M 64k', top]);
    for (const server of [await qemuNbd(tmp.path('map.sock'), top, ['-f', 'qcow2', '-r']), await qemuNbdTcp(top, ['-f', 'qcow2', '-r'])]) {
      try {
        for (const output of ['json', 'human']) {
          const theirs = await runOk('qemu-img', ['map', `--output=${output}`, server.uri]);
          const ours = await vdisk(['map', `--output=${output}`, server.uri]);
          assert.equal(ours.stderr, '');
          assert.equal(ours.stdout, theirs, `map --output=${output} ${server.uri}`);
        }
        assert.equal((await vdisk(['info', server.uri])).stdout, await runOk('qemu-img', ['info', server.uri]));
        assert.equal((await vdisk(['info', '--output=json', server.uri])).stdout, await runOk('qemu-img', ['info', '--output=json', server.uri]));
      } finally {
        await server.stop();
      }
    }
  });

  it('a qcow2 image exported as plain bytes opens as qcow2 over nbd, for reads and writes', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
    const img = tmp.path('inner.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', img, '4M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 1M 128k', img]);
    // An export cannot grow: room for new clusters must be there already, as on a block device.
    await truncate(img, 8 * MiB);
    const sock = tmp.path('inner.sock');
    const server = await qemuNbd(sock, img, ['-f', 'raw']);
    try {
      // Probed through the nbd node, as qemu-img probes nbd:// filenames.
      const info = await vdisk(['info', '--output=json', server.uri]);
      assert.equal(JSON.parse(info.stdout).format, 'qcow2', info.stderr);
      const node = await open({ driver: 'qcow2', file: { driver: 'nbd', server: { type: 'unix', path: sock }, export: 'disk' } });
      try {
        const got = new Uint8Array(128 * KiB);
        await node.read(1 * MiB, got);
        assert.deepEqual(got, new Uint8Array(128 * KiB).fill(0x42));
        await node.write(3 * MiB, pattern(200 * KiB, 9));
        await node.flush();
      } finally {
        await node.close();
      }
    } finally {
      await server.stop();
    }
    await runOk('qemu-img', ['check', '-q', img]);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x42 1M 128k', img]);
    const flat = tmp.path('inner-flat.raw');
    await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, flat]);
    const bytes = await readFile(flat);
    assertBytesEqual(bytes.subarray(3 * MiB, 3 * MiB + 200 * KiB), pattern(200 * KiB, 9), 'written through qcow2 over nbd');
  });

  it('a read-only export makes a read-only node; the server refuses writes with EPERM', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img')) return;
    const img = tmp.path('ro.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', img, '1M']);
    const server = await qemuNbd(tmp.path('ro.sock'), img, ['-f', 'raw', '-r']);
    try {
      const node = await open(server.uri, { format: 'raw' });
      try {
        assert.equal(node.caps.writable, false);
        await assert.rejects(node.write(0, new Uint8Array(512)), (e: BlockError) => e.code === 'EROFS');
      } finally {
        await node.close();
      }
      // The client does not second-guess the flag: the server's own answer comes back (qemu-nbd
      // 7.2 says EINVAL where the spec asks for EPERM; nbdkit's EPERM is checked with nbdkit).
      const client = await NbdClient.connect({ server: { type: 'unix', path: server.socket }, exportName: 'disk' });
      try {
        assert.equal(client.readOnly, true);
        await assert.rejects(client.write(0, new Uint8Array(512)), (e: BlockError) => e instanceof BlockError && /read-only/.test(e.message));
        await client.read(0, new Uint8Array(512));
      } finally {
        await client.close();
      }
    } finally {
      await server.stop();
    }
  });

  it('many reads in flight on one connection each get their own data', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img')) return;
    const img = tmp.path('many.raw');
    const contents = pattern(4 * MiB, 77);
    await writeFile(img, contents);
    const server = await qemuNbd(tmp.path('many.sock'), img, ['-f', 'raw']);
    try {
      const client = await NbdClient.connect({ server: { type: 'unix', path: server.socket }, exportName: 'disk' });
      try {
        const reads = Array.from({ length: 200 }, (_, i) => {
          const offset = (i * 7919 * 97) % (4 * MiB - 70 * KiB);
          const length = 1 + ((i * 4099) % (64 * KiB));
          const into = new Uint8Array(length);
          return client.read(offset, into).then(() => assertBytesEqual(into, contents.subarray(offset, offset + length), `read ${i}`));
        });
        await Promise.all(reads);
      } finally {
        await client.close();
      }
    } finally {
      await server.stop();
    }
  });

  it('qemu:allocation-depth, when exported, marks ranges no layer holds as not present', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
    const img = tmp.path('depth.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', img, '4M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 1M 64k', '-c', 'write -z 2M 64k', img]);
    const server = await qemuNbd(tmp.path('depth.sock'), img, ['-f', 'qcow2', '-A', '-r']);
    try {
      // The protocol node itself: raw above it reports everything present, as QEMU's raw does.
      const node = await open({ driver: 'nbd', filename: server.uri });
      try {
        const rows = [];
        for await (const e of node.extents(0, node.size)) rows.push([e.offset, e.length, e.data, e.zero, e.present]);
        assert.deepEqual(rows, [
          [0, 1 * MiB, false, true, false],
          [1 * MiB, 64 * KiB, true, false, true],
          [1 * MiB + 64 * KiB, 1 * MiB - 64 * KiB, false, true, false],
          [2 * MiB, 64 * KiB, false, true, true],
          [2 * MiB + 64 * KiB, 2 * MiB - 64 * KiB, false, true, false],
        ]);
      } finally {
        await node.close();
      }
    } finally {
      await server.stop();
    }
  });

  it('vdisk io writes and reads patterns over nbd', async (t) => {
    if (!needTools(t, 'qemu-nbd', 'qemu-img', 'qemu-io')) return;
    const img = tmp.path('io.raw');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', img, '2M']);
    const server = await qemuNbd(tmp.path('io.sock'), img, ['-f', 'raw']);
    try {
      const r = await vdisk(['io', '-f', 'raw', '-c', 'write -P 0x3c 4096 65536', '-c', 'write -z 8192 4096', '-c', 'read -P 0x3c 12288 57344', server.uri]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    } finally {
      await server.stop();
    }
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 4096 4096', '-c', 'read -P 0 8192 4096', '-c', 'read -P 0x3c 12288 57344', img]);
  });
});
