/**
 * Taking a chosen waiting job from a shared queue (BullMQ's manual processing): the first job
 * `choose` accepts is brought to the head of the queue and taken with a lock token of the caller's.
 * Consumers that each take only what fits them (a worker with the base model, a lent GPU of the
 * job's server) never take and hand back what they cannot do. One take at a time across processes,
 * under a short Redis lock.
 */
import { randomBytes } from 'node:crypto';
import type { Job, Queue, Worker } from 'bullmq';
import { LockTimeoutError } from '../core/limiter.ts';
import type { RedisLocks } from '../store/redis-lock.ts';

/** The lock every taker of the deployment shares. */
const TAKE_LOCK = 'leases:take';

export interface TakeOptions<T> {
  /** Locks that do not wait (`waitMs: 0`): a take under way elsewhere answers `busy`. */
  locks: RedisLocks;
  queue: Queue<T>;
  /** A Worker without a processor, whose `getNextJob` takes the head of the queue. */
  consumer: Worker<T>;
  /** Whether this caller takes the job (looked at in queue order, up to 200). */
  choose: (job: Job<T>) => boolean | Promise<boolean>;
}

/** The job taken with its lock token; null when nothing is chosen; `busy` when another process is taking. */
export async function takeFitting<T>(o: TakeOptions<T>): Promise<{ job: Job<T>; token: string } | null | 'busy'> {
  try {
    return await o.locks.run(TAKE_LOCK, () => take(o));
  } catch (err) {
    if (err instanceof LockTimeoutError) return 'busy';
    throw err;
  }
}

async function take<T>(o: TakeOptions<T>): Promise<{ job: Job<T>; token: string } | null> {
  const waiting = await o.queue.getJobs(['prioritized', 'wait'], 0, 199, true);
  let chosen: Job<T> | null = null;
  for (const job of waiting) {
    if (job?.id && job.data !== undefined && (await o.choose(job))) {
      chosen = job;
      break;
    }
  }
  if (!chosen) return null;
  await chosen.changePriority({ priority: 0, lifo: true });
  const token = randomBytes(16).toString('hex');
  const job = (await o.consumer.getNextJob(token, { block: false })) as Job<T> | undefined;
  if (!job?.id) return null;
  if (job.id !== chosen.id && !(await o.choose(job))) {
    // A consumer outside the lock changed the head meanwhile: give this one back where it was.
    await job.moveToWait(token);
    return null;
  }
  return { job, token };
}
