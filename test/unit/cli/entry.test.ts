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

/*
 * bin/vdisk, the installed command: runs the bundle npm run build made (dist/bin), and keeps
 * NODE_EXTRA_CA_CERTS from Node's start-up. Node warns on stderr when it cannot load that file,
 * so a file that does not exist shows whether Node itself tried.
 */
describe('the vdisk launcher (bin/vdisk)', () => {
  function launch(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(cmd, args, { cwd: os.tmpdir(), env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
  }

  it('runs the built command line, also through a symbolic link as npm installs it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdisk-launcher-'));
    try {
      fs.symlinkSync(`${REPO}bin/vdisk`, path.join(dir, 'vdisk'));
      const env = { ...process.env, PATH: `${dir}:${process.env.PATH}` };
      for (const cmd of [`${REPO}bin/vdisk`, 'vdisk']) {
        const r = await launch(cmd, ['--version'], env);
        assert.equal(r.code, 0, cmd);
        assert.match(r.stdout, /^vdisk version /, cmd);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('moves NODE_EXTRA_CA_CERTS to VDISK_EXTRA_CA_CERTS, so Node does not read it at start-up', async () => {
    const missing = path.join(os.tmpdir(), 'vdisk-no-such-ca.pem');
    const direct = spawn(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: missing }, stdio: ['ignore', 'ignore', 'pipe'] });
    let warning = '';
    direct.stderr.on('data', (d: Buffer) => (warning += d.toString()));
    await new Promise((resolve) => direct.once('close', resolve));
    assert.match(warning, /extra certs/i, 'Node itself warns about the file: the check below means something');

    const r = await launch(`${REPO}bin/vdisk`, ['--version'], { ...process.env, NODE_EXTRA_CA_CERTS: missing, VDISK_EXTRA_CA_CERTS: '' });
    assert.equal(r.code, 0);
    assert.equal(r.stderr, '');
  });
});
