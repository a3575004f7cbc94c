import type { BlockError } from '../core/errors.js';

/*
 * Deadlines on what a command waits for from storage. Network protocols enforce their own (the
 * socket is destroyed, so nothing is left behind); this one bounds the rest, such as opening a
 * local file on a dead NFS or FUSE mount. The thread in that system call cannot be stopped: the
 * command fails with ETIMEDOUT and leaves the call behind, and the process must still end.
 */

/** Work given up on that has not settled yet. */
let abandoned = 0;
let watchdog: NodeJS.Timeout | undefined;
/** Consecutive watchdog ticks that found the command finished and abandoned work still pending. */
let stuckTicks = 0;

const TICK_MS = 250;
/** How long a finished command waits for abandoned work before it ends its process. */
const STUCK_TICKS = 4;

/**
 * `work`, or `expired()` when it takes longer than `seconds` (0: no limit). Work given up on runs
 * on; when it does settle, `release` gets its result (an image opened after all is closed again).
 */
export async function withDeadline<T>(seconds: number, work: Promise<T>, expired: () => BlockError,
  release?: (late: T) => unknown): Promise<T> {
  if (!(seconds > 0)) return work;
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(expired());
    }, seconds * 1000);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
    if (timedOut) abandon(work, release);
  }
}

function abandon<T>(work: Promise<T>, release?: (late: T) => unknown): void {
  abandoned++;
  void work.then(async (late) => release?.(late)).catch(() => undefined).finally(() => abandoned--);
  watchdog ??= setInterval(checkStuck, TICK_MS).unref();
}

/**
 * A system call stuck in the kernel keeps its libuv thread, and Node joins those threads on the
 * way out: even process.exit() would wait for ever. So once the command has finished (its exit
 * status is set) and work it gave up on is still pending a second later, the process ends itself
 * with SIGTERM, which reaches a thread asleep in such a call (NFS and FUSE waits are killable).
 * The exit status is then 143, 128 + SIGTERM: still a failure. Whatever the abandoned work was
 * doing is cut short as by a crash, which images are made to survive; its result was given up on.
 */
function checkStuck(): void {
  if (abandoned === 0) {
    clearInterval(watchdog);
    watchdog = undefined;
    stuckTicks = 0;
    return;
  }
  stuckTicks = process.exitCode === undefined ? 0 : stuckTicks + 1;
  if (stuckTicks < STUCK_TICKS) return;
  process.removeAllListeners('SIGTERM');
  process.kill(process.pid, 'SIGTERM');
}
