import type { Job } from './job.js';

/**
 * A job as QMP's query-jobs shows it (QEMU's JobInfo, same names): what `--output=json` prints,
 * one object per line, as the job starts, moves on and concludes.
 */
export interface JobInfo {
  id: string;
  /** The kind of job (QMP's JobType): convert, dd … */
  type: string;
  status: Job['state'];
  'current-progress': number;
  'total-progress': number;
  /** Why the job failed or was cancelled; absent while it runs and when it succeeded. */
  error?: string;
}

export function jobInfo(job: Job<unknown>, type: string): JobInfo {
  const { done, total } = job.progress;
  const info: JobInfo = { id: job.id, type, status: job.state, 'current-progress': done, 'total-progress': total };
  if (job.error) info.error = job.error.message;
  return info;
}
