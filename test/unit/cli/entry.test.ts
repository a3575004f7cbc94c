import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

const REPO = new URL('../../../', import.meta.url).pathname;

describe('process entry', () => {
  it('ends quietly with 141 when the reader of its output goes away (EPIPE), as qemu-img does on SIGPIPE', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdisk-entry-'));
    try {
      const img = path.join(dir, 'a.raw');
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      const child = spawn(process.execPath, ['--import', 'tsx', `${REPO}src/cli/dev.ts`, 'map', '--output=json', '-f', 'raw', img], {
        cwd: REPO,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      // Closed before the child has even loaded: its first write meets a pipe with no reader.
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
      assert.equal(stderr, '');
      assert.equal(code, 141);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
