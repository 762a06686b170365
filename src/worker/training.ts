/**
 * The training worker (design.md data flow step 6): takes one run at a time from the `training`
 * queue, stages the dataset in kohya's layout, writes the three sd-scripts files, runs the trainer
 * in its own process group, and reports what happens on the `run-events` queue (started, progress,
 * each epoch with its sample grid and checkpoint, and the end), each event idempotent by its id.
 *
 * Everything a run produces stays under `DATA_DIR/runs/<runId>/`:
 *   dataset/         staged images (hard links to the masters), captions, the TOML and prompts files
 *   output/          what sd-scripts writes: epoch checkpoints, `-state` folders, samples, the final file
 *   run-state.json   the worker's own bookkeeping: epochs reported, when the run first started, the end
 *   trainer.json     the running trainer's pid / process group, for post-mortems
 *   trainer.log      the trainer's console, every attempt appended
 *
 * Resume (reference/kohya-contract.md, "Resume contract", worker rule): when `output/` holds
 * complete epoch states, the run continues from the highest one E with `--resume <state>
 * --initial_epoch E+1`; files of epochs after E (left half-written by the crash) are removed first,
 * and epochs up to E that were not reported yet are reported from what was saved. A trainer left
 * running by a crashed worker is found by its environment marker and stopped before anything else.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { Queue, UnrecoverableError, WaitingError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { BlobStore } from '../core/blob-store.ts';
import type { Config } from '../core/config.ts';
import { buildKohyaFiles, type KohyaFiles } from '../core/kohya-config.ts';
import type { KohyaEvent } from '../core/kohya-progress.ts';
import type { Logger } from '../core/logger.ts';
import { makeSampleGrid } from '../core/media.ts';
import { BASE_FAMILIES, ResolvedRecipeSchema } from '../core/recipes.ts';
import { readSafetensorsHeader } from '../core/safetensors.ts';
import {
  bullPrefix,
  defaultJobOptions,
  JobName,
  QueueName,
  runEventId,
  sharedKeys,
  type ArtifactRef,
  type RunEvent,
  type TrainRunPayload,
  type WorkerInfo,
} from '../queues/contract.ts';
import { stageDataset, StagingError, type StageConcept } from './staging.ts';
import { killStaleTrainers, TrainerProcess, trainerCommand, trainerEnv, type TrainerExit } from './trainer-process.ts';
import { WorkerRegistry } from './worker-registry.ts';
import { codeOf, listDir } from '../core/fs-errors.ts';

export interface TrainingDeps {
  config: Config;
  logger: Logger;
  blobs: BlobStore;
  /** The environment a trainer inherits (secrets are removed): the worker's own, passed in by main. */
  env: NodeJS.ProcessEnv;
  /** Between SIGTERM and SIGKILL when a trainer is stopped (default 10 s). */
  killGraceMs?: number;
  /** How often the cancel key is read (default 1 s). */
  cancelPollMs?: number;
  /** Finds the GPU for the heartbeat (default: nvidia-smi). */
  gpu?: () => Promise<WorkerInfo['gpu']>;
}

export type TrainRunResult =
  | { outcome: 'finished'; final: ArtifactRef; seconds: number; timings: RunTimings }
  | { outcome: 'cancelled'; lastEpoch: number | null; timings: RunTimings };

export interface RunTimings {
  /** From the job's pickup to the trainer process running (null: no trainer was started). */
  pickupToSpawnMs: number | null;
}

export interface TrainingWorkerHandle {
  worker: Worker<TrainRunPayload, TrainRunResult>;
  registry: WorkerRegistry;
  /** Stops taking runs; a run in progress is stopped and handed back to the queue to resume later. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The payload, checked again on arrival (it crossed a queue; the bot may be another version).

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const OUTPUT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const BLOB_ID = /^[0-9a-f]{64}$/;
const whole = (min: number) => z.number().int().min(min);

const PlanSchema = z.looseObject({
  base: z.enum(BASE_FAMILIES),
  recipe: z.string(),
  trigger: z.string().min(1),
  className: z.string().nullable(),
  epochs: whole(1).max(1000),
  stepsPerEpoch: whole(1),
  totalSteps: whole(1),
  bucketSettings: z.looseObject({
    resolution: z.tuple([whole(64), whole(64)]),
    minBucketReso: whole(1),
    maxBucketReso: whole(1),
    steps: whole(1),
    noUpscale: z.boolean(),
  }),
  concepts: z
    .array(
      z.looseObject({
        name: z.string().min(1),
        folder: z.string().min(3),
        isMain: z.boolean(),
        trigger: z.string().nullable(),
        repeats: whole(1),
        classTokens: z.string(),
        keepTokens: whole(0),
        triggers: z.array(z.string()),
        topTags: z.array(z.string()),
        images: z.array(z.looseObject({ id: z.string().min(1) })).min(1),
      }),
    )
    .min(1),
});

const PayloadSchema = z.object({
  runId: z.string().regex(RUN_ID, 'runId is not a safe id'),
  guildId: z.string().min(1),
  datasetId: z.string().min(1),
  datasetName: z.string().max(200),
  baseModel: z.string().min(1).max(255),
  plan: PlanSchema,
  recipe: ResolvedRecipeSchema,
  images: z.record(z.string(), z.object({ blob: z.string().regex(BLOB_ID, 'not a blob id'), caption: z.string().max(10_000).nullable() })),
  samplePrompts: z.array(z.string().max(2000)).max(16),
  seed: z.number().int().min(0).max(2 ** 32 - 1),
  outputName: z
    .string()
    .regex(OUTPUT_NAME, 'outputName is not a safe file name')
    .refine((n) => !/-\d{6}$/.test(n), 'outputName must not end like an epoch number'),
});

type CheckedPayload = { ok: true; payload: TrainRunPayload } | { ok: false; runId: string | null; reason: string };

/** The payload, or why it can't be run (with the run id when there is a usable one to report to). */
export function checkPayload(data: unknown): CheckedPayload {
  const rawId = typeof data === 'object' && data !== null && 'runId' in data ? data.runId : undefined;
  const runId = typeof rawId === 'string' && RUN_ID.test(rawId) ? rawId : null;
  const parsed = PayloadSchema.safeParse(data);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(payload)'}: ${i.message}`);
    return { ok: false, runId, reason: `the run's payload is invalid (${problems.join('; ')})` };
  }
  const p = parsed.data;
  const plan = p.plan;
  const problems: string[] = [];
  if (p.recipe.name !== plan.recipe || p.recipe.base !== plan.base) problems.push('the recipe is not the one the plan was made with');
  if (p.recipe.epochs !== plan.epochs) problems.push(`the recipe trains ${p.recipe.epochs} epochs, the plan ${plan.epochs}`);
  if (plan.totalSteps !== plan.epochs * plan.stepsPerEpoch) problems.push('the plan\'s total steps are not epochs × steps per epoch');
  if (p.recipe.seed !== null && p.recipe.seed !== p.seed) problems.push(`seed ${p.seed} is not the recipe's seed ${p.recipe.seed}`);
  for (const concept of plan.concepts) {
    if (concept.folder !== `${concept.repeats}_${concept.name}`) problems.push(`concept folder ${JSON.stringify(concept.folder)} is not {repeats}_{name}`);
    for (const image of concept.images) {
      if (!(image.id in p.images)) problems.push(`image ${image.id} has no master in the payload`);
    }
  }
  if (problems.length > 0) return { ok: false, runId, reason: `the run's payload is inconsistent (${problems.slice(0, 5).join('; ')})` };
  return { ok: true, payload: p as unknown as TrainRunPayload };
}

/** A plain file name inside MODELS_DIR: no folders, no `..`, no hidden files, a checkpoint extension. */
export function baseModelProblem(name: string): string | null {
  if (name !== name.trim() || /[/\\\0]/.test(name) || name.startsWith('.') || name === '..') {
    return `the base model ${JSON.stringify(name)} is not a plain file name`;
  }
  if (!/\.(safetensors|ckpt)$/i.test(name)) return `the base model ${JSON.stringify(name)} is not a .safetensors or .ckpt file`;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Small file helpers.

const pad6 = (n: number) => String(n).padStart(6, '0');
const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  try {
    await writeFile(tmp, text, 'utf8');
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** A complete safetensors file (a half-written one fails the header/size check). */
async function validCheckpoint(path: string): Promise<boolean> {
  try {
    await readSafetensorsHeader(path);
    return true;
  } catch {
    return false;
  }
}


/** The prompt text of each line of the sample-prompts file (options dropped), in order. */
function promptTexts(files: KohyaFiles): string[] {
  return files.samplePromptsTxt
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((l) => (l.split(' --')[0] ?? '').trim());
}

interface RunState {
  runId: string;
  /** When the run first started on a worker (ms). */
  firstStartedAt: number;
  /** Epochs whose `epoch` event was sent. */
  reportedEpochs: number[];
  /** Set once `finished` was sent. */
  finished: { final: ArtifactRef; seconds: number } | null;
  /** How many times a trainer was started for the run. */
  attempts: number;
}

// ---------------------------------------------------------------------------------------------
// Events.

class RunEvents {
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

type StopReason = 'cancel' | 'shutdown' | 'nan';

/** Thrown inside a run to end it with a `failed` event and a failed job. */
class RunFailure extends Error {
  constructor(
    readonly reason: string,
    readonly logTail: string[] = [],
  ) {
    super(reason);
    this.name = 'RunFailure';
  }
}

// ---------------------------------------------------------------------------------------------
// One run.

class TrainingRun {
  readonly runId: string;
  readonly runDir: string;
  readonly stagingDir: string;
  readonly outputDir: string;
  private readonly log: Logger;
  private readonly startedAt = Date.now();
  private state!: RunState;
  private reported = new Set<number>();
  private trainer: TrainerProcess | null = null;
  private stopReason: StopReason | null = null;
  private nanStep: number | null = null;
  private lastError: string | null = null;
  /** Serialises event sending and epoch work, so events go out in order. */
  private chain: Promise<void> = Promise.resolve();
  private chainError: unknown = null;
  private initialEpoch = 1;
  private stepsPerEpoch: number;
  private prompts: string[] = [];
  private lastProgressAt = 0;
  private pickupToSpawnMs: number | null = null;

  constructor(
    private readonly deps: TrainingDeps,
    private readonly connection: Redis,
    private readonly events: RunEvents,
    private readonly workerId: string,
    private readonly job: Job<TrainRunPayload, TrainRunResult>,
    private readonly token: string | undefined,
    private readonly payload: TrainRunPayload,
  ) {
    this.runId = payload.runId;
    this.runDir = resolve(deps.config.DATA_DIR, 'runs', payload.runId);
    this.stagingDir = join(this.runDir, 'dataset');
    this.outputDir = join(this.runDir, 'output');
    this.log = deps.logger.child({ runId: payload.runId });
    this.stepsPerEpoch = payload.plan.stepsPerEpoch;
  }

  private get graceMs(): number {
    return this.deps.killGraceMs ?? 10_000;
  }

  private get epochs(): number {
    return this.payload.plan.epochs;
  }

  private epochFile(e: number): string {
    return join(this.outputDir, e === this.epochs ? `${this.payload.outputName}.safetensors` : `${this.payload.outputName}-${pad6(e)}.safetensors`);
  }

  private get finalFile(): string {
    return join(this.outputDir, `${this.payload.outputName}.safetensors`);
  }

  /** Asks the run to stop; the trainer's group is signalled at once if it runs. */
  requestStop(reason: StopReason): void {
    if (this.stopReason !== null) return;
    this.stopReason = reason;
    this.log.info({ reason }, 'stopping the run');
    if (this.trainer) void this.trainer.stop(this.graceMs).catch((err: unknown) => this.log.error({ err }, 'could not stop the trainer'));
  }

  /** Reads the cancel flag the bot sets; true when the run is to be cancelled. */
  private async cancelRequested(): Promise<boolean> {
    if (this.stopReason === 'cancel') return true;
    const flag = await this.connection.get(sharedKeys.runCancel(this.deps.config.REDIS_PREFIX, this.runId));
    if (flag === null) return false;
    this.requestStop('cancel');
    return true;
  }

  // -- bookkeeping ----------------------------------------------------------------------------

  private async loadState(): Promise<void> {
    try {
      const parsed = JSON.parse(await readFile(join(this.runDir, 'run-state.json'), 'utf8')) as RunState;
      if (parsed.runId === this.runId && Array.isArray(parsed.reportedEpochs)) {
        this.state = { ...parsed, attempts: parsed.attempts ?? 0, finished: parsed.finished ?? null };
      }
    } catch (err) {
      if (codeOf(err) !== 'ENOENT') this.log.warn({ err }, 'run-state.json unreadable; starting the bookkeeping afresh');
    }
    this.state ??= { runId: this.runId, firstStartedAt: this.startedAt, reportedEpochs: [], finished: null, attempts: 0 };
    this.reported = new Set(this.state.reportedEpochs);
  }

  private async saveState(): Promise<void> {
    this.state.reportedEpochs = [...this.reported].sort((a, b) => a - b);
    await writeAtomic(join(this.runDir, 'run-state.json'), `${JSON.stringify(this.state, null, 1)}\n`);
  }

  private enqueue(task: () => Promise<void>): void {
    this.chain = this.chain.then(task).catch((err: unknown) => {
      this.chainError ??= err;
      this.log.error({ err }, 'reporting failed');
    });
  }

  private async drain(): Promise<void> {
    await this.chain;
    const err = this.chainError;
    if (err !== null) throw err instanceof Error ? err : new Error('reporting failed', { cause: err });
  }

  private lastEpoch(): number | null {
    return this.reported.size > 0 ? Math.max(...this.reported) : null;
  }

  // -- artifacts ------------------------------------------------------------------------------

  /**
   * Marks a blob as a run artifact before any event names it, so the bot's orphan sweep keeps it
   * even when the bot only gets to the event hours later.
   */
  private async keep(ref: { id: string; size: number }): Promise<ArtifactRef> {
    await this.connection.sadd(sharedKeys.artifacts(this.deps.config.REDIS_PREFIX), ref.id);
    return { blob: ref.id, bytes: ref.size, sha256: ref.id };
  }

  private async putArtifact(path: string): Promise<ArtifactRef> {
    // A copy: the run folder keeps its files for a resume.
    return this.keep(await this.deps.blobs.putFile(path));
  }

  /** The newest sample per prompt index of epoch `e` (a re-run epoch leaves older ones behind). */
  private async samplesOf(e: number): Promise<Map<number, string>> {
    const dir = join(this.outputDir, 'sample');
    const re = new RegExp(`^${escapeRe(this.payload.outputName)}_e${pad6(e)}_(\\d{2})_(.+)\\.png$`);
    const newest = new Map<number, string>();
    for (const name of (await listDir(dir)).sort()) {
      const m = re.exec(name);
      if (m?.[1]) newest.set(Number(m[1]), join(dir, name));
    }
    return newest;
  }

  private async gridOf(e: number): Promise<ArtifactRef | null> {
    const samples = await this.samplesOf(e);
    if (samples.size === 0) return null;
    if (samples.size < this.prompts.length) this.log.warn({ epoch: e, found: samples.size, expected: this.prompts.length }, 'some sample images are missing');
    const tiles = [...samples.entries()]
      .sort(([a], [b]) => a - b)
      .map(([idx, path]) => ({ image: path, label: `#${idx + 1} ${this.prompts[idx] ?? ''}`.trim() }));
    try {
      const jpeg = await makeSampleGrid(tiles, { title: `${this.payload.datasetName || this.payload.outputName} - epoch ${e}/${this.epochs}` });
      return await this.keep(await this.deps.blobs.putBuffer(jpeg));
    } catch (err) {
      // A sample cut short by a killed trainer: report the epoch without its grid.
      this.log.warn({ err, epoch: e }, 'could not make the sample grid');
      return null;
    }
  }

  /** Reports epoch `e` once, if its checkpoint was saved completely. */
  private async reportEpoch(e: number): Promise<void> {
    if (this.reported.has(e)) return;
    const file = this.epochFile(e);
    if (!(await validCheckpoint(file))) {
      this.log.warn({ epoch: e, file }, 'epoch checkpoint missing or incomplete; epoch not reported');
      return;
    }
    const checkpoint = await this.putArtifact(file);
    const grid = await this.gridOf(e);
    await this.events.send({ kind: 'epoch', runId: this.runId, epoch: e, epochs: this.epochs, grid, checkpoint });
    this.reported.add(e);
    await this.saveState();
    this.log.info({ epoch: e, checkpoint: checkpoint.blob, grid: grid?.blob ?? null }, 'epoch reported');
  }

  /** Reports every epoch before the last whose checkpoint is saved (up to `upTo`). */
  private async reportSavedEpochs(upTo = this.epochs - 1): Promise<void> {
    for (let e = 1; e <= Math.min(upTo, this.epochs - 1); e++) await this.reportEpoch(e);
  }

  // -- resume ---------------------------------------------------------------------------------

  /** The highest epoch with a complete state folder (kohya's train_state.json and accelerate's RNG states). */
  private async resumableEpoch(): Promise<number | null> {
    const re = new RegExp(`^${escapeRe(this.payload.outputName)}-(\\d{6})-state$`);
    let best: number | null = null;
    for (const name of await listDir(this.outputDir)) {
      const m = re.exec(name);
      if (!m?.[1]) continue;
      const e = Number(m[1]);
      if (e < 1 || e >= this.epochs || (best !== null && e <= best)) continue;
      const files = await listDir(join(this.outputDir, name));
      if (files.includes('train_state.json') && files.some((f) => /^random_states_\d+\.pkl$/.test(f))) best = e;
    }
    return best;
  }

  /** Removes what a crashed attempt left of epochs after `keep` (they are trained again). */
  private async clearAfter(keep: number): Promise<void> {
    const name = escapeRe(this.payload.outputName);
    const checkpoint = new RegExp(`^${name}-(\\d{6})\\.safetensors$`);
    const state = new RegExp(`^${name}-(\\d{6})-state$`);
    const sample = new RegExp(`^${name}_e(\\d{6})_\\d{2}_.+\\.png$`);
    let removed = 0;
    for (const entry of await listDir(this.outputDir)) {
      const m = checkpoint.exec(entry) ?? state.exec(entry);
      const stale = (m?.[1] !== undefined && Number(m[1]) > keep) || entry === `${this.payload.outputName}.safetensors` || entry === `${this.payload.outputName}-state`;
      if (stale) {
        await rm(join(this.outputDir, entry), { recursive: true, force: true });
        removed++;
      }
    }
    const sampleDir = join(this.outputDir, 'sample');
    for (const entry of await listDir(sampleDir)) {
      const m = sample.exec(entry);
      if (m?.[1] !== undefined && Number(m[1]) > keep) {
        await rm(join(sampleDir, entry), { force: true });
        removed++;
      }
    }
    if (removed > 0) this.log.info({ keep, removed }, 'removed files of unfinished epochs');
  }

  // -- the run --------------------------------------------------------------------------------

  async execute(): Promise<TrainRunResult> {
    await mkdir(this.runDir, { recursive: true });
    await this.loadState();

    // 1. A trainer left behind by a crashed worker must not keep writing into our output folder.
    const stale = await killStaleTrainers(this.runDir, this.graceMs);
    if (stale.length > 0) this.log.warn({ groups: stale }, 'stopped a trainer left running by an earlier worker');

    // 2. The base model.
    const modelProblem = baseModelProblem(this.payload.baseModel);
    if (modelProblem) throw new RunFailure(modelProblem);
    const modelPath = resolve(this.deps.config.MODELS_DIR, this.payload.baseModel);
    let modelOk = false;
    try {
      modelOk = (await stat(modelPath)).isFile();
    } catch (err) {
      if (codeOf(err) !== 'ENOENT') throw err;
    }
    if (!modelOk) throw new RunFailure(`the base model ${this.payload.baseModel} is not in this worker's models folder`);
    // The prompts label the grids, also of epochs reported again without training.
    this.prompts = promptTexts(this.kohyaFiles(modelPath, null));

    // 3. Already finished (the worker died while reporting the end)?
    if (this.state.finished) {
      this.log.info('run already finished; reporting its end again');
      return this.finish();
    }
    if (await validCheckpoint(this.finalFile)) {
      this.log.info('the final file is there; reporting the end');
      return this.finish();
    }

    // 4. Cancelled before it started: nothing is spawned.
    if ((await this.cancelRequested()) || this.stopReason !== null) return this.endWithoutTrainer();

    // 5. Stage, write the files, decide where to start.
    const resumeFrom = await this.resumableEpoch();
    await this.clearAfter(resumeFrom ?? 0);
    const staged = await stageDataset(this.deps.blobs, this.stagingDir, this.stageConcepts());
    this.log.info({ ...staged }, 'dataset staged');
    await mkdir(this.outputDir, { recursive: true });
    const files = this.kohyaFiles(modelPath, resumeFrom);
    await writeAtomic(files.paths.datasetToml, files.datasetToml);
    await writeAtomic(files.paths.configToml, files.configToml);
    await writeAtomic(files.paths.samplePromptsTxt, files.samplePromptsTxt);
    this.initialEpoch = resumeFrom === null ? 1 : resumeFrom + 1;

    await this.events.send({
      kind: 'started',
      runId: this.runId,
      workerId: this.workerId,
      resumedFromEpoch: resumeFrom,
      epochs: this.epochs,
      stepsPerEpoch: this.payload.plan.stepsPerEpoch,
      totalSteps: this.payload.plan.totalSteps,
    });
    if (resumeFrom !== null) {
      this.log.info({ resumeFrom }, 'resuming from the last saved epoch');
      await this.reportSavedEpochs(resumeFrom);
    }
    if ((await this.cancelRequested()) || this.stopReason !== null) return this.endWithoutTrainer();

    // 6. Train.
    const { exit, stopReason } = await this.train(files);
    return this.afterTrainer(exit, stopReason);
  }

  private stageConcepts(): StageConcept[] {
    return this.payload.plan.concepts.map((c) => ({
      folder: c.folder,
      images: c.images.map((i) => {
        const image = this.payload.images[i.id];
        if (!image) throw new StagingError(`image ${i.id} has no master in the payload`);
        return { id: i.id, blob: image.blob, caption: image.caption };
      }),
    }));
  }

  private kohyaFiles(modelPath: string, resumeFrom: number | null): KohyaFiles {
    try {
      return buildKohyaFiles(this.payload.plan, this.payload.recipe, {
        runId: this.runId,
        outputName: this.payload.outputName,
        outputDir: this.outputDir,
        stagingDir: this.stagingDir,
        baseModelPath: modelPath,
        samplePrompts: this.payload.samplePrompts,
        seed: this.payload.seed,
        ...(resumeFrom !== null
          ? { resume: { stateDir: join(this.outputDir, `${this.payload.outputName}-${pad6(resumeFrom)}-state`), initialEpoch: resumeFrom + 1 } }
          : {}),
      });
    } catch (err) {
      throw new RunFailure(`the run's settings were refused: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** Runs the trainer to its end; `stopReason` is why we stopped it (null: it ended by itself). */
  private async train(files: KohyaFiles): Promise<{ exit: TrainerExit; stopReason: StopReason | null }> {
    const { config } = this.deps;
    const { command, args } = trainerCommand(config.TRAINER_CMD, join(resolve(config.SD_SCRIPTS_DIR), files.script), files.args);
    let logFile: WriteStream | null = createWriteStream(join(this.runDir, 'trainer.log'), { flags: 'a' });
    logFile.on('error', (err) => {
      this.log.warn({ err }, 'trainer.log unwritable');
      logFile = null;
    });
    logFile.write(`\n=== ${new Date().toISOString()} ${command} ${args.join(' ')}\n`);

    this.state.attempts += 1;
    await this.saveState();
    try {
      this.trainer = await TrainerProcess.start({
        command,
        args,
        cwd: this.runDir,
        env: trainerEnv(this.deps.env, this.runDir),
        onEvent: (event) => this.onTrainerEvent(event),
        onOutput: (chunk) => logFile?.write(chunk),
      });
    } catch (err) {
      logFile.end();
      throw new RunFailure(`the trainer command could not be started (${command}: ${err instanceof Error ? err.message : String(err)})`);
    }
    const trainer = this.trainer;
    this.pickupToSpawnMs = Date.now() - this.startedAt;
    this.log.info({ pid: trainer.pid, command, args, pickupToSpawnMs: this.pickupToSpawnMs }, 'trainer started');
    await writeAtomic(join(this.runDir, 'trainer.json'), `${JSON.stringify(trainer.record())}\n`);
    // A stop asked for while the trainer was starting.
    if (this.stopReason !== null) void trainer.stop(this.graceMs);

    const pollMs = this.deps.cancelPollMs ?? 1000;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        await sleep(pollMs);
        if (!polling) break;
        try {
          await this.cancelRequested();
        } catch (err) {
          this.log.warn({ err }, 'could not read the cancel flag');
        }
      }
    })();
    try {
      const exit = await trainer.exited;
      // A stop asked for after the trainer ended by itself does not change how it ended.
      const stopReason = this.stopReason;
      await trainer.reap(this.graceMs);
      this.log.info({ ...exit, stopReason, ms: Date.now() - trainer.startedAt }, 'trainer ended');
      return { exit, stopReason };
    } finally {
      polling = false;
      await poll;
      await new Promise<void>((r) => (logFile ? logFile.end(r) : r()));
    }
  }

  private absoluteStep(barStep: number): number {
    return (this.initialEpoch - 1) * this.stepsPerEpoch + barStep;
  }

  private onTrainerEvent(event: KohyaEvent): void {
    switch (event.type) {
      case 'progress': {
        const now = Date.now();
        const interval = Math.max(1, this.deps.config.PROGRESS_INTERVAL_SECONDS) * 1000;
        if (event.step === 0 || now - this.lastProgressAt < interval) return;
        this.lastProgressAt = now;
        const step = this.absoluteStep(event.step);
        const totalSteps = this.payload.plan.totalSteps;
        const rate = event.rate !== null && Number.isFinite(event.rate) && event.rate > 0 ? event.rate : null;
        const progress: RunEvent = {
          kind: 'progress',
          runId: this.runId,
          step,
          totalSteps,
          epoch: Math.min(this.epochs, Math.floor((step - 1) / this.stepsPerEpoch) + 1),
          epochs: this.epochs,
          loss: event.loss !== undefined && Number.isFinite(event.loss) ? event.loss : null,
          rate,
          etaSeconds: rate !== null ? Math.max(0, Math.round((totalSteps - step) / rate)) : null,
          at: now,
        };
        this.enqueue(async () => {
          await this.events.send(progress);
          await this.job.updateProgress({ step: progress.step, totalSteps, epoch: progress.epoch, loss: progress.loss });
        });
        return;
      }
      case 'epoch':
        // Epoch k starts: epoch k-1 is saved (checkpoint, state, samples, in that order).
        for (let e = this.initialEpoch; e < event.epoch; e++) {
          if (!this.reported.has(e)) this.enqueue(() => this.reportEpoch(e));
        }
        return;
      case 'nan':
        if (this.nanStep === null) {
          this.nanStep = this.absoluteStep(event.step);
          this.requestStop('nan');
        }
        return;
      case 'totals':
        if (event.stepsPerEpoch !== undefined && event.stepsPerEpoch !== this.stepsPerEpoch) {
          this.log.warn({ planned: this.stepsPerEpoch, trainer: event.stepsPerEpoch }, 'the trainer counts other steps per epoch than the plan; using its count');
          this.stepsPerEpoch = event.stepsPerEpoch;
        }
        return;
      case 'error':
        this.lastError = event.message ? `${event.exception}: ${event.message}` : event.exception;
        return;
      default:
        return;
    }
  }

  private async afterTrainer(exit: TrainerExit, stopReason: StopReason | null): Promise<TrainRunResult> {
    await this.drain();
    const tail = this.trainer?.tail() ?? [];
    switch (stopReason) {
      case 'shutdown':
        return this.handBack();
      case 'cancel':
        return this.cancelled();
      case 'nan':
        await this.reportSavedEpochs();
        throw new RunFailure(`the loss became NaN at step ${this.nanStep ?? '?'}`, tail);
      default:
        break;
    }
    if (exit.code === 0 && (await validCheckpoint(this.finalFile))) return this.finish();
    await this.reportSavedEpochs();
    let reason: string;
    if (exit.signal !== null) reason = `the trainer was killed by ${exit.signal}${exit.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
    else if (exit.code !== 0) reason = `the trainer exited with code ${exit.code ?? '?'}${this.lastError ? `: ${this.lastError}` : ''}`;
    else reason = `the trainer exited without writing the final file ${this.payload.outputName}.safetensors`;
    throw new RunFailure(reason, tail);
  }

  /** Before any trainer ran: cancelled, or the worker is shutting down. */
  private async endWithoutTrainer(): Promise<TrainRunResult> {
    if (this.stopReason === 'shutdown') return this.handBack();
    return this.cancelled();
  }

  private async cancelled(): Promise<TrainRunResult> {
    await this.reportSavedEpochs();
    const lastEpoch = this.lastEpoch();
    await this.events.send({ kind: 'cancelled', runId: this.runId, lastEpoch });
    this.log.info({ lastEpoch }, 'run cancelled');
    return { outcome: 'cancelled', lastEpoch, timings: { pickupToSpawnMs: this.pickupToSpawnMs } };
  }

  /** Worker shutdown: the run goes back to the queue and resumes from its last saved epoch. */
  private async handBack(): Promise<never> {
    if (this.token !== undefined) await this.job.moveToWait(this.token);
    this.log.info('run handed back to the queue (worker shutting down)');
    throw new WaitingError();
  }

  private async finish(): Promise<TrainRunResult> {
    let finished = this.state.finished;
    if (!finished) {
      for (let e = 1; e <= this.epochs; e++) await this.reportEpoch(e);
      const final = await this.putArtifact(this.finalFile);
      finished = { final, seconds: Math.max(0, Math.round((Date.now() - this.state.firstStartedAt) / 1000)) };
      this.state.finished = finished;
      await this.saveState();
    }
    await this.events.send({ kind: 'finished', runId: this.runId, final: finished.final, seconds: finished.seconds });
    this.log.info({ final: finished.final.blob, seconds: finished.seconds }, 'run finished');
    return { outcome: 'finished', ...finished, timings: { pickupToSpawnMs: this.pickupToSpawnMs } };
  }

  /** Whether this worker still holds the run's lock (else another worker has taken it over). */
  async stillOwned(): Promise<boolean> {
    if (this.token === undefined || this.job.id === undefined) return true;
    return (await this.connection.get(`${this.job.queueQualifiedName}:${this.job.id}:lock`)) === this.token;
  }

  /** Sends `failed` (unless another worker took the run over meanwhile). */
  async reportFailure(reason: string, logTail: string[]): Promise<void> {
    if (!(await this.stillOwned())) {
      this.log.warn({ reason }, 'the run was taken over by another worker; not reporting this failure');
      return;
    }
    await this.events.send({ kind: 'failed', runId: this.runId, reason, logTail });
    this.log.error({ reason }, 'run failed');
  }

  /** Stops the trainer if one still runs (an error path). */
  async stopTrainer(): Promise<void> {
    if (this.trainer && this.trainer.groupAlive()) await this.trainer.stop(this.graceMs);
  }
}

// ---------------------------------------------------------------------------------------------

export function startTrainingWorker(deps: TrainingDeps, connection: Redis): TrainingWorkerHandle {
  const { config } = deps;
  const log = deps.logger.child({ queue: QueueName.Training });
  const workerId = config.WORKER_ID ?? hostname();
  const events = new RunEvents(connection, config.REDIS_PREFIX);
  const registry = new WorkerRegistry({
    redis: connection,
    prefix: config.REDIS_PREFIX,
    workerId,
    modelsDir: config.MODELS_DIR,
    intervalSeconds: config.WORKER_HEARTBEAT_SECONDS,
    logger: log,
    ...(deps.gpu ? { gpu: deps.gpu } : {}),
  });
  const registryStarted = registry.start().catch((err: unknown) => log.error({ err }, 'worker registry did not start'));
  let current: TrainingRun | null = null;
  let shuttingDown = false;

  const processRun = async (job: Job<TrainRunPayload, TrainRunResult>, token?: string, signal?: AbortSignal): Promise<TrainRunResult> => {
    const checked = checkPayload(job.data);
    if (!checked.ok) {
      log.error({ jobId: job.id, reason: checked.reason }, 'refusing a training job');
      if (checked.runId !== null) await events.send({ kind: 'failed', runId: checked.runId, reason: checked.reason, logTail: [] });
      throw new UnrecoverableError(checked.reason);
    }
    const run = new TrainingRun(deps, connection, events, workerId, job, token, checked.payload);
    current = run;
    // Fetched while the worker was closing: straight back to the queue.
    if (shuttingDown) run.requestStop('shutdown');
    const onAbort = () => run.requestStop('cancel');
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    await registry.setBusy(run.runId);
    try {
      return await run.execute();
    } catch (err) {
      if (err instanceof WaitingError) throw err;
      await run.stopTrainer();
      const failure = err instanceof RunFailure || err instanceof StagingError;
      const reason =
        err instanceof RunFailure ? err.reason : err instanceof StagingError ? err.message : `the worker failed: ${err instanceof Error ? err.message : String(err)}`;
      await run.reportFailure(reason, err instanceof RunFailure ? err.logTail : []);
      // Bad input and failed runs are never retried; anything else keeps its own error for the job.
      throw failure ? new UnrecoverableError(reason) : err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      current = null;
      await registry.setBusy(null);
    }
  };

  const worker = new Worker<TrainRunPayload, TrainRunResult>(QueueName.Training, processRun, {
    connection,
    prefix: bullPrefix(config.REDIS_PREFIX),
    name: workerId,
    concurrency: 1,
    // A crashed worker's run comes back after its lock expires; a run may survive several crashes.
    lockDuration: config.TRAINING_STALLED_SECONDS * 1000,
    stalledInterval: config.TRAINING_STALLED_SECONDS * 1000,
    maxStalledCount: 10,
  });
  worker.on('failed', (job, err) => {
    log.warn({ jobId: job?.id, reason: err.message }, 'training job failed');
    // Stalled too often: BullMQ fails it without calling us, so the bot hears it from here.
    if (job && /stalled more than allowable limit/.test(err.message)) {
      const checked = checkPayload(job.data);
      const runId = checked.ok ? checked.payload.runId : checked.runId;
      if (runId !== null) {
        void events
          .send({ kind: 'failed', runId, reason: 'the run\'s worker stopped responding too many times', logTail: [] })
          .catch((sendErr: unknown) => log.error({ err: sendErr, runId }, 'could not report a stalled run'));
      }
    }
  });
  worker.on('error', (err) => log.error({ err }, 'training worker error'));

  let closing: Promise<void> | null = null;
  const close = () => {
    shuttingDown = true;
    closing ??= (async () => {
      const closed = worker.close();
      current?.requestStop('shutdown');
      await closed;
      await registryStarted;
      await registry.close();
      await events.close();
    })();
    return closing;
  };
  return { worker, registry, close };
}
