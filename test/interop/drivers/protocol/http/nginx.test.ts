import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { open } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { vdisk } from '../../../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../../../helpers/oracles.js';
import { buildCompressed, buildStandard, qemuCreate, qemuIo } from '../../../../helpers/qcow2-images.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';
import { startNginx, type Nginx } from './nginx.js';

/*
 * The http driver against nginx on loopback, with qemu-img (whose curl driver reads http:// too,
 * from qemu-block-extra) as the oracle for what the same URLs hold.
 */

const RAW_SIZE = 5_000_077; // not whole sectors: the node rounds up as QEMU does

/** A raw image with data, holes and a tail, written straight into the served directory. */
async function writeRaw(file: string): Promise<void> {
  const bytes = new Uint8Array(RAW_SIZE);
  bytes.set(pattern(300_000, 1), 0);
  bytes.set(pattern(70_000, 2), 2_000_000);
  bytes.set(pattern(77, 3), RAW_SIZE - 77);
  await writeFile(file, bytes);
}

async function infoJson(tool: 'vdisk' | 'qemu-img', args: string[]): Promise<Record<string, unknown>> {
  const r = tool === 'vdisk' ? await vdisk(['info', '--output=json', ...args]) : await run('qemu-img', ['info', '--output=json', ...args]);
  assert.equal(r.code, 0, `${tool} info ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

async function compare(a: string, b: string, extra: string[] = []): Promise<void> {
  const r = await run('qemu-img', ['compare', ...extra, a, b]);
  assert.equal(r.code, 0, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`);
}

describe('http driver against nginx', () => {
  let tmp: TmpDir;
  let nginx: Nginx | undefined;
  let base: string;
  const have = (t: TestContext) => needTools(t, 'nginx', 'qemu-img', 'qemu-io') && nginx !== undefined;

  before(async () => {
    tmp = await makeTmpDir('vdisk-http-');
    if (!haveTool('nginx') || !haveTool('qemu-img')) return;
    nginx = await startNginx(tmp);
    base = nginx.http;
    const www = nginx.root;
    await writeRaw(`${www}/disk.raw`);
    await writeRaw(`${www}/norange/disk.raw`);
    await mkdir(`${www}/standard`);
    await mkdir(`${www}/compressed`);
    await buildStandard(`${www}/standard`, 'standard', { cluster_size: 65536 }, {}, []);
    await buildCompressed(`${www}/compressed`, 'zlib', 65536);
    await qemuCreate(`${www}/base.qcow2`, 8 << 20);
    await qemuIo(`${www}/base.qcow2`, ['write -P 0x61 0 3M', 'write -P 0x62 5M 1M', 'write -z 6M 64k']);
    // An image on the server naming its backing file relatively: the backing is on the server too.
    await qemuCreate(`${www}/top-relative.qcow2`, 8 << 20, {}, 'qcow2', { name: 'base.qcow2', format: 'qcow2' });
    await qemuIo(`${www}/top-relative.qcow2`, ['write -P 0x71 1M 64k']);
  });
  after(async () => {
    await nginx?.stop();
    await tmp.cleanup();
  });

  it('vdisk info equals qemu-img info for qcow2 and raw URLs', async (t) => {
    if (!have(t)) return;
    for (const [url, format] of [[`${base}/standard/disk.qcow2`, []], [`${base}/compressed/disk.qcow2`, []], [`${base}/disk.raw`, ['-f', 'raw']]] as const) {
      assert.deepEqual(await infoJson('vdisk', [...format, url]), await infoJson('qemu-img', [...format, url]), url);
    }
    const human = await vdisk(['info', `${base}/disk.raw`]);
    assert.match(human.stdout, /^virtual size: 4\.77 MiB \(5000192 bytes\)\ndisk size: unavailable$/m);
  });

  it('vdisk map of a raw URL equals qemu-img map: all data, at the offsets of the URL', async (t) => {
    if (!have(t)) return;
    const url = `${base}/disk.raw`;
    const ours = await vdisk(['map', '--output=json', '-f', 'raw', url]);
    assert.equal(ours.code, 0, ours.stderr);
    assert.deepEqual(JSON.parse(ours.stdout), JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', url])));
  });

  it('vdisk convert of qcow2 URLs (plain and compressed) to raw and qcow2: identical to the original and to qemu-img\'s reading', async (t) => {
    if (!have(t)) return;
    for (const name of ['standard', 'compressed']) {
      const url = `${base}/${name}/disk.qcow2`;
      for (const fmt of ['raw', 'qcow2']) {
        const out = tmp.path(`${name}.${fmt}`);
        const r = await vdisk(['convert', '-O', fmt, url, out]);
        assert.equal(r.code, 0, r.stderr);
        await compare(`${nginx!.root}/${name}/disk.qcow2`, out);
        await compare(url, out);
        if (fmt === 'qcow2') await runOk('qemu-img', ['check', out]);
      }
    }
  });

  it('vdisk convert of a raw URL: byte-identical, and the holes found by the zero scan stay holes', async (t) => {
    if (!have(t)) return;
    const url = `${base}/disk.raw`;
    const raw = tmp.path('from-http.raw');
    assert.equal((await vdisk(['convert', '-f', 'raw', '-O', 'raw', url, raw])).code, 0);
    // The rounded-up tail is zeros, as qemu-img convert writes it.
    const got = await readFile(raw);
    assert.equal(got.byteLength, 5_000_192);
    assert.deepEqual(got.subarray(0, RAW_SIZE), await readFile(`${nginx!.root}/disk.raw`));
    assert.ok(got.subarray(RAW_SIZE).every((b) => b === 0));
    const qcow2 = tmp.path('from-http.qcow2');
    const r = await vdisk(['convert', '-f', 'raw', '-O', 'qcow2', url, qcow2]);
    assert.equal(r.code, 0, r.stderr);
    await compare(url, qcow2, ['-f', 'raw', '-F', 'qcow2']);
    await runOk('qemu-img', ['check', qcow2]);
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', qcow2])) as { start: number; data: boolean }[];
    assert.ok(map.some((e) => e.start >= 300_000 && e.start < 2_000_000 && !e.data), 'the zeros between the data are not allocated');
  });

  it('a local qcow2 overlay with an http:// backing file: vdisk reads what qemu-img reads', async (t) => {
    if (!have(t)) return;
    const top = tmp.path('top.qcow2');
    await qemuCreate(top, 8 << 20, {}, 'qcow2', { name: `${base}/base.qcow2`, format: 'qcow2' });
    await qemuIo(top, ['write -P 0x72 2M 2M']);
    const ours = await vdisk(['info', '--backing-chain', '--output=json', top]);
    assert.equal(ours.code, 0, ours.stderr);
    const qemu = JSON.parse(await runOk('qemu-img', ['info', '--backing-chain', '--output=json', top])) as Record<string, unknown>[];
    const chain = JSON.parse(ours.stdout) as Record<string, unknown>[];
    assert.deepEqual(chain.map((i) => [i.filename, i.format, i['virtual-size'], i['backing-filename'], i['full-backing-filename']]),
      qemu.map((i) => [i.filename, i.format, i['virtual-size'], i['backing-filename'], i['full-backing-filename']]));
    assert.equal(chain[1]!.filename, `${base}/base.qcow2`);
    const out = tmp.path('flat.raw');
    const ref = tmp.path('flat-ref.raw');
    assert.equal((await vdisk(['convert', '-O', 'raw', top, out])).code, 0);
    // qemu-img 7.2's own convert over http:// hangs now and then (its curl driver, many requests
    // in flight), so the reference reads the same backing file from the served directory.
    const local = { driver: 'qcow2', file: { driver: 'file', filename: top }, backing: { driver: 'qcow2', file: { driver: 'file', filename: `${nginx!.root}/base.qcow2` } } };
    await runOk('qemu-img', ['convert', '-O', 'raw', `json:${JSON.stringify(local)}`, ref]);
    assert.deepEqual(await readFile(out), await readFile(ref));
    // qemu-img compare reads one request at a time, and reads the http:// backing itself.
    await compare(top, out);
  });

  it('an image on the server with a relative backing name: the backing comes from beside it on the server, as in QEMU', async (t) => {
    if (!have(t)) return;
    const url = `${base}/top-relative.qcow2`;
    const ours = await vdisk(['info', '--backing-chain', '--output=json', url]);
    assert.equal(ours.code, 0, ours.stderr);
    const chain = JSON.parse(ours.stdout) as Record<string, unknown>[];
    const qemu = JSON.parse(await runOk('qemu-img', ['info', '--backing-chain', '--output=json', url])) as Record<string, unknown>[];
    assert.deepEqual(chain.map((i) => [i.filename, i['full-backing-filename']]), qemu.map((i) => [i.filename, i['full-backing-filename']]));
    const out = tmp.path('relative.raw');
    assert.equal((await vdisk(['convert', '-O', 'raw', url, out])).code, 0);
    await compare(url, out);
  });

  it('a server without byte ranges is refused, as qemu-img refuses it', async (t) => {
    if (!have(t)) return;
    const url = `${base}/norange/disk.raw`;
    const ours = await vdisk(['info', url]);
    assert.deepEqual([ours.code, ours.stderr], [1, `vdisk info: Could not open '${url}': Server does not support 'range' (byte ranges).\n`]);
    const qemu = await run('qemu-img', ['info', url]);
    assert.equal(qemu.code, 1);
    assert.match(qemu.stderr, /Server does not support 'range' \(byte ranges\)/);
  });

  it('a missing file: the status in one line', async (t) => {
    if (!have(t)) return;
    const r = await vdisk(['info', `${base}/nope.qcow2`]);
    assert.deepEqual([r.code, r.stderr], [1, `vdisk info: Could not open '${base}/nope.qcow2': The requested URL returned error: 404 Not Found\n`]);
  });

  it('small sequential reads cost one request per readahead, over one kept-alive connection', async (t) => {
    if (!have(t)) return;
    const before = (await nginx!.accessLog()).length;
    const node = await open(`${base}/disk.raw`, { format: 'raw' });
    const buf = new Uint8Array(4096);
    const expect = pattern(300_000, 1);
    for (let off = 0; off < 262144; off += 4096) {
      await node.read(off, buf);
      assert.deepEqual(buf, expect.subarray(off, off + 4096));
    }
    await node.read(262144, buf);
    await node.close();
    const lines = (await nginx!.accessLog()).slice(before).map((l) => l.split(' '));
    assert.deepEqual(lines.map(([m, u, s, , r]) => [m, u, s, r]), [
      ['HEAD', '/disk.raw', '200', '"-"'],
      ['GET', '/disk.raw', '206', '"bytes=0-262143"'],
      ['GET', '/disk.raw', '206', '"bytes=262144-524287"'],
    ]);
    assert.equal(new Set(lines.map((l) => l[3])).size, 1, 'one connection');
  });

  it('the readahead option sizes the requests; a permanent redirect is followed once', async (t) => {
    if (!have(t)) return;
    const before = (await nginx!.accessLog()).length;
    const node = await open(`json:{"driver":"raw","file":{"driver":"http","url":"${base}/moved/disk.raw","readahead":"64k"}}`);
    const buf = new Uint8Array(512);
    await node.read(0, buf);
    await node.read(70_000, buf);
    assert.deepEqual(buf, pattern(300_000, 1).subarray(70_000, 70_512));
    await node.close();
    const lines = (await nginx!.accessLog()).slice(before).map((l) => l.split(' ').slice(0, 3).join(' ') + ' ' + l.split(' ')[4]);
    assert.deepEqual(lines, ['HEAD /moved/disk.raw 301 "-"', 'HEAD /disk.raw 200 "-"', 'GET /disk.raw 206 "bytes=0-65535"', 'GET /disk.raw 206 "bytes=70000-135535"']);
  });
});

describe('https driver against nginx with a self-signed certificate', () => {
  let tmp: TmpDir;
  let nginx: Nginx | undefined;
  let cert: string;
  const have = (t: TestContext) => needTools(t, 'nginx', 'qemu-img', 'openssl') && nginx !== undefined;
  const saved = process.env.VDISK_EXTRA_CA_CERTS;

  before(async () => {
    tmp = await makeTmpDir('vdisk-https-');
    if (!haveTool('nginx') || !haveTool('openssl') || !haveTool('qemu-img')) return;
    cert = tmp.path('cert.pem');
    await runOk('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', tmp.path('key.pem'), '-out', cert,
      '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    nginx = await startNginx(tmp, { cert, key: tmp.path('key.pem') });
    await mkdir(`${nginx.root}/standard`);
    await buildStandard(`${nginx.root}/standard`, 'standard', { cluster_size: 65536 }, {}, []);
  });
  after(async () => {
    if (saved === undefined) delete process.env.VDISK_EXTRA_CA_CERTS;
    else process.env.VDISK_EXTRA_CA_CERTS = saved;
    await nginx?.stop();
    await tmp.cleanup();
  });

  it('an untrusted certificate is refused in one line that says how to trust it', async (t) => {
    if (!have(t)) return;
    delete process.env.VDISK_EXTRA_CA_CERTS;
    const url = `${nginx!.https}/standard/disk.qcow2`;
    const r = await vdisk(['info', url]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `vdisk info: Could not open '${url}': SSL certificate problem: self-signed certificate `
      + '(trust its CA with NODE_EXTRA_CA_CERTS=FILE, or open with sslverify=off)\n');
  });

  it('trusted through VDISK_EXTRA_CA_CERTS: reads what qemu-img reads (with sslverify=off)', async (t) => {
    if (!have(t)) return;
    process.env.VDISK_EXTRA_CA_CERTS = cert;
    const url = `${nginx!.https}/standard/disk.qcow2`;
    const qemuSpec = `json:{"file":{"driver":"https","url":"${url}","sslverify":"off"}}`;
    const ours = await infoJson('vdisk', [url]);
    const qemu = await infoJson('qemu-img', [qemuSpec]);
    assert.deepEqual([ours.format, ours['virtual-size'], ours['format-specific']], [qemu.format, qemu['virtual-size'], qemu['format-specific']]);
    const out = tmp.path('https.raw');
    assert.equal((await vdisk(['convert', '-O', 'raw', url, out])).code, 0);
    await compare(`${nginx!.root}/standard/disk.qcow2`, out);
  });

  it('sslverify=off reads without trusting the certificate, as in QEMU', async (t) => {
    if (!have(t)) return;
    delete process.env.VDISK_EXTRA_CA_CERTS;
    const url = `${nginx!.https}/standard/disk.qcow2`;
    const out = tmp.path('insecure.raw');
    const r = await vdisk(['convert', '-O', 'raw', `json:{"driver":"qcow2","file":{"driver":"https","url":"${url}","sslverify":"off"}}`, out]);
    assert.equal(r.code, 0, r.stderr);
    await compare(`${nginx!.root}/standard/disk.qcow2`, out);
  });

  it('an unreadable VDISK_EXTRA_CA_CERTS is an error, not a silent fallback', async (t) => {
    if (!have(t)) return;
    process.env.VDISK_EXTRA_CA_CERTS = tmp.path('missing.pem');
    const r = await vdisk(['info', `${nginx!.https}/standard/disk.qcow2`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vdisk info: Could not read the CA certificates in VDISK_EXTRA_CA_CERTS '.*missing\.pem': ENOENT/);
  });
});
