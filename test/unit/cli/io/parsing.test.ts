import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { breakline } from '../../../../src/cli/io/breakline.js';
import { Getopt, type GetoptItem } from '../../../../src/cli/io/getopt.js';
import { cvtnum, strtol } from '../../../../src/cli/io/numbers.js';
import { parsePattern } from '../../../../src/cli/io/pattern.js';
import { fakeContext } from './fake-context.js';

function all(argv: string[], optstring: string): { items: GetoptItem[]; operands: string[] } {
  const g = new Getopt(argv, optstring);
  const items: GetoptItem[] = [];
  for (let o = g.next(); o; o = g.next()) {
    items.push(o);
    if ('error' in o) break;
  }
  return { items, operands: g.operands };
}

describe('breakline', () => {
  it('splits at spaces only and drops empty words', () => {
    assert.deepEqual(breakline('  read   -P 0xcd  0 512 '), ['read', '-P', '0xcd', '0', '512']);
    assert.deepEqual(breakline(''), []);
    assert.deepEqual(breakline('   '), []);
  });

  it('keeps quotes and tabs inside words, as qemu-io 7.2 does', () => {
    assert.deepEqual(breakline('read "0" 1'), ['read', '"0"', '1']);
    assert.deepEqual(breakline("write -s 'a b' 0 1"), ['write', '-s', "'a", "b'", '0', '1']);
    assert.deepEqual(breakline('length\t'), ['length\t']);
  });
});

describe('Getopt (GNU getopt)', () => {
  it('reads flags, clusters and attached or separate arguments', () => {
    assert.deepEqual(all(['read', '-q', '-vP', '0x12', '-s1k', '0', '512'], 'bCl:pP:qs:v'), {
      items: [{ opt: 'q' }, { opt: 'v' }, { opt: 'P', arg: '0x12' }, { opt: 's', arg: '1k' }],
      operands: ['0', '512'],
    });
  });

  it('permutes operands, so options may follow them', () => {
    assert.deepEqual(all(['read', '0', '-P', '1', '512'], 'P:'), { items: [{ opt: 'P', arg: '1' }], operands: ['0', '512'] });
    // ... which is why a negative number is an option.
    assert.deepEqual(all(['read', '0', '-1'], 'P:').items, [{ error: "read: invalid option -- '1'" }]);
  });

  it('takes the next word as an argument whatever it looks like', () => {
    assert.deepEqual(all(['read', '-P', '-1', '0', '1'], 'P:'), { items: [{ opt: 'P', arg: '-1' }], operands: ['0', '1'] });
  });

  it('stops at -- and treats a lone - as an operand', () => {
    assert.deepEqual(all(['read', '-q', '--', '-1', '-q'], 'q'), { items: [{ opt: 'q' }], operands: ['-1', '-q'] });
    assert.deepEqual(all(['read', '-', '1'], 'q'), { items: [], operands: ['-', '1'] });
  });

  it('words errors as glibc does, with the command name as typed', () => {
    assert.deepEqual(all(['r', '-x'], 'q').items, [{ error: "r: invalid option -- 'x'" }]);
    assert.deepEqual(all(['read', '0', '1', '-P'], 'P:').items, [{ error: "read: option requires an argument -- 'P'" }]);
    assert.deepEqual(all(['read', '--foo'], 'P:').items, [{ error: "read: invalid option -- '-'" }]);
    assert.deepEqual(all(['read', '-:'], 'P:').items, [{ error: "read: invalid option -- ':'" }]);
  });
});

describe('strtol (base 0)', () => {
  const cases: [string, bigint, boolean][] = [
    ['0', 0n, true], ['205', 205n, true], ['0xcd', 205n, true], ['0XCD', 205n, true], ['010', 8n, true], ['-1', -1n, true],
    ['\t5', 5n, true], ['08', 0n, false], ['0x', 0n, false], ['abc', 0n, false], ['', 0n, true], ['1.5', 1n, false],
    ['99999999999999999999', (1n << 63n) - 1n, true], ['-99999999999999999999', -(1n << 63n), true],
  ];
  for (const [text, value, complete] of cases) {
    it(JSON.stringify(text), () => assert.deepEqual(strtol(text), { value, complete }));
  }
});

describe('parsePattern', () => {
  it('accepts a byte in any base strtol reads', () => {
    const ctx = fakeContext();
    assert.equal(parsePattern(ctx, '0xcd'), 0xcd);
    assert.equal(parsePattern(ctx, '010'), 8);
    assert.equal(parsePattern(ctx, '255'), 255);
    assert.equal(ctx.stdout(), '');
  });

  it('rejects anything else with qemu-io\'s line on stdout', () => {
    for (const bad of ['256', '-1', 'abc', '0x1G', '08']) {
      const ctx = fakeContext();
      assert.equal(parsePattern(ctx, bad), null);
      assert.equal(ctx.stdout(), `${bad} is not a valid pattern byte\n`);
    }
  });
});

describe('cvtnum', () => {
  it('returns exact 64-bit values', () => {
    const ctx = fakeContext();
    assert.equal(cvtnum(ctx, '4k'), 4096n);
    assert.equal(cvtnum(ctx, '9223372036854775807'), 9223372036854775807n);
    assert.equal(ctx.stdout() + ctx.stderr(), '');
  });

  it('prints print_cvtnum_err()\'s messages', () => {
    const ctx = fakeContext();
    assert.equal(cvtnum(ctx, '1x'), null);
    assert.equal(cvtnum(ctx, '8E'), null);
    assert.equal(cvtnum(ctx, '9223372036854775808'), null);
    assert.equal(ctx.stdout(), 'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1x\n'
      + 'Parsing error: argument too large -- 8E\nParsing error: argument too large -- 9223372036854775808\n');
  });

  it('warns about hex with a suffix and accepts it', () => {
    const ctx = fakeContext();
    assert.equal(cvtnum(ctx, '0x10k'), 16384n);
    assert.equal(ctx.stderr(), 'vdisk io: warning: Using a multiplier suffix on hex numbers is deprecated: 0x10k\n');
  });
});
