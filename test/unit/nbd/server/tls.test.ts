import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import {
  NBD_CMD_READ, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK,
  NBD_REP_ERR_INVALID, NBD_REP_ERR_TLS_REQD,
} from '../../../../src/nbd/protocol.js';
import { infoRequest, ServerFixture, type RawClient } from '../../../helpers/nbd-server.js';
import { BlockError } from '../../../../src/core/errors.js';
import { loadPskCredentials, loadX509Credentials, parsePskFile } from '../../../../src/nbd/server/tls.js';
import { makeTmpDir } from '../../../helpers/tmp.js';

it('reads keys.psk lines of username:hexkey and refuses malformed lines', () => {
  const keys = parsePskFile('alice:0123456789abcdef\n\nbob:AABB\n', 'keys.psk');
  assert.deepEqual([...keys.keys()], ['alice', 'bob']);
  assert.equal(keys.get('bob')!.toString('hex'), 'aabb');
  assert.throws(() => parsePskFile('alice:0123\nbob\n', 'keys.psk'), /keys.psk:2: expected username:hexkey/);
  assert.throws(() => parsePskFile('alice:xyz\n', 'keys.psk'), BlockError);
  assert.throws(() => parsePskFile('\n', 'keys.psk'), /holds no keys/);
});

it('missing credential files are one-line errors naming the file', async () => {
  const tmp = await makeTmpDir();
  try {
    await assert.rejects(loadX509Credentials(tmp.dir), (e: BlockError) => e.code === 'EINVAL' && e.message.includes('ca-cert.pem'));
    await assert.rejects(loadPskCredentials(tmp.dir), (e: BlockError) => e.message.includes('keys.psk'));
  } finally {
    await tmp.cleanup();
  }
});

describe('FORCEDTLS handshake (PSK, in process)', () => {
  const fx = new ServerFixture();
  const key = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const clientTls = (identity: string, psk: Buffer) => ({
    ciphers: 'ECDHE-PSK:DHE-PSK:PSK', checkServerIdentity: () => undefined,
    pskCallback: () => ({ identity, psk }),
  });

  async function start(): Promise<RawClient> {
    const tmp = await makeTmpDir();
    await writeFile(tmp.path('keys.psk'), `alice:${key.toString('hex')}\n`);
    const tls = await loadPskCredentials(tmp.dir);
    await tmp.cleanup();
    await fx.start([{ node: new MemoryNode({ size: 1024 * 1024 }), opts: { name: 'disk' } }], { tls });
    const c = await fx.client();
    await c.greet();
    return c;
  }

  it('every option but STARTTLS and ABORT is ERR_TLS_REQD until TLS is up', async () => {
    const c = await start();
    for (const opt of [NBD_OPT_LIST, NBD_OPT_GO, NBD_OPT_STRUCTURED_REPLY, 0x4242]) {
      const [r] = await c.option(opt, opt === NBD_OPT_GO ? infoRequest('disk') : undefined);
      assert.equal(r!.type, NBD_REP_ERR_TLS_REQD);
    }
    assert.equal((await c.option(NBD_OPT_STARTTLS))[0]!.type, NBD_REP_ACK);
    await c.startTls(clientTls('alice', key));
    assert.equal((await c.option(NBD_OPT_STARTTLS))[0]!.type, NBD_REP_ERR_INVALID, 'TLS is already up');
    const replies = await c.option(NBD_OPT_GO, infoRequest('disk'));
    assert.equal(replies[replies.length - 1]!.type, NBD_REP_ACK);
    c.request({ type: NBD_CMD_READ, length: 16 });
    const r = await c.reply();
    assert.ok(r.simple && r.error === 0);
    assert.equal((await c.read(16)).length, 16);
  });

  it('STARTTLS forgets what was negotiated before it', async () => {
    const c = await start();
    await c.option(NBD_OPT_STARTTLS);
    await c.startTls(clientTls('alice', key));
    assert.equal((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type, NBD_REP_ACK);
    assert.equal((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type, NBD_REP_ERR_INVALID);
  });

  it('EXPORT_NAME before TLS, and a wrong key, drop the client', async () => {
    const c = await start();
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    assert.equal(await c.closedByServer(), true);
    const d = await fx.client();
    await d.greet();
    await d.option(NBD_OPT_STARTTLS);
    await assert.rejects(d.startTls(clientTls('alice', Buffer.alloc(16, 1))));
    const e = await fx.client();
    await e.greet();
    await e.option(NBD_OPT_STARTTLS);
    await assert.rejects(e.startTls(clientTls('mallory', key)));
    // Every refused client is let go (a hang here is the failure).
    while (fx.server.stats().connections.length > 0) await new Promise((r) => setTimeout(r, 5));
  });
});
