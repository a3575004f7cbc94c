import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { Qcow2Node } from '../../../src/drivers/format/qcow2/qcow2-node.js';
import { copyImage, type CopyOptions } from '../../../src/jobs/copy-engine.js';
import { open } from '../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { textBytes } from '../../helpers/text-bytes.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { RecordingTarget, ScriptedSource } from './copy-nodes.js';

const KiB = 1024;
const CS = 64 * KiB;

/** Text clusters, a random one, an all-zero data cluster, a zero run, a short text tail. */
function source(): ScriptedSource {
  return new ScriptedSource([
    { data: textBytes(3 * CS, 1) }, { data: pattern(CS, 2) }, { data: new Uint8Array(CS) },
    { zero: 5 * CS + 4 * KiB }, { data: textBytes(2 * CS + 700, 3) },
  ]);
}

async function qcow2(t: TestContext, size: number, extra: string[] = []): Promise<Qcow2Node> {
  const tmp = await makeTmpDir('vdisk-ccopy-');
  t.after(() => tmp.cleanup());
  const path = tmp.path('t.qcow2');
  assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', ...extra, path, String(size)])).code, 0);
  const node = (await open(path, { format: 'qcow2' })) as Qcow2Node;
  t.after(() => node.close());
  return node;
}

function copy(src: ScriptedSource, target: CopyOptions['target'], over: Partial<CopyOptions> = {}): Promise<void> {
  return copyImage({ sources: [src], target, targetIsZero: true, sparseSize: 4 * KiB, inFlight: 4, outOfOrder: false, compressed: true, ...over });
}

async function contents(node: Qcow2Node, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await node.read(0, out);
  return out;
}

/** Per cluster: 'c' compressed, 'd' stored as it is, '-' nothing allocated. */
async function layout(node: Qcow2Node, length: number): Promise<string> {
  let s = '';
  for (let o = 0; o < length; o += CS) {
    const e = await node.blockStatus(o, CS);
    s += e.compressed ? 'c' : e.data ? 'd' : '-';
  }
  return s;
}

test('-c: text clusters compressed, a random one stored as it is, zero clusters left out; in order and out of order', async (t) => {
  for (const outOfOrder of [false, true]) {
    const src = source();
    const node = await qcow2(t, src.size);
    await copy(src, node, { outOfOrder });
    assertBytesEqual(await contents(node, src.size), src.contents(), `contents (-W ${outOfOrder})`);
    // The zero run starts and ends inside clusters shared with data: those are data (compressed zeros and text).
    assert.equal(await layout(node, src.size), 'cccd------ccc', `layout (-W ${outOfOrder})`);
    const r = await node.check();
    assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, 0, 0]);
  }
});

test('-c -S 0: every cluster is written, zeros compressed too', async (t) => {
  const src = source();
  const node = await qcow2(t, src.size);
  await copy(src, node, { sparseSize: 0 });
  assertBytesEqual(await contents(node, src.size), src.contents(), 'contents');
  assert.equal(await layout(node, src.size), 'cccdccccccccc');
});

test('-c into a target that holds data: the clusters the copy writes are zeroed first, the rest kept', async (t) => {
  // (qemu-img 7.2 fails here instead: "error while writing at byte 0: Input/output error".)
  const src = source();
  const node = await qcow2(t, 15 * CS);
  const old = pattern(15 * CS, 9);
  await node.write(0, old);
  await copy(src, node, { targetIsZero: false });
  const expected = old.slice();
  expected.set(src.contents());
  // The source ends inside cluster 12: the rest of that cluster is written too, as zeros.
  expected.fill(0, src.size, 13 * CS);
  assertBytesEqual(await contents(node, 15 * CS), expected, 'contents');
  assert.equal(await layout(node, 15 * CS), 'cccd------cccdd');
  const r = await node.check();
  assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, 0, 0]);
});

test('-c compresses several requests at once and still stores them in order', async (t) => {
  const src = new ScriptedSource([{ data: textBytes(64 * CS, 4) }]);
  const node = await qcow2(t, src.size);
  let running = 0;
  let most = 0;
  const stored: number[] = [];
  const prepare = node.prepareCompressedWrite.bind(node);
  node.prepareCompressedWrite = async (offset, data) => {
    most = Math.max(most, ++running);
    try {
      const w = await prepare(offset, data);
      return { commit: async () => (stored.push(offset), w.commit()) };
    } finally {
      running--;
    }
  };
  await copy(src, node, { inFlight: 4, bufferSize: 4 * CS });
  assert.ok(most >= 2, `compressions at once: ${most}`);
  assert.deepEqual(stored, [...stored].sort((a, b) => a - b), 'stored in target order');
  assertBytesEqual(await contents(node, src.size), src.contents(), 'contents');
});

test('-c into a target that cannot take compressed clusters is refused', async () => {
  const src = source();
  await assert.rejects(copy(src, new RecordingTarget(src.size)), { code: 'ENOTSUP', message: 'Compression not supported for this file format' });
});
