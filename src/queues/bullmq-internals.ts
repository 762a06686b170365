/**
 * The two things we rely on that BullMQ does not promise as API: where it keeps a job's lock, and
 * how it words the failure of a job that stalled too often. Each sits behind one named helper,
 * checked against the installed BullMQ on a real Redis by test/integration/bullmq-internals.test.ts
 * (written against BullMQ 6.7.0): an upgrade that changes either fails that test, not production.
 */
import type { Job } from 'bullmq';

/**
 * The Redis key holding an active job's lock; its value is the token of the worker that holds it
 * (the token a processor receives). BullMQ keeps it at `<prefix>:<queue>:<job id>:lock`.
 */
export function jobLockKey(job: Pick<Job, 'queueQualifiedName' | 'id'>): string {
  if (job.id === undefined) throw new Error('a job without an id has no lock');
  return `${job.queueQualifiedName}:${job.id}:lock`;
}

/**
 * Whether a `failed` event's error is BullMQ failing the job itself because it stalled more than
 * `maxStalledCount` times (a worker that died or stopped renewing its lock): the processor never
 * saw that failure, so nobody else reports it.
 */
export function failedForStalling(err: Pick<Error, 'message'>): boolean {
  return /stalled more than allowable limit/.test(err.message);
}
