/**
 * The qcow2 fixture builders themselves, judged by QEMU alone: every image must pass
 * `qemu-img check` (or fail it exactly as intended), carry the options its builder asked for, and
 * show in `qemu-img map` the kinds of range it exists to exercise. This passes without vdisk's
 * qcow2 driver, so a read-matrix failure later points at the driver, not at the fixture.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MapEntry } from '../../../../src/cli/map.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { QCOW2_VARIANTS, buildVariant, rowKinds } from '../../../helpers/qcow2-images.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/** Fails unless every field of `expected` (recursively) is in `actual` with the same value. */
function assertSubset(actual: unknown, expected: unknown, where: string): void {
  if (expected !== null && typeof expected === 'object' && !Array.isArray(expected)) {
    assert.ok(actual !== null && typeof actual === 'object', `${where}: expected an object, got ${JSON.stringify(actual)}`);
    for (const [k, v] of Object.entries(expected)) assertSubset((actual as Record<string, unknown>)[k], v, `${where}.${k}`);
  } else {
    assert.deepEqual(actual, expected, where);
  }
}

describe('qcow2 fixture builders, checked by qemu-img', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-builders-')));
  after(async () => tmp.cleanup());

  it('variant names are unique (each builds in a directory named after it)', () => {
    const names = QCOW2_VARIANTS.map((v) => v.name);
    assert.deepEqual([...new Set(names)], names);
  });

  for (const variant of QCOW2_VARIANTS) {
    it(variant.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const img = await buildVariant(tmp.dir, variant);
      assert.equal(img.format, 'qcow2');

      // Map before anything reads the image: QEMU's map can consult the host file's holes.
      const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'qcow2', img.path])) as MapEntry[];
      const seen = new Set(map.flatMap(rowKinds));
      for (const kind of img.shows) assert.ok(seen.has(kind), `${variant.name}: qemu-img map shows no '${kind}' row:\n${JSON.stringify(map, null, 1)}`);

      const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '-f', 'qcow2', img.path])) as Record<string, unknown>;
      assertSubset(info, img.intended, `${variant.name}: qemu-img info`);
      const snapshots = (info.snapshots as { id: string; name: string }[] | undefined ?? []).map(({ id, name }) => ({ id, name }));
      assert.deepEqual(snapshots, img.snapshots ?? [], `${variant.name}: internal snapshots`);

      const check = await run('qemu-img', ['check', '--output=json', '-f', 'qcow2', img.path]);
      assert.equal(check.code, img.checkStatus, `${variant.name}: qemu-img check exit status (${check.stderr.trim()})`);
    });
  }
});
