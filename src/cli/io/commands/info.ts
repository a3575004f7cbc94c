import { namedNode } from '../../../drivers/filter/copy-on-read/index.js';
import { humanSize } from '../../sizes.js';
import { imageOf, OK, type CommandDef, type Context, type Status } from '../command.js';

export const lengthCommand: CommandDef = {
  name: 'length',
  altname: 'l',
  argmin: 0,
  argmax: 0,
  oneline: 'gets the length of the current file',
  async run(ctx: Context): Promise<Status> {
    ctx.print(`${humanSize(imageOf(ctx).size)}\n`);
    return OK;
  },
};

export const infoCommand: CommandDef = {
  name: 'info',
  altname: 'i',
  argmin: 0,
  argmax: 0,
  oneline: 'prints information about the current file',
  run: info,
};

/*
 * qemu-io prints the format, the cluster size and the VM state offset (0 for raw, which has
 * neither: bdrv_get_info's), then the format-specific facts the way qemu-img's human output lays
 * them out.
 */
async function info(ctx: Context): Promise<Status> {
  // qemu-io -C has no filter node in QEMU 7.2: info describes the image.
  const node = namedNode(imageOf(ctx));
  const specific = node.formatSpecific();
  const clusterSize = node.imageInfo()['cluster-size'];
  ctx.print(`format name: ${node.driver}\n`);
  ctx.print(`cluster size: ${humanSize(typeof clusterSize === 'number' ? clusterSize : 0)}\n`);
  ctx.print(`vm state offset: ${humanSize(node.vmStateOffset())}\n`);
  if (specific && Object.keys(specific).length > 0) {
    ctx.print('Format specific information:\n');
    ctx.print(dumpValue(specific, 1));
  }
  return OK;
}

/** QEMU's dump_qobject(): "key: value" with '-' in keys read as spaces, nesting indented by 4. */
function dumpValue(value: unknown, depth: number): string {
  const pad = '    '.repeat(depth);
  let out = '';
  const entries: [string, unknown][] = Array.isArray(value)
    ? value.map((v, i) => [`[${i}]`, v])
    : Object.entries(value as Record<string, unknown>).map(([k, v]) => [k.replace(/-/g, ' '), v]);
  for (const [key, v] of entries) {
    if (v !== null && typeof v === 'object') out += `${pad}${key}:\n${dumpValue(v, depth + 1)}`;
    else out += `${pad}${key}: ${String(v)}\n`;
  }
  return out;
}
