import type { Writable } from 'node:stream';

const CHUNK = 256 * 1024;

/**
 * Collects ASCII output in large buffers and writes them whole. A map of a big sparse image has
 * tens of thousands of rows; joining them as JS strings costs more than walking the image.
 */
export class ChunkWriter {
  private buf = Buffer.allocUnsafe(CHUNK);
  private pos = 0;

  constructor(private readonly out: Writable) {}

  /** Appends a string of ASCII (latin1) characters. */
  write(text: string): void {
    if (this.pos + text.length > this.buf.length) {
      this.flush();
      if (text.length > this.buf.length) this.buf = Buffer.allocUnsafe(text.length);
    }
    this.pos += this.buf.write(text, this.pos, 'latin1');
  }

  flush(): void {
    if (this.pos === 0) return;
    this.out.write(this.buf.subarray(0, this.pos));
    this.buf = Buffer.allocUnsafe(CHUNK);
    this.pos = 0;
  }
}
