import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../../../../src/core/errors.js';
import { NbdClient, type NbdClientOptions } from '../../../../src/nbd/client/client.js';
import { open } from '../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { nbdkit, withServer } from './servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Only to detect a hang: a test that needs longer than this is broken, never just slow. */
const HANG = { timeout: 60_000 };

/** nbdkit's pattern plugin: each 8-byte word is its own offset, big-endian. */
function patternBytes(offset: number, length: number): Uint8Array {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) {
    const at = offset + i;
    const word = at - (at % 8);
    out[i] = Number((BigInt(word) >> BigInt(8 * (7 - (at % 8)))) & 0xffn);
  }
  return out;
}

const rejectsWith = (code: string) => (e: unknown) => e instanceof BlockError && e.code === code;

describe('nbd client and driver against nbdkit', () => {
  let tmp: TmpDir;
  let n = 0;
  const sock = () => tmp.path(`s${++n}.sock`);
  const unix = (socket: string, extra: Partial<NbdClientOptions> = {}): NbdClientOptions => ({ server: { type: 'unix', path: socket }, ...extra });
  before(async () => (tmp = await makeTmpDir('vdisk-nbdkit-')));
  after(async () => tmp.cleanup());

  it('the memory plugin keeps what is written, zeroed and trimmed', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    await withServer(nbdkit(sock(), ['memory', '4M']), async (server) => {
      const node = await open({ driver: 'nbd', filename: server.uri });
      try {
        assert.equal(node.size, 4 * MiB);
        assert.equal(node.caps.discard, 'native');
        assert.equal(node.caps.fastZero, true);
        const model = new Uint8Array(4 * MiB);
        await node.write(1000, pattern(300 * KiB, 1), { fua: true });
        model.set(pattern(300 * KiB, 1), 1000);
        await node.writeZeroes(64 * KiB, 64 * KiB, { mayUnmap: true });
        await node.writeZeroes(200 * KiB, 4 * KiB, { noFallback: true });
        model.fill(0, 64 * KiB, 128 * KiB).fill(0, 200 * KiB, 204 * KiB);
        // nbdkit's memory plugin reads trimmed ranges as zeros.
        await node.discard(256 * KiB, 32 * KiB);
        model.fill(0, 256 * KiB, 288 * KiB);
        await node.flush();
        const all = new Uint8Array(4 * MiB);
        await node.read(0, all);
        assertBytesEqual(all, model, 'memory export');
      } finally {
        await node.close();
      }
    });
  });

  it('sparse-random reads as nbdcopy copies it, and vdisk map matches qemu-img map', async (t) => {
    if (!needTools(t, 'nbdkit', 'nbdcopy', 'qemu-img')) return;
    await withServer(nbdkit(sock(), ['sparse-random', '32M', 'seed=7', 'percent=30'], ['-r']), async (server) => {
      const copy = tmp.path('sparse.raw');
      await runOk('nbdcopy', [server.uri, copy]);
      const node = await open(server.uri, { format: 'raw' });
      try {
        const all = new Uint8Array(node.size);
        await node.read(0, all);
        assertBytesEqual(all, await readFile(copy), 'sparse-random');
      } finally {
        await node.close();
      }
      const theirs = await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', server.uri]);
      const ours = await vdisk(['map', '--output=json', '-f', 'raw', server.uri]);
      assert.equal(ours.stdout, theirs);
    });
  });

  it('errors from the error filter come back as BlockErrors and the connection survives', HANG, async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    const readTrigger = tmp.path('read-fails');
    const writeTrigger = tmp.path('write-fails');
    const server = nbdkit(sock(), ['--filter=error', 'memory', '1M', 'error-pread=EIO', 'error-pread-rate=100%', `error-pread-file=${readTrigger}`,
      'error-pwrite=ENOSPC', 'error-pwrite-rate=100%', `error-pwrite-file=${writeTrigger}`]);
    await withServer(server, async (s) => {
      const client = await NbdClient.connect(unix(s.socket));
      try {
        await client.write(0, pattern(4096, 3));
        await writeFile(readTrigger, '');
        await assert.rejects(client.read(0, new Uint8Array(4096)), rejectsWith('EIO'));
        await writeFile(writeTrigger, '');
        await assert.rejects(client.write(0, new Uint8Array(4096)), rejectsWith('ENOSPC'));
        await rm(readTrigger);
        await rm(writeTrigger);
        const back = new Uint8Array(4096);
        await client.read(0, back);
        assert.deepEqual(back, pattern(4096, 3));
      } finally {
        await client.close();
      }
    });
  });

  it('a server slower than request-timeout fails every request in flight with ETIMEDOUT instead of hanging', HANG, async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    await withServer(nbdkit(sock(), ['--filter=delay', 'memory', '1M', 'rdelay=30']), async (s) => {
      const client = await NbdClient.connect(unix(s.socket, { requestTimeout: 1 }));
      try {
        const reads = [0, 1, 2].map((i) => client.read(i * 4096, new Uint8Array(4096)));
        for (const r of reads) await assert.rejects(r, rejectsWith('ETIMEDOUT'));
        // The connection was given up: later requests fail at once with the reason.
        await assert.rejects(client.write(0, new Uint8Array(512)), rejectsWith('ETIMEDOUT'));
      } finally {
        await client.close();
      }
    });
  });

  for (const how of ['killed', 'stopped'] as const) {
    it(`with reconnect-delay, a request in flight when the server is ${how} is answered by its successor`, HANG, async (t) => {
      if (!needTools(t, 'nbdkit')) return;
      const socket = sock();
      const first = await nbdkit(socket, ['--filter=delay', 'pattern', '8M', 'rdelay=20'], ['-v']);
      const client = await NbdClient.connect(unix(socket, { reconnectDelay: 30 }));
      try {
        const into = new Uint8Array(64 * KiB);
        // Settled into a value at once, so a rejection is not left unhandled while we wait.
        const pending = client.read(1 * MiB, into).then(() => undefined, (e: unknown) => e);
        // Killed, the server drops the connection; stopped, nbdkit answers what it holds with
        // NBD_ESHUTDOWN (and waits for the client to leave). Both mean: send it again elsewhere.
        while (!first.output().includes('delay: pread')) await sleep(10);
        await first.stop(how === 'killed' ? 'SIGKILL' : 'SIGTERM');
        await rm(socket, { force: true });
        // Stopped politely, nbdkit waits for its clients: the client closes first.
        const second = await nbdkit(socket, ['pattern', '8M']);
        try {
          assert.equal(await pending, undefined);
          assertBytesEqual(into, patternBytes(1 * MiB, 64 * KiB), 'read after reconnect');
        } finally {
          await client.close();
          await second.stop();
        }
      } finally {
        await client.close();
        await first.stop('SIGKILL');
      }
    });
  }

  it('without reconnect-delay, a lost server fails requests at once', HANG, async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    const server = await nbdkit(sock(), ['pattern', '1M']);
    const client = await NbdClient.connect(unix(server.socket));
    try {
      // Killed outright: stopped politely, nbdkit would wait for its client to disconnect.
      await server.stop('SIGKILL');
      await assert.rejects(client.read(0, new Uint8Array(512)), (e: BlockError) => e.code === 'EIO' && /closed the connection/.test(e.message));
    } finally {
      await client.close();
    }
  });

  it('honours the block size constraints the server sets (blocksize-policy error policy)', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    await withServer(nbdkit(sock(), ['--filter=blocksize-policy', 'memory', '4M', 'blocksize-minimum=4096',
      'blocksize-preferred=65536', 'blocksize-maximum=65536', 'blocksize-error-policy=error']), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.limits.requestAlignment, 4096);
        assert.equal(node.limits.maxTransfer, 64 * KiB);
        // Unaligned and oversized requests reach the server aligned and split, or it would refuse them.
        const data = pattern(300 * KiB + 123, 5);
        await node.write(5000, data);
        const back = new Uint8Array(data.length);
        await node.read(5000, back);
        assertBytesEqual(back, data, 'blocksize-policy');
      } finally {
        await node.close();
      }
    });
  });

  it('emulates what the server does not advertise: FUA by flushing, zeroes by writing', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    // The eval plugin over a file, without FUA; the nozero filter hides WRITE_ZEROES.
    const file = tmp.path('plain.img');
    await writeFile(file, new Uint8Array(1 * MiB));
    await withServer(nbdkit(sock(), ['--filter=nozero', 'eval', 'zeromode=none', `get_size=echo ${1 * MiB}`,
      `pread=dd if=${file} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
      `pwrite=dd of=${file} seek=$4 conv=notrunc oflag=seek_bytes status=none`,
      'can_write=exit 0', 'can_flush=exit 0', 'flush=exit 0', 'can_fua=echo none']), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.caps.fua, 'emulate');
        assert.equal(node.caps.zero, 'emulate');
        assert.equal(node.caps.discard, 'none');
        assert.equal(node.caps.fastZero, false);
        await node.write(0, pattern(8192, 2), { fua: true });
        await node.writeZeroes(1000, 3000);
        await assert.rejects(node.writeZeroes(0, 4096, { noFallback: true }), rejectsWith('ENOTSUP'));
        await node.discard(0, 4096);
        const want = pattern(8192, 2);
        want.fill(0, 1000, 4000);
        assertBytesEqual((await readFile(file)).subarray(0, 8192), want, 'emulated FUA write and zeroes, in the file');
      } finally {
        await node.close();
      }
    });
  });

  it('talks to servers without structured replies (so without block status) or without NBD_OPT_GO', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    for (const options of [['--no-sr'], ['--mask-handshake=0']]) {
      await withServer(nbdkit(sock(), ['pattern', '2M'], options), async (s) => {
        const node = await open({ driver: 'nbd', filename: s.uri });
        try {
          const into = new Uint8Array(100 * KiB);
          await node.read(12345, into);
          assertBytesEqual(into, patternBytes(12345, 100 * KiB), options.join(' '));
          const [first] = await node.blockStatusList(0, node.size);
          assert.equal(first!.data, true, options.join(' '));
        } finally {
          await node.close();
        }
      });
    }
  });

  it('refuses oldstyle servers and unknown exports with clear errors; read-only exports answer EPERM', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    await withServer(nbdkit(sock(), ['memory', '1M'], ['-o']), async (s) => {
      await assert.rejects(NbdClient.connect(unix(s.socket)), (e: BlockError) => e.code === 'ENOTSUP' && /oldstyle/.test(e.message));
    });
    await withServer(nbdkit(sock(), ['--filter=exportname', 'memory', '1M', 'exportname=good', 'exportname-strict=true']), async (s) => {
      await assert.rejects(NbdClient.connect(unix(s.socket, { exportName: 'bad' })), (e: BlockError) => e.code === 'ENOENT' && /'bad'/.test(e.message));
      const ok = await NbdClient.connect(unix(s.socket, { exportName: 'good' }));
      await ok.close();
    });
    await withServer(nbdkit(sock(), ['memory', '1M'], ['-r']), async (s) => {
      const client = await NbdClient.connect(unix(s.socket));
      try {
        await assert.rejects(client.write(0, new Uint8Array(512)), rejectsWith('EPERM'));
      } finally {
        await client.close();
      }
    });
  });
});
