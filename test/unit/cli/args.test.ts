import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseArgs, lastValue } from '../../../src/cli/args.js';
import { UsageError } from '../../../src/cli/errors.js';

const SPECS = [
  { short: 'f', long: 'format', value: true },
  { short: 'o', long: 'options', value: true, multiple: true },
  { short: 'q', long: 'quiet' },
  { short: 'U', long: 'force-share' },
  { long: 'output', value: true },
];

describe('parseArgs (getopt_long as qemu-img uses it)', () => {
  it('takes options before and after operands, attached and separate values', () => {
    const p = parseArgs(['-fraw', 'a.img', '--output=json', '-o', 'x=1', '-o', 'y=2', 'b', '-qU'], SPECS);
    assert.deepEqual(p.positionals, ['a.img', 'b']);
    assert.equal(lastValue(p, 'format'), 'raw');
    assert.equal(lastValue(p, 'output'), 'json');
    assert.deepEqual(p.options.get('options'), ['x=1', 'y=2']);
    assert.ok(p.options.has('quiet') && p.options.has('force-share'));
  });

  it('stops at -- so an operand may start with a dash', () => {
    const p = parseArgs(['-f', 'raw', '--', '-5', '-q'], SPECS);
    assert.deepEqual(p.positionals, ['-5', '-q']);
    assert.ok(!p.options.has('quiet'));
  });

  it('lets the last of a repeated option win, as qemu-img does', () => {
    assert.equal(lastValue(parseArgs(['-f', 'raw', '-f', 'qcow2'], SPECS), 'format'), 'qcow2');
  });

  it('accepts --long VALUE as well as --long=VALUE', () => {
    assert.equal(lastValue(parseArgs(['--output', 'human', 'x'], SPECS), 'output'), 'human');
  });

  for (const [argv, message] of [
    [['-z'], /invalid option -- 'z'/],
    [['--nope'], /unrecognized option '--nope'/],
    [['-f'], /option requires an argument -- 'f'/],
    [['--output'], /option '--output' requires an argument/],
    [['--quiet=yes'], /doesn't allow an argument/],
  ] as const) {
    it(`refuses ${argv.join(' ')}`, () => {
      assert.throws(() => parseArgs(argv, SPECS), (e: unknown) => e instanceof UsageError && message.test(e.message));
    });
  }
});
