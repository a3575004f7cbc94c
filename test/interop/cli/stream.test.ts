import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { needTools, qemuImgMap, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { assertChecks, assertSameContent, info } from './image-tools.js';
import { interruptWhenMoving, triplets as makeTriplets, type ChainOptions } from './job-chains.js';

const MiB = 1024 * 1024;
const KiB = 1024;

/**
 * vdisk stream against qemu-img rebase -b '' (which copies the same) on copies of chains built by
 * qemu-img and qemu-io: the image reads as the chain did (qemu-img compare), its link is gone or
 * points at the base, all-zero data in the chain became zero clusters, and qemu-img check passes.
 */
describe('vdisk stream', () => {
  let tmp: TmpDir;
  let serial = 0;
  const triplets = (opts: ChainOptions = {}) => makeTriplets(tmp.path(`chain${serial++}`), opts);
  const at = (dir: string, name = 'top.qcow2') => path.join(dir, name);
  /** Whether [start, start+length) of a map is all zero and no data. */
  const zeroNoData = (map: Awaited<ReturnType<typeof qemuImgMap>>, start: number, length: number) =>
    map.filter((e) => e.start < start + length && start < e.start + e.length).every((e) => e.zero && !e.data);

  before(async () => {
    tmp = await makeTmpDir('vdisk-stream-');
  });
  after(async () => tmp.cleanup());

  it('copies the whole chain into the image and drops the link, as qemu-img rebase -b \'\' ends up', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const r = await vdisk(['stream', at(dirs.ours)]);
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    await runOk('qemu-img', ['rebase', '-q', '-b', '', at(dirs.qemu)]);
    const i = await info(at(dirs.ours));
    assert.equal(i['backing-filename'], undefined);
    assert.equal(i['full-backing-filename'], undefined);
    await assertSameContent(at(dirs.ours), at(dirs.orig));
    await assertSameContent(at(dirs.ours), at(dirs.qemu));
    await assertChecks(at(dirs.ours));
    const map = await qemuImgMap(at(dirs.ours), 'qcow2');
    // Everything is the image's own now; mid's all-zero data became a zero cluster, not data.
    assert.ok(map.every((e) => e.depth === 0), JSON.stringify(map));
    assert.ok(zeroNoData(map, 5 * MiB, 256 * KiB), JSON.stringify(map));
    // The backing files are untouched.
    for (const f of ['mid.qcow2', 'base.qcow2']) assert.equal((await run('cmp', [at(dirs.ours, f), at(dirs.orig, f)])).code, 0, f);
  });

  it('--base BASE copies what lies above BASE and links the image to it', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const r = await vdisk(['stream', '--base', 'base.qcow2', at(dirs.ours)]);
    assert.equal(r.code, 0, r.stderr);
    const i = await info(at(dirs.ours));
    assert.equal(i['backing-filename'], 'base.qcow2');
    assert.equal(i['backing-filename-format'], 'qcow2');
    await assertSameContent(at(dirs.ours), at(dirs.orig));
    await assertChecks(at(dirs.ours));
    const map = await qemuImgMap(at(dirs.ours), 'qcow2');
    // mid's explicit zeros over the base's data are zeros of the image's own now.
    assert.ok(map.filter((e) => e.start >= 4 * MiB && e.start < 4.5 * MiB).every((e) => e.depth === 0 && e.zero && !e.data), JSON.stringify(map));
    // What only the base holds stays there.
    assert.ok(map.some((e) => e.start === 64 * KiB && e.depth === 1 && e.data), JSON.stringify(map));
  });

  it('--base names the base relative to the image that names it, and the new link is relative to the image', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    // The top moves up a directory: its link to mid becomes vdisk/mid.qcow2; mid still names base.qcow2.
    const top = path.join(path.dirname(dirs.ours), 'top.qcow2');
    await runOk('cp', [at(dirs.ours), top]);
    await runOk('qemu-img', ['rebase', '-u', '-F', 'qcow2', '-b', 'vdisk/mid.qcow2', top]);
    const r = await vdisk(['stream', '--base', 'base.qcow2', top]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await info(top))['backing-filename'], 'vdisk/base.qcow2');
    await assertSameContent(top, at(dirs.orig));
    await assertChecks(top);
  });

  it('a raw base: its holes read as zeros, which need no copy once the link is gone', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets({ baseFormat: 'raw' });
    const r = await vdisk(['stream', at(dirs.ours)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await info(at(dirs.ours)))['backing-filename'], undefined);
    await assertSameContent(at(dirs.ours), at(dirs.orig));
    await assertChecks(at(dirs.ours));
  });

  it('--base over a layer shorter than its backing file is refused before the link changes; without a base it streams', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    // mid ends at 5 MiB: the top reads zeros from there on, where the base holds data at 6 MiB.
    for (const d of [dirs.orig, dirs.ours]) await runOk('qemu-img', ['resize', '-q', '--shrink', path.join(d, 'mid.qcow2'), '5M']);
    const r = await vdisk(['stream', '--base', 'base.qcow2', at(dirs.ours)]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vdisk stream: Cannot stream into '.*top\.qcow2' while keeping a base: a backing file above the base is shorter than its own backing file/);
    assert.equal((await info(at(dirs.ours)))['backing-filename'], 'mid.qcow2');
    await assertSameContent(at(dirs.ours), at(dirs.orig));
    await assertChecks(at(dirs.ours));
    const whole = await vdisk(['stream', at(dirs.ours)]);
    assert.equal(whole.code, 0, whole.stderr);
    await assertSameContent(at(dirs.ours), at(dirs.orig));
  });

  it('an image without a backing file is left as it is', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const r = await vdisk(['stream', at(dirs.ours, 'base.qcow2')]);
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    assert.equal((await run('cmp', [at(dirs.ours, 'base.qcow2'), at(dirs.orig, 'base.qcow2')])).code, 0);
  });

  it('-p shows progress, --output=json the job, as commit does', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const r = await vdisk(['stream', '-p', at(dirs.ours)]);
    assert.equal(r.code, 0, r.stderr);
    // Not a terminal: qemu-img's progress lines.
    assert.match(r.stdout, /^ {4}\(0\.00\/100%\)\r.* {4}\(100\.00\/100%\)\r\n$/s);
    const again = await triplets();
    const j = await vdisk(['stream', '--output=json', '--base', 'mid.qcow2', at(again.ours)]);
    assert.equal(j.code, 0, j.stderr);
    const lines = j.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines[0]!.status, 'running');
    assert.deepEqual(lines.at(-1), { id: lines[0]!.id, type: 'stream', status: 'concluded', 'current-progress': 8 * MiB, 'total-progress': 8 * MiB });
  });

  it('refuses a base not in the chain, bad rates and operands, changing nothing', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const dirs = await triplets();
    const cases: [string[], string][] = [
      [['--base', 'nope.qcow2', at(dirs.ours)], `Did not find 'nope.qcow2' in the backing chain of '${at(dirs.ours)}'`],
      [['--base', 'top.qcow2', at(dirs.ours)], `Did not find 'top.qcow2' in the backing chain of '${at(dirs.ours)}'`],
      [['-r', 'x', at(dirs.ours)], 'Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.'],
      [[], 'Expecting one image file name'],
      [['a', 'b'], 'Expecting one image file name'],
    ];
    for (const [args, message] of cases) {
      const r = await vdisk(['stream', ...args]);
      assert.deepEqual([r.code, r.stderr], [1, `vdisk stream: ${message}\n`], args.join(' '));
    }
    for (const f of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) assert.equal((await run('cmp', [at(dirs.ours, f), at(dirs.orig, f)])).code, 0, f);
  });
});

test('Ctrl-C stops a stream between requests: the image checks clean, reads as before and keeps its link', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const tmp = await makeTmpDir('vdisk-stream-cancel-');
  t.after(() => tmp.cleanup());
  const at = (name: string) => tmp.path(name);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', at('base.qcow2'), '32M']);
  await runOk('qemu-io', ['-c', 'write -P 1 0 24M', '-c', 'write -P 0 24M 4M', at('base.qcow2')]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('top.qcow2'), '32M']);
  await runOk('qemu-io', ['-c', 'write -P 2 8M 1M', at('top.qcow2')]);
  await runOk('qemu-img', ['convert', '-O', 'raw', at('top.qcow2'), at('before.raw')]);

  // At 4 MiB/s the 27 MiB take seven seconds: the stream is surely running when interrupted.
  const r = await interruptWhenMoving(['stream', '-p', '-r', '4M', at('top.qcow2')]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stderr, 'vdisk stream: The job was cancelled: interrupted by SIGINT\n');
  assert.ok(!r.stdout.includes('(100.00/100%)'));
  await assertChecks(at('top.qcow2'));
  assert.equal((await info(at('top.qcow2')))['backing-filename'], 'base.qcow2');
  await assertSameContent(at('top.qcow2'), at('before.raw'), ['qcow2', 'raw']);
  // Some of the base's data was copied, not all of it.
  const own = (await qemuImgMap(at('top.qcow2'), 'qcow2')).filter((e) => e.depth === 0 && e.data && e.start !== 8 * MiB);
  const copied = own.reduce((n, e) => n + e.length, 0);
  assert.ok(copied > 0 && copied < 24 * MiB, `${copied} bytes copied`);
});
