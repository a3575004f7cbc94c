import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatG3, qemuJson, sizeToStr } from '../../../src/core/qemu-format.js';

describe("qemu's size_to_str", () => {
  // Expected strings are what qemu-img info prints for these virtual and disk sizes.
  const cases: [number, string][] = [
    [0, '0 B'], [512, '512 B'], [1000, '0.977 KiB'], [1023, '0.999 KiB'], [1024, '1 KiB'], [4096, '4 KiB'],
    [57344, '56 KiB'], [1536, '1.5 KiB'], [4194304, '4 MiB'], [1024 ** 3, '1 GiB'], [1024 ** 4, '1 TiB'],
    [10 * 1024 ** 3, '10 GiB'], [1023 * 1024 ** 2, '0.999 GiB'], [100 * 1024 ** 2, '100 MiB'], [3146752, '3 MiB'],
  ];
  for (const [n, s] of cases) it(`${n} → ${s}`, () => assert.equal(sizeToStr(n), s));
});

describe('printf %0.3g', () => {
  for (const [v, s] of [[0.977, '0.977'], [1.5, '1.5'], [100, '100'], [999.4, '999'], [999.6, '1e+03'], [0.0001234, '0.000123'], [12345, '1.23e+04']] as const) {
    it(`${v} → ${s}`, () => assert.equal(formatG3(v), s));
  }
});

describe("QEMU's JSON layout", () => {
  it('indents by four spaces with "key": value', () => {
    assert.equal(qemuJson({ 'virtual-size': 1, format: 'raw' }), '{\n    "virtual-size": 1,\n    "format": "raw"\n}');
  });
});
