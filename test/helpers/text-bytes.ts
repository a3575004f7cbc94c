import { pattern } from './bytes.js';

const WORDS = ['block ', 'cluster ', 'qcow2 ', 'refcount ', 'sector ', 'guest ', 'host ', 'backing ', 'zero ', 'data\n', 'L2 ', 'vdisk '];

/**
 * Deterministic bytes that compress the way text does (to roughly a third with deflate): words
 * from a small vocabulary, with a number now and then. `pattern` bytes are random and never
 * compress, so compressed-cluster tests need these.
 */
export function textBytes(length: number, seed: number): Uint8Array {
  const choice = pattern(Math.ceil(length / 4) + 8, seed);
  const out = new Uint8Array(length);
  let pos = 0;
  for (let i = 0; pos < length; i++) {
    const c = choice[i % choice.length]!;
    const word = c % 7 === 0 ? `${c * 37 + i} ` : WORDS[c % WORDS.length]!;
    for (let j = 0; j < word.length && pos < length; j++) out[pos++] = word.charCodeAt(j);
  }
  return out;
}
