import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { runBench, type BenchDevice, type BenchParams } from '../../../src/cli/bench.js';
import { MemoryNode } from '../../../src/drivers/protocol/memory/index.js';
import { NullNode } from '../../../src/drivers/protocol/null/index.js';
import { needTools, run, type RunResult } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { vdisk } from '../../helpers/cli.js';

/** `vdisk bench ARGS…` through main(), as a user runs it. */
function vdiskBench(args: readonly string[]): Promise<RunResult> {
  return vdisk(['bench', ...args]);
}

type Op = { kind: 'read' | 'write' | 'flush'; offset: number; length: number; inFlight: number };

/** Wraps a device and records every request, with how many requests were in flight as it started. */
function recording(dev: BenchDevice): { dev: BenchDevice; ops: Op[]; maxInFlight: () => number } {
  const ops: Op[] = [];
  let inFlight = 0;
  let max = 0;
  const track = async (op: Omit<Op, 'inFlight'>, fn: () => Promise<void>) => {
    ops.push({ ...op, inFlight });
    inFlight++;
    max = Math.max(max, inFlight);
    try {
      // A turn of the event loop, so requests really overlap.
      await new Promise((r) => setImmediate(r));
      await fn();
    } finally {
      inFlight--;
    }
  };
  return {
    ops,
    maxInFlight: () => max,
    dev: {
      get size() {
        return dev.size;
      },
      read: (offset, into) => track({ kind: 'read', offset, length: into.byteLength }, () => dev.read(offset, into)),
      write: (offset, data) => track({ kind: 'write', offset, length: data.byteLength }, () => dev.write(offset, data)),
      flush: () => track({ kind: 'flush', offset: 0, length: 0 }, () => dev.flush()),
    },
  };
}

const DEFAULTS: BenchParams = {
  count: 100, depth: 8, offset: 0, bufferSize: 4096, step: 4096, write: false, pattern: 0, flushInterval: 0, drainOnFlush: true,
};

const START_LINE = /^Sending (\d+) (read|write) requests, (\d+) bytes each, (\d+) in parallel \(starting at offset (\d+), step size (\d+)\)$/;
const DONE_LINE = /^Run completed in \d+\.\d{3} seconds\.$/;

describe('runBench (qemu-img bench request loop)', () => {
  it('sends exactly COUNT requests, at most DEPTH in flight, at offsets stepping and wrapping', async () => {
    const r = recording(new NullNode({ size: 64 * 1024 }));
    // 5 blocks of 4 KiB a step over 16 blocks: the offsets wrap at the end of the image.
    const seconds = await runBench(r.dev, { ...DEFAULTS, count: 40, depth: 6, step: 5 * 4096 });
    assert.ok(seconds >= 0);
    assert.equal(r.ops.length, 40);
    assert.ok(r.ops.every((o) => o.kind === 'read' && o.length === 4096));
    assert.deepEqual(r.ops.map((o) => o.offset), Array.from({ length: 40 }, (_, i) => ((i * 5) % 16) * 4096));
    assert.equal(r.maxInFlight(), 6);
  });

  it('never has more requests in flight than requests in all', async () => {
    const r = recording(new NullNode({ size: 1 << 20 }));
    await runBench(r.dev, { ...DEFAULTS, count: 3, depth: 64 });
    assert.equal(r.ops.length, 3);
    assert.equal(r.maxInFlight(), 3);
  });

  it('writes the pattern at every offset it steps to (-w --pattern)', async () => {
    const mem = new MemoryNode({ size: 1 << 20 });
    await runBench(mem, { ...DEFAULTS, write: true, pattern: 0xab, count: 10, bufferSize: 512, step: 8192, offset: 1024 });
    const bytes = mem.contents;
    for (let i = 0; i < bytes.byteLength; i++) {
      const rel = i - 1024;
      const inRequest = rel >= 0 && rel < 10 * 8192 && rel % 8192 < 512;
      if (bytes[i] !== (inRequest ? 0xab : 0)) assert.fail(`byte ${i} is ${bytes[i]}`);
    }
  });

  it('flushes every N requests with the queue drained, and sends nothing during the flush', async () => {
    const r = recording(new NullNode({ size: 1 << 20 }));
    await runBench(r.dev, { ...DEFAULTS, write: true, count: 40, depth: 4, flushInterval: 10 });
    const flushes = r.ops.filter((o) => o.kind === 'flush');
    assert.equal(flushes.length, 4);
    assert.ok(flushes.every((f) => f.inFlight === 0), 'a drained flush runs alone');
    // Ten writes between flushes, the last flush after the last write.
    assert.deepEqual(r.ops.map((o) => (o.kind === 'flush' ? 'F' : 'w')).join(''), ('w'.repeat(10) + 'F').repeat(4));
    assert.equal(r.ops.filter((o) => o.kind === 'write').length, 40);
  });

  it('with --no-drain, flushes while writes are still in flight', async () => {
    const r = recording(new NullNode({ size: 1 << 20 }));
    await runBench(r.dev, { ...DEFAULTS, write: true, count: 40, depth: 4, flushInterval: 10, drainOnFlush: false });
    const flushes = r.ops.filter((o) => o.kind === 'flush');
    assert.ok(flushes.length >= 4);
    assert.ok(flushes.some((f) => f.inFlight > 0));
    assert.equal(r.ops.filter((o) => o.kind === 'write').length, 40);
  });

  it('fails with the first failed request', async () => {
    const dev: BenchDevice = {
      size: 1 << 20,
      read: async (offset) => {
        if (offset === 8192) throw new Error('boom');
      },
      write: async () => undefined,
      flush: async () => undefined,
    };
    await assert.rejects(runBench(dev, DEFAULTS), /^BlockError: Failed request: boom$/);
  });
});

describe('vdisk bench', () => {
  let tmp: TmpDir;
  let raw: string;
  before(async () => {
    tmp = await makeTmpDir();
    raw = tmp.path('disk.raw');
    await writeFile(raw, new Uint8Array(1 << 20));
  });
  after(() => tmp.cleanup());

  it("prints qemu-img bench's two lines", async () => {
    const r = await vdiskBench(['-f', 'raw', '-c', '100', raw]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const lines = r.stdout.split('\n');
    assert.equal(lines.length, 3);
    assert.equal(lines[0], 'Sending 100 read requests, 4096 bytes each, 64 in parallel (starting at offset 0, step size 4096)');
    assert.match(lines[1]!, DONE_LINE);
    assert.equal(lines[2], '');
  });

  it('prints the flush line for --flush-interval and takes counts in hex and octal', async () => {
    const r = await vdiskBench(['-f', 'raw', '-w', '-c', '0x20', '-d', '010', '--flush-interval=16', '-q', raw]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines[0], 'Sending 32 write requests, 4096 bytes each, 8 in parallel (starting at offset 0, step size 4096)');
    assert.equal(lines[1], 'Sending flush every 16 requests');
    assert.match(lines[2]!, DONE_LINE);
  });

  it('writes the pattern with -w at offsets stepping by -S and wrapping at the end', async () => {
    const file = tmp.path('pattern.raw');
    const size = 64 * 1024;
    await writeFile(file, new Uint8Array(size));
    // 12 KiB steps over 64 KiB: 0, 12K, …, 60K, then 8K, 20K, … (wrapped).
    const r = await vdiskBench(['-f', 'raw', '-w', '--pattern=0x5a', '-c', '8', '-d', '3', '-s', '1K', '-S', '12K', '-o', '0', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.split('\n')[0]!, /, 1024 bytes each, 3 in parallel \(starting at offset 0, step size 12288\)$/);
    const bytes = await readFile(file);
    const written = new Set(Array.from({ length: 8 }, (_, i) => (i * 12 * 1024) % size));
    for (let i = 0; i < size; i += 1024) {
      const want = written.has(i) ? 0x5a : 0;
      assert.ok(bytes.subarray(i, i + 1024).every((b) => b === want), `KiB at ${i} should be ${want}`);
    }
  });

  it('opens other drivers (json: null-co) and reads without changing anything', async () => {
    const r = await vdiskBench(['-c', '1000', '-d', '16', '-s', '64K', 'json:{"driver":"null-co","size":1048576}']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.split('\n')[0]!, START_LINE);
    const bytes = await readFile(raw);
    assert.ok(bytes.every((b) => b === 0));
  });

  it('matches qemu-img bench line for line (times aside)', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    for (const args of [
      ['-c', '500', '-d', '4', '-s', '2k', '-S', '6k', '-o', '4096'],
      ['-w', '-c', '64', '-d', '16', '--flush-interval=32', '--no-drain', '--pattern=7'],
      ['-c', '010', '-d', '0x3', '-n', '-t', 'none', '-U'],
    ]) {
      const file = tmp.path('peer.raw');
      await writeFile(file, new Uint8Array(1 << 20));
      const ours = await vdiskBench(['-f', 'raw', ...args, file]);
      const theirs = await run('qemu-img', ['bench', '-f', 'raw', ...args, file]);
      assert.equal(theirs.code, 0, theirs.stderr);
      assert.equal(ours.code, 0, ours.stderr);
      const mask = (s: string) => s.replace(/\d+\.\d{3} seconds/, 'T seconds');
      assert.equal(mask(ours.stdout), mask(theirs.stdout), args.join(' '));
    }
  });

  for (const [what, args, message] of [
    ['a bad buffer size', ['-s', '1x'], /Invalid buffer size specified/],
    ['a buffer size past INT_MAX', ['-s', '3G'], /Invalid buffer size specified. Must be between 0 and 2147483647/],
    ['a bad step size', ['-S', '-1'], /Invalid step_size specified/],
    ['a count of 0', ['-c', '0'], /Invalid request count specified/],
    ['a non-numeric count', ['-c', 'abc'], /Invalid request count specified/],
    ['an empty count', ['-c', ''], /Invalid request count specified/],
    ['a negative count', ['-c', '-5'], /Invalid request count specified/],
    ['a depth of 0', ['-d', '0'], /Invalid queue depth specified/],
    ['a pattern past 0xff', ['--pattern=0x100'], /Invalid pattern byte specified/],
    ['an offset past the end', ['-o', '2M'], /Offset 2097152 is past the end of the image \(1048576 bytes\)/],
    ['an offset at the end', ['-o', '1M'], /Offset 1048576 is past the end of the image/],
    ['a first request across the end', ['-o', '1020K', '-s', '8K'], /A request of 8192 bytes at offset 1044480 runs past the end of the image/],
    ['a bad offset', ['-o', '1x'], /Invalid offset specified/],
    ['--flush-interval without -w', ['--flush-interval=64'], /--flush-interval is only available in write tests/],
    ['a flush interval below the depth', ['-w', '--flush-interval=4'], /Flush interval can't be smaller than depth/],
    ['a bad aio mode', ['-i', 'foo'], /Invalid aio option: foo/],
    ['a bad cache mode', ['-t', 'bogus'], /Invalid cache option: bogus/],
    ['an unknown option', ['-z'], /invalid option -- 'z'/],
  ] as const) {
    it(`refuses ${what} in one line, exit 1`, async () => {
      const r = await vdiskBench(['-f', 'raw', ...args, raw]);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.split('\n').length, 2, r.stderr);
      assert.match(r.stderr, message);
    });
  }

  it('refuses a missing or second image name', async () => {
    for (const args of [[], [raw, raw]]) {
      const r = await vdiskBench(args);
      assert.equal(r.code, 1);
      assert.equal(r.stderr.split('\n').length, 2, r.stderr);
    }
  });

  it('fails in one line when a wrapped request runs past the end, as qemu-img does', async () => {
    // 3000-byte steps over 1 MiB: request 349 starts at 1047000 and would end past 1048576.
    const r = await vdiskBench(['-f', 'raw', '-s', '3000', '-c', '1000', raw]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /^Sending 1000 read requests, 3000 bytes each/);
    assert.match(r.stderr, /^vdisk bench: Failed request: .*past the end of the image.*\n$/);
  });

  it('needs -w to write: a read-only run leaves the file alone', async () => {
    const r = await vdiskBench(['-f', 'raw', '--pattern=0xff', '-c', '300', raw]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(raw)).every((b) => b === 0));
  });
});
