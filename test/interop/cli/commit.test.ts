import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { allocatedBytes, haveTool, needTools, qemuImgMap, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { assertChecks, assertOneLineError, assertSameContent, info } from './image-tools.js';
import { interruptWhenMoving, triplets as makeTriplets, type ChainOptions } from './job-chains.js';

const MiB = 1024 * 1024;
const KiB = 1024;

/**
 * vdisk commit against qemu-img commit on twin copies of the same chains (built by qemu-img and
 * qemu-io only): the same exit status and output, the base reading what the top read before,
 * zeros committed as zero clusters or holes (where qemu-img writes zero-filled data), the top
 * emptied as qemu-img empties it, and every image passing qemu-img check.
 */
describe('vdisk commit against qemu-img commit', () => {
  let tmp: TmpDir;
  let serial = 0;

  const triplets = (opts: ChainOptions = {}) => makeTriplets(tmp.path(`chain${serial++}`), opts);

  /** Runs qemu-img commit and vdisk commit with the same arguments; both must agree on status and stdout. */
  async function both(dirs: { qemu: string; ours: string }, args: string[], image = 'top.qcow2') {
    const theirs = await run('qemu-img', ['commit', ...args, path.join(dirs.qemu, image)]);
    const ours = await vdisk(['commit', ...args, path.join(dirs.ours, image)]);
    assert.equal(ours.code, theirs.code, `exit status: vdisk ${ours.code} (${ours.stderr.trim()}), qemu-img ${theirs.code} (${theirs.stderr.trim()})`);
    assert.equal(ours.stdout, theirs.stdout, 'stdout');
    if (ours.code !== 0) assertOneLineError(ours, theirs);
    return { theirs, ours };
  }

  /** The extents of `file` that the image itself holds (depth 0) as data. */
  const ownData = async (file: string) => (await qemuImgMap(file, 'qcow2')).filter((e) => e.depth === 0 && e.data);
  /** Whether [start, start+length) of a map is all zero and no data. */
  const zeroNoData = (map: Awaited<ReturnType<typeof qemuImgMap>>, start: number, length: number) =>
    map.filter((e) => e.start < start + length && start < e.start + e.length).every((e) => e.zero && !e.data);

  before(async () => {
    tmp = await makeTmpDir('vdisk-commit-');
  });
  after(async () => tmp.cleanup());

  it('commits into the backing file: the base reads what the top read, zeros are zero clusters, the top is empty', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const r = await both(dirs, []);
    assert.equal(r.ours.stdout, 'Image committed.\n');
    const mid = path.join(dirs.ours, 'mid.qcow2');
    await assertSameContent(mid, path.join(dirs.orig, 'top.qcow2'));
    await assertSameContent(mid, path.join(dirs.qemu, 'mid.qcow2'));
    const map = await qemuImgMap(mid, 'qcow2');
    // The explicit zero cluster and the all-zero data of the top: zeros in the base, not data
    // (qemu-img writes the second as zero-filled data).
    assert.ok(zeroNoData(map, 0, 64 * KiB), `explicit zeros: ${JSON.stringify(map)}`);
    assert.ok(zeroNoData(map, 6 * MiB, 256 * KiB), `all-zero data: ${JSON.stringify(map)}`);
    // The top is empty, as qemu-img's is: nothing of its own, its backing link unchanged.
    const top = path.join(dirs.ours, 'top.qcow2');
    assert.deepEqual((await qemuImgMap(top, 'qcow2')).filter((e) => e.depth === 0 && e.present), []);
    assert.deepEqual((await qemuImgMap(path.join(dirs.qemu, 'top.qcow2'), 'qcow2')).filter((e) => e.depth === 0 && e.present), []);
    assert.equal((await info(top))['backing-filename'], 'mid.qcow2');
    // The freed clusters are given back to the file system (punched), as QEMU's emptying does.
    const used = async (dir: string) => (await info(path.join(dir, 'top.qcow2')))['actual-size'] as number;
    assert.ok(await used(dirs.ours) <= (await used(dirs.orig)) - MiB, `top uses ${await used(dirs.ours)} bytes, was ${await used(dirs.orig)}`);
    await assertSameContent(top, path.join(dirs.orig, 'top.qcow2'));
    for (const f of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) await assertChecks(path.join(dirs.ours, f));
  });

  it('into qcow2 bases with extended L2 or 2 MiB clusters: the base reads what the top read, checks clean, takes no more disk than qemu-img\'s', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    for (const [i, opts] of ['extended_l2=on', 'cluster_size=2M', 'cluster_size=2M,extended_l2=on'].entries()) {
      const dir = tmp.path(`big${i}`);
      await runOk('mkdir', ['-p', `${dir}/orig`, `${dir}/ours`, `${dir}/qemu`]);
      const at = (name: string) => path.join(dir, 'orig', name);
      // The base holds data the top partly overwrites (written in place) and data it leaves.
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, at('base.qcow2'), '16M']);
      await runOk('qemu-io', ['-c', 'write -P 1 0 3M', '-c', 'write -P 2 12M 1M', at('base.qcow2')]);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('top.qcow2'), '16M']);
      // Data with a zero 4 KiB block inside, an unaligned piece, a zero write over the base's
      // data, all-zero data, and data crossing 2 MiB boundaries.
      await runOk('qemu-io', ['-c', 'write -P 3 1M 1M', '-c', 'write -P 0 1100k 4k', '-c', `write -P 4 ${5 * MiB + 512} 3000`, '-c', 'write -z 2M 256k',
        '-c', 'write -P 0 8M 256k', '-c', 'write -P 5 3968k 4M', at('top.qcow2')]);
      for (const d of ['ours', 'qemu']) for (const f of ['base.qcow2', 'top.qcow2']) await runOk('cp', [at(f), path.join(dir, d, f)]);
      const r = await both({ qemu: path.join(dir, 'qemu'), ours: path.join(dir, 'ours') }, []);
      assert.equal(r.ours.stdout, 'Image committed.\n');
      const base = path.join(dir, 'ours', 'base.qcow2');
      await assertSameContent(base, at('top.qcow2'));
      await assertSameContent(base, path.join(dir, 'qemu', 'base.qcow2'));
      await assertChecks(base);
      const [ours, theirs] = [await allocatedBytes(base), await allocatedBytes(path.join(dir, 'qemu', 'base.qcow2'))];
      t.diagnostic(`${opts}: vdisk's base ${ours} B on disk, qemu-img's ${theirs} B`);
      assert.ok(ours <= theirs, `${opts}: vdisk's base takes ${ours} B, qemu-img's ${theirs} B`);
    }
  });

  it('-d keeps the top as it is', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    await both(dirs, ['-d', '-q']);
    await assertSameContent(path.join(dirs.ours, 'mid.qcow2'), path.join(dirs.orig, 'top.qcow2'));
    assert.deepEqual(await ownData(path.join(dirs.ours, 'top.qcow2')), await ownData(path.join(dirs.orig, 'top.qcow2')));
    await assertChecks(path.join(dirs.ours, 'mid.qcow2'));
  });

  it('-b BASE commits everything above BASE and implies -d', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    await both(dirs, ['-b', 'base.qcow2']);
    const base = path.join(dirs.ours, 'base.qcow2');
    await assertSameContent(base, path.join(dirs.orig, 'top.qcow2'));
    await assertSameContent(base, path.join(dirs.qemu, 'base.qcow2'));
    const map = await qemuImgMap(base, 'qcow2');
    // mid's explicit zeros and all-zero data, and the top's zeros, became zero clusters (over the base's data, some).
    assert.ok(zeroNoData(map, 4 * MiB, 512 * KiB) && zeroNoData(map, 5 * MiB, 256 * KiB) && zeroNoData(map, 0, 64 * KiB) && zeroNoData(map, 6 * MiB, 256 * KiB), JSON.stringify(map));
    // -b implies -d: the top keeps its data, the mid is not touched, the links stay.
    assert.deepEqual(await ownData(path.join(dirs.ours, 'top.qcow2')), await ownData(path.join(dirs.orig, 'top.qcow2')));
    assert.equal((await info(path.join(dirs.ours, 'top.qcow2')))['backing-filename'], 'mid.qcow2');
    await assertSameContent(path.join(dirs.ours, 'top.qcow2'), path.join(dirs.orig, 'top.qcow2'));
    for (const f of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) await assertChecks(path.join(dirs.ours, f));
  });

  it('-b names the base as qemu-img finds it: relative to the image naming it, ./ and absolute paths alike', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    await both(dirs, ['-q', '-b', './mid.qcow2']);
    await assertSameContent(path.join(dirs.ours, 'mid.qcow2'), path.join(dirs.orig, 'top.qcow2'));
    const again = await triplets();
    const ours = await vdisk(['commit', '-q', '-b', path.join(again.ours, 'base.qcow2'), path.join(again.ours, 'top.qcow2')]);
    assert.equal(ours.code, 0, ours.stderr);
    await assertSameContent(path.join(again.ours, 'base.qcow2'), path.join(again.orig, 'top.qcow2'));
  });

  it('a raw base gets holes for zeros', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets({ baseFormat: 'raw' });
    await both(dirs, ['-q', '-b', 'base.raw']);
    const base = path.join(dirs.ours, 'base.raw');
    await assertSameContent(base, path.join(dirs.orig, 'top.qcow2'), ['raw', 'qcow2']);
    const map = await qemuImgMap(base, 'raw');
    assert.ok(zeroNoData(map, 0, 64 * KiB) && zeroNoData(map, 6 * MiB, 256 * KiB) && zeroNoData(map, 4 * MiB, 512 * KiB), JSON.stringify(map));
  });

  it('a base smaller than the top grows to the top\'s size', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    // mid is made shorter than the top: the commit into it must grow it, as qemu-img's does.
    for (const d of [dirs.qemu, dirs.ours]) await runOk('qemu-img', ['resize', '-q', '--shrink', path.join(d, 'mid.qcow2'), '5M']);
    const r = await both(dirs, []);
    assert.equal(r.ours.code, 0);
    const mid = path.join(dirs.ours, 'mid.qcow2');
    assert.equal((await info(mid))['virtual-size'], 8 * MiB);
    await assertSameContent(mid, path.join(dirs.qemu, 'mid.qcow2'));
    await assertChecks(mid);
  });

  it('a layer between shorter than its backing file: its zeros past the end are committed, as qemu-img commits them', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    // mid ends at 5 MiB: the top reads zeros from there on, where the base holds data at 6 MiB.
    for (const d of [dirs.orig, dirs.qemu, dirs.ours]) await runOk('qemu-img', ['resize', '-q', '--shrink', path.join(d, 'mid.qcow2'), '5M']);
    await both(dirs, ['-q', '-b', 'base.qcow2']);
    await assertSameContent(path.join(dirs.ours, 'base.qcow2'), path.join(dirs.orig, 'top.qcow2'));
    await assertSameContent(path.join(dirs.ours, 'base.qcow2'), path.join(dirs.qemu, 'base.qcow2'));
  });

  it('a v2 top is emptied too (no zero flag: its clusters are freed)', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets({ topCompat: '0.10' });
    await both(dirs, []);
    const top = path.join(dirs.ours, 'top.qcow2');
    assert.deepEqual((await qemuImgMap(top, 'qcow2')).filter((e) => e.depth === 0 && e.present), []);
    await assertSameContent(path.join(dirs.ours, 'mid.qcow2'), path.join(dirs.orig, 'top.qcow2'));
    await assertChecks(top);
  });

  it('-p shows qemu-img\'s progress lines; --output=json shows the job', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const ours = await vdisk(['commit', '-p', path.join(dirs.ours, 'top.qcow2')]);
    assert.equal(ours.code, 0, ours.stderr);
    assert.match(ours.stdout, /^ {4}\(0\.00\/100%\)\r/);
    assert.match(ours.stdout, / {4}\(100\.00\/100%\)\r\nImage committed\.\n$/);
    const json = await triplets();
    const r = await vdisk(['commit', '--output=json', path.join(json.ours, 'top.qcow2')]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines[0]!.status, 'running');
    assert.deepEqual(lines.at(-1), { id: lines[0]!.id, type: 'commit', status: 'concluded', 'current-progress': 8 * MiB, 'total-progress': 8 * MiB });
  });

  it('-r limits the rate of data copied', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    // The top and mid hold 2.3 MiB of data above the base; at 4 MiB/s the copy takes over half a second.
    const started = performance.now();
    const r = await vdisk(['commit', '-q', '-r', '4M', '-b', 'base.qcow2', path.join(dirs.ours, 'top.qcow2')]);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(r.code, 0, r.stderr);
    assert.ok(seconds >= 0.25, `took ${seconds} s`);
    await assertSameContent(path.join(dirs.ours, 'base.qcow2'), path.join(dirs.orig, 'top.qcow2'));
  });

  const REFUSED: { name: string; args: string[]; image?: string }[] = [
    { name: 'an image without a backing file', args: [], image: 'base.qcow2' },
    { name: 'a base not in the chain', args: ['-b', 'nope.qcow2'] },
    { name: 'the top as its own base', args: ['-b', 'top.qcow2'] },
    { name: 'a raw top (no backing file)', args: ['-f', 'raw'] },
    { name: 'a bad rate', args: ['-r', '1x'] },
    { name: 'a negative rate', args: ['-r', '-1'] },
    { name: 'a bad cache mode', args: ['-t', 'foo'] },
  ];
  for (const c of REFUSED) {
    it(`refuses ${c.name} as qemu-img does, changing nothing`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const dirs = await triplets();
      const r = await both(dirs, c.args, c.image);
      assert.equal(r.ours.code, 1);
      const words = (s: string) => s.split('\n')[0]!.replace(/^(qemu-img|vdisk commit): /, '').replace(dirs.qemu, 'DIR').replace(dirs.ours, 'DIR');
      // qemu-img splits its long messages over two lines; vdisk keeps one.
      assert.ok(words(r.ours.stderr).startsWith(words(r.theirs.stderr)), `vdisk: ${r.ours.stderr} qemu-img: ${r.theirs.stderr}`);
      for (const f of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) {
        const same = await run('cmp', [path.join(dirs.ours, f), path.join(dirs.orig, f)]);
        assert.equal(same.code, 0, `${f} unchanged`);
      }
    });
  }

  it('refuses missing and extra operands', async (t) => {
    if (!haveTool('qemu-img')) return t.skip('needs qemu-img');
    for (const args of [[], ['a', 'b']]) {
      const r = await vdisk(['commit', ...args]);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, 'vdisk commit: Expecting one image file name\n');
    }
  });
});

test('Ctrl-C stops a commit between requests: both images check clean, the base holds old or new bytes per cluster, the top is whole', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const tmp = await makeTmpDir('vdisk-commit-cancel-');
  t.after(() => tmp.cleanup());
  const at = (name: string) => tmp.path(name);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', at('base.qcow2'), '32M']);
  await runOk('qemu-io', ['-c', 'write -P 1 0 32M', at('base.qcow2')]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('top.qcow2'), '32M']);
  await runOk('qemu-io', ['-c', 'write -P 2 0 24M', '-c', 'write -z 24M 4M', at('top.qcow2')]);
  for (const f of ['base', 'top']) await runOk('qemu-img', ['convert', '-O', 'raw', at(`${f}.qcow2`), at(`${f}-before.raw`)]);

  // At 4 MiB/s the 24 MiB take six seconds: the commit is surely running when interrupted.
  const { code, stdout, stderr } = await interruptWhenMoving(['commit', '-p', '-r', '4M', at('top.qcow2')]);
  assert.equal(code, 1, stderr);
  assert.equal(stderr, 'vdisk commit: The job was cancelled: interrupted by SIGINT\n');
  assert.ok(!stdout.includes('Image committed.'));

  for (const f of ['base', 'top']) await assertChecks(at(`${f}.qcow2`));
  // The top was not emptied: it reads as before.
  await assertSameContent(at('top.qcow2'), at('top-before.raw'), ['qcow2', 'raw']);
  // Each cluster of the base holds what it held, or what the top held there: never a mix, never other bytes.
  await runOk('qemu-img', ['convert', '-O', 'raw', at('base.qcow2'), at('base-after.raw')]);
  const [now, oldBase, oldTop] = await Promise.all(['base-after', 'base-before', 'top-before'].map((f) => readFile(at(`${f}.raw`))));
  const cluster = 64 * KiB;
  let committed = 0;
  for (let pos = 0; pos < now!.byteLength; pos += cluster) {
    const got = now!.subarray(pos, pos + cluster);
    const isNew = got.equals(oldTop!.subarray(pos, pos + cluster));
    assert.ok(isNew || got.equals(oldBase!.subarray(pos, pos + cluster)), `cluster at ${pos} holds other bytes`);
    if (isNew && !got.equals(oldBase!.subarray(pos, pos + cluster))) committed++;
  }
  assert.ok(committed > 0 && committed < (24 * MiB) / cluster, `${committed} clusters committed`);
});
