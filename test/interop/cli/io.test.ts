import assert from 'node:assert/strict';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { MACHINE_TIMING_LINE, TIMING_LINE } from '../../../src/cli/io/report.js';
import { native } from '../../../src/native/index.js';
import { pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { needNative } from '../../helpers/native.js';
import { needTools, qemuImgMap, run, type RunResult } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type SparseRun, type TmpDir } from '../../helpers/tmp.js';

/*
 * The acceptance check for `vdisk io`: the same qemu-io script, run by the real qemu-io 7.2
 * and by vdisk on two copies of one sparse file, must leave identical bytes and allocation and
 * print identical lines (timing numbers masked) with the same exit status.
 */

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** Holes, random data, explicitly written zeros and (with the addon) a reserved range. */
const RUNS: SparseRun[] = [
  { offset: 64 * 1024, data: pattern(192 * 1024, 1) },
  { offset: 512 * 1024, data: new Uint8Array(256 * 1024) },
  { offset: 1 * MiB, length: 256 * 1024, reserve: true },
  { offset: 3000 * 1024, data: pattern(100 * 1024 + 7, 2) },
  { offset: SIZE - 4096, data: pattern(4096, 3) },
];

/** Patterns, unaligned writes, zero writes with and without unmapping, discards, queries. */
const script = (source: string) => [
  'write -P 0xab 4096 8192', 'read -P 0xab 4096 8192', 'read -P 0xcd 4096 512',
  'write -P 0x11 1000 3000', 'write 70001 33', 'write -f -P 3 8388607 1', `write -s ${source} 5000 3333`,
  'write -z 600k 10000', 'write -z -u 700001 200000', 'write -z -u 1M 64k', 'write -z -n 2M 64k', 'write -z -f 3M 100',
  'write -z -u -n 3100k 4k', 'discard 20000 70000', 'discard 512k 128k', 'discard -q 5M 4097', 'discard -C 6M 0',
  'read -P 0 20000 70000', 'read -P 0x11 -s 100 -l 200 900 400', 'read -v 4090 40', 'read -C -q 0 512', 'read -q -P 1 0 1',
  'alloc 0 8M', 'alloc 1088', 'alloc 7M 2M', 'alloc 9M', 'map', 'flush', 'length', 'info',
  'read 8M 1', 'write 0 1x', 'write 0x10k 1', 'nonexist', 'read', 'read -x 0 1', 'help read', 'help nosuch', 'sleep 1',
  'truncate 8M', 'length',
];

const maskTiming = (text: string) => text.split('\n').map((l) => l.replace(TIMING_LINE, '$1<timing>').replace(MACHINE_TIMING_LINE, '$1<timing>')).join('\n');
/** Output with timings masked and the program name of error_report() lines made the same. */
const normalize = (r: RunResult) => ({
  code: r.code,
  stdout: maskTiming(r.stdout),
  stderr: r.stderr.replace(/^qemu-io: /gm, 'vdisk io: '),
});

const cmdArgs = (cmds: readonly string[]) => cmds.flatMap((c) => ['-c', c]);

let tmp: TmpDir;
let SCRIPT: string[];
before(async () => {
  tmp = await makeTmpDir('vdisk-io-interop-');
  await writeFile(tmp.path('source.bin'), pattern(1000, 4));
  SCRIPT = script(tmp.path('source.bin'));
});
after(() => tmp.cleanup());

/** Two identical sparse files (made, not copied, so holes and reserved ranges match). */
async function twins(name: string): Promise<[string, string]> {
  const q = tmp.path(`${name}.qemu.raw`);
  const v = tmp.path(`${name}.vdisk.raw`);
  const fallocate = native ? native.fallocate.bind(native) : undefined;
  for (const file of [q, v]) {
    await makeSparseFile(file, SIZE, RUNS, fallocate);
    // Settled on disk first, so later block counts differ only by what the tools did.
    const fh = await open(file, 'r+');
    await fh.sync();
    await fh.close();
  }
  return [q, v];
}

/** Runs the same qemu-io arguments through both and checks output, allocation and bytes. */
async function compare(t: TestContext, name: string, options: string[], cmds: readonly string[], input?: string): Promise<[string, string]> {
  const [q, v] = await twins(name);
  const qemu = normalize(await run('qemu-io', [...options, ...cmdArgs(cmds), q], input === undefined ? {} : { input }));
  const ours = normalize(await vdisk(['io', ...options, ...cmdArgs(cmds), v], input ?? ''));
  if (input !== undefined) qemu.stdout = qemu.stdout.replaceAll('qemu-io> ', '');
  assert.deepEqual(ours, qemu, `${name}: output and exit status`);
  // Allocation before bytes: on ext4 reading a reserved range makes SEEK_DATA call it data.
  assert.deepEqual(await qemuImgMap(v), await qemuImgMap(q), `${name}: qemu-img map`);
  assert.ok((await readFile(v)).equals(await readFile(q)), `${name}: image bytes`);
  assert.equal((await stat(v)).blocks, (await stat(q)).blocks, `${name}: allocated blocks`);
  t.diagnostic(`${name}: exit ${qemu.code}, ${qemu.stdout.split('\n').length - 1} lines`);
  return [q, v];
}

describe('vdisk io against qemu-io 7.2', () => {
  /*
   * Without the native addon vdisk cannot punch holes or zero ranges in place (discard does
   * nothing, write -z writes zeros), so only the read-only comparison runs then.
   */
  it('runs the acceptance script identically', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    await compare(t, 'script', ['-f', 'raw'], SCRIPT);
  });

  it('runs it identically with -d ignore, -t writethrough and -t unsafe', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    await compare(t, 'ignore', ['-f', 'raw', '-d', 'ignore'], SCRIPT);
    await compare(t, 'writethrough', ['-f', 'raw', '-t', 'writethrough'], SCRIPT);
    await compare(t, 'unsafe', ['-f', 'raw', '-t', 'unsafe'], SCRIPT);
  });

  it('prints info as qemu-io does for qcow2 (cluster size, VM state offset, format facts)', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img')) return;
    for (const [size, cluster] of [['1G', '64k'], ['1000M', '2M'], ['3G', '512'], ['100M', '64k']] as const) {
      const img = tmp.path(`info-${size}-${cluster}.qcow2`);
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster}`, img, size]);
      const qemu = await run('qemu-io', ['-r', '-c', 'info', img]);
      const ours = await vdisk(['io', '-r', '-c', 'info', img]);
      assert.equal(ours.stdout, qemu.stdout, `${size}, ${cluster} clusters`);
    }
  });

  it('runs it identically read-only', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img')) return;
    await compare(t, 'read-only', ['-f', 'raw', '-r'], SCRIPT);
  });

  it('reads commands from stdin identically (qemu-io prompts even on a pipe; vdisk does not)', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    await compare(t, 'stdin', ['-f', 'raw'], [], `${SCRIPT.slice(0, 12).join('\n')}\nquit\nlength\n`);
  });

  it('punches holes for discard and write -z -u, and keeps write -z allocated', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    const [q, v] = await compare(t, 'holes', ['-f', 'raw'], ['discard 64k 64k', 'write -z -u 128k 64k', 'write -z 192k 64k']);
    assert.equal((await stat(v)).blocks, (await stat(q)).blocks, 'st_blocks');
    const map = await qemuImgMap(v);
    const at = (offset: number) => map.find((e) => e.start <= offset && offset < e.start + e.length)!;
    // (The write -z range is allocated but unwritten; once read, ext4 may call it data.)
    for (const offset of [64 * 1024, 128 * 1024]) assert.deepEqual([at(offset).zero, at(offset).data], [true, false], `map at ${offset}`);
    assert.ok((await readFile(v)).subarray(64 * 1024, 256 * 1024).every((b) => b === 0));

    // Step by step on a fresh copy; a punch may cost an extent-tree block (8 sectors) back.
    const [, steps] = await twins('holes-steps');
    const blocks = async () => (await stat(steps)).blocks;
    const step = async (cmd: string) => assert.equal((await vdisk(['io', '-f', 'raw', '-c', cmd, steps])).code, 0, cmd);
    await step('flush');
    const b0 = await blocks();
    await step('write -z 192k 64k');
    const b1 = await blocks();
    assert.ok(b1 >= b0, `write -z keeps its blocks (${b0} → ${b1})`);
    await step('discard 64k 64k');
    const b2 = await blocks();
    assert.ok(b1 - b2 >= 128 - 8, `discard frees 64 KiB (${b1} → ${b2})`);
    await step('write -z -u 128k 64k');
    const b3 = await blocks();
    assert.ok(b2 - b3 >= 128 - 8, `write -z -u frees 64 KiB (${b2} → ${b3})`);
  });
});

describe('vdisk io bad input, against qemu-io 7.2', () => {
  let image: string;
  before(async () => {
    image = tmp.path('bad-input.raw');
    await makeSparseFile(image, MiB, [{ offset: 0, data: pattern(MiB, 7) }]);
  });

  /*
   * Each case fails with one line and leaves the file alone. The line goes where qemu-io puts
   * it: a failure to open or a refused command on stderr, a command's own complaint about its
   * arguments or its request ("Parsing error: ...", "write failed: ...") on stdout.
   */
  const cases: [string, string[], 'stdout' | 'stderr'][] = [
    ['a missing image', ['-f', 'raw', '-c', 'read 0 1', '/nonexistent/disk.raw'], 'stderr'],
    ['an unknown format', ['-f', 'bogus', '-c', 'read 0 1', '@IMAGE'], 'stderr'],
    ['an invalid cache mode', ['-f', 'raw', '-t', 'sometimes', '-c', 'write 0 1', '@IMAGE'], 'stderr'],
    ['a write on a read-only open', ['-f', 'raw', '-r', '-c', 'write 0 512', '@IMAGE'], 'stderr'],
    ['a zero write on a read-only open', ['-f', 'raw', '-r', '-c', 'write -z 0 512', '@IMAGE'], 'stderr'],
    ['an unknown command', ['-f', 'raw', '-c', 'wirte 0 512', '@IMAGE'], 'stderr'],
    ['a malformed size', ['-f', 'raw', '-c', 'write 0 12q', '@IMAGE'], 'stdout'],
    ['a malformed offset', ['-f', 'raw', '-c', 'discard 1.5 512', '@IMAGE'], 'stdout'],
    ['an offset past the end', ['-f', 'raw', '-c', 'write 1M 512', '@IMAGE'], 'stdout'],
    ['a zero write past the end', ['-f', 'raw', '-c', 'write -z -u 1023k 2k', '@IMAGE'], 'stdout'],
    ['a discard past the end', ['-f', 'raw', '-c', 'discard 2M 0', '@IMAGE'], 'stdout'],
    ['an invalid pattern', ['-f', 'raw', '-c', 'write -P 0x100 0 1', '@IMAGE'], 'stdout'],
  ];
  for (const [what, template, stream] of cases) {
    it(`fails on ${what} as qemu-io does, leaving the file alone`, async (t) => {
      if (!needTools(t, 'qemu-io')) return;
      const args = template.map((a) => (a === '@IMAGE' ? image : a));
      const before = await stat(image);
      const bytes = await readFile(image);
      const qemu = normalize(await run('qemu-io', args));
      const ours = normalize(await vdisk(['io', ...args]));
      assert.notEqual(ours.code, 0);
      assert.equal(ours.code, qemu.code);
      assert.equal(ours[stream].split('\n').length, 2, `one line on ${stream}: ${JSON.stringify(ours[stream])}`);
      assert.equal(ours[stream === 'stdout' ? 'stderr' : 'stdout'], '');
      assert.deepEqual(ours, qemu);
      const afterwards = await stat(image);
      assert.equal(afterwards.mtimeMs, before.mtimeMs);
      assert.ok((await readFile(image)).equals(bytes));
    });
  }
});
