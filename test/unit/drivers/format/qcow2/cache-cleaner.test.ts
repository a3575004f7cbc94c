import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CacheCleaner } from '../../../../../src/drivers/format/qcow2/cache-cleaner.js';

const MODULE = fileURLToPath(new URL('../../../../../src/drivers/format/qcow2/cache-cleaner.ts', import.meta.url));

describe('CacheCleaner', () => {
  it('cleans once per interval until stopped', async () => {
    let runs = 0;
    let reached!: () => void;
    const twice = new Promise<void>((resolve) => (reached = resolve));
    const cleaner = new CacheCleaner(1, () => {
      if (++runs === 2) reached();
    });
    // The cleaner's timer does not keep the process alive (the point of the last test): this does.
    const alive = setInterval(() => {}, 1000);
    await twice;
    clearInterval(alive);
    cleaner.stop();
    const after = runs;
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(runs, after, 'no run after stop()');
  });

  it('0 means never', async () => {
    let runs = 0;
    const cleaner = new CacheCleaner(0, () => runs++);
    await new Promise((resolve) => setTimeout(resolve, 1200));
    cleaner.stop();
    assert.equal(runs, 0);
  });

  it('does not keep the process alive, even with an interval longer than a Node timer can wait', async () => {
    // The child starts cleaners (600 s, QEMU's default, and 2^32 - 1 s) and never stops them: it must
    // exit on its own, without a TimeoutOverflowWarning turning the long one into a 1 ms loop.
    const script = `import { CacheCleaner } from ${JSON.stringify(MODULE)};
      let runs = 0;
      new CacheCleaner(600, () => runs++);
      new CacheCleaner(2 ** 32 - 1, () => runs++);
      setTimeout(() => console.log('runs', runs), 50);`;
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      // The timeout only detects a hang: a process kept alive by a timer never exits.
      const child = execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }));
      child.stdin?.end();
    });
    assert.equal(out.code, 0, `the process exited by itself (stderr: ${out.stderr})`);
    assert.equal(out.stdout.trim(), 'runs 0');
    assert.doesNotMatch(out.stderr, /TimeoutOverflowWarning/);
  });
});
