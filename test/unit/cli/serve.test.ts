import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_OPT_LIST, NBD_REP_SERVER } from '../../../src/nbd/protocol.js';
import { pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { RawClient, spawnServe, waitForListener } from '../../helpers/nbd-server.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

/*
 * `vdisk serve`: qemu-nbd's option errors as one line (in-process), and the server as a process:
 * exports, exit after the last client (or not, with -t), SIGTERM, --fork and --pid-file.
 */

let tmp: TmpDir;
let image: string;
before(async () => {
  tmp = await makeTmpDir('vdisk-serve-');
  image = tmp.path('disk.img');
  await writeFile(image, Buffer.alloc(1024 * 1024));
});
after(() => tmp.cleanup());

describe('bad command lines fail with one line and status 1', () => {
  const cases: [string, string[], RegExp][] = [
    ['no image', [], /Expecting an image file name/],
    ['unknown option', ['--bogus', 'IMG'], /unrecognized option '--bogus'/],
    ['unknown letter', ['-Z', 'IMG'], /invalid option -- 'Z'/],
    ['discard mode', ['--discard=foo', 'IMG'], /Invalid discard mode `foo'/],
    ['detect-zeroes unmap without discard', ['--detect-zeroes=unmap', 'IMG'], /not allowed without setting discard operation to unmap/],
    ['detect-zeroes mode', ['--detect-zeroes=maybe', 'IMG'], /Invalid detect-zeroes mode 'maybe'/],
    ['aio mode', ['--aio=bar', 'IMG'], /Invalid aio mode 'bar'/],
    ['cache mode', ['--cache=bar', 'IMG'], /Invalid cache option: bar/],
    ['shared count', ['-e', '-3', 'IMG'], /Invalid shared device number '-3'/],
    ['port', ['-p', '70000', 'IMG'], /Invalid port '70000'/],
    ['socket and port', ['-k', '/tmp/x.sock', '-p', '1234', 'IMG'], /-k cannot be combined with -p or -b/],
    ['object type', ['--object', 'foo,id=x', 'IMG'], /Parameter 'qom-type' does not accept value 'foo'/],
    ['object id', ['--object', 'tls-creds-psk,dir=/x', 'IMG'], /Parameter 'id' is missing/],
    ['tls creds id', ['--tls-creds=zz', 'IMG'], /No TLS credentials with id 'zz'/],
    ['client endpoint', ['--object', 'tls-creds-x509,id=t,dir=/x', '--tls-creds', 't', 'IMG'], /Expecting TLS credentials with a server endpoint/],
    ['export without file', ['--export', 'name=a'], /--export needs name=NAME,file=IMAGE/],
    ['export key', ['--export', 'name=a,file=IMG,color=red'], /unknown key 'color'/],
    ['-x with two images', ['-x', 'a', 'IMG', 'IMG2'], /-x names one export/],
    ['two exports, one name', ['IMG', `${'sub/'}disk.img`], /Two exports are named 'disk.img'/],
    ['missing image', ['-k', '/tmp/never.sock', '/nonexistent/disk.img'], /nonexistent\/disk.img/],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await vdisk(['serve', ...args.map((a) => (a === 'IMG' ? image : a === 'IMG2' ? tmp.path('other.img') : a))]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /^vdisk serve: /);
    });
  }

  it('--help describes the options', async () => {
    const r = await vdisk(['serve', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--persistent/);
  });
});

describe('the server process', () => {
  it('serves several named exports; without -t it exits 0 after the last client leaves', async () => {
    const sock = tmp.path('a.sock');
    const second = tmp.path('second.img');
    await writeFile(second, pattern(4096, 1));
    const proc = spawnServe(['-k', sock, '-e', '0', image, '--export', `name=two,file=${second},read-only=on`]);
    await waitForListener({ path: sock }, proc);
    const c = await RawClient.connect(sock);
    await c.greet();
    const names = (await c.option(NBD_OPT_LIST)).filter((r) => r.type === NBD_REP_SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    assert.deepEqual(names, ['', 'two'], 'one IMAGE is the default export, as with qemu-nbd');
    c.close();
    const exit = await proc.exited;
    assert.equal(exit.code, 0, exit.stderr);
    await assert.rejects(stat(sock), 'the socket file is removed');
  });

  it('with -t it stays up between clients; SIGTERM finishes the writes and exits 0', async () => {
    const sock = tmp.path('b.sock');
    const proc = spawnServe(['-t', '-k', sock, '-f', 'raw', image]);
    try {
      await waitForListener({ path: sock }, proc);
      for (let i = 0; i < 2; i++) {
        const c = await RawClient.connect(sock);
        await c.negotiate('', { structured: false });
        c.request({ type: NBD_CMD_WRITE, offset: BigInt(i * 4096) }, pattern(4096, 10 + i));
        assert.equal((await c.reply()).simple, true);
        c.close();
      }
      const c = await RawClient.connect(sock);
      await c.negotiate('', { structured: false });
      c.request({ type: NBD_CMD_READ, length: 8 });
      await c.reply();
      assert.deepEqual(new Uint8Array(await c.read(8)), pattern(4096, 10).subarray(0, 8));
    } finally {
      const exit = await proc.stop();
      assert.equal(exit.code, 0, exit.stderr);
    }
    const bytes = await readFile(image);
    assert.deepEqual(new Uint8Array(bytes.subarray(4096, 8192)), pattern(4096, 11));
  });

  it('--fork returns once the server listens; --pid-file names the server', async () => {
    const sock = tmp.path('c.sock');
    const pidFile = tmp.path('serve.pid');
    const r = await vdiskProcess(['--fork', '-t', '-r', '-k', sock, '--pid-file', pidFile, image]);
    assert.equal(r.code, 0, r.stderr);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    assert.ok(pid > 0 && pid !== process.pid);
    const c = await RawClient.connect(sock);
    await c.negotiate();
    c.close();
    process.kill(pid, 'SIGTERM');
    while (await stat(sock).then(() => true, () => false)) await new Promise((res) => setTimeout(res, 20));
  });

  it('--fork reports a server that cannot start, with its error', async () => {
    const r = await vdiskProcess(['--fork', '-k', tmp.path('d.sock'), tmp.path('missing.img')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /missing\.img/);
  });
});

/** `vdisk serve ARGS` as its own process, to its exit. */
async function vdiskProcess(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return spawnServe(args).exited;
}
