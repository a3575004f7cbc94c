import { BlockError } from '../../../core/errors.js';
import { AUTOCLEAR, MAX_BACKING_FILE_NAME } from './constants.js';
import { headerBytesNeeded } from './header-writer.js';
import { rewriteHeader } from './header-rewrite.js';
import type { Qcow2Node } from './qcow2-node.js';

/**
 * Points the image at another backing file, or at none (QEMU's qcow2_change_backing_file, as
 * qemu-img rebase uses it). The name is stored as given; it is resolved against the image's
 * directory when the image is opened. Everything written before is flushed first, so the new
 * link never lands ahead of the data that makes it right. The open node keeps reading through
 * the chain it was opened with; reopen the image to read through the new one.
 */
export async function changeBackingFile(node: Qcow2Node, name: string | undefined, format: string | undefined): Promise<void> {
  checkBackingChange(node, name, format);
  await node.maintain('rebase', async (p) => {
    await p.writeback.flush();
    await rewriteHeader(p.file, p.header, { ...p.header, backingFile: name, backingFormat: name === undefined ? undefined : format });
  });
}

/**
 * Whether the link can change as asked, checked before anything is written: the reasons QEMU
 * gives when qcow2_change_backing_file fails, in qemu-img rebase's words.
 */
export function checkBackingChange(node: Qcow2Node, name: string | undefined, format: string | undefined): void {
  const h = node.header;
  const fail = (code: 'EINVAL' | 'ENOSPC', why: string) => {
    throw new BlockError(code, `Could not change the backing file to '${name ?? ''}': ${why}`, { op: 'rebase', path: node.filename });
  };
  if (name === undefined) return;
  if (format === undefined) fail('EINVAL', 'backing format must be specified');
  if (new TextEncoder().encode(name).byteLength > MAX_BACKING_FILE_NAME) fail('EINVAL', 'Invalid argument');
  // A raw external data file is the whole disk: nothing may show through from a backing file.
  if (h.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) fail('EINVAL', 'Invalid argument');
  const needed = headerBytesNeeded({ ...h, backingFile: name, backingFormat: format, otherExtensions: h.unknownExtensions, extraHeaderFields: h.extraHeaderFields });
  if (needed > 2 ** h.clusterBits) fail('ENOSPC', 'No space left in the file header');
}
