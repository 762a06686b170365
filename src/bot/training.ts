import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { UserError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { computeDatasetHash } from '../core/lora-metadata.ts';
import { measuredSecondsPerStep, planRun, type Plan, type SpeedSample } from '../core/plan.ts';
import { captionModeOf } from '../core/caption-text.ts';
import { COMPANION_KINDS, FAMILY_INFO, familyLabel, isTransformerFamily, type BaseFamily, type CompanionKind } from '../core/model-family.ts';
import {
  pickCompanions,
  resolveRecipe,
  ResolvedRecipeSchema,
  RunOverridesSchema,
  type CompanionFiles,
  type ResolvedRecipe,
  type RunOverrides,
} from '../core/recipes.ts';
import { NETWORK_LABELS } from '../core/networks.ts';
import { VRAM_PRESET_INFO } from '../core/vram-presets.ts';
import { OPTIMIZERS } from '../core/recipe-table.ts';
import { JobName, sharedKeys, workerRunsOptimizer, type TrainRunPayload, type WorkerInfo } from '../queues/contract.ts';
import { newId, type Dataset, type DatasetStore } from '../store/dataset-store.ts';
import type { ExpiringStore, PendingPlan } from '../store/expiring-store.ts';
import { ACTIVE_STATUSES, type GuildSettingsStore, type Run, type RunStore } from '../store/run-store.ts';
import type { WorkerStore } from '../store/worker-store.ts';
import { type CaptionStore, type CaptionVersion } from '../store/caption-store.ts';
import { listNos } from './reports.ts';
import { trainingConcepts } from './training-input.ts';
import { trainerLabel, workersForGuild } from './workers.ts';

export interface PlanRequest {
  recipe: string;
  overrides: RunOverrides;
  model: string | null;
}

export interface PreparedRun {
  plan: Plan;
  recipe: ResolvedRecipe;
  model: string;
  workers: WorkerInfo[];
  /** The worker the memory preset and companion files were chosen for (null: none online). */
  worker: { id: string; memoryMiB: number | null } | null;
  /** Problems that are not the planner's: no worker online, a model nobody has confirmed… */
  notes: string[];
  /** The GPUs that have the base model, online first (labels for members), at most 8 and a count of the rest. */
  trainers: { shown: string[]; more: number };
  images: TrainRunPayload['images'];
}

/**
 * Whether a checkpoint of family `found` (null: its header couldn't tell) can train a `wanted`
 * dataset. v-prediction can't be seen in most SDXL files, so an SDXL v-pred dataset also takes
 * plain SDXL checkpoints; a file marked v-pred never trains as epsilon SDXL. FLUX.1 and Chroma need
 * a file whose header says so.
 */
export function modelFits(found: BaseFamily | null, wanted: BaseFamily): boolean {
  if (found === null) return !isTransformerFamily(wanted);
  return found === wanted || (wanted === 'sdxl-vpred' && found === 'sdxl');
}

/** An optimizer that no online worker can import (with none online, a run waits for one: not refused here). */
function refuseUnrunnableOptimizer(optimizer: string, online: readonly WorkerInfo[]): void {
  if (online.length === 0 || online.some((w) => workerRunsOptimizer(w, optimizer))) return;
  const usable = OPTIMIZERS.filter((o) => online.some((w) => workerRunsOptimizer(w, o)));
  throw new UserError(
    `No training worker online can use the ${optimizer} optimizer: its Python package is not installed there.` +
      (usable.length > 0
        ? ` Choose another with \`optimizer:\` (${usable.join(', ')}).`
        : " None can use any optimizer right now: an admin should check the workers' logs."),
  );
}

/** Base checkpoints offered by live workers for a family (files marked with the family first). */
export function modelsFor(workers: WorkerInfo[], base: Dataset['base']): string[] {
  const exact = new Set<string>();
  const other = new Set<string>();
  for (const w of workers) {
    for (const m of w.models) {
      if (m.base === base) exact.add(m.file);
      else if (modelFits(m.base, base)) other.add(m.file);
    }
  }
  return [...[...exact].sort(), ...[...other].filter((f) => !exact.has(f)).sort()];
}

/** A heartbeat's companion files, keeping only well-formed entries (a lent GPU's heartbeat is not ours to trust). */
export function companionsOf(info: WorkerInfo): NonNullable<WorkerInfo['companions']> {
  const list: unknown = info.companions;
  if (!Array.isArray(list)) return [];
  return list.filter(
    (c): c is NonNullable<WorkerInfo['companions']>[number] =>
      typeof c === 'object' &&
      c !== null &&
      typeof (c as { file?: unknown }).file === 'string' &&
      COMPANION_KINDS.includes((c as { kind?: unknown }).kind as CompanionKind),
  );
}

/** The plan's line on where and how the run trains: family, network, memory preset, text encoders. */
export function describeSetup(prepared: PreparedRun): string {
  const { recipe, worker } = prepared;
  const parts = [`${familyLabel(recipe.base)}`, NETWORK_LABELS[recipe.network.type]];
  const memory = recipe.memory;
  if (memory.preset !== null) {
    const preset = VRAM_PRESET_INFO[memory.preset];
    const how = [
      memory.fp8Base ? 'fp8 base' : 'bf16 base',
      memory.blocksToSwap !== null ? `${memory.blocksToSwap} blocks swapped` : 'no block swap',
      `batch ${recipe.batchSize}`,
    ];
    const gpu = worker?.memoryMiB ? ` for \`${worker.id}\` (${Math.round(worker.memoryMiB / 1024)} GB)` : '';
    parts.push(`memory preset **${preset.label}** (${how.join(', ')})${gpu}`);
  }
  if (recipe.companions) {
    const files = [recipe.companions.clip_l, recipe.companions.t5xxl, recipe.companions.ae].filter((f): f is string => f !== null);
    parts.push(`with ${files.map((f) => `\`${f}\``).join(', ')}`);
  }
  return parts.join(' · ');
}

export interface TrainingDeps {
  redis: Redis;
  redisPrefix: string;
  store: DatasetStore;
  /** The tags of each image. */
  captions: CaptionStore;
  /** The sentence of each image. */
  sentences: CaptionStore;
  runs: RunStore;
  settings: GuildSettingsStore;
  trainingQueue: Queue<TrainRunPayload>;
  /** GPUs members lend to a guild. */
  workerStore: WorkerStore;
  expiring: ExpiringStore;
  logger: Logger;
  /** Told which input files no run pins any more once a run is taken out of the queue. */
  onBlobsUnpinned?: (ids: string[]) => Promise<unknown>;
}

/** How a cancel went: a waiting run is taken out of the queue at once; a running one is being stopped. */
export type CancelOutcome = 'removed' | 'stopping';

/** Plans runs, keeps a plan until its Start button, and starts runs: queued, with their images pinned. */
export class TrainingService {
  constructor(private readonly deps: TrainingDeps) {}

  /**
   * Everything /train plan shows and Start queues: the recipe with its overrides checked, the exact
   * plan from the dataset as it is now, the base model, and each image's blob and caption.
   */
  async prepare(dataset: Dataset, request: PlanRequest): Promise<PreparedRun> {
    const parsed = RunOverridesSchema.safeParse(request.overrides);
    if (!parsed.success) throw new UserError(parsed.error.issues.map((i) => i.message).join('; '));

    const images = await this.deps.store.listImages(dataset.id);
    if (images.length === 0) throw new UserError(`**${dataset.name}** has no images yet: contribute with \`/dataset add\` first.`);
    const mode = captionModeOf(dataset);
    const nos = images.map((i) => i.no);
    const captions = await this.deps.captions.getMany(dataset.id, nos);
    const sentences = mode === 'tags' ? new Map<number, CaptionVersion>() : await this.deps.sentences.getMany(dataset.id, nos);
    const needsTags = mode !== 'sentences';
    const needsSentence = mode !== 'tags';
    const untagged = images.filter((i) => (needsTags && !captions.has(i.no)) || (needsSentence && !sentences.has(i.no))).map((i) => i.no);
    if (untagged.length > 0) {
      const what = needsTags ? (needsSentence ? 'tagged and described' : 'tagged') : 'described';
      throw new UserError(
        `${untagged.length} image${untagged.length === 1 ? ' is' : 's are'} not ${what} yet (${listNos(untagged)}). ` +
          (needsTags && !needsSentence ? 'Wait for tagging to finish, or run `/tags retag` for them.' : 'Wait for captioning to finish.'),
      );
    }

    const views = await workersForGuild({ redis: this.deps.redis, prefix: this.deps.redisPrefix, workerStore: this.deps.workerStore }, dataset.guildId);
    const online = views.filter((v) => v.online && v.info).map((v) => v.info!);
    // A lent GPU that is offline is still offered with the models it had when last seen.
    const known = views.filter((v) => v.info).map((v) => v.info!);
    const offered = modelsFor(online, dataset.base);
    const offeredOffline = modelsFor(known, dataset.base).filter((m) => !offered.includes(m));
    const family = familyLabel(dataset.base);
    const notes: string[] = [];
    let model = request.model?.trim() || null;
    if (model !== null) {
      if (!/^[\w.+-]{1,200}$/.test(model)) throw new UserError('A base model is a file name such as `sd15-base.safetensors`.');
      if (known.length > 0 && !offered.includes(model) && !offeredOffline.includes(model)) {
        const choices = [...offered.map((m) => `\`${m}\``), ...offeredOffline.map((m) => `\`${m}\` (offline)`)];
        throw new UserError(
          `No training worker has the base model \`${model}\`.` + (choices.length > 0 ? ` Available for ${family}: ${choices.join(', ')}.` : ''),
        );
      }
    } else {
      model = offered[0] ?? offeredOffline[0] ?? null;
      if (model === null) {
        throw new UserError(
          online.length === 0
            ? 'No training worker is online, so no base model can be chosen. Name one with `model:` (the run will wait for a worker), or start a worker.'
            : `No training worker offers a ${family} base model.`,
        );
      }
    }
    const able = views.filter((v) => v.info?.models.some((m) => m.file === model));
    if (online.length === 0) notes.push('⚠️ No training worker is online right now: a started run waits in the queue until one is.');
    else if (!able.some((v) => v.online)) notes.push(`⚠️ No online worker has \`${model}\`: a started run waits in the queue until one that has it is online.`);
    const trainers = {
      shown: able.slice(0, 8).map((v) => `${v.online ? '🟢' : '⚫'} ${trainerLabel(v.id, v.info, v.lent)}${v.online ? '' : ' (offline)'}`),
      more: Math.max(0, able.length - 8),
    };
    const workers = online;

    // The workers that could take the run: they have the checkpoint (and FLUX's companion files).
    const chosen = model;
    const holders = workers.filter((w) => w.models.some((m) => m.file === chosen && modelFits(m.base, dataset.base)));
    let recipe: ResolvedRecipe;
    let worker: PreparedRun['worker'] = null;
    if (FAMILY_INFO[dataset.base].companions.length > 0) {
      if (holders.length === 0) {
        throw new UserError(
          `${familyLabel(dataset.base)} runs are planned on a worker that is online: its text encoders and memory preset come from what it has. Start a worker with \`${chosen}\`, then plan again.`,
        );
      }
      let companions: CompanionFiles | null = null;
      let lastError: unknown = null;
      for (const w of holders) {
        try {
          companions = pickCompanions(dataset.base, companionsOf(w), holders.length === 1 ? `the worker \`${w.id}\`` : `any worker offering \`${chosen}\``);
          worker = { id: w.id, memoryMiB: w.gpu?.memoryMiB ?? null };
          break;
        } catch (err) {
          lastError = err;
        }
      }
      if (companions === null) throw lastError instanceof Error ? lastError : new UserError('No worker has the files this family needs.');
      const resolved = resolveRecipe(request.recipe, dataset.base, parsed.data, {
        vramMiB: worker?.memoryMiB ?? null,
        captionMode: captionModeOf(dataset),
        ...(worker ? { workerName: worker.id } : {}),
      });
      recipe = ResolvedRecipeSchema.parse({ ...resolved, companions });
    } else {
      const first = holders[0];
      if (first) worker = { id: first.id, memoryMiB: first.gpu?.memoryMiB ?? null };
      recipe = resolveRecipe(request.recipe, dataset.base, parsed.data, { captionMode: captionModeOf(dataset) });
    }
    refuseUnrunnableOptimizer(recipe.optimizer.type, online);

    const input = trainingConcepts(dataset, mode, await this.deps.store.getConcepts(dataset.id), images, captions, sentences);
    const planConcepts = input.concepts;
    const payloadImages: TrainRunPayload['images'] = {};
    for (const img of input.images.values()) payloadImages[String(img.no)] = { blob: img.blob, caption: img.caption };
    // The chosen worker's own speed for this family, from the runs it finished here.
    let secondsPerStep: number | undefined;
    if (worker) {
      const workerId = worker.id;
      const samples: SpeedSample[] = (await this.deps.runs.listForGuild(dataset.guildId, 100))
        .filter((r) => r.status === 'finished' && r.workerId === workerId && r.recipe.base === dataset.base && r.startedAt !== null && r.finishedAt !== null)
        .map((r) => ({
          secondsPerStep: r.summary.secondsPerStep ?? 0,
          estimateSeconds: r.summary.estimateSeconds,
          actualSeconds: (r.finishedAt! - r.startedAt!) / 1000,
        }));
      secondsPerStep = measuredSecondsPerStep(samples) ?? undefined;
    }
    const plan = planRun({
      base: dataset.base,
      trigger: dataset.trigger,
      className: dataset.className,
      concepts: planConcepts,
      recipe,
      ...(secondsPerStep !== undefined ? { secondsPerStep } : {}),
    });
    return { plan, recipe, model, workers, worker, notes, trainers, images: payloadImages };
  }

  /** Prepares a run and keeps the request (with the model it settled on) for the plan's Start button. */
  async offer(dataset: Dataset, request: PlanRequest, createdBy: string): Promise<{ planId: string; prepared: PreparedRun }> {
    const prepared = await this.prepare(dataset, request);
    const planId = newId(6);
    await this.deps.expiring.plans.put(planId, { datasetId: dataset.id, request: { ...request, model: prepared.model }, createdBy });
    return { planId, prepared };
  }

  /** The plan behind a Start button, refused once it has expired (or was started). */
  async pendingPlan(planId: string): Promise<PendingPlan> {
    const plan = await this.deps.expiring.plans.get(planId);
    if (!plan) throw new UserError('This plan has expired: run `/train plan` again.');
    return plan;
  }

  /**
   * Starts a pending plan for `userId` within the guild's limits, planned again from the dataset
   * as it is now: the run record, its images pinned, the job queued, the plan used up.
   */
  async start(dataset: Dataset, planId: string, plan: PendingPlan, userId: string): Promise<{ run: Run; prepared: PreparedRun; position: number | null }> {
    const { runs, settings: settingsStore, trainingQueue, logger } = this.deps;
    const settings = await settingsStore.get(dataset.guildId);
    const active = (await runs.listForGuild(dataset.guildId, 200)).filter((r) => ACTIVE_STATUSES.includes(r.status));
    if (active.filter((r) => r.createdBy === userId).length >= settings.maxQueuedPerMember) {
      throw new UserError(`You already have ${settings.maxQueuedPerMember} run(s) waiting or running; wait for one to finish or cancel it.`);
    }
    if (active.length >= settings.maxQueuedPerGuild) {
      throw new UserError(`This server already has ${settings.maxQueuedPerGuild} run(s) waiting or running.`);
    }
    // The dataset may have changed since the plan was shown: plan again from what it is now.
    const prepared = await this.prepare(dataset, plan.request);
    const runId = newRunId();
    const run: Run = {
      id: runId,
      guildId: dataset.guildId,
      datasetId: dataset.id,
      datasetName: dataset.name,
      channelId: dataset.threadId ?? dataset.channelId,
      createdBy: userId,
      createdAt: Date.now(),
      recipe: prepared.recipe,
      baseModel: prepared.model,
      outputName: `${dataset.name}-${runId}`,
      summary: {
        epochs: prepared.plan.epochs,
        stepsPerEpoch: prepared.plan.stepsPerEpoch,
        totalSteps: prepared.plan.totalSteps,
        estimateSeconds: prepared.plan.estimateSeconds,
        secondsPerStep: prepared.plan.secondsPerStep,
        images: prepared.plan.concepts.reduce((n, c) => n + c.images.length, 0),
        concepts: prepared.plan.concepts.map((c) => ({ name: c.name, folder: c.folder, repeats: c.repeats, images: c.images.length })),
      },
      status: 'queued',
      workerId: null,
      startedAt: null,
      finishedAt: null,
      progress: null,
      statusMessageId: null,
      statusEditedAt: null,
      epochs: {},
      final: null,
      failure: null,
      cancelRequestedBy: null,
      credits: await this.credits(dataset, prepared),
    };
    await runs.create(run);
    await runs.pinBlobs(
      runId,
      Object.values(prepared.images).map((i) => i.blob),
    );
    await trainingQueue.add(
      JobName.TrainRun,
      {
        runId,
        guildId: dataset.guildId,
        datasetId: dataset.id,
        datasetName: dataset.name,
        baseModel: prepared.model,
        plan: prepared.plan,
        recipe: prepared.recipe,
        images: prepared.images,
        samplePrompts: dataset.samplePrompts ?? [],
        seed: prepared.recipe.seed ?? Math.floor(Math.random() * 2 ** 31),
        outputName: run.outputName,
      },
      { jobId: runId },
    );
    await this.deps.expiring.plans.delete(planId);
    logger.info({ runId, datasetId: dataset.id, userId }, 'run queued');
    return { run, prepared, position: await this.queuePosition(runId) };
  }

  /**
   * Cancels an active run for `userId`: the worker's cancel flag is raised (a running trainer
   * stops, its saved epochs are kept), and a run nobody has picked up yet leaves the queue now.
   */
  async cancel(run: Run, userId: string): Promise<CancelOutcome> {
    const { redis, redisPrefix, trainingQueue, runs } = this.deps;
    await redis.set(sharedKeys.runCancel(redisPrefix, run.id), userId, 'EX', 7 * 24 * 3600);
    const job = await trainingQueue.getJob(run.id);
    let removed = false;
    if (job && (await job.isWaiting())) {
      await job.remove();
      removed = true;
    }
    await runs.update(run.id, (r) => ({
      ...r,
      cancelRequestedBy: userId,
      ...(removed ? { status: 'cancelled' as const, finishedAt: Date.now() } : {}),
    }));
    if (removed) await this.deps.onBlobsUnpinned?.(await runs.releaseBlobs(run.id));
    this.deps.logger.info({ runId: run.id, userId, removed }, 'run cancel requested');
    return removed ? 'removed' : 'stopping';
  }

  /** A waiting run's place in the queue, counting from 1 (next); null when it is not waiting. */
  async queuePosition(runId: string): Promise<number | null> {
    const waiting = await this.deps.trainingQueue.getWaiting(0, 500);
    const index = waiting.findIndex((j) => j.id === runId);
    return index < 0 ? null : waiting.length - index;
  }

  /** Credits and dataset facts for a run's metadata, from what is being trained. */
  private async credits(dataset: Dataset, prepared: PreparedRun): Promise<Run['credits']> {
    const images = await this.deps.store.listImages(dataset.id);
    const trained = new Set(prepared.plan.concepts.flatMap((c) => c.images.map((i) => i.id)));
    const byContributor = new Map<string, { id: string; name: string; images: number }>();
    for (const img of images) {
      if (!trained.has(String(img.no))) continue;
      const c = byContributor.get(img.contributorId) ?? { id: img.contributorId, name: img.contributorName, images: 0 };
      c.images++;
      byContributor.set(img.contributorId, c);
    }
    const tagFrequency: Record<string, Record<string, number>> = {};
    for (const concept of prepared.plan.concepts) {
      const counts: Record<string, number> = {};
      for (const img of concept.images) {
        const caption = prepared.images[img.id]?.caption ?? '';
        const seen = new Set<string>();
        for (const tag of caption
          .split(',')
          .map((t) => t.trim().toLowerCase())
          .filter(Boolean)) {
          if (seen.has(tag)) continue;
          seen.add(tag);
          counts[tag] = (counts[tag] ?? 0) + 1;
        }
      }
      tagFrequency[concept.folder] = counts;
    }
    const triggers = [dataset.trigger, ...prepared.plan.concepts.map((c) => c.trigger).filter((t): t is string => t !== null)];
    const datasetHash = computeDatasetHash(Object.values(prepared.images));
    return {
      triggers: [...new Set(triggers)],
      contributors: [...byContributor.values()].sort((a, b) => b.images - a.images),
      tagFrequency,
      datasetHash,
      base: dataset.base,
      resolution: prepared.plan.resolution,
    };
  }
}

function newRunId(): string {
  return newId(5);
}
