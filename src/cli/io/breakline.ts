/**
 * qemu-io's breakline(): a command line is split at single spaces and empty words are dropped.
 * Nothing else separates or groups words: no quotes, no escapes, and a tab stays inside its
 * word (`read "0" 1` is a parse error in qemu-io 7.2, so it is one here too).
 */
export function breakline(line: string): string[] {
  return line.split(' ').filter((w) => w !== '');
}
