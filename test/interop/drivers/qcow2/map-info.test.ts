/**
 * `vdisk map --output=json` and `vdisk info --output=json` against qemu-img on every qcow2 fixture
 * variant. Map rows are compared field by field so a failure names the first row that differs;
 * info is compared whole, on purpose: any field vdisk leaves out or words differently is a
 * visible decision, not an accident.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MapEntry } from '../../../../src/cli/map.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, runOk } from '../../../helpers/oracles.js';
import { QCOW2_VARIANTS, buildVariant } from '../../../helpers/qcow2-images.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

const FIELDS = ['start', 'length', 'depth', 'present', 'zero', 'data'] as const;

/** Fails on the first row where vdisk and qemu-img differ; `offset` counts only where qemu prints one. */
function assertSameMap(ours: MapEntry[], theirs: MapEntry[], what: string): void {
  for (let i = 0; i < Math.max(ours.length, theirs.length); i++) {
    const [a, b] = [ours[i], theirs[i]];
    const differs = !a || !b || FIELDS.some((f) => a[f] !== b[f]) || (b.offset !== undefined && a.offset !== b.offset);
    if (differs) {
      assert.fail(`${what}: map row ${i} differs (${ours.length} rows from vdisk, ${theirs.length} from qemu-img)\n` +
        `  vdisk:    ${JSON.stringify(a)}\n  qemu-img: ${JSON.stringify(b)}`);
    }
  }
}

describe('vdisk map and info against qemu-img, qcow2', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-map-')));
  after(async () => tmp.cleanup());

  for (const variant of QCOW2_VARIANTS) {
    it(variant.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const img = await buildVariant(tmp.dir, variant);
      // Written-back files only: until writeback, st_blocks and SEEK_DATA move under both tools
      // (QEMU's metadata-preallocation guess reads st_blocks), so two maps a moment apart differ.
      await runOk('sync', ['-f', img.path]);
      // qemu-img first, before anything reads the image: QEMU's map looks at the host file's
      // holes, and on ext4 reading an unwritten extent turns it into data in SEEK_DATA's eyes.
      const mapTheirs = JSON.parse(await runOk('qemu-img', ['map', '--output=json', img.path])) as MapEntry[];
      const infoTheirs: unknown = JSON.parse(await runOk('qemu-img', ['info', '--output=json', img.path]));

      await t.test('map --output=json', async () => {
        const ours = await vdisk(['map', '--output=json', img.path]);
        assert.equal(ours.code, 0, `vdisk map failed: ${ours.stderr}`);
        assertSameMap(JSON.parse(ours.stdout) as MapEntry[], mapTheirs, `${variant.name} (${img.description})`);
      });

      await t.test('info --output=json', async () => {
        const ours = await vdisk(['info', '--output=json', img.path]);
        assert.equal(ours.code, 0, `vdisk info failed: ${ours.stderr}`);
        assert.deepEqual(JSON.parse(ours.stdout), infoTheirs,
          `${variant.name}: vdisk info --output=json must equal qemu-img info --output=json as a whole object ` +
          '(to relax a field, the lead decides and names it here)');
      });

      await t.test('info --backing-chain, human and json', async () => {
        for (const output of ['json', 'human']) {
          const args = ['info', '--backing-chain', `--output=${output}`, img.path];
          const theirs = await runOk('qemu-img', args);
          const ours = await vdisk(args);
          assert.equal(ours.code, 0, `vdisk info --backing-chain failed: ${ours.stderr}`);
          if (output === 'json') assert.deepEqual(JSON.parse(ours.stdout), JSON.parse(theirs), `${variant.name}: --backing-chain json`);
          // actual-size differs only if the files change between the two runs; they do not here.
          else assert.equal(ours.stdout, theirs, `${variant.name}: --backing-chain human`);
        }
      });
    });
  }
});
