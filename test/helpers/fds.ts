import { readdirSync } from 'node:fs';

/** How many file descriptors this process has open (Linux), to catch leaks on failed opens. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}
