/**
 * One training run on a worker (design.md data flow step 6): stages the dataset in kohya's layout, writes the three sd-scripts files, runs the trainer
 * in its own process group, and reports what happens on the `run-events` queue (started, progress,
 * each epoch with its sample grid and checkpoint, and the end), each event idempotent by its id.
 *
 * Everything a run produces stays under `<runs dir>/<runId>/ (`DATA_DIR/runs` in-cluster, the cache for a remote worker)`:
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
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Config } from '../core/config.ts';
import { codeOf, listDir } from '../core/fs-errors.ts';
import { buildKohyaFiles, type KohyaFiles } from '../core/kohya-config.ts';
import type { KohyaEvent } from '../core/kohya-progress.ts';
import type { Logger } from '../core/logger.ts';
import { makeSampleGrid } from '../core/image-sheets.ts';
import { runFitProblem } from '../core/recipes.ts';
import type { ArtifactRef, RunEvent, TrainRunPayload } from '../queues/contract.ts';
import { baseModelProblem } from '../queues/train-payload.ts';
import type { RunHost } from './run-host.ts';
import { stageDataset, StagingError, type StageConcept } from './staging.ts';
import { killStaleTrainers, TrainerProcess, trainerCommand, trainerEnv, type TrainerExit } from './trainer-process.ts';
import { RunFailure, TrainerErrors, type StopReason } from './trainer-failure.ts';
import { bytesUnder, diskShortfall, estimateRunDisk, freeBytes } from './disk-space.ts';
import { RunOutput } from './run-output.ts';
import { clearEndedRun, isResumableState, readRunEnd, validCheckpoint, writeAtomic, type RunEnd } from './run-folder.ts';

export interface TrainingRunDeps {
  config: Config;
  logger: Logger;
  /** The environment a trainer inherits (secrets are removed): the worker's own, passed in by main. */
  env: NodeJS.ProcessEnv;
  /** Between SIGTERM and SIGKILL when a trainer is stopped (default 10 s). */
  killGraceMs?: number;
  /** How often the host is asked whether the run is cancelled (default 1 s). */
  cancelPollMs?: number;
  /** The worker's GPU memory (MiB), when it could be read. */
  gpuMiB?: () => number | null;
  /** Free bytes on the disk holding a folder (default: fs.statfs). */
  freeBytes?: (dir: string) => Promise<number>;
}

export type TrainRunResult =
  { outcome: 'finished'; final: ArtifactRef; seconds: number; timings: RunTimings } | { outcome: 'cancelled'; lastEpoch: number | null; timings: RunTimings };

export interface RunTimings {
  /** From the job's pickup to the trainer process running (null: no trainer was started). */
  pickupToSpawnMs: number | null;
}

// ---------------------------------------------------------------------------------------------
// Small file helpers.

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

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
// One run.

export class TrainingRun {
  readonly runId: string;
  readonly runDir: string;
  readonly stagingDir: string;
  readonly outputDir: string;
  private readonly output: RunOutput;
  private readonly log: Logger;
  private readonly startedAt = Date.now();
  private state!: RunState;
  private reported = new Set<number>();
  private trainer: TrainerProcess | null = null;
  private stopReason: StopReason | null = null;
  private nanStep: number | null = null;
  private readonly errors = new TrainerErrors();
  /** Serialises event sending and epoch work, so events go out in order. */
  private chain: Promise<void> = Promise.resolve();
  private chainError: unknown = null;
  private initialEpoch = 1;
  private stepsPerEpoch: number;
  private prompts: string[] = [];
  private lastProgressAt = 0;
  private pickupToSpawnMs: number | null = null;

  constructor(
    private readonly deps: TrainingRunDeps,
    private readonly host: RunHost,
    private readonly payload: TrainRunPayload,
  ) {
    this.runId = payload.runId;
    this.runDir = resolve(host.runsDir, payload.runId);
    this.stagingDir = join(this.runDir, 'dataset');
    this.outputDir = join(this.runDir, 'output');
    this.output = new RunOutput(this.outputDir, payload.outputName, payload.plan.epochs);
    this.log = deps.logger.child({ runId: payload.runId });
    this.stepsPerEpoch = payload.plan.stepsPerEpoch;
  }

  private get graceMs(): number {
    return this.deps.killGraceMs ?? 10_000;
  }

  private get epochs(): number {
    return this.payload.plan.epochs;
  }

  /** Asks the run to stop; the trainer's group is signalled at once if it runs. */
  requestStop(reason: StopReason): void {
    if (this.stopReason !== null) return;
    this.stopReason = reason;
    this.log.info({ reason }, 'stopping the run');
    if (this.trainer) void this.trainer.stop(this.graceMs).catch((err: unknown) => this.log.error({ err }, 'could not stop the trainer'));
  }

  /** Asks the host whether the bot wants the run cancelled; true when it is to be cancelled. */
  private async cancelRequested(): Promise<boolean> {
    if (this.stopReason === 'cancel') return true;
    if (!(await this.host.cancelRequested(this.runId))) return false;
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

  private async putArtifact(path: string): Promise<ArtifactRef> {
    // A copy: the run folder keeps its files for a resume.
    return this.host.artifact(await this.host.blobs.putFile(path));
  }

  private async gridOf(e: number): Promise<ArtifactRef | null> {
    const samples = await this.output.samplesOf(e);
    if (samples.size === 0) return null;
    if (samples.size < this.prompts.length) this.log.warn({ epoch: e, found: samples.size, expected: this.prompts.length }, 'some sample images are missing');
    const tiles = [...samples.entries()]
      .sort(([a], [b]) => a - b)
      .map(([idx, path]) => ({ image: path, label: `#${idx + 1} ${this.prompts[idx] ?? ''}`.trim() }));
    try {
      const jpeg = await makeSampleGrid(tiles, { title: `${this.payload.datasetName || this.payload.outputName} - epoch ${e}/${this.epochs}` });
      return await this.host.artifact(await this.host.blobs.putBuffer(jpeg));
    } catch (err) {
      // A sample cut short by a killed trainer: report the epoch without its grid.
      this.log.warn({ err, epoch: e }, 'could not make the sample grid');
      return null;
    }
  }

  /** Reports epoch `e` once, if its checkpoint was saved completely. */
  private async reportEpoch(e: number): Promise<void> {
    if (this.reported.has(e)) return;
    const file = this.output.epochFile(e);
    if (!(await validCheckpoint(file))) {
      this.log.warn({ epoch: e, file }, 'epoch checkpoint missing or incomplete; epoch not reported');
      return;
    }
    const checkpoint = await this.putArtifact(file);
    const grid = await this.gridOf(e);
    const state = this.output.stateDir(e);
    await this.host.epochSaved(
      { kind: 'epoch', runId: this.runId, epoch: e, epochs: this.epochs, grid, checkpoint },
      (await isResumableState(state)) ? state : null,
    );
    this.reported.add(e);
    await this.saveState();
    this.log.info({ epoch: e, checkpoint: checkpoint.blob, grid: grid?.blob ?? null }, 'epoch reported');
  }

  /** Reports every epoch before the last whose checkpoint is saved (up to `upTo`). */
  private async reportSavedEpochs(upTo = this.epochs - 1): Promise<void> {
    for (let e = 1; e <= Math.min(upTo, this.epochs - 1); e++) await this.reportEpoch(e);
  }

  // -- the run --------------------------------------------------------------------------------

  async execute(): Promise<TrainRunResult> {
    await mkdir(this.runDir, { recursive: true });
    await this.loadState();

    // 1. A trainer left behind by a crashed worker must not keep writing into our output folder.
    const stale = await killStaleTrainers(this.runDir, this.graceMs);
    if (stale.length > 0) this.log.warn({ groups: stale }, 'stopped a trainer left running by an earlier worker');
    // A run that already ended (its worker stopped while clearing the folder) ends the same way again.
    const ended = await readRunEnd(this.runDir);
    if (ended?.outcome === 'failed') throw new RunFailure(ended.reason, ended.logTail);
    if (ended?.outcome === 'cancelled') return this.cancelled();

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
    // FLUX.1/Chroma: the text encoders and autoencoder the plan chose, and a GPU the preset fits.
    const models = new Set(await listDir(resolve(this.deps.config.MODELS_DIR)));
    const unfit = runFitProblem(this.payload.recipe, this.deps.gpuMiB?.() ?? null, (file) => models.has(file));
    if (unfit) throw new RunFailure(unfit);
    // The prompts label the grids, also of epochs reported again without training.
    this.prompts = promptTexts(this.kohyaFiles(modelPath, null));

    // 3. Already finished (the worker died while reporting the end)?
    if (this.state.finished) {
      this.log.info('run already finished; reporting its end again');
      return this.finish();
    }
    if (await validCheckpoint(this.output.finalFile)) {
      this.log.info('the final file is there; reporting the end');
      return this.finish();
    }

    // 4. Cancelled before it started: nothing is spawned.
    if ((await this.cancelRequested()) || this.stopReason !== null) return this.endWithoutTrainer();

    // 5. Stage, write the files, decide where to start.
    const resumeFrom = await this.output.resumableEpoch();
    await this.output.clearAfter(resumeFrom ?? 0, this.log);
    await this.checkDisk();
    const staged = await stageDataset(this.host.blobs, this.stagingDir, this.stageConcepts());
    this.log.info({ ...staged }, 'dataset staged');
    await mkdir(this.outputDir, { recursive: true });
    const files = this.kohyaFiles(modelPath, resumeFrom);
    await writeAtomic(files.paths.datasetToml, files.datasetToml);
    await writeAtomic(files.paths.configToml, files.configToml);
    await writeAtomic(files.paths.samplePromptsTxt, files.samplePromptsTxt);
    this.initialEpoch = resumeFrom === null ? 1 : resumeFrom + 1;

    await this.host.send({
      kind: 'started',
      runId: this.runId,
      workerId: this.host.workerId,
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

  /** Refuses a run that cannot fit on this disk (disk-space.ts), with the numbers. */
  private async checkDisk(): Promise<void> {
    const { recipe, images } = this.payload;
    let datasetBytes = 0;
    for (const image of Object.values(images)) datasetBytes += await bytesUnder(this.host.blobs.path(image.blob));
    const estimate = estimateRunDisk({
      base: recipe.base,
      epochs: this.epochs,
      networkDim: recipe.network.dim,
      convDim: recipe.network.type === 'lora' || recipe.network.type === 'dora' ? null : recipe.network.dim,
      prompts: this.prompts.length,
      datasetBytes,
    });
    const free = await (this.deps.freeBytes ?? freeBytes)(this.host.runsDir);
    const problem = diskShortfall(estimate, free, await bytesUnder(this.runDir));
    if (problem) throw new RunFailure(problem);
  }

  /**
   * After the run ended and its end was reported: clears its folder (run-folder.ts), unless another
   * worker took the run over or KEEP_RUN_FOLDERS is set. Never throws: the run's outcome stands.
   */
  async clearFolder(end: RunEnd): Promise<void> {
    if (this.deps.config.KEEP_RUN_FOLDERS) return;
    try {
      if (!(await this.host.stillOwned())) return;
      const removed = await clearEndedRun(this.runDir, end);
      this.log.info({ outcome: end.outcome, removed }, 'run folder cleared');
    } catch (err) {
      this.log.warn({ err }, 'could not clear the run folder');
    }
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
        ...(resumeFrom !== null ? { resume: { stateDir: this.output.stateDir(resumeFrom), initialEpoch: resumeFrom + 1 } } : {}),
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
          await this.host.send(progress);
          await this.host.progress({ step: progress.step, totalSteps, epoch: progress.epoch, loss: progress.loss });
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
          this.log.warn(
            { planned: this.stepsPerEpoch, trainer: event.stepsPerEpoch },
            'the trainer counts other steps per epoch than the plan; using its count',
          );
          this.stepsPerEpoch = event.stepsPerEpoch;
        }
        return;
      case 'error':
        this.errors.add(event);
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
    if (exit.code === 0 && (await validCheckpoint(this.output.finalFile))) return this.finish();
    await this.reportSavedEpochs();
    let reason: string;
    if (exit.signal !== null || exit.code !== 0) reason = this.errors.reason(exit);
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
    await this.host.send({ kind: 'cancelled', runId: this.runId, lastEpoch });
    this.log.info({ lastEpoch }, 'run cancelled');
    return { outcome: 'cancelled', lastEpoch, timings: { pickupToSpawnMs: this.pickupToSpawnMs } };
  }

  /** Worker shutdown: the run goes back to the queue and resumes from its last saved epoch. */
  private async handBack(): Promise<never> {
    this.log.info('handing the run back to the queue (worker shutting down)');
    return this.host.handBack();
  }

  private async finish(): Promise<TrainRunResult> {
    let finished = this.state.finished;
    if (!finished) {
      for (let e = 1; e <= this.epochs; e++) await this.reportEpoch(e);
      const final = await this.putArtifact(this.output.finalFile);
      finished = { final, seconds: Math.max(0, Math.round((Date.now() - this.state.firstStartedAt) / 1000)) };
      this.state.finished = finished;
      await this.saveState();
    }
    await this.host.send({ kind: 'finished', runId: this.runId, final: finished.final, seconds: finished.seconds });
    this.log.info({ final: finished.final.blob, seconds: finished.seconds }, 'run finished');
    return { outcome: 'finished', ...finished, timings: { pickupToSpawnMs: this.pickupToSpawnMs } };
  }

  /** Sends `failed` (unless another worker took the run over meanwhile). */
  async reportFailure(reason: string, logTail: string[]): Promise<void> {
    if (!(await this.host.stillOwned())) {
      this.log.warn({ reason }, 'the run was taken over by another worker; not reporting this failure');
      return;
    }
    await this.host.send({ kind: 'failed', runId: this.runId, reason, logTail });
    this.log.error({ reason }, 'run failed');
  }

  /** Stops the trainer if one still runs (an error path). */
  async stopTrainer(): Promise<void> {
    if (this.trainer && this.trainer.groupAlive()) await this.trainer.stop(this.graceMs);
  }
}

// Where a run's failures are described (re-exported for the workers that run it).
