import { BlockError } from '../core/errors.js';
import type { DriverDef } from './driver.js';

/*
 * Formats vdisk recognises but cannot open yet. Probing must still know them: otherwise a qcow2
 * image opened without -f would probe as raw and be writable as raw bytes, and the probed-raw
 * guard could not see a guest planting such a header in sector 0. Magic numbers are the ones
 * each format's specification puts at the start of the image.
 */
function ascii(head: Uint8Array, at: number, text: string): boolean {
  if (head.byteLength < at + text.length) return false;
  for (let i = 0; i < text.length; i++) if (head[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

function be32(head: Uint8Array, at: number): number {
  return head.byteLength < at + 4 ? -1 : new DataView(head.buffer, head.byteOffset + at, 4).getUint32(0, false);
}

const SIGNATURES: { name: string; probe(head: Uint8Array): boolean }[] = [
  { name: 'qcow2', probe: (h) => ascii(h, 0, 'QFI\xfb') && be32(h, 4) >= 2 },
  { name: 'qcow', probe: (h) => ascii(h, 0, 'QFI\xfb') && be32(h, 4) === 1 },
  { name: 'qed', probe: (h) => ascii(h, 0, 'QED\0') },
  { name: 'vmdk', probe: (h) => ascii(h, 0, 'KDMV') || ascii(h, 0, 'COWD') || ascii(h, 0, '# Disk DescriptorFile') },
  { name: 'vdi', probe: (h) => h.byteLength >= 68 && new DataView(h.buffer, h.byteOffset + 64, 4).getUint32(0, true) === 0xbeda107f },
  { name: 'vhdx', probe: (h) => ascii(h, 0, 'vhdxfile') },
  { name: 'vpc', probe: (h) => ascii(h, 0, 'conectix') },
  { name: 'luks', probe: (h) => ascii(h, 0, 'LUKS\xba\xbe') },
  { name: 'parallels', probe: (h) => ascii(h, 0, 'WithoutFreeSpace') || ascii(h, 0, 'WithouFreSpacExt') },
  { name: 'bochs', probe: (h) => ascii(h, 0, 'Bochs Virtual HD Image') },
];

/** Probe-only entries: they claim their images and refuse to open them with one clear line. */
export const knownFormats: DriverDef[] = SIGNATURES.map(({ name, probe }) => ({
  name,
  kind: 'format',
  options: ['file'],
  probe: (head) => (probe(head) ? 100 : 0),
  async open(spec) {
    const file = typeof spec.file === 'string' ? spec.file : (spec.file as { filename?: string } | undefined)?.filename ?? '';
    throw new BlockError('E_UNSUPPORTED_FEATURE',
      `'${file}' is a ${name} image, which vdisk cannot open yet (use -f raw to see its raw bytes)`, { op: 'open', path: file });
  },
}));
