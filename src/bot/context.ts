import type { BlobStore } from '../core/blob-store.ts';
import type { Config } from '../core/config.ts';
import type { Mutex } from '../core/limiter.ts';
import type { Logger } from '../core/logger.ts';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { WorkerStore } from '../store/worker-store.ts';
import type { TagImagesPayload, TrainRunPayload } from '../queues/contract.ts';
import type { CaptionStore } from '../store/caption-store.ts';
import type { DatasetStore } from '../store/dataset-store.ts';
import type { EventClaims } from '../store/event-claims.ts';
import type { ExpiringStore } from '../store/expiring-store.ts';
import type { GuildSettingsStore, RunStore, VoteStore } from '../store/run-store.ts';
import type { TallyUpdater } from './tally.ts';
import type { GenerationLine } from './generation-line.ts';
import type { NoticeSender } from '../queues/notices.ts';
import type { IntakeService } from './intake.ts';
import type { TrainingService } from './training.ts';
import type { ImageRemovalService } from './image-removal.ts';
import type { DeliveryService } from './delivery.ts';
import type { DatasetExporter } from './dataset-export.ts';
import type { GenerationDeps } from './generation.ts';
import type { ModerationService } from './moderation.ts';

/** What every command and handler gets: the wired services of this bot process. */
export interface BotContext {
  config: Config;
  logger: Logger;
  redis: Redis;
  store: DatasetStore;
  /** The tags of each image. */
  captions: CaptionStore;
  /** The sentence of each image. */
  sentences: CaptionStore;
  taggingQueue: Queue<TagImagesPayload>;
  trainingQueue: Queue<TrainRunPayload>;
  runs: RunStore;
  votes: VoteStore;
  tallies: TallyUpdater;
  settings: GuildSettingsStore;
  notices: NoticeSender;
  blobs: BlobStore;
  intake: IntakeService;
  training: TrainingService;
  removal: ImageRemovalService;
  delivery: DeliveryService;
  /** `/dataset export`: the zip's contents and its signed links. */
  exporter: DatasetExporter;
  /** Plans waiting for Start, prune suggestions, delivered files: values that expire. */
  expiring: ExpiringStore;
  /** Held around blob writes with their records, and removals with their blob deletes (by every bot process). */
  blobLock: Mutex;
  /** Which bot process handles an event that all of them receive. */
  claims: EventClaims;
  /** GPUs members lend to a guild (remote training workers). */
  workers: WorkerStore;
  /** `/lora try` and `/lora compare`: their queues and stores. */
  generations: GenerationDeps;
  /** Keeps each waiting image's acknowledgement up to date until it is posted. */
  line: GenerationLine;
  /** Reports, flags, moderators' actions and the audit log. */
  moderation: ModerationService;
}
