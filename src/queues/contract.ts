/**
 * The queue contract between the bot and its workers: queue names, job names, payloads and
 * default job options. Bot and workers import this module; nothing else names a queue.
 */
import type { DefaultJobOptions } from 'bullmq';
import type { BaseFamily, CompanionKind } from '../core/model-family.ts';
import type { Plan } from '../core/plan.ts';
import type { ResolvedRecipe } from '../core/recipes.ts';

export const QueueName = {
  Tagging: 'tagging',
  /** Workers → bot: messages to post in Discord, consumed by the bot with retries. */
  Notices: 'notices',
  /** Bot → GPU workers: one training run per job, one job at a time per worker. */
  Training: 'training',
  /** GPU workers → bot: what a run did (started, progress, each epoch, the end), in order. */
  RunEvents: 'run-events',
  /** Bot → GPU workers: short image generations with a trained LoRA, served between runs, before waiting runs. */
  Generate: 'generate',
  /** GPU workers → bot: the images a generation made (or why it could not), consumed by the bot with retries. */
  Generated: 'generated',
} as const;
export type QueueName = (typeof QueueName)[keyof typeof QueueName];

export const JobName = {
  TagImages: 'tag-images',
  PostNotice: 'post-notice',
  TrainRun: 'train-run',
  RunEvent: 'run-event',
  Generate: 'generate',
  Generated: 'generated',
} as const;
export type JobName = (typeof JobName)[keyof typeof JobName];

export interface TagImagesPayload {
  guildId: string;
  datasetId: string;
  /** Image numbers to tag. */
  imageNos: number[];
  /** Tag even images that arrived with a caption (`/tags retag`); tags only. */
  retag: boolean;
  requestedBy: string;
  /** What to fill where missing; absent: what the dataset's caption mode trains on. */
  tracks?: ('tags' | 'sentences')[];
}

/** A message for a channel (a dataset's thread). The job id is its idempotency key. */
export interface PostNoticePayload {
  channelId: string;
  content: string;
}

/** A run as the training worker receives it: everything it needs, and no paths into the bot's storage. */
export interface TrainRunPayload {
  runId: string;
  guildId: string;
  datasetId: string;
  datasetName: string;
  /** File name of the base checkpoint inside the worker's MODELS_DIR (as the worker advertised it). */
  baseModel: string;
  plan: Plan;
  recipe: ResolvedRecipe;
  /** For each image id of the plan: its normalised master (a blob id) and caption text (null: no caption file). */
  images: Record<string, { blob: string; caption: string | null }>;
  /** Prompt texts without options (at most 4); empty: the worker derives them from the plan. */
  samplePrompts: string[];
  seed: number;
  /** Base name of the output files, e.g. `aria-r3k9`. */
  outputName: string;
}

export interface ArtifactRef {
  /** Blob id (sha256 of the file): artifacts go into the same content-addressed store. */
  blob: string;
  bytes: number;
  sha256: string;
}

/**
 * What a training worker reports, in order. Each event's job id is its idempotency key
 * (`runEventId`), so a retried or resumed run never reports the same thing twice.
 */
export type RunEvent =
  | { kind: 'started'; runId: string; workerId: string; resumedFromEpoch: number | null; epochs: number; stepsPerEpoch: number; totalSteps: number }
  | {
      kind: 'progress';
      runId: string;
      /** Absolute optimizer step (continues across a resume). */
      step: number;
      totalSteps: number;
      epoch: number;
      epochs: number;
      loss: number | null;
      /** Steps per second. */
      rate: number | null;
      etaSeconds: number | null;
      at: number;
    }
  | { kind: 'epoch'; runId: string; epoch: number; epochs: number; grid: ArtifactRef | null; checkpoint: ArtifactRef | null }
  | { kind: 'finished'; runId: string; final: ArtifactRef; seconds: number }
  | { kind: 'failed'; runId: string; reason: string; logTail: string[] }
  | { kind: 'cancelled'; runId: string; lastEpoch: number | null };

export function runEventId(event: RunEvent): string {
  switch (event.kind) {
    case 'progress':
      return `${event.runId}.progress.${event.step}`;
    case 'epoch':
      return `${event.runId}.epoch.${event.epoch}`;
    case 'started':
      return `${event.runId}.started.${event.resumedFromEpoch ?? 0}`;
    default:
      return `${event.runId}.${event.kind}`;
  }
}

/** One image of a generation: a LoRA file (an artifact blob) at a weight. */
export interface GenerateCell {
  epoch: number;
  weight: number;
  /** Blob id of the epoch's LoRA file (a run artifact). */
  lora: string;
}

/** A generation as a worker receives it: the base model, the LoRA files and the settings. */
export interface GeneratePayload {
  requestId: string;
  guildId: string;
  runId: string;
  /** File name of the base checkpoint inside the worker's MODELS_DIR (the run's). */
  baseModel: string;
  base: BaseFamily;
  prompt: string;
  negative: string;
  seed: number;
  width: number;
  height: number;
  cells: GenerateCell[];
  /** After this (ms) a worker that cannot take it lets it fail rather than wait on. */
  expiresAt: number;
  /**
   * FLUX.1/Chroma: the run's text encoders and autoencoder (file names in MODELS_DIR, CLIP-L null
   * for Chroma), whether it masked T5's padding and loaded its base in fp8.
   */
  flux?: { clipL: string | null; t5xxl: string; ae: string; applyT5AttnMask: boolean; fp8: boolean };
}

/** The files in MODELS_DIR a worker needs to draw a generation: the base model, and FLUX's companions. */
export function generationFiles(p: Pick<GeneratePayload, 'baseModel' | 'flux'>): string[] {
  const f = p.flux;
  return [p.baseModel, ...(f ? [f.clipL, f.t5xxl, f.ae].filter((x): x is string => x !== null) : [])];
}

export type GeneratedPayload =
  | { requestId: string; ok: true; workerId: string; cells: { epoch: number; weight: number; blob: string }[]; seconds: number }
  | { requestId: string; ok: false; workerId: string | null; reason: string };

/** A message to deliver: retried with backoff, kept a week when done and a month when it failed. */
function delivery(attempts: number, keepDone: number): DefaultJobOptions {
  return {
    attempts,
    backoff: { type: 'exponential', delay: 1000 },
    removeOnComplete: { age: 7 * 24 * 3600, count: keepDone },
    removeOnFail: { age: 30 * 24 * 3600 },
  };
}

export const defaultJobOptions: Record<QueueName, DefaultJobOptions> = {
  [QueueName.Tagging]: {
    attempts: 5,
    backoff: { type: 'exponential', delay: 2000 },
    removeOnComplete: { age: 24 * 3600, count: 1000 },
    removeOnFail: { age: 7 * 24 * 3600 },
  },
  [QueueName.Training]: {
    // A run is never retried blindly: a crashed worker's job comes back through stall detection
    // and resumes from its last saved epoch; a failed run is reported, not repeated.
    attempts: 1,
    removeOnComplete: { age: 30 * 24 * 3600 },
    removeOnFail: { age: 30 * 24 * 3600 },
  },
  [QueueName.RunEvents]: delivery(20, 10000),
  [QueueName.Generate]: {
    // A generation is short: a crashed worker's job comes back through stall detection once or twice.
    attempts: 1,
    removeOnComplete: { age: 24 * 3600, count: 1000 },
    removeOnFail: { age: 7 * 24 * 3600 },
  },
  [QueueName.Generated]: delivery(12, 5000),
  [QueueName.Notices]: delivery(12, 5000),
};

/** BullMQ key prefix under the deployment's Redis prefix. */
export function bullPrefix(redisPrefix: string): string {
  return `${redisPrefix}:bull`;
}

/** Redis keys shared by the bot and training workers (under the deployment's prefix). */
export const sharedKeys = {
  /** Set by the bot to ask the worker running this run to stop. */
  runCancel: (prefix: string, runId: string) => `${prefix}:run:${runId}:cancel`,
  /** A worker's heartbeat (JSON WorkerInfo), expiring when it stops beating. */
  worker: (prefix: string, workerId: string) => `${prefix}:worker:${workerId}`,
  workerPattern: (prefix: string) => `${prefix}:worker:*`,
  /** Blob ids of run artifacts (grids, checkpoints, delivered files): never swept as orphans. */
  artifacts: (prefix: string) => `${prefix}:artifacts`,
};

/** What a training worker advertises about itself. */
export interface WorkerInfo {
  id: string;
  host: string;
  gpu: { name: string; memoryMiB: number } | null;
  /**
   * Base checkpoints found in MODELS_DIR (file names), with their family as the file's header
   * tells it (null: a file whose header can't be read and whose name doesn't tell).
   */
  models: { file: string; base: BaseFamily | null; variant?: 'dev' | 'schnell' }[];
  /**
   * Text encoders and autoencoders in MODELS_DIR (FLUX.1 and Chroma need them). Absent from
   * workers that predate them: treat as none.
   */
  companions?: { file: string; kind: CompanionKind; fp8?: boolean }[];
  busyWith: string | null;
  startedAt: number;
  at: number;
  /** Set for a GPU a member lends from elsewhere (a remote worker): it serves this guild only. */
  remote?: { guildId: string; ownerId: string; name: string };
  /** System memory and free disk (of the worker's cache or DATA_DIR), when known. */
  ramMiB?: number;
  diskFreeMiB?: number;
  /**
   * The optimizers the trainer's Python can import (checked at start-up). Absent from workers
   * that did not check (older ones): treated as able to run every optimizer.
   */
  optimizers?: string[];
}

/** Whether a worker says it can run `optimizer` (one that did not check is taken at its word). */
export function workerRunsOptimizer(worker: Pick<WorkerInfo, 'optimizers'>, optimizer: string): boolean {
  return !Array.isArray(worker.optimizers) || worker.optimizers.includes(optimizer);
}

/** The workers that may take a run of this guild: in-cluster ones serve every guild, remote ones their own. */
export function workersServing<T extends Pick<WorkerInfo, 'remote'>>(workers: readonly T[], guildId: string): T[] {
  return workers.filter((w) => w.remote === undefined || w.remote.guildId === guildId);
}
