import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, beforeEach, describe, it } from 'node:test';
import { MACHINE_TIMING_LINE, TIMING_LINE } from '../../../../src/cli/io/report.js';
import { vdisk } from '../../../helpers/cli.js';
import { nativeStatus } from '../../../../src/native/index.js';
import { needNative } from '../../../helpers/native.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/*
 * `vdisk io` end to end, in this process, on small raw files. Expected lines are qemu-io 7.2's
 * (the interop test runs the real one); the numbers of timing lines are masked.
 */

const mask = (text: string) => text.split('\n').map((l) => l.replace(TIMING_LINE, '$1T').replace(MACHINE_TIMING_LINE, '$1T')).join('\n');

let tmp: TmpDir;
let img: string;
before(async () => {
  tmp = await makeTmpDir();
});
after(() => tmp.cleanup());
beforeEach(async () => {
  img = tmp.path('disk.raw');
  await writeFile(img, new Uint8Array(1024 * 1024));
});

async function io(...args: string[]) {
  const r = await vdisk(['io', '-f', 'raw', ...args.flatMap((c) => ['-c', c]), img]);
  return { ...r, stdout: mask(r.stdout) };
}

describe('vdisk io: reads and writes', () => {
  it('writes a pattern, verifies it and reports as qemu-io', async () => {
    const r = await io('write -P 0xcd 4096 8192', 'read -P 0xcd 4096 8192', 'read -q -P 0xcd 4096 8k');
    assert.equal(r.code, 0);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'wrote 8192/8192 bytes at offset 4096\n8 KiB, 1 ops; T\nread 8192/8192 bytes at offset 4096\n8 KiB, 1 ops; T\n');
    const data = await readFile(img);
    assert.equal(data.subarray(4096, 12288).every((b) => b === 0xcd), true);
    assert.equal(data[4095], 0);
    assert.equal(data[12288], 0);
  });

  it('fails a pattern mismatch with exit status 1 but still reports the read', async () => {
    const r = await io('read -P 0xcd 4096 512', 'length');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, 'Pattern verification failed at offset 4096, 512 bytes\nread 512/512 bytes at offset 4096\n512 bytes, 1 ops; T\n1 MiB\n');
  });

  it('checks a sub-range with -s and -l', async () => {
    const r = await io('write -P 7 100 10', 'read -P 7 -s 2 -l 5 98 14', 'read -P 7 -s 1 98 14');
    assert.equal(r.code, 1);
    assert.match(r.stdout, /Pattern verification failed at offset 99, 13 bytes\n/);
    assert.doesNotMatch(r.stdout, /offset 100, 5 bytes/);
  });

  it('dumps with -v and prints CSV with -C', async () => {
    const r = await io('write -P 0x41 1000 17', 'read -v 998 20', 'read -C 0 512', 'write -C -q 0 1');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, 'wrote 17/17 bytes at offset 1000\n17 bytes, 1 ops; T\n'
      + '000003e6:  00 00 41 41 41 41 41 41 41 41 41 41 41 41 41 41  ..AAAAAAAAAAAAAA\n'
      + '000003f6:  41 41 41 00  AAA.\n'
      + 'read 20/20 bytes at offset 998\n20 bytes, 1 ops; T\n512,1,T\n');
  });

  it('writes unaligned ranges exactly', async () => {
    const r = await io('write -P 1 1 3', 'write -P 2 511 2', 'write -f -P 3 1048575 1');
    assert.equal(r.code, 0);
    const data = await readFile(img);
    assert.deepEqual([...data.subarray(0, 5)], [0, 1, 1, 1, 0]);
    assert.deepEqual([...data.subarray(510, 514)], [0, 2, 2, 0]);
    assert.equal(data[1048575], 3);
  });

  it('fills from a pattern file with -s', async () => {
    await writeFile(tmp.path('pat'), 'xyz');
    const r = await io(`write -s ${tmp.path('pat')} 0 7`);
    assert.equal(r.code, 0);
    assert.equal((await readFile(img)).subarray(0, 8).toString(), 'xyzxyzx\0');
  });

  it('refuses requests outside the image with EIO, like qemu\'s block layer', async () => {
    const before = await readFile(img);
    const r = await io('read 1 1M', 'write 1M 1', 'write -z 1M 1', 'discard 1M 1', 'read 1M 0', 'read 2M 0');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, 'read failed: Input/output error\nwrite failed: Input/output error\nwrite failed: Input/output error\n'
      + 'discard failed: Input/output error\nread 0/0 bytes at offset 1048576\n0 bytes, 1 ops; T\nread failed: Input/output error\n');
    assert.deepEqual(await readFile(img), before);
  });

  it('has no VM state or compressed writes on raw, as QEMU', async () => {
    const r = await io('read -b 0 512', 'write -c 0 512', 'write -b 1 512', 'write -c 1M 512');
    assert.equal(r.stdout, 'read failed: Operation not supported\nwrite failed: Operation not supported\n'
      + "1 is not a sector-aligned value for 'offset'\nwrite failed: Input/output error\n");
  });
});

describe('vdisk io: zeroes, discard, allocation', () => {
  it('writes zeroes with -z, -z -u and -z -f', async () => {
    await writeFile(img, new Uint8Array(1024 * 1024).fill(0x55));
    const r = await io('write -z 0 4096', 'write -z -u 4096 4096', 'write -z 8192 100', 'write -z -f 9000 10');
    assert.equal(r.code, 0, r.stdout);
    const data = await readFile(img);
    assert.equal(data.subarray(0, 8292).every((b) => b === 0), true);
    assert.equal(data[8292], 0x55);
    assert.equal(data.subarray(9000, 9010).every((b) => b === 0), true);
  });

  it('fails -z -n exactly when zeroing has no fast path', async () => {
    await writeFile(img, new Uint8Array(1024 * 1024).fill(0x55));
    const r = await io('write -z -n 0 4096', 'write -z -u -n 4096 4096');
    const data = await readFile(img);
    if (nativeStatus.loaded) {
      assert.equal(r.code, 0, r.stdout);
      assert.equal(data.subarray(0, 8192).every((b) => b === 0), true);
    } else {
      assert.equal(r.code, 1);
      assert.equal(r.stdout, 'write failed: Operation not supported\nwrite failed: Operation not supported\n');
      assert.equal(data.subarray(0, 8192).every((b) => b === 0x55), true);
    }
  });

  it('punches holes with discard and write -z -u but not with write -z', async (t) => {
    if (!needNative(t)) return;
    await writeFile(img, new Uint8Array(1024 * 1024).fill(0x55));
    const blocks = async () => (await stat(img)).blocks;
    const full = await blocks();
    assert.equal((await io('write -z 0 256k')).code, 0);
    assert.equal(await blocks(), full, 'write -z keeps the blocks allocated');
    assert.equal((await io('discard 256k 256k', 'write -z -u 512k 256k')).code, 0);
    assert.equal(await blocks(), full / 2, 'discard and write -z -u punch holes');
    const data = await readFile(img);
    assert.equal(data.subarray(0, 768 * 1024).every((b) => b === 0), true);
  });

  it('ignores discards with -d ignore but still unmaps for write -z -u', async (t) => {
    if (!needNative(t)) return;
    await writeFile(img, new Uint8Array(1024 * 1024).fill(0x55));
    const r = await vdisk(['io', '-f', 'raw', '-d', 'ignore', '-c', 'discard 0 64k', '-c', 'write -z -u 64k 64k', img]);
    assert.equal(r.code, 0);
    const data = await readFile(img);
    assert.equal(data[0], 0x55);
    assert.equal(data[65536], 0);
    assert.equal((await stat(img)).blocks, 2048 - 128);
  });

  it('reports everything of a raw image as allocated', async () => {
    const r = await io('alloc 0', 'alloc 1', 'alloc 512 1k', 'alloc 0 2M', 'alloc 1M', 'alloc 1048064 1024', 'alloc 1088', 'map');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '512/512 bytes allocated at offset 0 bytes\n512/512 bytes allocated at offset 1 bytes\n'
      + '1024/1024 bytes allocated at offset 512 bytes\n1048576/1048576 bytes allocated at offset 0 bytes\n'
      + '0/0 bytes allocated at offset 1 MiB\n512/512 bytes allocated at offset 1023.500 KiB\n'
      + '512/512 bytes allocated at offset 1.062 KiB\n'
      + '1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)\n');
  });

  it('prints length and info', async () => {
    const r = await io('length', 'info', 'flush', 'aio_flush');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '1 MiB\nformat name: raw\ncluster size: 0 bytes\nvm state offset: 0 bytes\n');
  });

  it('truncates, with and without preallocation', async () => {
    const r = await io('truncate 2M', 'length', 'truncate -m full 4M', 'length',
      'truncate -m full 1M', 'truncate -m metadata 5M', 'truncate -m bogus 5M', 'truncate 4096 x', 'length');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '2 MiB\n4 MiB\n4 KiB\n');
    assert.equal(r.stderr, 'vdisk io: Cannot use preallocation for shrinking files\n'
      + 'vdisk io: Unsupported preallocation mode: metadata\nvdisk io: Invalid preallocation mode \'bogus\'\n');
    assert.equal((await stat(img)).size, 4096);
  });

  it('reserves the new range with truncate -m falloc', async (t) => {
    if (!needNative(t)) return;
    const r = await io('truncate -m falloc 3M', 'length');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '3 MiB\n');
    const st = await stat(img);
    assert.equal(st.size, 3 * 1024 * 1024);
    assert.ok(st.blocks >= 4096, `the 2 MiB added are allocated (${st.blocks} blocks)`);
  });
});

describe('vdisk io: command-line mistakes', () => {
  it('words each mistake as qemu-io and goes on with the next command', async () => {
    const r = await io('nonexist', 'read', 'length x', 'alloc 0 1 2', 'read -x 0 1', 'r 0 1 -P', 'read 0 1x', 'read 0 8E',
      'read 0 3G', 'read -P 256 0 1', 'read -s 0 0 1', 'read -P 0 -s 10 0 5', 'write -u 0 1', 'write -n 0 1',
      'write -z -P 1 0 1', 'write -b -z 0 1', 'write -c -f 0 1', 'write -z 0 2G', 'discard 0 4G', 'sleep x', 'help x', 'length');
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'command "nonexist" not found\nbad argument count 0 to read, expected at least 2 arguments\n'
      + 'bad argument count 1 to length, expected 0 arguments\nbad argument count 3 to alloc, expected between 1 and 2 arguments\n'
      + "read: invalid option -- 'x'\nr: option requires an argument -- 'P'\n");
    const usage = 'read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset\n';
    assert.equal(r.stdout, usage + usage
      + 'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1x\n'
      + 'Parsing error: argument too large -- 8E\n'
      + 'length cannot exceed 2147483136, given 3G\n'
      + '256 is not a valid pattern byte\n'
      + usage
      + 'pattern verification range exceeds end of read data\n'
      + '-u requires -z to be specified\n-n requires -z to be specified\n'
      + 'Only one of -z, -P, and -s can be specified at the same time\n'
      + '-b and -z cannot be specified at the same time\n-f and -b or -c cannot be specified at the same time\n'
      + 'length cannot exceed 2147483136 without -n, given 2G\nlength cannot exceed 2147483136, given 4G\n'
      + 'x is not a valid number\ncommand x not found\n1 MiB\n');
  });

  it('stops at quit', async () => {
    const r = await io('length', 'quit now', 'length');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '1 MiB\n');
  });

  it('prints help like qemu-io', async () => {
    const r = await io('help discard', 'help l', 'help');
    assert.equal(r.code, 0);
    assert.ok(r.stdout.startsWith('discard [-Cq] off len -- discards a number of bytes at a specified offset\n\n'
      + ' discards a range of bytes from the given offset\n'));
    assert.match(r.stdout, /\nl -- gets the length of the current file\naio_flush -- completes all outstanding aio requests\n/);
    assert.match(r.stdout, /\nmap {2}-- prints the allocated areas of a file\n/);
    assert.ok(r.stdout.endsWith("\nUse 'help commandname' for extended help.\n"));
  });
});

describe('vdisk io: opening', () => {
  it('refuses writes on a read-only open with one line on stderr', async () => {
    const before = await stat(img);
    const r = await vdisk(['io', '-f', 'raw', '-r', '-c', 'write 0 1', '-c', 'discard 0 1', '-c', 'read 0 1', img]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'vdisk io: Block node is read-only\nvdisk io: Block node is read-only\n');
    assert.match(r.stdout, /^read 1\/1 bytes at offset 0\n/);
    assert.equal((await stat(img)).mtimeMs, before.mtimeMs);
  });

  it('says why an image cannot be opened, in one line', async () => {
    const cases: [string[], string][] = [
      [['-f', 'raw', tmp.path('missing.raw')], `vdisk io: can't open device ${tmp.path('missing.raw')}: Could not open '${tmp.path('missing.raw')}': No such file or directory\n`],
      [['-f', 'bogus', img], `vdisk io: can't open device ${img}: Unknown driver 'bogus'\n`],
      [['-f', 'raw', '-U', img], `vdisk io: can't open device ${img}: force-share=on can only be used with read-only images\n`],
      [['-f', 'raw', '-t', 'bogus', img], 'vdisk io: Invalid cache option: bogus\n'],
      [['-f', 'raw', '-d', 'bogus', img], 'vdisk io: Invalid discard option: bogus\n'],
      [['-f', 'raw', '-x', img], "vdisk io: invalid option -- 'x'\n"],
      [['-s', img], 'vdisk io: option -s (--snapshot) is not supported\n'],
    ];
    for (const [args, stderr] of cases) {
      const r = await vdisk(['io', '-c', 'length', ...args]);
      assert.deepEqual({ code: r.code, stdout: r.stdout, stderr: r.stderr }, { code: 1, stdout: '', stderr }, args.join(' '));
    }
  });

  it('warns when the format was probed', async () => {
    const r = await vdisk(['io', '-c', 'length', img]);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '1 MiB\n');
    assert.match(r.stderr, /^WARNING: Image format was not specified for '.*' and probing guessed raw\.\n/);
  });

  it('runs what needs no image without one', async () => {
    const r = await vdisk(['io', '-c', 'sleep 1', '-c', 'length', '-c', 'help quit']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, 'quit -- exit the program\n');
    assert.equal(r.stderr, "no file open, try 'help open'\n");
  });

  it('opens with -t modes and -U -r', async () => {
    for (const args of [['-t', 'writethrough'], ['-t', 'unsafe'], ['-t', 'writeback'], ['-U', '-r'], ['-k', '-m', '-i', 'threads']]) {
      const r = await vdisk(['io', '-f', 'raw', ...args, '-c', 'length', img]);
      assert.deepEqual([r.code, r.stdout, r.stderr], [0, '1 MiB\n', ''], args.join(' '));
    }
  });
});

describe('vdisk io: commands from stdin', () => {
  it('reads lines without a prompt when stdin is not a terminal', async () => {
    const r = await vdisk(['io', '-f', 'raw', img], 'write -P 9 0 1\n\n  read -P 9 0 1 \nnonexist\nlength');
    assert.equal(r.code, 1);
    assert.equal(mask(r.stdout), 'wrote 1/1 bytes at offset 0\n1 bytes, 1 ops; T\nread 1/1 bytes at offset 0\n1 bytes, 1 ops; T\n1 MiB\n');
    assert.equal(r.stderr, 'command "nonexist" not found\n');
  });

  it('keeps a carriage return in the command, as qemu-io', async () => {
    const r = await vdisk(['io', '-f', 'raw', img], 'length\r\nquit\nlength\n');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'command "length\r" not found\n');
  });
});
