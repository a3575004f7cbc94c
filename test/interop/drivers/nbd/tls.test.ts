import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { BlockError } from '../../../../src/core/errors.js';
import { NbdClient } from '../../../../src/nbd/client/client.js';
import { open } from '../../../../src/registry/index.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { nbdkit, withServer } from './servers.js';

/** nbdkit's pattern plugin bytes 8..24: the offsets 8 and 16 as big-endian words. */
const PATTERN_8_24 = '00000000000000080000000000000010';

/** A CA and a server certificate for localhost, in the layout nbdkit and QEMU read. */
async function makePki(dir: string): Promise<void> {
  const ssl = (...args: string[]) => runOk('openssl', args, { cwd: dir });
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=vdisk test CA');
  await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=localhost');
  await writeFile(`${dir}/ext.cnf`, 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
    '-out', 'server-cert.pem', '-days', '2', '-extfile', 'ext.cnf');
}

describe('nbd client over TLS against nbdkit --tls=require', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-nbd-tls-')));
  after(async () => tmp.cleanup());

  it('PSK: a plaintext client is refused, a client with the key reads', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    const keys = tmp.path('keys.psk');
    await writeFile(keys, `alice:${randomBytes(32).toString('hex')}\n`);
    const socket = tmp.path('psk.sock');
    await withServer(nbdkit(socket, ['pattern', '1M'], ['--tls=require', `--tls-psk=${keys}`]), async () => {
      await assert.rejects(open(`nbd+unix:///?socket=${socket}`), (e: BlockError) => e.code === 'EACCES' && /requires TLS/.test(e.message));
      const node = await open({ driver: 'nbd', filename: `nbds+unix:///?socket=${socket}`, 'tls-psk-file': keys, 'tls-username': 'alice' });
      try {
        const b = new Uint8Array(16);
        await node.read(8, b);
        assert.equal(Buffer.from(b).toString('hex'), PATTERN_8_24);
      } finally {
        await node.close();
      }
      await assert.rejects(open({ driver: 'nbd', filename: `nbds+unix:///?socket=${socket}`, 'tls-psk-file': keys }),
        (e: BlockError) => e.code === 'EINVAL' && /identity 'qemu'/.test(e.message));
    });
  });

  it('x509: the server certificate is checked against the CA and the name', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    // openssl has no --version (needTools' probe), so it is asked the way it answers.
    if ((await run('openssl', ['version']).catch(() => ({ code: 1 }))).code !== 0) return void t.skip('needs openssl to make certificates');
    await makePki(tmp.dir);
    const socket = tmp.path('x509.sock');
    await withServer(nbdkit(socket, ['pattern', '1M'], ['--tls=require', `--tls-certificates=${tmp.dir}`]), async () => {
      const server = { type: 'unix' as const, path: socket };
      const client = await NbdClient.connect({ server, tls: { x509Dir: tmp.dir, hostname: 'localhost' } });
      try {
        assert.equal(client.info.tls, true);
        const b = new Uint8Array(16);
        await client.read(8, b);
        assert.equal(Buffer.from(b).toString('hex'), PATTERN_8_24);
      } finally {
        await client.close();
      }
      await assert.rejects(NbdClient.connect({ server, tls: { x509Dir: tmp.dir, hostname: 'other.example' } }),
        (e: BlockError) => e.code === 'EACCES' && /TLS handshake failed/.test(e.message));
    });
  });
});
