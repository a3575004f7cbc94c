import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { spawnServe, waitForListener, type ServeProcess } from '../../helpers/nbd-server.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { freePort } from '../drivers/nbd/servers.js';

/*
 * TLS as QEMU and libnbd speak it: `vdisk serve --object tls-creds-x509|tls-creds-psk
 * --tls-creds` with certificates made here by openssl. qemu-img and nbdinfo connect with the
 * right credentials; a plaintext client, a client without a certificate, one with a certificate
 * from another CA and one with the wrong key are all refused.
 */

const SIZE = 16 * 1024 * 1024;
let tmp: TmpDir;
let image: string;

before(async () => {
  tmp = await makeTmpDir('vdisk-nbd-tls-');
  image = tmp.path('disk.raw');
  await writeFile(image, Buffer.alloc(0));
  await runOk('truncate', ['-s', String(SIZE), image]);
});
after(() => tmp.cleanup());

/** A CA and a certificate it signs, as QEMU wants them (key usages, SAN for the server). */
async function makeCa(dir: string, name: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await runOk('openssl', ['req', '-x509', ...ec, '-keyout', `${dir}/ca-key.pem`, '-out', `${dir}/ca-cert.pem`, '-subj', `/CN=${name}`,
    '-days', '2', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const who of ['server', 'client']) {
    const ext = `${dir}/${who}.ext`;
    await writeFile(ext, ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment',
      who === 'server' ? 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1' : 'extendedKeyUsage=clientAuth', ''].join('\n'));
    await runOk('openssl', ['req', ...ec, '-keyout', `${dir}/${who}-key.pem`, '-out', `${dir}/${who}.csr`, '-subj', `/CN=${who}`]);
    await runOk('openssl', ['x509', '-req', '-in', `${dir}/${who}.csr`, '-CA', `${dir}/ca-cert.pem`, '-CAkey', `${dir}/ca-key.pem`,
      '-CAcreateserial', '-out', `${dir}/${who}-cert.pem`, '-days', '2', '-extfile', ext]);
  }
}

/** A directory holding the named files of `from`. */
async function credDir(from: string, to: string, files: string[]): Promise<string> {
  await mkdir(to, { recursive: true });
  for (const f of files) await copyFile(`${from}/${f}`, `${to}/${f}`);
  return to;
}

async function serveTls(object: string): Promise<{ port: number; proc: ServeProcess }> {
  const port = await freePort();
  const proc = spawnServe(['-t', '-b', '127.0.0.1', '-p', String(port), '--object', object, '--tls-creds', 'tls0', image]);
  await waitForListener({ port }, proc);
  return { port, proc };
}

describe('x509', () => {
  let serverDir: string;
  let clientDir: string;
  let noCertDir: string;
  let foreignDir: string;

  before(async () => {
    if (!haveTool('openssl')) return;
    const ca = tmp.path('ca');
    await makeCa(ca, 'vdisk test CA');
    serverDir = await credDir(ca, tmp.path('server'), ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
    clientDir = await credDir(ca, tmp.path('client'), ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
    noCertDir = await credDir(ca, tmp.path('nocert'), ['ca-cert.pem']);
    const other = tmp.path('other-ca');
    await makeCa(other, 'some other CA');
    // Trusts our server, but presents a client certificate our CA never signed.
    foreignDir = await credDir(other, tmp.path('foreign'), ['client-cert.pem', 'client-key.pem']);
    await copyFile(`${ca}/ca-cert.pem`, `${foreignDir}/ca-cert.pem`);
  });

  it('qemu-img and nbdinfo connect with certificates; everyone else is refused', async (t: TestContext) => {
    if (!needTools(t, 'qemu-img', 'nbdinfo', 'openssl')) return;
    const { port, proc } = await serveTls(`tls-creds-x509,id=tls0,endpoint=server,dir=${serverDir}`);
    try {
      const info = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`,
        '--image-opts', `driver=nbd,host=localhost,port=${port},tls-creds=tls0`]);
      assert.equal((JSON.parse(info) as { 'virtual-size': number })['virtual-size'], SIZE);
      const json = await runOk('nbdinfo', ['--json', `nbds://localhost:${port}/?tls-certificates=${clientDir}`]);
      assert.equal((JSON.parse(json) as { TLS: boolean }).TLS, true);
      for (const [who, uri] of [
        ['plaintext', `nbd://localhost:${port}/`],
        ['no client certificate', `nbds://localhost:${port}/?tls-certificates=${noCertDir}`],
        ['a certificate from another CA', `nbds://localhost:${port}/?tls-certificates=${foreignDir}`],
      ]) {
        const r = await run('nbdinfo', ['--size', uri!]);
        assert.notEqual(r.code, 0, `${who} must be refused`);
      }
      const plain = await run('qemu-img', ['info', `nbd://localhost:${port}/`]);
      assert.notEqual(plain.code, 0);
      assert.match(plain.stderr, /TLS is required/);
    } finally {
      const exit = await proc.stop();
      assert.equal(exit.code, 0, exit.stderr);
    }
  });
});

describe('PSK', () => {
  it('qemu-img and nbdinfo connect with the key; a wrong key or user is refused', async (t) => {
    if (!needTools(t, 'qemu-img', 'nbdinfo')) return;
    const dir = tmp.path('psk');
    await mkdir(dir, { recursive: true });
    await writeFile(`${dir}/keys.psk`, `alice:${randomBytes(32).toString('hex')}\n`);
    // The right user with a wrong key, and a user the server does not know.
    const wrong = tmp.path('psk-wrong');
    await mkdir(wrong, { recursive: true });
    await writeFile(`${wrong}/keys.psk`, `alice:${randomBytes(32).toString('hex')}\nmallory:${randomBytes(32).toString('hex')}\n`);
    const { port, proc } = await serveTls(`tls-creds-psk,id=tls0,endpoint=server,dir=${dir}`);
    try {
      const info = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=alice`,
        '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},tls-creds=tls0`]);
      assert.equal((JSON.parse(info) as { 'virtual-size': number })['virtual-size'], SIZE);
      assert.equal((await runOk('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${dir}/keys.psk`])).trim(), String(SIZE));
      assert.notEqual((await run('nbdinfo', ['--size', `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${wrong}/keys.psk`])).code, 0);
      assert.notEqual((await run('nbdinfo', ['--size', `nbds://mallory@127.0.0.1:${port}/?tls-psk-file=${wrong}/keys.psk`])).code, 0);
      assert.notEqual((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/`])).code, 0);
    } finally {
      const exit = await proc.stop();
      assert.equal(exit.code, 0, exit.stderr);
    }
  });
});
