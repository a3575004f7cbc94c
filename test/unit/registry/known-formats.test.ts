import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { open, registry } from '../../../src/registry/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';

/** Starts of real images of formats vdisk does not open yet (magics from their specifications). */
function header(format: string): Uint8Array {
  const h = new Uint8Array(2048);
  const put = (at: number, text: string) => h.set(Array.from(text, (c) => c.charCodeAt(0)), at);
  const dv = new DataView(h.buffer);
  switch (format) {
    case 'qcow2': put(0, 'QFI\xfb'); dv.setUint32(4, 3); break;
    case 'qcow': put(0, 'QFI\xfb'); dv.setUint32(4, 1); break;
    case 'qed': put(0, 'QED\0'); break;
    case 'vmdk': put(0, '# Disk DescriptorFile\nversion=1\n'); break;
    case 'vdi': dv.setUint32(64, 0xbeda107f, true); break;
    case 'vhdx': put(0, 'vhdxfile'); break;
    case 'vpc': put(0, 'conectix'); break;
    case 'luks': put(0, 'LUKS\xba\xbe'); break;
  }
  return h;
}

test('formats vdisk cannot open yet still probe as themselves, never as raw', () => {
  for (const f of ['qcow2', 'qcow', 'qed', 'vmdk', 'vdi', 'vhdx', 'vpc', 'luks']) assert.equal(registry.probe(header(f)), f);
  assert.equal(registry.probe(header('none')), 'raw');
});

test('opening one without -f is one clear E_UNSUPPORTED_FEATURE line; -f raw still opens the bytes', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const f = tmp.path('image.vhdx');
  await writeFile(f, header('vhdx'));
  await assert.rejects(open(f), (e: unknown) => e instanceof BlockError && e.code === 'E_UNSUPPORTED_FEATURE'
    && /is a vhdx image, which vdisk cannot open yet/.test(e.message) && !e.message.includes('\n'));
  const raw = await open(f, { format: 'raw', readOnly: true });
  assert.equal(raw.driver, 'raw');
  await raw.close();
});

test('a child spec with a filename and no driver is a file; -f file opens the protocol alone', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const f = tmp.path('plain.img');
  await writeFile(f, new Uint8Array(4096).fill(7));
  const viaDotted = await open({ driver: 'raw', 'file.filename': f, 'read-only': true });
  assert.equal(viaDotted.file?.driver, 'file');
  await viaDotted.close();
  const proto = await open(f, { format: 'file', readOnly: true });
  assert.equal(proto.driver, 'file');
  assert.equal(proto.size, 4096);
  await proto.close();
});
