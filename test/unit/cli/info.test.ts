import assert from 'node:assert/strict';
import net from 'node:net';
import { rename } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { needTools, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { fakeServer } from '../nbd/client/fake-server.js';
import { vdiskProcess } from './cli-process.js';

/** A server that accepts every connection and never sends a byte. */
async function silentServer(listen: (s: net.Server, ready: () => void) => void): Promise<net.Server & { sockets: Set<net.Socket> }> {
  const sockets = new Set<net.Socket>();
  const server = Object.assign(net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
  }), { sockets });
  await new Promise<void>((resolve) => listen(server, resolve));
  return server;
}

async function stop(server: net.Server & { sockets: Set<net.Socket> }): Promise<void> {
  for (const s of server.sockets) s.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

describe('vdisk info --timeout', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-info-timeout-')));
  after(async () => tmp.cleanup());

  it('a TCP server that accepts and never answers: ETIMEDOUT in one line, and the process exits', async (t) => {
    const server = await silentServer((s, ready) => s.listen(0, '127.0.0.1', ready));
    try {
      const { port } = server.address() as net.AddressInfo;
      const r = await vdiskProcess(['info', '--timeout', '2', `nbd://127.0.0.1:${port}/`]);
      t.diagnostic(`exited after ${r.ms} ms`);
      assert.deepEqual([r.code, r.signal, r.stdout], [1, null, '']);
      assert.equal(r.stderr, `vdisk info: nbd://127.0.0.1:${port}: no answer from the server within 2 s (ETIMEDOUT)\n`);
      assert.ok(server.sockets.size > 0, 'the server saw the connection');
    } finally {
      await stop(server);
    }
  });

  it('the same over a Unix socket', async (t) => {
    const path = tmp.path('silent.sock');
    const server = await silentServer((s, ready) => s.listen(path, ready));
    try {
      const r = await vdiskProcess(['info', '--timeout', '1', `nbd+unix:///?socket=${path}`]);
      t.diagnostic(`exited after ${r.ms} ms`);
      assert.deepEqual([r.code, r.signal, r.stdout], [1, null, '']);
      assert.match(r.stderr, /^vdisk info: nbd\+unix:.*: no answer from the server within 1 s \(ETIMEDOUT\)\n$/);
    } finally {
      await stop(server);
    }
  });

  it('a server that negotiates and then never answers the probe\'s read: ETIMEDOUT too', async () => {
    let reads = 0;
    const fake = await fakeServer(tmp.path('mute.sock'), { request: () => void reads++ });
    try {
      const r = await vdisk(['info', '--timeout', '1', `nbd+unix:///?socket=${fake.path}`]);
      assert.equal(r.code, 1);
      // The read's own deadline or the open's, whichever fires first: both are one second.
      assert.match(r.stderr, /^vdisk info: [^\n]*within 1 s \(ETIMEDOUT\)[^\n]*\n$/);
      assert.equal(reads, 1);
    } finally {
      await fake.close();
    }
  });

  it('refuses a timeout that is not a number of seconds', async () => {
    const r = await vdisk(['info', '--timeout', 'soon', 'x.img']);
    assert.deepEqual([r.code, r.stderr], [1, "vdisk info: Invalid timeout 'soon': expected seconds from 0 to 2147483\n"]);
  });
});

describe('vdisk info --probe', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-info-probe-')));
  after(async () => tmp.cleanup());

  it('opens the header only: an image whose backing file is gone still shows, as qemu-img info shows it', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp.path('base.qcow2'), '1M']);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', tmp.path('top.qcow2')]);
    await rename(tmp.path('base.qcow2'), tmp.path('gone.qcow2'));
    const top = tmp.path('top.qcow2');
    const full = await vdisk(['info', top]);
    assert.equal(full.code, 1, 'without --probe the backing chain is opened');
    const probed = await vdisk(['info', '--probe', '--output=json', top]);
    assert.equal(probed.code, 0, probed.stderr);
    const ours = JSON.parse(probed.stdout) as Record<string, unknown>;
    const qemu = JSON.parse(await runOk('qemu-img', ['info', '--output=json', top])) as Record<string, unknown>;
    for (const key of ['virtual-size', 'filename', 'format', 'cluster-size', 'backing-filename', 'full-backing-filename', 'backing-filename-format', 'format-specific']) {
      assert.deepEqual(ours[key], qemu[key], key);
    }
    assert.equal(ours['full-backing-filename'], tmp.path('base.qcow2'));
    const human = await vdisk(['info', '--probe', top]);
    assert.match(human.stdout, /^backing file: base\.qcow2 \(actual path: .*\/base\.qcow2\)$/m);
  });

  it('probes the format when none is given, and leaves raw images as they are', async () => {
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', tmp.path('plain.raw'), '64K']);
    const r = await vdisk(['info', '--probe', '--output=json', tmp.path('plain.raw')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { format: string }).format, 'raw');
  });

  it('refuses to be combined with --backing-chain', async () => {
    const r = await vdisk(['info', '--probe', '--backing-chain', 'x.img']);
    assert.deepEqual([r.code, r.stderr], [1, 'vdisk info: --probe and --backing-chain are mutually exclusive\n']);
  });
});
