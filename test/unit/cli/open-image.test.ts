import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { open as openFile } from 'node:fs/promises';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../../../src/core/errors.js';
import { parseArgs } from '../../../src/cli/args.js';
import { UsageError } from '../../../src/cli/errors.js';
import { DEFAULT_NETWORK_TIMEOUT, IMAGE_OPTIONS, openStorage, storageTimeouts } from '../../../src/cli/open-image.js';
import { vdisk } from '../../helpers/cli.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const timeoutsOf = (...argv: string[]) => storageTimeouts(parseArgs(argv, IMAGE_OPTIONS));

it('--timeout: finite for network protocols by default, none for local files; one value for both when given', () => {
  assert.deepEqual(timeoutsOf('x.img'), { network: DEFAULT_NETWORK_TIMEOUT, open: 0 });
  assert.equal(DEFAULT_NETWORK_TIMEOUT, 30);
  assert.deepEqual(timeoutsOf('--timeout', '2', 'x.img'), { network: 2, open: 2 });
  assert.deepEqual(timeoutsOf('--timeout=0.5', 'x.img'), { network: 0.5, open: 0.5 });
  assert.deepEqual(timeoutsOf('--timeout=0', 'x.img'), { network: 0, open: 0 });
});

it('--timeout refuses what is not a number of seconds a timer can keep', () => {
  for (const bad of ['', 'abc', '-1', '1e3', '2147484', 'Infinity', '0x10']) {
    assert.throws(() => timeoutsOf(`--timeout=${bad}`, 'x.img'), (e: unknown) => e instanceof UsageError && /Invalid timeout/.test(e.message), bad);
  }
});

it('an open that does not return in time fails with ETIMEDOUT; the image it opens later is closed again', async () => {
  const tmp = await makeTmpDir('vdisk-open-deadline-');
  try {
    // Opening a FIFO for reading blocks in the kernel until a writer comes: a stuck open(2).
    const fifo = tmp.path('fifo');
    execFileSync('mkfifo', [fifo]);
    const opening = openStorage(fifo, { format: 'file', readOnly: true, locking: 'off' }, { network: 0, open: 0.2 });
    await assert.rejects(opening, (e: unknown) => e instanceof BlockError && e.code === 'ETIMEDOUT'
      && e.message === `Could not open '${fifo}': no answer within 0.2 s (ETIMEDOUT)`);
    // A writer lets the abandoned open(2) return; the node it makes must be closed again, and
    // then the FIFO has no reader left, so a write fails with EPIPE. Closed by us, that is: a
    // handle left to the garbage collector is closed too, in time, with a warning.
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    const writer = await openFile(fifo, 'w');
    try {
      await assert.rejects(async () => {
        for (;;) {
          await writer.write(Buffer.from('x'));
          await sleep(20);
        }
      }, { code: 'EPIPE' });
      await sleep(50);
      assert.deepEqual(warnings.filter((w) => /garbage collection/.test(w)), []);
    } finally {
      process.off('warning', onWarning);
      await writer.close();
    }
  } finally {
    await tmp.cleanup();
  }
});

describe('every command that opens storage takes --timeout', () => {
  let tmp: TmpDir;
  let server: net.Server;
  let socket: string;
  const peers = new Set<net.Socket>();
  before(async () => {
    tmp = await makeTmpDir('vdisk-timeout-all-');
    // The image rebase -b points at the silent server.
    assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', tmp.path('top.qcow2'), '1M'])).code, 0);
    socket = tmp.path('silent.sock');
    // Accepts every connection and never sends a byte.
    server = net.createServer((s) => {
      peers.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });
  after(async () => {
    for (const s of peers) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await tmp.cleanup();
  });

  const uri = () => `nbd+unix:///?socket=${socket}`;
  const commands: [string, () => string[], number][] = [
    ['map', () => ['map', '--timeout', '1', uri()], 1],
    ['check', () => ['check', '--timeout', '1', uri()], 1],
    ['bench', () => ['bench', '--timeout', '1', '-c', '1', uri()], 1],
    ['compare', () => ['compare', '--timeout', '1', uri(), uri()], 2],
    ['io', () => ['io', '--timeout', '1', '-c', 'read 0 512', uri()], 1],
    ['convert', () => ['convert', '--timeout', '1', uri(), tmp.path('out.raw')], 1],
    ['dd', () => ['dd', '--timeout', '1', `if=${uri()}`, `of=${tmp.path('dd.raw')}`], 1],
    ['measure', () => ['measure', '--timeout', '1', uri()], 1],
    ['resize', () => ['resize', '--timeout', '1', uri(), '2M'], 1],
    ['amend', () => ['amend', '--timeout', '1', '-o', 'compat=1.1', uri()], 1],
    ['rebase -u', () => ['rebase', '--timeout', '1', '-u', '-b', '', uri()], 1],
    ['rebase -b', () => ['rebase', '--timeout', '1', '-b', uri(), '-F', 'raw', tmp.path('top.qcow2')], 1],
    ['create -b', () => ['create', '--timeout', '1', '-f', 'qcow2', '-b', uri(), '-F', 'raw', tmp.path('over.qcow2')], 1],
  ];
  for (const [name, args, status] of commands) {
    it(`${name}: a server that never answers fails it with ETIMEDOUT`, async () => {
      const r = await vdisk(args());
      assert.equal(r.code, status, r.stderr);
      assert.match(r.stderr, /^vdisk \w+: [^\n]*no answer [^\n]*within 1 s \(ETIMEDOUT\)\n$/);
    });
  }
});
