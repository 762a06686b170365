/**
 * Image generations on a training worker (`/lora try`, `/lora compare`): short jobs from the
 * `generate` queue, drawn with sd-scripts' own scripts (`gen_img.py` for SD 1.5 and SDXL,
 * `flux_minimal_inference.py` for FLUX.1 and Chroma) through the same `TRAINER_CMD` and
 * `SD_SCRIPTS_DIR` as training. They share the GPU with training runs under two rules:
 * - a generation never interrupts a run: while this worker trains, its generation consumer is
 *   paused (another free worker with the model may take the job meanwhile);
 * - generations go ahead of waiting runs: before a run starts, the worker first serves the
 *   generations waiting for a model it has (`yieldToGenerations`), then pauses them.
 *
 * The images go into the shared blob store as artifacts and the result onto the `generated` queue,
 * where the bot posts them.
 */
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Queue, QueueEvents, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BlobStore } from '../core/blob-store.ts';
import type { Config } from '../core/config.ts';
import { codeOf } from '../core/fs-errors.ts';
import { generateArgs, generatedFile, generateScript } from '../core/generate-args.ts';
import type { Logger } from '../core/logger.ts';
import { BASE_FAMILIES, familyLabel, isTransformerFamily } from '../core/model-family.ts';
import { baseModelProblem } from '../queues/train-payload.ts';
import {
  bullPrefix,
  defaultJobOptions,
  generationFiles,
  JobName,
  QueueName,
  sharedKeys,
  type GeneratedPayload,
  type GeneratePayload,
} from '../queues/contract.ts';
import { takeFitting } from '../queues/take-fitting.ts';
import { RedisLocks } from '../store/redis-lock.ts';
import { TrainerProcess, trainerCommand, trainerEnv } from './trainer-process.ts';

export interface GenerationDeps {
  config: Config;
  logger: Logger;
  env: NodeJS.ProcessEnv;
  blobs: BlobStore;
  workerId: string;
  /** Longest a generation may take before it is stopped (default 10 min). */
  timeoutMs?: number;
}

export interface GenerationHandle {
  /**
   * Before a run: serves the generations waiting for a model this worker has (at most `maxWaitMs`),
   * then pauses the consumer so that nothing runs beside the training run.
   */
  yieldToGenerations(maxWaitMs?: number): Promise<void>;
  /** After a run: generations are taken again. */
  resume(): void;
  close(): Promise<void>;
}

const ID = /^[a-z0-9]{1,32}$/;
const BLOB = /^[0-9a-f]{64}$/;

/** The payload's problems, or null when a worker may run it. */
export function generateProblem(p: GeneratePayload): string | null {
  if (typeof p !== 'object' || p === null) return 'the generation job has no payload';
  if (typeof p.requestId !== 'string' || !ID.test(p.requestId)) return 'the generation has no valid id';
  const model = baseModelProblem(p.baseModel);
  if (model) return model;
  if (!BASE_FAMILIES.includes(p.base)) return `images of ${String(p.base)} models cannot be drawn here`;
  if (isTransformerFamily(p.base)) {
    const f = p.flux;
    if (typeof f !== 'object' || f === null) return `the generation names no text encoders or autoencoder for ${familyLabel(p.base)}`;
    if ((p.base === 'flux1') !== (f.clipL !== null)) return p.base === 'flux1' ? 'FLUX.1 needs the CLIP-L text encoder' : 'Chroma draws without CLIP-L';
    for (const file of [f.clipL, f.t5xxl, f.ae])
      if (file !== null && (typeof file !== 'string' || baseModelProblem(file) !== null)) return 'a model file of the generation is not valid';
    if (typeof f.applyT5AttnMask !== 'boolean' || typeof f.fp8 !== 'boolean') return 'the generation settings are not valid';
  } else if (p.flux !== undefined) return `${familyLabel(p.base)} draws without FLUX files`;
  if (typeof p.prompt !== 'string' || p.prompt.length === 0 || p.prompt.length > 400 || p.prompt.includes('--')) return 'the prompt is not valid';
  if (typeof p.negative !== 'string' || p.negative.length > 400 || p.negative.includes('--')) return 'the negative prompt is not valid';
  if (!Number.isInteger(p.seed) || p.seed < 0 || p.seed > 2 ** 32 - 1) return 'the seed is not valid';
  for (const side of [p.width, p.height]) if (!Number.isInteger(side) || side < 256 || side > 1536 || side % 64 !== 0) return 'the size is not valid';
  if (!Array.isArray(p.cells) || p.cells.length === 0 || p.cells.length > 64) return 'the generation names no images';
  for (const c of p.cells) {
    if (!Number.isInteger(c.epoch) || c.epoch < 1 || !Number.isFinite(c.weight) || c.weight < -2 || c.weight > 2 || !BLOB.test(c.lora))
      return 'an image of the generation is not valid';
  }
  return null;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    if (codeOf(err) === 'ENOENT') return false;
    throw err;
  }
}

/** The script's own first error line, else its exit. */
function scriptError(tail: string[], exit: { code: number | null; signal: NodeJS.Signals | null }): string {
  const line = [...tail].reverse().find((l) => /^[A-Za-z_.]*(Error|Exception)\b/.test(l.trim()));
  const how = exit.signal ? `was stopped (${exit.signal})` : `exited with code ${exit.code}`;
  return `the image script ${how}${line ? `: ${line.trim().slice(0, 300)}` : ''}`;
}

/**
 * Draws every image of a generation into the blob store: one call of the script per image. Returns
 * the images as blob ids, in the payload's order.
 */
export async function runGeneration(deps: GenerationDeps, p: GeneratePayload, workDir: string): Promise<{ epoch: number; weight: number; blob: string }[]> {
  const { config } = deps;
  const modelPath = resolve(config.MODELS_DIR, p.baseModel);
  const inModels = (file: string) => resolve(config.MODELS_DIR, file);
  const flux = p.flux && {
    ...p.flux,
    clipL: p.flux.clipL === null ? null : inModels(p.flux.clipL),
    t5xxl: inModels(p.flux.t5xxl),
    ae: inModels(p.flux.ae),
  };
  const script = join(resolve(config.SD_SCRIPTS_DIR), generateScript(p.base));
  const out: { epoch: number; weight: number; blob: string }[] = [];
  await rm(workDir, { recursive: true, force: true });
  await mkdir(workDir, { recursive: true });
  try {
    for (const [i, cell] of p.cells.entries()) {
      if (!(await deps.blobs.has(cell.lora))) throw new GenerationFailure(`the LoRA file of epoch ${cell.epoch} is not on this worker`);
      const outDir = join(workDir, `cell-${i}`);
      await mkdir(outDir, { recursive: true });
      const args = generateArgs({
        modelPath,
        base: p.base,
        loraPath: deps.blobs.path(cell.lora),
        weight: cell.weight,
        outDir,
        settings: { prompt: p.prompt, negative: p.negative, seed: p.seed, width: p.width, height: p.height },
        ...(flux ? { flux } : {}),
      });
      const { command, args: full } = trainerCommand(config.TRAINER_CMD, script, args);
      let proc: TrainerProcess;
      try {
        proc = await TrainerProcess.start({ command, args: full, cwd: workDir, env: trainerEnv(deps.env, workDir) });
      } catch (err) {
        throw new GenerationFailure(`the image script could not be started (${command}: ${err instanceof Error ? err.message : String(err)})`);
      }
      const timer = setTimeout(() => void proc.stop(5_000), deps.timeoutMs ?? 600_000);
      let exit;
      try {
        exit = await proc.exited;
        await proc.reap(5_000);
      } finally {
        clearTimeout(timer);
      }
      if (exit.code !== 0) throw new GenerationFailure(scriptError(proc.tail(), exit));
      const name = generatedFile(p.base, await readdir(outDir), p.seed);
      if (!name) throw new GenerationFailure('the image script ended without writing the image');
      const ref = await deps.blobs.putFile(join(outDir, name), { move: true });
      out.push({ epoch: cell.epoch, weight: cell.weight, blob: ref.id });
    }
    return out;
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

export class GenerationFailure extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'GenerationFailure';
  }
}

/** How often a worker looks at the queue without being woken by a new generation (a model file added, a lapsed job). */
const LOOK_AGAIN_MS = 30_000;
const LOCK_MS = 60_000;

/**
 * The in-cluster consumer of the `generate` queue, beside the training worker of the same process.
 * It takes only generations it can draw (it has their files), invalid ones (to report them) and
 * lapsed ones (to say nobody took them): what needs another worker's model stays in line, untouched,
 * for that worker or a lent GPU. It looks when a generation is queued (the queue's event stream),
 * after each one, when taking generations again after a run, and every 30 s.
 */
export function startGenerationWorker(deps: GenerationDeps, connection: Redis): GenerationHandle {
  const { config } = deps;
  const log = deps.logger.child({ queue: QueueName.Generate });
  const prefix = bullPrefix(config.REDIS_PREFIX);
  const results = new Queue<GeneratedPayload>(QueueName.Generated, { connection, prefix, defaultJobOptions: defaultJobOptions[QueueName.Generated] });
  const queue = new Queue<GeneratePayload>(QueueName.Generate, { connection, prefix });
  // No processor: this worker takes only the jobs it chose (takeFitting).
  const consumer = new Worker<GeneratePayload>(QueueName.Generate, null, { connection, prefix, name: deps.workerId, lockDuration: LOCK_MS });
  consumer.on('error', (err) => log.error({ err }, 'generation worker error'));
  const eventsConnection = connection.duplicate();
  const events = new QueueEvents(QueueName.Generate, { connection: eventsConnection, prefix });
  events.on('error', (err) => log.warn({ err }, 'generation queue events error'));
  const workRoot = resolve(config.DATA_DIR, 'generate', deps.workerId);
  const takeLocks = new RedisLocks(connection, config.REDIS_PREFIX, { ttlMs: 15_000, waitMs: 0, logger: log });

  const report = (result: GeneratedPayload) => results.add(JobName.Generated, result, { jobId: `generated-${result.requestId}` });

  const hasFiles = async (p: GeneratePayload): Promise<boolean> => {
    for (const file of generationFiles(p)) if (baseModelProblem(file) !== null || !(await isFile(resolve(config.MODELS_DIR, file)))) return false;
    return true;
  };
  const lapsed = (p: GeneratePayload) => !(Date.now() < p.expiresAt);
  const choose = async (job: Job<GeneratePayload>) => generateProblem(job.data) !== null || (await hasFiles(job.data)) || lapsed(job.data);

  const process = async (job: Job<GeneratePayload>): Promise<void> => {
    const p = job.data;
    const problem = generateProblem(p);
    if (problem) {
      log.warn({ jobId: job.id, problem }, 'refusing a generation');
      if (typeof p?.requestId === 'string' && ID.test(p.requestId))
        await report({ requestId: p.requestId, ok: false, workerId: deps.workerId, reason: problem });
      return;
    }
    if (!(await hasFiles(p))) {
      await report({ requestId: p.requestId, ok: false, workerId: deps.workerId, reason: `no GPU with the base model ${p.baseModel} took it in time` });
      return;
    }
    const started = Date.now();
    log.info({ requestId: p.requestId, runId: p.runId, images: p.cells.length }, 'generating');
    try {
      const cells = await runGeneration(deps, p, join(workRoot, p.requestId));
      await connection.sadd(sharedKeys.artifacts(config.REDIS_PREFIX), ...cells.map((c) => c.blob));
      const seconds = Math.round((Date.now() - started) / 100) / 10;
      await report({ requestId: p.requestId, ok: true, workerId: deps.workerId, cells, seconds });
      log.info({ requestId: p.requestId, seconds }, 'generation done');
    } catch (err) {
      const reason = err instanceof GenerationFailure ? err.reason : `the worker failed: ${err instanceof Error ? err.message : String(err)}`;
      log.warn({ requestId: p.requestId, reason }, 'generation failed');
      await report({ requestId: p.requestId, ok: false, workerId: deps.workerId, reason });
    }
  };

  /** Draws one taken job, holding its lock, and completes it. */
  const serve = async (job: Job<GeneratePayload>, token: string): Promise<void> => {
    const keep = setInterval(() => void job.extendLock(token, LOCK_MS).catch(() => undefined), LOCK_MS / 3);
    try {
      await process(job);
      await job.moveToCompleted(undefined, token, false);
    } catch (err) {
      log.error({ err, jobId: job.id }, 'generation job failed');
      await job.moveToFailed(err instanceof Error ? err : new Error(String(err)), token, false).catch(() => undefined);
    } finally {
      clearInterval(keep);
    }
  };

  // Wake-ups: a flag set by each event, so none is lost while the loop is busy.
  let poked = true;
  let wake: (() => void) | null = null;
  const poke = () => {
    poked = true;
    wake?.();
  };
  const nextPoke = async (ms: number) => {
    if (!poked) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((r) => {
        wake = r;
        timer = setTimeout(r, ms);
      });
      clearTimeout(timer);
      wake = null;
    }
    poked = false;
  };
  events.on('waiting', poke);

  let paused = false;
  let closing = false;
  let serving: Promise<void> = Promise.resolve();
  const loop = (async () => {
    while (!closing) {
      if (paused) {
        await nextPoke(LOOK_AGAIN_MS);
        continue;
      }
      let taken: Awaited<ReturnType<typeof takeFitting<GeneratePayload>>>;
      try {
        taken = await takeFitting({ locks: takeLocks, queue, consumer, choose });
      } catch (err) {
        if (closing) break;
        log.warn({ err }, 'could not look at the waiting generations');
        taken = null;
      }
      if (taken === 'busy') {
        // Another process is taking a job: look again in a moment.
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      if (taken === null) {
        log.debug('no generation here to draw');
        await nextPoke(LOOK_AGAIN_MS);
        continue;
      }
      serving = serve(taken.job, taken.token);
      await serving;
    }
  })();

  /** Generations waiting that this worker can draw. */
  const servable = async (): Promise<number> => {
    const waiting = await queue.getJobs(['waiting', 'prioritized'], 0, 99);
    let n = 0;
    for (const job of waiting) if (job?.data && generateProblem(job.data) === null && (await hasFiles(job.data))) n++;
    return n;
  };

  return {
    async yieldToGenerations(maxWaitMs = 120_000) {
      poke();
      const deadline = Date.now() + maxWaitMs;
      try {
        while (Date.now() < deadline && (await servable()) > 0) await new Promise((r) => setTimeout(r, 100));
      } catch (err) {
        log.warn({ err }, 'could not look at the waiting generations');
      }
      paused = true;
      // Waits for a generation in progress; nothing new is taken until resume().
      await serving;
    },
    resume() {
      if (!paused) return;
      paused = false;
      poke();
    },
    async close() {
      closing = true;
      poke();
      await loop;
      await events.close();
      eventsConnection.disconnect();
      await consumer.close();
      await queue.close();
      await results.close();
    },
  };
}
