import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { bullPrefix, defaultJobOptions, JobName, QueueName, runEventId, type RunEvent } from './contract.ts';

/** Run events on the `run-events` queue, each added once by its id. */
export class RunEventQueue {
  readonly queue: Queue<RunEvent>;

  constructor(connection: Redis, redisPrefix: string) {
    this.queue = new Queue<RunEvent>(QueueName.RunEvents, {
      connection,
      prefix: bullPrefix(redisPrefix),
      defaultJobOptions: defaultJobOptions[QueueName.RunEvents],
    });
  }

  /** Idempotent: the same event id is added once, however often it is sent. */
  async send(event: RunEvent): Promise<void> {
    await this.queue.add(JobName.RunEvent, event, { jobId: runEventId(event) });
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
