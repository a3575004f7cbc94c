import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { UsageError } from '../../../src/cli/errors.js';
import { formatFixed, humanSize, parseSize, qemuStrtosz } from '../../../src/cli/sizes.js';

/*
 * Expected values are what qemu-io 7.2 (Debian 1:7.2+dfsg-7+deb12u18) printed for
 * `read -- TEXT 0` on a large null-co image and for `alloc N` (cvtstr).
 */
const STRTOSZ: [string, bigint | 'EINVAL' | 'ERANGE'][] = [
  ['0', 0n], ['1', 1n], ['08', 8n], ['010', 10n], ['+5', 5n], ['\t12', 12n], ['00012', 12n],
  ['1b', 1n], ['1B', 1n], ['0b', 0n], ['1.5k', 1536n], ['1.5K', 1536n], ['1.5m', 1572864n], ['1.5g', 1610612736n],
  ['1.5t', 1649267441664n], ['1.5p', 1688849860263936n], ['1.5e', 1729382256910270464n], ['0.1e', 115292150460684704n],
  ['7E', 8070450532247928832n], ['7.999E', 9222219115350168960n],
  // Fractions: 64-bit fixed point, rounded half up; "1." and "1.e" take the suffix.
  ['1.k', 1024n], ['1.e', 1152921504606846976n], ['0.5k', 512n], ['1.000001k', 1024n], ['1.0005k', 1025n],
  ['1.0004k', 1024n], ['1.00048828125k', 1025n], ['1.00146484375k', 1026n], ['3.3333k', 3413n],
  ['4.9999999999999999k', 5120n], ['1.49999999999999999999999999999999k', 1536n],
  ['0.00048828125k', 1n], ['0.000244140625k', 0n], ['0.000732421875k', 1n],
  ['1.9999999999999999999999e', 1152921504606846976n], ['7.99999999999999999E', 8070450532247928832n],
  ['1.0', 1n], ['0.0', 0n], ['0.0k', 0n], ['1.0000000000000000000001', 1n],
  // Hex: no fraction; a suffix is accepted (QEMU warns that it is deprecated).
  ['0x10', 16n], ['0X10', 16n], ['0x10k', 16384n], ['0X1K', 1024n], ['0x1p', 1125899906842624n], ['0x1b', 27n],
  ['0x1e', 30n], ['0xfffffffffffffk', 4611686018427386880n],
  ['', 'EINVAL'], ['k', 'EINVAL'], ['1KiB', 'EINVAL'], ['1e3', 'EINVAL'], ['1.5', 'EINVAL'], ['12\t', 'EINVAL'],
  ['.5k', 'EINVAL'], ['0x', 'EINVAL'], ['0xg', 'EINVAL'], ['0x1.8', 'EINVAL'], ['1.0e0', 'EINVAL'], ['1.5.k', 'EINVAL'],
  ['1.25b', 'EINVAL'], ['0.5b', 'EINVAL'], ['-0', 'EINVAL'], [' -1', 'EINVAL'], ['0x-1', 'EINVAL'], ['1.e3', 'EINVAL'],
  ['5.x', 'EINVAL'], ['1..k', 'EINVAL'], ['1.5kk', 'EINVAL'], ['0xab.k', 'EINVAL'], ['00x1', 'EINVAL'], ['1.nank', 'EINVAL'],
  ['1.-5k', 'EINVAL'], ['1 k', 'EINVAL'], ['1x', 'EINVAL'], ['1k1', 'EINVAL'],
  // Overflow is ERANGE, unless characters follow the overflowing digits.
  ['18446744073709551616', 'ERANGE'], ['0x10000000000000000', 'ERANGE'], ['16E', 'ERANGE'],
  ['99999999999999999999.5k', 'EINVAL'], ['99999999999999999999k', 'EINVAL'],
];

describe('qemuStrtosz', () => {
  for (const [text, want] of STRTOSZ) {
    it(`${JSON.stringify(text)} → ${want}`, () => {
      const r = qemuStrtosz(text);
      if (typeof want === 'bigint') assert.deepEqual(r.ok && r.value, want);
      else assert.deepEqual(r, { ok: false, error: want });
    });
  }

  it('flags hex with a suffix, which QEMU accepts with a deprecation warning', () => {
    assert.deepEqual(qemuStrtosz('0x10k'), { ok: true, value: 16384n, hexWithSuffix: true });
    assert.deepEqual(qemuStrtosz('0x10'), { ok: true, value: 16n, hexWithSuffix: false });
    assert.deepEqual(qemuStrtosz('16k'), { ok: true, value: 16384n, hexWithSuffix: false });
  });

  it('keeps 64-bit values exact (beyond 2^53)', () => {
    assert.deepEqual(qemuStrtosz('9223372036854775807'), { ok: true, value: 9223372036854775807n, hexWithSuffix: false });
    assert.deepEqual(qemuStrtosz('18446744073709551615'), { ok: true, value: 18446744073709551615n, hexWithSuffix: false });
  });

  it('takes a default suffix and a unit (qemu_strtosz_MiB, qemu_strtosz_metric)', () => {
    assert.deepEqual(qemuStrtosz('2', 'M'), { ok: true, value: 2097152n, hexWithSuffix: false });
    assert.deepEqual(qemuStrtosz('1.5', 'M'), { ok: true, value: 1572864n, hexWithSuffix: false });
    assert.deepEqual(qemuStrtosz('2k', 'B', 1000), { ok: true, value: 2000n, hexWithSuffix: false });
  });
});

describe('parseSize', () => {
  it('returns safe integers', () => {
    assert.equal(parseSize('64k'), 65536);
    assert.equal(parseSize('0x200'), 512);
    assert.equal(parseSize('4P'), 2 ** 52);
    assert.equal(parseSize('9007199254740991'), Number.MAX_SAFE_INTEGER);
  });

  it('rejects malformed and unrepresentable sizes with a UsageError naming the argument', () => {
    assert.throws(() => parseSize('12q', 'offset'), (e: unknown) => e instanceof UsageError && e.message === "Invalid offset specified: '12q'");
    assert.throws(() => parseSize('8P'), (e: unknown) => e instanceof UsageError && /too large/.test(e.message));
    assert.throws(() => parseSize('16E'), (e: unknown) => e instanceof UsageError && /too large/.test(e.message));
    assert.throws(() => parseSize('-1'), UsageError);
  });
});

describe('humanSize (qemu-io cvtstr)', () => {
  const cases: [number, string][] = [
    [0, '0 bytes'], [1, '1 bytes'], [512, '512 bytes'], [1023, '1023 bytes'], [0.5, '0.500000 bytes'],
    // Everything from the first ".000" on is cut, even inside "%f"'s six digits.
    [12.0005, '12 bytes'], [1017.397497, '1017.397497 bytes'],
    [1024, '1 KiB'], [1025, '1.001 KiB'], [1536, '1.500 KiB'], [3461, '3.380 KiB'], [5000, '4.883 KiB'],
    [70000, '68.359 KiB'], [1048575, '1023.999 KiB'], [1048576, '1 MiB'], [2097151, '2 MiB'], [4194304, '4 MiB'],
    [1073741823, '1024 MiB'], [1099511627775, '1024 GiB'], [1125899906842623, '1024 TiB'],
    [2 ** 60, '1 EiB'], [2 ** 63, '8 EiB'],
    // Ties round to even, as glibc's printf: 1088 B is 1.0625 KiB.
    [1088, '1.062 KiB'], [1000000, '976.562 KiB'],
    [Infinity, 'inf EiB'], [NaN, '-nan bytes'],
  ];
  for (const [value, want] of cases) it(`${value} → ${want}`, () => assert.equal(humanSize(value), want));
});

describe('formatFixed (printf %.Nf)', () => {
  it('rounds the exact binary value half to even', () => {
    assert.equal(formatFixed(0.125, 2), '0.12');
    assert.equal(formatFixed(0.375, 2), '0.38');
    assert.equal(formatFixed(2.5, 0), '2');
    assert.equal(formatFixed(3.5, 0), '4');
    // 1.005 is really 1.00499999999999989...: down, where a decimal-minded rounding goes up.
    assert.equal(formatFixed(1.005, 2), '1.00');
    assert.equal(formatFixed(1e21, 1), '1000000000000000000000.0');
  });

  it('pads, signs and spells specials as glibc does', () => {
    assert.equal(formatFixed(0.000123, 4), '0.0001');
    assert.equal(formatFixed(-1.5, 3), '-1.500');
    assert.equal(formatFixed(-0, 1), '-0.0');
    assert.equal(formatFixed(Infinity, 3), 'inf');
    assert.equal(formatFixed(-Infinity, 3), '-inf');
    assert.equal(formatFixed(NaN, 3), '-nan');
    assert.equal(formatFixed(5e-324, 3), '0.000');
  });
});
