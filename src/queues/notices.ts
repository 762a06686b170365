import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { createHash } from 'node:crypto';
import { bullPrefix, defaultJobOptions, JobName, QueueName, type PostNoticePayload } from './contract.ts';

/** How workers (and the bot) hand a message to the bot's durable poster. */
export class NoticeSender {
  private readonly queue: Queue<PostNoticePayload>;

  constructor(connection: Redis, redisPrefix: string) {
    this.queue = new Queue<PostNoticePayload>(QueueName.Notices, {
      connection,
      prefix: bullPrefix(redisPrefix),
      defaultJobOptions: defaultJobOptions[QueueName.Notices],
    });
  }

  /**
   * Queues a message. `key` makes it idempotent: the same key is posted once, however often a
   * retried job asks for it.
   */
  async post(channelId: string, content: string, key: string): Promise<void> {
    const jobId = `n-${createHash('sha256').update(key).digest('hex').slice(0, 32)}`;
    await this.queue.add(JobName.PostNotice, { channelId, content }, { jobId });
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
