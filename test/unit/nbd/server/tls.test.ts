import assert from 'node:assert/strict';
import { it } from 'node:test';
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
