import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { ProgressBar } from '../../../src/cli/progress-bar.js';

test('the bar is redrawn in place only when the figure moves by a hundredth, and ends with a newline', () => {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d.toString()));
  const bar = new ProgressBar(out, 10);
  bar.print(0);
  bar.print(0.001);
  bar.print(50);
  bar.print(50.004);
  bar.print(120);
  bar.end();
  assert.equal(text, '\r[----------]   0.00%\r[#####-----]  50.00%\r[##########] 100.00%\n');
});

test('a bar never drawn prints nothing at the end', () => {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d.toString()));
  new ProgressBar(out).end();
  assert.equal(text, '');
});
