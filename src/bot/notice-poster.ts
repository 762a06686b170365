import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Client } from 'discord.js';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger.ts';
import { bullPrefix, QueueName, type PostNoticePayload } from '../queues/contract.ts';
import { isPermanentDiscordError } from './discord-errors.ts';

/**
 * Posts what workers report, from a durable queue: while the bot or Discord is down, notices wait;
 * failures are retried with backoff; a permanent refusal is logged and dropped.
 */
export function startNoticePoster(client: Client, connection: Redis, redisPrefix: string, logger: Logger): Worker {
  const log = logger.child({ queue: QueueName.Notices });
  const worker = new Worker<PostNoticePayload>(
    QueueName.Notices,
    async (job: Job<PostNoticePayload>) => {
      const channel = await client.channels.fetch(job.data.channelId);
      if (!channel?.isSendable()) {
        log.warn({ channelId: job.data.channelId, jobId: job.id }, 'notice dropped: channel not found or not sendable');
        return;
      }
      // The nonce makes Discord itself refuse a second copy if a retry follows a post whose
      // answer was lost.
      try {
        await channel.send({
          content: job.data.content,
          nonce: (job.id ?? '').slice(-25),
          enforceNonce: true,
        });
      } catch (err) {
        if (isPermanentDiscordError(err)) {
          throw new UnrecoverableError(`Discord refused the notice (${err.code}): ${err.message}`);
        }
        throw err;
      }
    },
    { connection, prefix: bullPrefix(redisPrefix), concurrency: 4 },
  );
  worker.on('failed', (job, err) => {
    log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'posting a notice failed');
  });
  worker.on('error', (err) => log.error({ err }, 'notice poster error'));
  return worker;
}
