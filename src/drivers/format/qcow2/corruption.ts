import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { INCOMPAT } from './constants.js';
import type { Qcow2Header } from './header.js';
import { writeFeatureField } from './header-update.js';

/**
 * QEMU's qcow2_signal_corruption, for metadata that cannot be followed (a misaligned refcount
 * block, a write that would land on metadata). On an image open for writing the event is fatal:
 * the corrupt bit is set, so neither vdisk nor QEMU writes the image again before a repair, and
 * this open image refuses writes from then on (QEMU makes the node unusable). On a read-only
 * image only the request fails. QEMU says so once per open image, in the words `line` gives;
 * qemu-img check prints that line among its own, so a check may listen for it.
 */
export class CorruptionSignal {
  private signalled = false;
  /** A fatal event happened (v2 images have no corrupt bit to show it). */
  private fatal = false;
  private listener: ((line: string) => void) | undefined;

  constructor(private readonly parts: {
    file: BlockNode;
    header: Qcow2Header;
    readOnly: () => boolean;
    /** The error for the failed request, naming the image. */
    error: (what: string) => BlockError;
  }) {}

  /** Signals `what` (QEMU's words) and returns the error to fail the request with. */
  async signal(what: string): Promise<BlockError> {
    const fatal = !this.parts.readOnly();
    // Once the image is marked, every later event is known already; before, a fatal one still counts.
    if (!this.signalled || (fatal && !this.fatal)) {
      this.listener?.(fatal
        ? `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`
        : `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`);
      this.signalled = true;
    }
    if (!fatal) return this.parts.error(what);
    this.fatal = true;
    await markCorrupt(this.parts.file, this.parts.header);
    return this.parts.error(`${what}; the image is now marked corrupt`);
  }

  /** Whether writes must be refused: the image is marked corrupt, on disk or (v2) here. */
  get corrupt(): boolean {
    return this.fatal || (this.parts.header.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n;
  }

  /** A repair left the image consistent (and cleared the corrupt bit): writes may go on. */
  repaired(): void {
    this.fatal = false;
  }

  /** Sends the lines QEMU would print to `fn` until the returned function is called. */
  listen(fn: (line: string) => void): () => void {
    this.listener = fn;
    return () => {
      if (this.listener === fn) this.listener = undefined;
    };
  }
}

/** Sets the corrupt bit (v3; v2 has none), so neither vdisk nor QEMU writes this image again before a repair. */
export async function markCorrupt(file: BlockNode, h: Qcow2Header): Promise<void> {
  if (h.version < 3 || h.incompatibleFeatures & INCOMPAT.CORRUPT) return;
  h.incompatibleFeatures |= INCOMPAT.CORRUPT;
  await writeFeatureField(file, 'incompatible', h.incompatibleFeatures);
}
