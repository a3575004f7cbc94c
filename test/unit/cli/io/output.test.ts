import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { dumpBuffer, patternFromFile } from '../../../../src/cli/io/pattern.js';
import { formatElapsed, formatReport, MACHINE_TIMING_LINE, TIMING_LINE } from '../../../../src/cli/io/report.js';
import { makeTmpDir } from '../../../helpers/tmp.js';
import { fakeContext } from './fake-context.js';

describe('formatElapsed (timestr)', () => {
  it('is "SS.ss sec" under a second and H:MM:SS.ss from a second on', () => {
    assert.equal(formatElapsed(0n, false), '00.00 sec');
    assert.equal(formatElapsed(123_456_789n, false), '00.12 sec');
    assert.equal(formatElapsed(1_500_000_000n, false), '0:00:01.50');
    assert.equal(formatElapsed(3_723_250_000_000n, false), '1:02:03.25');
  });

  it('is always H:MM:SS.ss for -C', () => {
    assert.equal(formatElapsed(1_000_000n, true), '0:00:00.00');
    assert.equal(formatElapsed(61_000_000_000n, true), '0:01:01.00');
  });
});

describe('formatReport (print_report)', () => {
  it('prints qemu-io\'s two lines', () => {
    // 8 KiB in a millisecond: 8 MiB/s, 1000 ops/s.
    assert.equal(formatReport('wrote', 1_000_000n, 4096, 8192, 8192, 1, false),
      'wrote 8192/8192 bytes at offset 4096\n8 KiB, 1 ops; 00.00 sec (7.812 MiB/sec and 1000.0000 ops/sec)\n');
    assert.equal(formatReport('discard', 2_000_000n, 20000, 70000, 70000, 1, false),
      'discard 70000/70000 bytes at offset 20000\n68.359 KiB, 1 ops; 00.00 sec (33.379 MiB/sec and 500.0000 ops/sec)\n');
    assert.equal(formatReport('read', 1_000_000_000n, 0, 0, 0, 1, false),
      'read 0/0 bytes at offset 0\n0 bytes, 1 ops; 0:00:01.00 (0 bytes/sec and 1.0000 ops/sec)\n');
  });

  it('prints one CSV line with -C', () => {
    assert.equal(formatReport('read', 500_000_000n, 0, 512, 512, 1, true), '512,1,0:00:00.50,1024.000,2.000\n');
  });

  it('matches the timing-line patterns that tests mask, and qemu-io\'s own lines', () => {
    const [first, second] = formatReport('wrote', 1234n, 0, 1, 1, 1, false).split('\n');
    assert.doesNotMatch(first!, TIMING_LINE);
    assert.match(second!, TIMING_LINE);
    for (const qemu of [
      '8 KiB, 1 ops; 00.00 sec (8.561 MiB/sec and 1095.7451 ops/sec)',
      '1 bytes, 1 ops; 00.00 sec (1017.397497 bytes/sec and 1017.3975 ops/sec)',
      '3 GiB, 1 ops; 00.03 sec (109.186 GiB/sec and 36.3952 ops/sec)',
      '0 bytes, 1 ops; 00.00 sec (0 bytes/sec and 116931.7119 ops/sec)',
    ]) assert.match(qemu, TIMING_LINE);
    assert.equal('8 KiB, 1 ops; 00.00 sec (8.561 MiB/sec and 1095.7451 ops/sec)'.replace(TIMING_LINE, '$1'), '8 KiB, 1 ops; ');
    assert.match('512,1,0:00:00.00,6811137.274,13303.002', MACHINE_TIMING_LINE);
  });
});

describe('dumpBuffer (read -v)', () => {
  it('prints 16 bytes a line, with letters and digits shown', () => {
    const ctx = fakeContext();
    const buf = new Uint8Array(20).fill(0xcd);
    buf.set([0x41, 0x7a, 0x30, 0x20, 0x2e], 0);
    dumpBuffer(ctx, buf, 0x3e8);
    assert.equal(ctx.stdout(),
      '000003e8:  41 7a 30 20 2e cd cd cd cd cd cd cd cd cd cd cd  Az0.............\n'
      + '000003f8:  cd cd cd cd  ....\n');
  });

  it('widens offsets past 8 hex digits', () => {
    const ctx = fakeContext();
    dumpBuffer(ctx, new Uint8Array(1), 0x123456789);
    assert.equal(ctx.stdout(), '123456789:  00  .\n');
  });
});

describe('patternFromFile (write -s)', async () => {
  const tmp = await makeTmpDir();
  after(() => tmp.cleanup());

  it('repeats the file to fill the buffer', async () => {
    await writeFile(tmp.path('abc'), 'abc');
    const buf = await patternFromFile(fakeContext(), tmp.path('abc'), 10);
    assert.equal(Buffer.from(buf!).toString(), 'abcabcabca');
  });

  it('reports an empty or missing file on stderr', async () => {
    await writeFile(tmp.path('empty'), '');
    const ctx = fakeContext();
    assert.equal(await patternFromFile(ctx, tmp.path('empty'), 10), null);
    assert.equal(await patternFromFile(ctx, tmp.path('nope'), 10), null);
    assert.equal(await patternFromFile(ctx, tmp.dir, 10), null);
    assert.equal(ctx.stderr(), `${tmp.path('empty')}: file is empty\n${tmp.path('nope')}: No such file or directory\n`
      + `${tmp.dir}: Is a directory\n`);
  });
});
