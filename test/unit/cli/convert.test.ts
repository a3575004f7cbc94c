import assert from 'node:assert/strict';
import { readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { textBytes } from '../../helpers/text-bytes.js';
import { makeSparseFile, makeTmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;

test('convert refuses bad options with qemu-img convert\'s one-line messages, before touching anything', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const src = tmp.path('src.raw');
  await writeFile(src, pattern(64 * 1024, 1));
  const dst = tmp.path('dst.img');
  const cases: [string[], string][] = [
    [['-S', '1000', src, dst], 'Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).'],
    [['-S', '32M', src, dst], 'Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).'],
    [['-S', 'abc', src, dst], 'Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.'],
    [['-m', '0', src, dst], 'Invalid number of coroutines. Allowed number of coroutines is between 1 and 16'],
    [['-m', '17', src, dst], 'Invalid number of coroutines. Allowed number of coroutines is between 1 and 16'],
    [['-m', '4x', src, dst], 'Invalid number of coroutines. Allowed number of coroutines is between 1 and 16'],
    [['--target-is-zero', src, dst], '--target-is-zero requires use of -n flag'],
    [['-n', '-o', 'cluster_size=4k', src, dst], '-o has no effect when skipping image creation'],
    [[src], 'Must specify image file name'],
    [['-O', 'nosuch', src, dst], "Unknown file format 'nosuch'"],
    [['-O', 'qcow2', '-o', 'nosuch=1', src, dst], "Invalid parameter 'nosuch'"],
    [['-O', 'qcow2', '-B', src, src, dst], 'Use of backing file requires explicit backing format'],
    [['-O', 'raw', '-B', src, '-F', 'raw', src, dst], "Backing file not supported for file format 'raw'"],
    [['-O', 'qcow2', '-B', src, '-F', 'raw', src, src, dst], 'Having a backing file for the target makes no sense when concatenating multiple input images'],
    [['-O', 'qcow2', '-o', 'cluster_size=3k', src, dst], `${dst}: error while converting qcow2: `],
    [['-n', src, tmp.path('missing.img')], `Could not open '${tmp.path('missing.img')}'`],
    [['-c', src, dst], 'Compression not supported for this file format'],
    [['-c', '-O', 'qcow2', '-o', 'preallocation=metadata', src, dst], 'Compression and preallocation not supported at the same time'],
    [['--output=yaml', src, dst], '--output must be used with human or json as argument.'],
  ];
  for (const [args, message] of cases) {
    const r = await vdisk(['convert', ...args]);
    assert.equal(r.code, 1, args.join(' '));
    assert.ok(r.stderr.startsWith(`vdisk convert: ${message}`), `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.split('\n').length, 2, 'one line');
    await assert.rejects(readFile(dst), { code: 'ENOENT' }, `${args.join(' ')} left no target`);
  }
});

test('a target that is one of the files the sources read is refused, and left intact', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const data = pattern(MiB, 9);
  await writeFile(tmp.path('base.raw'), data);
  assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', tmp.path('top.qcow2')])).code, 0);
  await symlink(tmp.path('base.raw'), tmp.path('alias.raw'));
  for (const args of [
    ['-f', 'raw', tmp.path('base.raw'), tmp.path('base.raw')],
    ['-n', '-f', 'raw', tmp.path('base.raw'), tmp.path('alias.raw')],
    ['-f', 'qcow2', tmp.path('top.qcow2'), tmp.path('base.raw')],
  ]) {
    const r = await vdisk(['convert', ...args]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vdisk convert: Failed to get "write" lock; is another process using the image \[.*\]\?\n$/);
    assertBytesEqual(await readFile(tmp.path('base.raw')), data, args.join(' '));
  }
});

test('convert -n writes into an existing image no smaller than the input, and refuses a smaller one', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const data = pattern(3 * MiB, 2);
  data.fill(0, MiB, 2 * MiB);
  const src = tmp.path('src.raw');
  await writeFile(src, data);
  const small = tmp.path('small.raw');
  await writeFile(small, new Uint8Array(MiB));
  assert.deepEqual(await vdisk(['convert', '-n', src, small]), { code: 1, stdout: '', stderr: 'vdisk convert: output file is smaller than input file\n' });
  const big = tmp.path('big.raw');
  await writeFile(big, new Uint8Array(4 * MiB).fill(0xaa));
  assert.equal((await vdisk(['convert', '-n', src, big])).code, 0);
  const out = await readFile(big);
  assertBytesEqual(out.subarray(0, 3 * MiB), data, 'copied part (zeros written over the old bytes)');
  assert.ok(out.subarray(3 * MiB).every((b) => b === 0xaa), 'past the input the target is untouched');
});

test('raw → qcow2 → raw through vdisk alone keeps every byte; -p prints qemu-img\'s progress lines', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const size = 20 * MiB + 512;
  const a = pattern(MiB + 3, 3);
  const b = pattern(2 * MiB, 4);
  await makeSparseFile(tmp.path('src.raw'), size, [{ offset: 4096, data: a }, { offset: 17 * MiB, data: b }]);
  const q = await vdisk(['convert', '-p', '-O', 'qcow2', tmp.path('src.raw'), tmp.path('mid.qcow2')]);
  assert.equal(q.code, 0, q.stderr);
  assert.match(q.stdout, /^ {4}\(0\.00\/100%\)\r( {4}\(\d+\.\d\d\/100%\)\r)* {4}\(100\.00\/100%\)\r\n$/);
  assert.equal((await vdisk(['convert', '-q', '-f', 'qcow2', tmp.path('mid.qcow2'), tmp.path('out.raw')])).code, 0);
  const out = await readFile(tmp.path('out.raw'));
  assert.equal(out.byteLength, size);
  assertBytesEqual(out, await readFile(tmp.path('src.raw')), 'round trip');
  assert.deepEqual(await vdisk(['compare', tmp.path('src.raw'), tmp.path('mid.qcow2')]), { code: 0, stdout: 'Images are identical.\n', stderr: '' });
});

test('several sources are concatenated into one target', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const parts = [pattern(MiB, 5), pattern(512 * 1024, 6), pattern(3 * MiB, 7)];
  for (const [i, p] of parts.entries()) await writeFile(tmp.path(`p${i}.raw`), p);
  const r = await vdisk(['convert', '-f', 'raw', '-O', 'qcow2', ...parts.map((_, i) => tmp.path(`p${i}.raw`)), tmp.path('all.qcow2')]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await vdisk(['convert', '-f', 'qcow2', tmp.path('all.qcow2'), tmp.path('all.raw')])).code, 0);
  assertBytesEqual(await readFile(tmp.path('all.raw')), Buffer.concat(parts), 'concatenation');
});

test('-c writes compressed clusters; several sources may end inside a cluster', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const parts = [textBytes(100 * 1024 + 512, 1), textBytes(3 * MiB, 2), pattern(64 * 1024, 3)];
  for (const [i, p] of parts.entries()) await writeFile(tmp.path(`p${i}.raw`), p);
  const r = await vdisk(['convert', '-c', '-O', 'qcow2', ...parts.map((_, i) => tmp.path(`p${i}.raw`)), tmp.path('c.qcow2')]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await vdisk(['convert', '-f', 'qcow2', tmp.path('c.qcow2'), tmp.path('c.raw')])).code, 0);
  assertBytesEqual(await readFile(tmp.path('c.raw')), Buffer.concat(parts), 'concatenation');
  assert.ok((await stat(tmp.path('c.qcow2'))).size < Buffer.concat(parts).byteLength / 2, 'text compresses');
  // -n into an image that cannot take compressed clusters.
  assert.equal((await vdisk(['create', '-q', '-f', 'raw', tmp.path('n.raw'), '4M'])).code, 0);
  assert.deepEqual(await vdisk(['convert', '-n', '-c', tmp.path('p0.raw'), tmp.path('n.raw')]),
    { code: 1, stdout: '', stderr: 'vdisk convert: Compression not supported for this file format\n' });
});

test('--output=json prints the job as QMP\'s query-jobs shows it: running, whole percents, concluded (with the error if it failed)', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await writeFile(tmp.path('src.raw'), textBytes(8 * MiB, 4));
  const lines = (out: string) => out.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const r = await vdisk(['convert', '--output=json', '-p', '-O', 'qcow2', tmp.path('src.raw'), tmp.path('j.qcow2')]);
  assert.equal(r.code, 0, r.stderr);
  const all = lines(r.stdout);
  assert.deepEqual(all[0], { id: all[0]!.id, type: 'convert', status: 'running', 'current-progress': 0, 'total-progress': 8 * MiB });
  assert.deepEqual(all[all.length - 1], { id: all[0]!.id, type: 'convert', status: 'concluded', 'current-progress': 8 * MiB, 'total-progress': 8 * MiB });
  const progress = all.map((l) => l['current-progress'] as number);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress only grows');
  assert.ok(all.length > 3 && all.length <= 102, `${all.length} lines`);
  // -q: only the last line.
  const q = await vdisk(['convert', '-q', '--output=json', tmp.path('src.raw'), tmp.path('q.raw')]);
  assert.equal(q.code, 0);
  assert.deepEqual(lines(q.stdout).map((l) => l.status), ['concluded']);
  // A job that fails: compressed clusters cannot go to an image with an external data file.
  assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', '-o', `data_file=${tmp.path('d.data')}`, tmp.path('d.qcow2'), '8M'])).code, 0);
  const f = await vdisk(['convert', '-n', '-c', '--output=json', '-O', 'qcow2', tmp.path('src.raw'), tmp.path('d.qcow2')]);
  assert.equal(f.code, 1);
  const last = lines(f.stdout).pop()!;
  assert.equal(last.status, 'concluded');
  assert.match(last.error as string, /^error while writing at byte 0: qcow2: compressed writes are not supported with an external data file$/);
  assert.equal(f.stderr, `vdisk convert: ${last.error as string}\n`);
});
