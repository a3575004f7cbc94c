import type { MeasureInfo, MeasureRequest } from '../../../registry/driver.js';

const SECTOR = 512n;

/**
 * qemu-img measure -O raw (block/raw-format.c raw_measure): a raw image is its virtual size,
 * allocated or not, so both answers are the same. An input image gives its length; a bare size
 * is rounded up to whole sectors, as create would round it.
 */
export async function measureRaw(req: MeasureRequest): Promise<MeasureInfo> {
  let size: bigint;
  if (req.input) {
    size = BigInt(req.inputLength ?? req.input.size);
  } else {
    const given = req.options.get('size');
    size = ((typeof given === 'bigint' ? given : 0n) + SECTOR - 1n) / SECTOR * SECTOR;
  }
  return { required: size, fullyAllocated: size };
}
