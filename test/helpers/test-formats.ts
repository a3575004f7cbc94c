/**
 * Test-only format drivers for registry tests, registered in private `new Registry([...])`s:
 *  - `ref`: a header naming another image, opened through ctx.openReference (backing-file style);
 *  - `qfi`: a format that only probes QEMU's qcow2 magic, for the probed-raw sector-0 guard.
 */
import { writeFile } from 'node:fs/promises';
import { BlockNode } from '../../src/core/block-node.js';
import { BlockError } from '../../src/core/errors.js';
import type { IoOptions } from '../../src/core/types.js';
import type { DriverDef, NodeSpec } from '../../src/registry/index.js';

export const REF_MAGIC = 'VDREF\n';
export const QFI_MAGIC = new Uint8Array([0x51, 0x46, 0x49, 0xfb]); // 'QFI\xfb'

class RefNode extends BlockNode {
  readonly driver = 'ref';

  constructor(file: BlockNode, backing: BlockNode | undefined) {
    super({ readOnly: true });
    this.children.set('file', file);
    if (backing) this.children.set('backing', backing);
    this.size = file.size;
  }

  protected async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    await this.file!.read(offset, into, opts);
  }
}

function startsWith(head: Uint8Array, magic: Uint8Array): boolean {
  return head.byteLength >= magic.byteLength && magic.every((b, i) => head[i] === b);
}

const REF_BYTES = new TextEncoder().encode(REF_MAGIC);

/** Every open of a `ref` image, in order (depth and what it named), for assertions. */
export const refOpens: { depth: number; name: string }[] = [];

export const refFormat: DriverDef = {
  name: 'ref',
  kind: 'format',
  options: ['file'],
  probe: (head) => (startsWith(head, REF_BYTES) ? 100 : 0),
  async open(spec, ctx) {
    const file = await ctx.openChild(spec.file as NodeSpec | string, 'file');
    try {
      const head = new Uint8Array(Math.min(512, file.size));
      await file.read(0, head);
      if (!startsWith(head, REF_BYTES)) throw new BlockError('E_WRONG_FORMAT', 'not a ref image', { op: 'open' });
      const text = new TextDecoder().decode(head.subarray(REF_BYTES.byteLength));
      const name = text.slice(0, text.indexOf('\n'));
      refOpens.push({ depth: ctx.depth, name });
      const backing = name ? await ctx.openReference(name, { relativeTo: file.filename, role: 'backing', readOnly: true }) : undefined;
      return new RefNode(file, backing);
    } catch (err) {
      await file.close();
      throw err;
    }
  },
};

/** Writes a `ref` image that names `reference` ('' for none). */
export async function writeRefImage(path: string, reference: string): Promise<void> {
  const buf = new Uint8Array(4096);
  buf.set(new TextEncoder().encode(`${REF_MAGIC}${reference}\n`));
  await writeFile(path, buf);
}

export const qfiFormat: DriverDef = {
  name: 'qfi',
  kind: 'format',
  options: ['file'],
  probe: (head) => (startsWith(head, QFI_MAGIC) ? 100 : 0),
  async open() {
    throw new BlockError('E_UNSUPPORTED_FEATURE', 'qfi is a probe-only test format', { op: 'open' });
  },
};
