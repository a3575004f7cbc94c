import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import type { Qcow2Node } from '../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../src/registry/index.js';
import { vdisk } from './cli.js';
import { makeTmpDir } from './tmp.js';

/*
 * The qcow2 driver's unit tests, on images `vdisk create` makes: open, read back, check.
 */

/** A new qcow2 (`-o options`) in a directory removed after the test, and a way to open it. */
export async function newQcow2(t: TestContext, options: string, size: number, prefix = 'vdisk-qcow2-'): Promise<{ path: string; node: () => Promise<Qcow2Node> }> {
  const tmp = await makeTmpDir(prefix);
  t.after(() => tmp.cleanup());
  const path = tmp.path('image.qcow2');
  const r = await vdisk(['create', '-q', '-f', 'qcow2', '-o', options, path, String(size)]);
  assert.equal(r.code, 0, r.stderr);
  return { path, node: async () => (await open(path, { format: 'qcow2' })) as Qcow2Node };
}

/** `length` guest bytes from `offset`. */
export async function readAll(node: Qcow2Node, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await node.read(offset, out);
  return out;
}

/** The driver's own check finds no corruption, no check errors, and exactly `leaks` leaked clusters. */
export async function assertClean(node: Qcow2Node, what: string, leaks = 0): Promise<void> {
  const r = await node.check();
  assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, leaks, 0], `${what}: ${r.messages.join('; ')}`);
}
