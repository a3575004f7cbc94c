import { open } from 'node:fs/promises';
import type { Context } from './command.js';
import { strtol } from './numbers.js';
import { strerror } from './strerror.js';

/** parse_pattern(): one byte as strtol reads it (0x12, 022, 18), or null after saying why not. */
export function parsePattern(ctx: Context, arg: string): number | null {
  const { value, complete } = strtol(arg);
  if (value < 0n || value > 255n || !complete) {
    ctx.print(`${arg} is not a valid pattern byte\n`);
    return null;
  }
  return Number(value);
}

/** True when every byte of `buf` is `pattern`. */
export function matchesPattern(buf: Uint8Array, pattern: number): boolean {
  for (let i = 0; i < buf.byteLength; i++) if (buf[i] !== pattern) return false;
  return true;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const isAlnum = (b: number) => (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122);

/**
 * dump_buffer() of `read -v`: 16 bytes a line, "%08lx:  " offset, hex bytes, then the bytes
 * that are letters or digits (C locale isalnum) and '.' for the rest.
 */
export function dumpBuffer(ctx: Context, buf: Uint8Array, offset: number): void {
  const lines: string[] = [];
  for (let i = 0; i < buf.byteLength; i += 16) {
    const row = buf.subarray(i, i + 16);
    let hex = '';
    let text = '';
    for (const b of row) {
      hex += `${HEX[b]} `;
      text += isAlnum(b) ? String.fromCharCode(b) : '.';
    }
    lines.push(`${(offset + i).toString(16).padStart(8, '0')}:  ${hex} ${text}\n`);
    // Big dumps go out in slices so a 1 GiB `read -v` does not build one giant string.
    if (lines.length === 4096) ctx.print(lines.splice(0).join(''));
  }
  if (lines.length) ctx.print(lines.join(''));
}

/**
 * qemu_io_alloc_from_file() of `write -s FILE`: a buffer of `length` bytes holding the file's
 * first bytes, repeated. Null after a perror()-style line on stderr (or "file is empty").
 */
export async function patternFromFile(ctx: Context, file: string, length: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(length);
  let got = 0;
  try {
    const fh = await open(file, 'r');
    try {
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, null);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } finally {
      await fh.close();
    }
  } catch (err) {
    ctx.printErr(`${file}: ${strerror(err)}\n`);
    return null;
  }
  if (got === 0) {
    ctx.printErr(`${file}: file is empty\n`);
    return null;
  }
  for (let at = got; at < length; at += got) buf.copyWithin(at, 0, Math.min(got, length - at));
  return buf;
}
