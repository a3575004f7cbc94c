import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { textBytes } from '../../helpers/text-bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { allocatedBytes, haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { qemuNbd, type Server } from '../drivers/nbd/servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

/**
 * The convert matrix of issue 6: every kind of source through vdisk convert and qemu-img convert
 * into every kind of target. qemu-img compare must find vdisk's output identical to the source,
 * vdisk's output must take no more disk than qemu-img's (allocated zeros in the source end up
 * sparse), and qcow2 outputs must pass qemu-img check.
 */
interface Source {
  name: string;
  /** What convert reads (a file, or an nbd URI). */
  input: () => string;
  format: string;
  /** The file qemu-img compare checks the output against, and its format. */
  reference: string;
  referenceFormat: string;
}

const TARGETS: { name: string; args: string[]; format: 'raw' | 'qcow2' }[] = [
  { name: 'raw', args: ['-O', 'raw'], format: 'raw' },
  { name: 'qcow2', args: ['-O', 'qcow2'], format: 'qcow2' },
  { name: 'qcow2 -c', args: ['-O', 'qcow2', '-c'], format: 'qcow2' },
  { name: 'qcow2 with 2 MiB clusters', args: ['-O', 'qcow2', '-o', 'cluster_size=2M'], format: 'qcow2' },
];


async function qemuIo(format: string, file: string, commands: string[]): Promise<void> {
  await runOk('qemu-io', ['-f', format, ...commands.flatMap((c) => ['-c', c]), file]);
}

describe('vdisk convert against qemu-img convert', () => {
  let tmp: TmpDir;
  let nbd: Server | undefined;
  const sources: Source[] = [];

  before(async () => {
    tmp = await makeTmpDir('vdisk-convert-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io') || !haveTool('qemu-nbd')) return;
    // Sparse raw: data, a MiB of written zeros (allocated), a small unaligned piece, data with a
    // zero 4 KiB block inside, text (which compresses, for -c), and data at the very end.
    const data = pattern(256 * KiB, 3);
    data.fill(0, 64 * KiB, 68 * KiB);
    await makeSparseFile(tmp.path('sparse.raw'), SIZE, [
      { offset: 0, data: pattern(MiB, 1) }, { offset: 4 * MiB, data: new Uint8Array(MiB) },
      { offset: 10 * MiB + 512, data: pattern(3000, 2) }, { offset: 20 * MiB, data }, { offset: 30 * MiB + 4096, data: textBytes(2 * MiB, 5) },
      { offset: SIZE - MiB, data: pattern(MiB, 4) },
    ]);
    // qcow2: data clusters (one of them all zeros), zero clusters, an unaligned write.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp.path('plain.qcow2'), String(SIZE)]);
    await qemuIo('qcow2', tmp.path('plain.qcow2'), ['write -P 0x11 0 1M', 'write -P 0 4M 1M', 'write -z 6M 1M', `write -P 0x22 ${10 * MiB + 512} 3000`, 'write -P 0x33 63M 1M']);
    // qcow2 over a backing file: the top covers part of the base with data, a zero cluster and written zeros.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp.path('base.qcow2'), String(SIZE)]);
    await qemuIo('qcow2', tmp.path('base.qcow2'), ['write -P 0x44 0 2M', 'write -P 0x55 8M 1M', 'write -P 0x77 30M 64k']);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', tmp.path('backed.qcow2')]);
    await qemuIo('qcow2', tmp.path('backed.qcow2'), ['write -P 0x66 1M 512k', 'write -z 8M 64k', 'write -P 0 16M 1M', 'write -z 30M 4k']);
    await runOk('qemu-img', ['convert', '-c', '-O', 'qcow2', tmp.path('plain.qcow2'), tmp.path('compressed.qcow2')]);
    nbd = await qemuNbd(tmp.path('nbd.sock'), tmp.path('backed.qcow2'), ['-r', '-f', 'qcow2']);
    sources.push(
      ...(['sparse.raw', 'plain.qcow2', 'backed.qcow2', 'compressed.qcow2'] as const).map((file, i) => {
        const format = file.endsWith('.raw') ? 'raw' : 'qcow2';
        const name = ['sparse raw', 'qcow2', 'qcow2 with a backing file', 'compressed qcow2'][i]!;
        return { name, input: () => tmp.path(file), format, reference: tmp.path(file), referenceFormat: format };
      }),
      { name: 'nbd:// from qemu-nbd', input: () => nbd!.uri, format: 'raw', reference: tmp.path('backed.qcow2'), referenceFormat: 'qcow2' },
    );
  });
  after(async () => {
    await nbd?.stop();
    await tmp.cleanup();
  });

  /** Converts with vdisk and with qemu-img (same options) and checks vdisk's output against the source and qemu-img's. */
  async function convertBoth(t: TestContext, name: string, src: Source, args: string[], format: 'raw' | 'qcow2', prepare?: (file: string) => Promise<void>): Promise<void> {
    const ours = tmp.path(`v-${name}`);
    const theirs = tmp.path(`q-${name}`);
    await prepare?.(ours);
    await prepare?.(theirs);
    const r = await vdisk(['convert', '-f', src.format, ...args, src.input(), ours]);
    assert.equal(r.code, 0, `vdisk convert ${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    await runOk('qemu-img', ['convert', '-f', src.format, ...args, src.input(), theirs]);
    const cmp = await run('qemu-img', ['compare', '-f', src.referenceFormat, '-F', format, src.reference, ours]);
    assert.equal(cmp.stdout, 'Images are identical.\n', `${name}: ${cmp.stdout}${cmp.stderr}`);
    assert.equal(cmp.code, 0);
    // Allocated extents, not st_blocks (qemu-img's actual-size): out-of-order writes (-W) leave a
    // file with more extents, and ext4 then adds an extent-tree block that holds no image data.
    const [usage, qemuUsage] = [await allocatedBytes(ours), await allocatedBytes(theirs)];
    t.diagnostic(`${name}: vdisk ${usage} B on disk, qemu-img ${qemuUsage} B`);
    assert.ok(usage <= qemuUsage, `${name}: vdisk's output takes ${usage} B, qemu-img's ${qemuUsage} B`);
    if (format === 'qcow2') {
      const check = await run('qemu-img', ['check', '-f', 'qcow2', ours]);
      assert.equal(check.code, 0, `${name}: qemu-img check: ${check.stdout}${check.stderr}`);
    }
    if (args.includes('-c')) {
      // The same clusters are compressed (QEMU's rule: whatever fits in a cluster less a byte),
      // and the same ones allocated.
      const counts = async (file: string) => {
        const c = JSON.parse(await runOk('qemu-img', ['check', '--output=json', file])) as Record<string, number>;
        return { allocated: c['allocated-clusters'] ?? 0, compressed: c['compressed-clusters'] ?? 0 };
      };
      const [mine, qemus] = [await counts(ours), await counts(theirs)];
      assert.deepEqual(mine, qemus, `${name}: compressed clusters`);
      assert.ok(mine.compressed > 0 || mine.allocated === 0, `${name}: some clusters are compressed`);
    }
  }

  for (const [si, sourceName] of ['sparse raw', 'qcow2', 'qcow2 with a backing file', 'compressed qcow2', 'nbd:// from qemu-nbd'].entries()) {
    for (const [ti, target] of TARGETS.entries()) {
      it(`${sourceName} → ${target.name}`, async (t) => {
        if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
        const src = sources[si]!;
        assert.equal(src.name, sourceName);
        await convertBoth(t, `m${si}-${ti}.${target.format}`, src, target.args, target.format);
      });
    }
  }

  it('-S 0, -S 64k, -W -m 16 and -m 1 give the same bytes and no more disk than qemu-img with the same options', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    for (const [i, args] of [['-S', '0'], ['-S', '64k'], ['-W', '-m', '16'], ['-m', '1']].entries()) {
      for (const src of [sources[0]!, sources[2]!]) {
        await convertBoth(t, `opt${i}-${src.format}.qcow2`, src, ['-O', 'qcow2', ...args], 'qcow2');
        await convertBoth(t, `opt${i}-${src.format}.raw`, src, ['-O', 'raw', ...args], 'raw');
      }
    }
  });

  it('into qcow2 with extended L2 (64 KiB and 2 MiB clusters), and -S 0 into 2 MiB clusters: no more disk than qemu-img', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    // The sparse raw source has zeros inside its data runs and written zeros: only the clusters
    // (subclusters) holding data are allocated, as qemu-img allocates them.
    for (const [i, args] of [['-o', 'extended_l2=on'], ['-o', 'cluster_size=2M,extended_l2=on'], ['-S', '0', '-o', 'cluster_size=2M']].entries()) {
      for (const src of [sources[0]!, sources[1]!]) await convertBoth(t, `ext${i}-${src.format}.qcow2`, src, ['-O', 'qcow2', ...args], 'qcow2');
    }
  });

  it('-n into an existing image, with and without --target-is-zero', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    const create = (format: string) => async (file: string) => void (await runOk('qemu-img', ['create', '-q', '-f', format, file, String(SIZE)]));
    for (const src of [sources[0]!, sources[2]!]) {
      await convertBoth(t, `n-${src.format}.qcow2`, src, ['-n', '-O', 'qcow2'], 'qcow2', create('qcow2'));
      await convertBoth(t, `nz-${src.format}.qcow2`, src, ['-n', '--target-is-zero', '-O', 'qcow2'], 'qcow2', create('qcow2'));
      await convertBoth(t, `nz-${src.format}.raw`, src, ['-n', '--target-is-zero'], 'raw', create('raw'));
    }
    // Without --target-is-zero, -n overwrites whatever the target held with the source's zeros.
    const dirty = async (file: string) => {
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(SIZE)]);
      await qemuIo('qcow2', file, ['write -P 0xee 0 64M']);
    };
    await convertBoth(t, 'dirty.qcow2', sources[2]!, ['-n', '-O', 'qcow2'], 'qcow2', dirty);
  });

  it('-n into an nbd:// export of qemu-nbd, with and without --target-is-zero', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    for (const [i, zeroFlag] of [[], ['--target-is-zero']].entries()) {
      const results: Record<string, string> = {};
      for (const tool of ['vdisk', 'qemu-img'] as const) {
        const file = tmp.path(`nbd-target-${i}-${tool}.qcow2`);
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(SIZE)]);
        const server = await qemuNbd(tmp.path(`t${i}-${tool}.sock`), file, ['-f', 'qcow2']);
        try {
          const args = ['convert', '-n', ...zeroFlag, '-f', 'qcow2', '-O', 'raw', tmp.path('backed.qcow2'), server.uri];
          if (tool === 'vdisk') {
            const r = await vdisk(args);
            assert.equal(r.code, 0, r.stderr);
          } else {
            await runOk('qemu-img', args);
          }
        } finally {
          await server.stop();
        }
        results[tool] = file;
      }
      const cmp = await run('qemu-img', ['compare', tmp.path('backed.qcow2'), results.vdisk!]);
      assert.equal(cmp.stdout, 'Images are identical.\n', cmp.stderr);
      const check = await run('qemu-img', ['check', results.vdisk!]);
      assert.equal(check.code, 0, check.stdout);
      // qemu-nbd writes both files, so compare what it allocated in the image (its clusters), not
      // the file system's blocks, which differ by a block or so from run to run for the same writes.
      const clusters = async (file: string) =>
        (JSON.parse(await runOk('qemu-img', ['check', '--output=json', file])) as { 'allocated-clusters': number })['allocated-clusters'];
      const [used, qemuUsed] = [await clusters(results.vdisk!), await clusters(results['qemu-img']!)];
      t.diagnostic(`nbd target ${zeroFlag.join(' ')}: vdisk ${used} clusters, qemu-img ${qemuUsed}`);
      assert.ok(used <= qemuUsed, `vdisk's target allocates ${used} clusters, qemu-img's ${qemuUsed}`);
    }
  });

  it('-c with zstd, with 2 MiB clusters, with -S 0 and -W; qemu-img\'s zstd clusters read back', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    const raw = sources[0]!;
    for (const [i, args] of [['-o', 'compression_type=zstd'], ['-o', 'cluster_size=2M'], ['-S', '0'], ['-W', '-m', '16']].entries()) {
      await convertBoth(t, `c${i}.qcow2`, raw, ['-O', 'qcow2', '-c', ...args], 'qcow2');
    }
    // An image QEMU compressed with zstd, read by vdisk.
    await runOk('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', tmp.path('sparse.raw'), tmp.path('zstd.qcow2')]);
    const zstd = { name: 'zstd', input: () => tmp.path('zstd.qcow2'), format: 'qcow2', reference: tmp.path('sparse.raw'), referenceFormat: 'raw' };
    await convertBoth(t, 'from-zstd.raw', zstd, ['-O', 'raw'], 'raw');
    await convertBoth(t, 'from-zstd.qcow2', zstd, ['-O', 'qcow2', '-c'], 'qcow2');
  });

  it('-B makes an overlay that holds only what the source adds to its backing file', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    const src = sources[2]!;
    await convertBoth(t, 'overlay.qcow2', src, ['-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2'], 'qcow2');
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', tmp.path('v-overlay.qcow2')])) as Record<string, unknown>;
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    // The overlay allocates exactly what qemu-img's does: the source's own clusters.
    const map = async (file: string) => (await runOk('qemu-img', ['map', '--output=json', file])).replace(/, "offset": \d+/g, '');
    assert.equal(await map(tmp.path('v-overlay.qcow2')), await map(tmp.path('q-overlay.qcow2')));
  });
});
