/**
 * Trying a trained LoRA in chat: `/lora try` draws one image, `/lora compare` a grid of epochs ×
 * weights on one seed. A request is recorded in Redis (its buttons name it), its images that were
 * drawn before come from the cache by (run, epoch, weight, prompt, negative prompt, seed, size), and
 * the rest go to the GPU workers as one job on the `generate` queue. Workers answer on the
 * `generated` queue, which any bot process consumes to post the result.
 */
import { createHash, randomInt } from 'node:crypto';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BlobStore } from '../core/blob-store.ts';
import { UserError } from '../core/errors.ts';
import { roundWeight, SEED_MAX } from '../core/generate-args.ts';
import type { Logger } from '../core/logger.ts';
import { bullPrefix, defaultJobOptions, generationFiles, JobName, QueueName, type GeneratedPayload, type GeneratePayload } from '../queues/contract.ts';
import { newId, type DatasetStore } from '../store/dataset-store.ts';
import type { GuildSettingsStore, Run, RunStore } from '../store/run-store.ts';
import type { WorkerStore } from '../store/worker-store.ts';
import { truncate } from './reports.ts';
import { workersForGuild, type WorkerView } from './workers.ts';

export interface GenerationRequest {
  id: string;
  kind: 'try' | 'compare';
  guildId: string;
  runId: string;
  userId: string;
  /** Where the result is posted: where it was asked (try), the run's thread (compare). */
  channelId: string;
  prompt: string;
  negative: string;
  seed: number;
  width: number;
  height: number;
  /** Rows of a comparison (one for a try), in the order asked. */
  epochs: number[];
  /** Columns of a comparison (one for a try), in the order asked. */
  weights: number[];
  /** How the epoch was chosen, for a try ("epoch 2, the community’s pick"). */
  epochLabel: string;
  createdAt: number;
}

export interface Queued {
  request: GenerationRequest;
  /** null: every image came from the cache and is being posted. */
  position: number | null;
  /** The GPUs with the model are all training: the request waits for the first to finish. */
  waitingForRun: string | null;
}

export interface GenerationDeps {
  redis: Redis;
  prefix: string;
  queue: Queue<GeneratePayload>;
  /** Where a request served wholly from the cache is answered, as a worker would. */
  results: Queue<GeneratedPayload>;
  runs: RunStore;
  store: DatasetStore;
  settings: GuildSettingsStore;
  blobs: BlobStore;
  workers: WorkerStore;
  logger: Logger;
}

/** How long a request counts against its member's limit at most (a lost job frees it then). */
const HELD_MS = 6 * 3600_000;
const REQUEST_TTL_S = 30 * 24 * 3600;
const CACHE_TTL_S = 30 * 24 * 3600;
const QUEUE_TTL_MS = 12 * 3600_000;
export const MAX_COMPARE_CELLS = 24;

const keys = {
  request: (p: string, id: string) => `${p}:gen:${id}`,
  held: (p: string, guildId: string, userId: string) => `${p}:gen:held:${guildId}:${userId}`,
  cache: (p: string, hash: string) => `${p}:gencache:${hash}`,
  posted: (p: string, id: string) => `${p}:gen:${id}:posted`,
};

function cacheHash(r: GenerationRequest, epoch: number, weight: number): string {
  return createHash('sha256')
    .update(JSON.stringify([r.runId, epoch, weight, r.prompt, r.negative, r.seed, r.width, r.height]))
    .digest('hex');
}

/** A result arrived: its images go into the cache, and the request stops counting against its member. */
export async function rememberImages(
  deps: Pick<GenerationDeps, 'redis' | 'prefix'>,
  r: GenerationRequest,
  cells: { epoch: number; weight: number; blob: string }[],
): Promise<void> {
  const multi = deps.redis.multi();
  for (const c of cells) multi.set(keys.cache(deps.prefix, cacheHash(r, c.epoch, c.weight)), c.blob, 'EX', CACHE_TTL_S);
  multi.zrem(keys.held(deps.prefix, r.guildId, r.userId), r.id);
  await multi.exec();
}

export async function wasPosted(deps: Pick<GenerationDeps, 'redis' | 'prefix'>, id: string): Promise<boolean> {
  return (await deps.redis.exists(keys.posted(deps.prefix, id))) === 1;
}

/** Where a request's result went: the posted message, and whether it is the image or why there is none. */
export interface PostedResult {
  url: string;
  ok: boolean;
}

export async function markPosted(deps: Pick<GenerationDeps, 'redis' | 'prefix'>, id: string, posted: PostedResult): Promise<void> {
  await deps.redis.set(keys.posted(deps.prefix, id), JSON.stringify(posted), 'EX', REQUEST_TTL_S);
}

/** The posted result of a request, or null while it is not posted. */
export async function postedResult(deps: Pick<GenerationDeps, 'redis' | 'prefix'>, id: string): Promise<PostedResult | null> {
  const json = await deps.redis.get(keys.posted(deps.prefix, id));
  if (json === null) return null;
  try {
    const posted = JSON.parse(json) as PostedResult;
    return typeof posted.url === 'string' ? posted : null;
  } catch {
    return null;
  }
}

export function randomSeed(): number {
  return randomInt(0, SEED_MAX);
}

export function weightText(w: number): string {
  return String(roundWeight(w));
}

export async function getRequest(deps: Pick<GenerationDeps, 'redis' | 'prefix'>, id: string): Promise<GenerationRequest | null> {
  const json = await deps.redis.get(keys.request(deps.prefix, id));
  return json ? (JSON.parse(json) as GenerationRequest) : null;
}

/** FLUX.1/Chroma: the text encoders and autoencoder the run trained with, as a generation names them. */
function fluxFilesOf(run: Run): GeneratePayload['flux'] {
  const { companions, flux, memory } = run.recipe;
  if (!flux || !companions) return undefined;
  if (companions.t5xxl === null || companions.ae === null) throw new UserError(`Run \`${run.id}\` names no text encoder or autoencoder to draw with.`);
  return { clipL: companions.clip_l, t5xxl: companions.t5xxl, ae: companions.ae, applyT5AttnMask: flux.applyT5AttnMask, fp8: memory.fp8Base };
}

/**
 * The GPUs online that have every file a generation needs (in-cluster workers and the GPUs lent to
 * the server alike), and the run they train when none of them is free.
 */
export function gpusFor(views: WorkerView[], needs: string[]): { online: number; busyWith: string | null } {
  const has = (info: NonNullable<WorkerView['info']>) => {
    const files = new Set([...info.models.map((m) => m.file), ...(info.companions ?? []).map((c) => c.file)]);
    return needs.every((f) => files.has(f));
  };
  const withModel = views.filter((v) => v.online && v.info && has(v.info));
  const free = withModel.some((v) => v.info?.busyWith === null);
  return { online: withModel.length, busyWith: free ? null : (withModel[0]?.info?.busyWith ?? null) };
}

/** Why nothing can draw this run now, or null. */
async function noWorkerReason(deps: GenerationDeps, run: Run, needs: string[]): Promise<{ reason: string | null; busyWith: string | null }> {
  const views = await workersForGuild({ redis: deps.redis, prefix: deps.prefix, workerStore: deps.workers }, run.guildId);
  const { online, busyWith } = gpusFor(views, needs);
  if (online === 0) {
    const also =
      needs.length > 1
        ? ` (with ${needs
            .slice(1)
            .map((f) => `\`${f}\``)
            .join(', ')})`
        : '';
    return {
      reason: `No GPU online has the base model \`${run.baseModel}\`${also} that run \`${run.id}\` was trained on, so I can’t draw with it right now. Try again when one is back.`,
      busyWith: null,
    };
  }
  return { reason: null, busyWith };
}

/**
 * Records a request and queues what the cache does not have. Refuses (UserError) a run nothing can
 * draw now, and a member over the server's limit.
 */
export async function requestGeneration(
  deps: GenerationDeps,
  run: Run,
  req: Omit<GenerationRequest, 'id' | 'createdAt' | 'guildId' | 'runId'>,
): Promise<Queued> {
  const flux = fluxFilesOf(run);
  const { reason, busyWith } = await noWorkerReason(deps, run, generationFiles({ baseModel: run.baseModel, ...(flux ? { flux } : {}) }));
  if (reason) throw new UserError(reason);
  const settings = await deps.settings.get(run.guildId);
  const limit = settings.maxGenerationsPerMember;
  const heldKey = keys.held(deps.prefix, run.guildId, req.userId);
  await deps.redis.zremrangebyscore(heldKey, 0, Date.now() - HELD_MS);
  const held = await deps.redis.zcard(heldKey);
  if (held >= limit) {
    throw new UserError(
      `You already have ${held} image${held === 1 ? '' : 's'} waiting or being drawn; the limit is ${limit} per member (\`/settings limits\`). Try again when ${held === 1 ? 'it is' : 'one is'} posted.`,
    );
  }
  const request: GenerationRequest = { ...req, id: newId(10), guildId: run.guildId, runId: run.id, createdAt: Date.now() };
  const cells: GeneratePayload['cells'] = [];
  for (const epoch of request.epochs) {
    const lora = run.epochs[String(epoch)]?.checkpoint ?? (epoch === run.summary.epochs ? run.final : null);
    if (!lora) throw new UserError(`Run \`${run.id}\` has no saved file for epoch ${epoch}.`);
    for (const weight of request.weights) {
      if ((await cached(deps, request, epoch, weight)) === null) cells.push({ epoch, weight, lora: lora.blob });
    }
  }
  await deps.redis.set(keys.request(deps.prefix, request.id), JSON.stringify(request), 'EX', REQUEST_TTL_S);
  if (cells.length === 0) {
    await deps.results.add(
      JobName.Generated,
      { requestId: request.id, ok: true, workerId: 'cache', cells: [], seconds: 0 },
      { jobId: `generated-${request.id}` },
    );
    return { request, position: null, waitingForRun: null };
  }
  await deps.redis.zadd(heldKey, request.createdAt, request.id);
  const payload: GeneratePayload = {
    requestId: request.id,
    guildId: run.guildId,
    runId: run.id,
    baseModel: run.baseModel,
    base: run.credits.base,
    prompt: request.prompt,
    negative: request.negative,
    seed: request.seed,
    width: request.width,
    height: request.height,
    cells,
    expiresAt: Date.now() + QUEUE_TTL_MS,
    ...(flux ? { flux } : {}),
  };
  await deps.queue.add(JobName.Generate, payload, { jobId: generateJobId(request.id) });
  const at = (await waitingInLine(deps.queue)).findIndex((j) => j.id === generateJobId(request.id));
  deps.logger.info({ requestId: request.id, runId: run.id, images: cells.length, position: at + 1 }, 'generation queued');
  return { request, position: at < 0 ? 1 : at + 1, waitingForRun: busyWith };
}

export function generateJobId(requestId: string): string {
  return `gen-${requestId}`;
}

/** The generations waiting for a GPU, next to be taken first, as the GPUs look at them (the line a member's place is counted in). */
export async function waitingInLine(queue: Queue<GeneratePayload>) {
  return (await queue.getJobs(['prioritized', 'wait'], 0, 499, true)).filter((j) => j !== undefined);
}

export async function cached(
  deps: Pick<GenerationDeps, 'redis' | 'prefix' | 'blobs'>,
  r: GenerationRequest,
  epoch: number,
  weight: number,
): Promise<string | null> {
  const blob = await deps.redis.get(keys.cache(deps.prefix, cacheHash(r, epoch, weight)));
  return blob && (await deps.blobs.has(blob)) ? blob : null;
}

function ordinal(n: number): string {
  const s = n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th');
  return `${n}${s}`;
}

/** Where a request stands, as its acknowledgement says: from queued to posted. */
export type LineState =
  { kind: 'cached' } | { kind: 'waiting'; position: number; waitingForRun: string | null } | { kind: 'drawing' } | ({ kind: 'posted' } & PostedResult);

/** A request's acknowledgement: what was asked, then where it stands. */
export function lineText(r: GenerationRequest, state: LineState): string {
  const what =
    r.kind === 'try'
      ? `🎨 Drawing **${truncate(r.prompt, 200)}** with run \`${r.runId}\`, ${r.epochLabel}, weight ${weightText(r.weights[0]!)}, seed ${r.seed}.`
      : `🧪 Drawing epochs ${r.epochs.join(', ')} × weights ${r.weights.map(weightText).join(', ')} of run \`${r.runId}\` (seed ${r.seed}); the grid goes to the run’s thread.`;
  return `${what}\n${standing(r, state)}`;
}

function standing(r: GenerationRequest, state: LineState): string {
  switch (state.kind) {
    case 'cached':
      return 'Found in the cache: posting it now.';
    case 'waiting':
      return state.waitingForRun !== null
        ? `⏳ ${ordinal(state.position)} in line: the GPU is training run \`${state.waitingForRun}\`; your image comes as soon as it finishes.`
        : `⏳ ${ordinal(state.position)} in line for a GPU.`;
    case 'drawing':
      return '🎨 Drawing now…';
    case 'posted':
      if (!state.ok) return `⚠️ It could not be drawn: ${state.url}`;
      return r.kind === 'try' ? `✅ Posted below: ${state.url}` : `✅ Posted in the run’s thread: ${state.url}`;
  }
}

/** What the member is told right away. */
export function queuedText(q: Queued): string {
  return lineText(q.request, q.position === null ? { kind: 'cached' } : { kind: 'waiting', position: q.position, waitingForRun: q.waitingForRun });
}

export function generationQueues(connection: Redis, redisPrefix: string) {
  const prefix = bullPrefix(redisPrefix);
  return {
    generate: new Queue<GeneratePayload>(QueueName.Generate, { connection, prefix, defaultJobOptions: defaultJobOptions[QueueName.Generate] }),
    generated: new Queue<GeneratedPayload>(QueueName.Generated, { connection, prefix, defaultJobOptions: defaultJobOptions[QueueName.Generated] }),
  };
}
