/**
 * The queue contract between the bot and its workers: queue names, job names, payloads and
 * default job options. Bot and workers import this module; nothing else names a queue.
 */
import type { DefaultJobOptions } from 'bullmq';

export const QueueName = {
  Tagging: 'tagging',
  /** Workers → bot: messages to post in Discord, consumed by the bot with retries. */
  Notices: 'notices',
} as const;
export type QueueName = (typeof QueueName)[keyof typeof QueueName];

export const JobName = {
  TagImages: 'tag-images',
  PostNotice: 'post-notice',
} as const;
export type JobName = (typeof JobName)[keyof typeof JobName];

export interface TagImagesPayload {
  guildId: string;
  datasetId: string;
  /** Image numbers to tag. */
  imageNos: number[];
  /** Tag even images that arrived with a caption (`/tags retag`). */
  retag: boolean;
  requestedBy: string;
}

/** A message for a channel (a dataset's thread). The job id is its idempotency key. */
export interface PostNoticePayload {
  channelId: string;
  content: string;
}

export interface JobPayloads {
  [JobName.TagImages]: TagImagesPayload;
  [JobName.PostNotice]: PostNoticePayload;
}

export const jobQueue: Record<JobName, QueueName> = {
  [JobName.TagImages]: QueueName.Tagging,
  [JobName.PostNotice]: QueueName.Notices,
};

export const defaultJobOptions: Record<QueueName, DefaultJobOptions> = {
  [QueueName.Tagging]: {
    attempts: 5,
    backoff: { type: 'exponential', delay: 2000 },
    removeOnComplete: { age: 24 * 3600, count: 1000 },
    removeOnFail: { age: 7 * 24 * 3600 },
  },
  [QueueName.Notices]: {
    attempts: 12,
    backoff: { type: 'exponential', delay: 1000 },
    removeOnComplete: { age: 7 * 24 * 3600, count: 5000 },
    removeOnFail: { age: 30 * 24 * 3600 },
  },
};

/** BullMQ key prefix under the deployment's Redis prefix. */
export function bullPrefix(redisPrefix: string): string {
  return `${redisPrefix}:bull`;
}
