import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeInfoReply, decodeMetaContextReply, decodeServerReply, encodeInfoBlockSize, encodeInfoExport, encodeInfoString,
  encodeMetaContextReply, encodeServerReply, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME,
} from '../../../../src/nbd/protocol.js';

// Layouts from specs/nbd.md §2.5, §2.7 and §8.

test('NBD_REP_SERVER: u32 name length, name, then the details', () => {
  const b = encodeServerReply('disk', 'my disk');
  assert.equal(b.toString('hex'), '00000004' + '6469736b' + Buffer.from('my disk').toString('hex'));
  assert.deepEqual(decodeServerReply(b), { name: 'disk', description: 'my disk' });
  assert.deepEqual(decodeServerReply(encodeServerReply('', '')), { name: '', description: '' });
  assert.match(decodeServerReply(Buffer.from('0000000900', 'hex')) as string, /name of 9 bytes/);
});

test('NBD_REP_META_CONTEXT: u32 id, then the name without NUL', () => {
  const b = encodeMetaContextReply(1, 'base:allocation');
  assert.equal(b.toString('hex'), '00000001' + Buffer.from('base:allocation').toString('hex'));
  assert.deepEqual(decodeMetaContextReply(b), { id: 1, name: 'base:allocation' });
  assert.match(decodeMetaContextReply(Buffer.alloc(4)) as string, /malformed/);
});

test('NBD_INFO_EXPORT: u16 type 0, u64 size, u16 transmission flags (12 bytes)', () => {
  const b = encodeInfoExport(2 ** 40 + 1, 0x0d6f);
  assert.equal(b.toString('hex'), '0000' + '0000010000000001' + '0d6f');
  assert.deepEqual(decodeInfoReply(b), { type: NBD_INFO_EXPORT, size: 2n ** 40n + 1n, flags: 0x0d6f });
  assert.match(decodeInfoReply(Buffer.concat([b, Buffer.alloc(1)])) as string, /13 bytes instead of 12/);
});

test('NBD_INFO_BLOCK_SIZE: u16 type 3, u32 minimum, preferred, maximum (14 bytes)', () => {
  const sizes = { minimum: 512, preferred: 4096, maximum: 32 * 1024 * 1024 };
  const b = encodeInfoBlockSize(sizes);
  assert.equal(b.toString('hex'), '0003' + '00000200' + '00001000' + '02000000');
  assert.deepEqual(decodeInfoReply(b), { type: NBD_INFO_BLOCK_SIZE, sizes });
  assert.deepEqual(decodeInfoReply(encodeInfoBlockSize({ minimum: 1, preferred: 512, maximum: 0xffffffff })),
    { type: NBD_INFO_BLOCK_SIZE, sizes: { minimum: 1, preferred: 512, maximum: 0xffffffff } });
});

test('NBD_INFO_BLOCK_SIZE outside the spec\'s bounds is refused', () => {
  const bad = (minimum: number, preferred: number, maximum: number) => decodeInfoReply(encodeInfoBlockSize({ minimum, preferred, maximum }));
  assert.match(bad(3, 4096, 4096) as string, /minimum block size of 3/);
  assert.match(bad(131072, 131072, 131072) as string, /minimum block size/);
  assert.match(bad(512, 256, 4096) as string, /preferred block size of 256/);
  assert.match(bad(512, 4096, 1000) as string, /maximum payload of 1000/);
});

test('NBD_INFO_NAME and DESCRIPTION: u16 type, then the text; unknown types are ignored', () => {
  const name = encodeInfoString(NBD_INFO_NAME, 'disk');
  assert.equal(name.toString('hex'), '0001' + '6469736b');
  assert.deepEqual(decodeInfoReply(name), { type: NBD_INFO_NAME, text: 'disk' });
  assert.deepEqual(decodeInfoReply(encodeInfoString(NBD_INFO_DESCRIPTION, '')), { type: NBD_INFO_DESCRIPTION, text: '' });
  assert.deepEqual(decodeInfoReply(Buffer.from('00630000', 'hex')), { type: 'unknown' });
  assert.match(decodeInfoReply(Buffer.alloc(1)) as string, /shorter than its type/);
});
