import assert from 'node:assert/strict';
import { stat, truncate, writeFile } from 'node:fs/promises';
import { after, before, it } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { serveOnSocket } from '../../helpers/nbd-server.js';
import { needTools, run, runOk } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

/*
 * nbdcopy (libnbd) copies a sparse 1 GiB image out of `vdisk serve` and into it, over several
 * connections (multi-conn): byte-identical both ways, and the copy stays sparse.
 */

const MiB = 1024 * 1024;
const SIZE = 1024 * MiB;
const DATA = 8 * MiB;

let tmp: TmpDir;
let source: string;
before(async () => {
  tmp = await makeTmpDir('vdisk-nbdcopy-');
  source = tmp.path('source.raw');
  await makeSparseFile(source, SIZE, Array.from({ length: 8 }, (_, i) => ({ offset: i * 127 * MiB + 4096, data: pattern(MiB, i + 1) })));
});
after(() => tmp.cleanup());

async function allocated(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

async function assertSameAndSparse(copy: string): Promise<void> {
  const cmp = await run('cmp', [source, copy]);
  assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
  const used = await allocated(copy);
  assert.ok(used < 4 * DATA, `the copy takes ${used} bytes on disk for ${DATA} bytes of data`);
}

it('from vdisk serve to a file', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const s = await serveOnSocket(tmp.dir, ['-r', '-e', '0', '-f', 'raw', source]);
  const copy = tmp.path('out.raw');
  await writeFile(copy, '');
  try {
    await runOk('nbdcopy', [s.uri, copy]);
  } finally {
    await s.proc.stop();
  }
  await assertSameAndSparse(copy);
});

it('from a file into vdisk serve (zero ranges punched with --discard=unmap)', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const target = tmp.path('target.raw');
  // Old data everywhere the copy must overwrite with holes, to see the zeroing happen.
  await makeSparseFile(target, SIZE, Array.from({ length: 8 }, (_, i) => ({ offset: i * 127 * MiB + 64 * MiB, data: pattern(MiB, 99) })));
  const s = await serveOnSocket(tmp.dir, ['-e', '0', '-f', 'raw', '--discard=unmap', target]);
  try {
    await runOk('nbdcopy', [source, s.uri]);
  } finally {
    const exit = await s.proc.stop();
    assert.equal(exit.code, 0, exit.stderr);
  }
  await assertSameAndSparse(target);
});

it('the copy refuses to grow: a target smaller than the source is an error, not a partial copy', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const small = tmp.path('small.raw');
  await writeFile(small, '');
  await truncate(small, MiB);
  const s = await serveOnSocket(tmp.dir, ['-f', 'raw', small]);
  try {
    const r = await run('nbdcopy', [source, s.uri]);
    assert.notEqual(r.code, 0);
  } finally {
    await s.proc.stop();
  }
  assert.equal((await stat(small)).size, MiB);
});
