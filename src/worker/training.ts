/**
 * The in-cluster training worker: takes one run at a time from the `training` queue (BullMQ),
 * beside the bot with the same Redis and `DATA_DIR`, and runs it (training-run.ts). A remote
 * worker runs the same code under a lease over HTTPS instead (remote-worker.ts).
 */
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { UnrecoverableError, WaitingError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BlobStore } from '../core/blob-store.ts';
import { failedForStalling } from '../queues/bullmq-internals.ts';
import { bullPrefix, QueueName, type TrainRunPayload, type WorkerInfo } from '../queues/contract.ts';
import { checkPayload } from '../queues/train-payload.ts';
import { RunEventQueue } from '../queues/run-events.ts';
import { startGenerationWorker } from './generation.ts';
import { probeOptimizers, type OptimizerProbe } from './optimizers.ts';
import { LocalRunHost } from './run-host.ts';
import { sweepEndedRuns } from './run-folder.ts';
import { describeRunError } from './trainer-failure.ts';
import { TrainingRun, type TrainingRunDeps, type TrainRunResult } from './training-run.ts';
import { WorkerRegistry } from './worker-registry.ts';

export interface TrainingDeps extends TrainingRunDeps {
  blobs: BlobStore;
  /** Finds the GPU for the heartbeat (default: nvidia-smi). */
  gpu?: () => Promise<WorkerInfo['gpu']>;
  /** false: this worker takes no image generations (default: it does). */
  generations?: boolean;
  /** Which optimizers the trainer can import (default: ask TRAINER_PYTHON). */
  optimizers?: () => Promise<OptimizerProbe>;
}

export interface TrainingWorkerHandle {
  worker: Worker<TrainRunPayload, TrainRunResult>;
  registry: WorkerRegistry;
  /** Stops taking runs; a run in progress is stopped and handed back to the queue to resume later. */
  close(): Promise<void>;
}

export function startTrainingWorker(deps: TrainingDeps, connection: Redis): TrainingWorkerHandle {
  const { config } = deps;
  const log = deps.logger.child({ queue: QueueName.Training });
  const workerId = config.WORKER_ID ?? hostname();
  const events = new RunEventQueue(connection, config.REDIS_PREFIX);
  const runsDir = resolve(config.DATA_DIR, 'runs');
  const registry = new WorkerRegistry({
    redis: connection,
    prefix: config.REDIS_PREFIX,
    workerId,
    modelsDir: config.MODELS_DIR,
    diskDir: config.DATA_DIR,
    intervalSeconds: config.WORKER_HEARTBEAT_SECONDS,
    logger: log,
    ...(deps.gpu ? { gpu: deps.gpu } : {}),
    optimizers: deps.optimizers ?? (() => probeOptimizers({ python: config.TRAINER_PYTHON, env: deps.env })),
  });
  // Folders of runs that ended a week ago: only their bookkeeping was left (run-folder.ts).
  void sweepEndedRuns(runsDir, 7 * 24 * 3600 * 1000)
    .then((swept) => swept.length > 0 && log.info({ swept }, 'removed the folders of runs that ended a week ago'))
    .catch((err: unknown) => log.warn({ err }, 'could not sweep ended run folders'));
  const registryStarted = registry.start().catch((err: unknown) => log.error({ err }, 'worker registry did not start'));
  // Generations share this worker's GPU: served between runs and before waiting runs, never beside one.
  const generations =
    deps.generations === false ? null : startGenerationWorker({ config, logger: deps.logger, env: deps.env, blobs: deps.blobs, workerId }, connection);
  let current: TrainingRun | null = null;
  let shuttingDown = false;

  const processRun = async (job: Job<TrainRunPayload, TrainRunResult>, token?: string, signal?: AbortSignal): Promise<TrainRunResult> => {
    const checked = checkPayload(job.data);
    if (!checked.ok) {
      log.error({ jobId: job.id, reason: checked.reason }, 'refusing a training job');
      if (checked.runId !== null) await events.send({ kind: 'failed', runId: checked.runId, reason: checked.reason, logTail: [] });
      throw new UnrecoverableError(checked.reason);
    }
    const host = new LocalRunHost(workerId, deps.blobs, runsDir, connection, config.REDIS_PREFIX, events, job, token);
    const run = new TrainingRun({ ...deps, gpuMiB: () => registry.gpu?.memoryMiB ?? null }, host, checked.payload);
    current = run;
    // Fetched while the worker was closing: straight back to the queue.
    if (shuttingDown) run.requestStop('shutdown');
    const onAbort = () => run.requestStop('cancel');
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    // The generations waiting go first: meanwhile the worker reads as free, so that a member's place in
    // line does not name a run that has not started.
    await generations?.yieldToGenerations();
    await registry.setBusy(run.runId);
    try {
      const result = await run.execute();
      await run.clearFolder({ outcome: result.outcome });
      return result;
    } catch (err) {
      if (err instanceof WaitingError) throw err;
      await run.stopTrainer();
      const { reason, logTail, runFailure } = describeRunError(err);
      await run.reportFailure(reason, logTail);
      if (runFailure) await run.clearFolder({ outcome: 'failed', reason, logTail });
      // Bad input and failed runs are never retried; anything else keeps its own error for the job.
      throw runFailure ? new UnrecoverableError(reason) : err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      current = null;
      await registry.setBusy(null);
      generations?.resume();
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
    if (job && failedForStalling(err)) {
      const checked = checkPayload(job.data);
      const runId = checked.ok ? checked.payload.runId : checked.runId;
      if (runId !== null) {
        void events
          .send({ kind: 'failed', runId, reason: "the run's worker stopped responding too many times", logTail: [] })
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
      await generations?.close();
      await registryStarted;
      await registry.close();
      await events.close();
    })();
    return closing;
  };
  return { worker, registry, close };
}
