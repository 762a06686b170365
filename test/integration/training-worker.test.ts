/**
 * The training worker end to end against a real Redis, real BullMQ and the sd-scripts stand-in
 * (test/fixtures/sd-scripts, a test fixture, not a trainer): a full run, cancel, NaN, a worker
 * crash in the middle of an epoch with its trainer left behind, a graceful shutdown, bad input, and
 * the heartbeat. Events are read from the `run-events` queue's own event stream, so a duplicate
 * add would show as BullMQ's `duplicated` event.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { loadConfig, type Config } from '../../src/core/config.ts';
import { createLogger } from '../../src/core/logger.ts';
import { sampleGridLayout } from '../../src/core/image-sheets.ts';
import { planRun } from '../../src/core/plan.ts';
import { OPTIMIZERS } from '../../src/core/recipe-table.ts';
import { resolveRecipe, type ResolvedRecipe } from '../../src/core/recipes.ts';
import { readSafetensorsHeader } from '../../src/core/safetensors.ts';
import { bullPrefix, defaultJobOptions, JobName, QueueName, sharedKeys, type RunEvent, type TrainRunPayload } from '../../src/queues/contract.ts';
import { clearEndedRun } from '../../src/worker/run-folder.ts';
import { startTrainingWorker, type TrainingDeps, type TrainingWorkerHandle } from '../../src/worker/training.ts';
import { listWorkers } from '../../src/store/worker-heartbeats.ts';
import { sd15Layout, writeModelFile } from '../fixtures/model-layouts.ts';
import { alive } from '../fixtures/process.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const STANDIN_DIR = join(REPO, 'test/fixtures/sd-scripts');
/** Empty packages named like the optimizers' (the stand-in and the optimizer check import them). */
const PYTHON_PACKAGES = join(REPO, 'test/fixtures/python-packages');
const BASE_MODEL = 'tiny-sd15.safetensors';
const OUTPUT_NAME = 'zkchar-r1';
const EPOCHS = 3;
const STEPS_PER_EPOCH = 6; // 3 images × 2 repeats, batch 1
const SAMPLE = { width: 128, height: 192 };
const PROMPTS = ['zkchar, 1girl, smile', 'zkchar, 1girl, standing, outdoors', 'zkchar, school uniform'];

let redisServer: RedisHandle;
let conn: Redis;
let root: string;
let worldNo = 0;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  redisServer = await startRedis();
  conn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  root = await mkdtemp(join(tmpdir(), 'lg-training-'));
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  conn.disconnect();
  await redisServer.stop();
  await rm(root, { recursive: true, force: true });
});

// --- helpers ------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, check: () => Promise<T | null | undefined | false>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== null && value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const groupAlive = (pgid: number) => alive(-pgid);
const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

interface World {
  prefix: string;
  dataDir: string;
  modelsDir: string;
  blobs: BlobStore;
  images: Record<string, { blob: string; caption: string | null }>;
  env: Record<string, string>;
  config: Config;
  training: Queue<TrainRunPayload>;
  events: Queue<RunEvent>;
  runDir(runId: string): string;
  start(env?: Record<string, string>, workerId?: string, deps?: Partial<TrainingDeps>): TrainingWorkerHandle;
  add(payload: TrainRunPayload | Record<string, unknown>, jobId?: string): Promise<Job<TrainRunPayload>>;
  read(): Promise<{ added: { id: string; event: RunEvent }[]; duplicated: string[] }>;
  waitForEvent(predicate: (e: RunEvent) => boolean, what: string, ms?: number): Promise<RunEvent>;
}

async function makeWorld(): Promise<World> {
  const prefix = `t${++worldNo}${Date.now().toString(36)}`;
  const dir = join(root, prefix);
  const dataDir = join(dir, 'data');
  const modelsDir = join(dir, 'models');
  await mkdir(modelsDir, { recursive: true });
  // A base checkpoint with SD 1.5's key layout (a sparse file), so the heartbeat can tell its family.
  await writeModelFile(join(modelsDir, BASE_MODEL), sd15Layout());
  const blobs = new BlobStore(dataDir);
  await blobs.init();
  const colours = [
    [200, 60, 60],
    [60, 180, 90],
    [70, 90, 220],
  ];
  const captions = ['zkchar, smile', 'zkchar, red eyes\nsecond line', null];
  const images: World['images'] = {};
  for (const [i, [r, g, b]] of colours.entries()) {
    const png = await sharp({ create: { width: 512, height: 512, channels: 3, background: { r: r!, g: g!, b: b! } } })
      .png()
      .toBuffer();
    images[`img${i}`] = { blob: (await blobs.putBuffer(png)).id, caption: captions[i] ?? null };
  }
  const env = {
    REDIS_URL: redisServer.url,
    REDIS_PREFIX: prefix,
    DATA_DIR: dataDir,
    MODELS_DIR: modelsDir,
    SD_SCRIPTS_DIR: STANDIN_DIR,
    // As in production: the script runs under `accelerate launch` (its stand-in here).
    TRAINER_CMD: `python3 ${join(STANDIN_DIR, 'accelerate_launch.py')} --num_cpu_threads_per_process 1`,
    PYTHONPATH: PYTHON_PACKAGES,
    WORKER_QUEUES: 'training',
    WORKER_HEARTBEAT_SECONDS: '1',
    TRAINING_STALLED_SECONDS: '2',
    PROGRESS_INTERVAL_SECONDS: '1',
    LOG_LEVEL: 'silent',
  };
  const config = loadConfig(env);
  const connection = { connection: conn, prefix: bullPrefix(prefix) };
  const training = new Queue<TrainRunPayload>(QueueName.Training, { ...connection, defaultJobOptions: defaultJobOptions[QueueName.Training] });
  const events = new Queue<RunEvent>(QueueName.RunEvents, connection);
  cleanups.push(async () => {
    await training.close();
    await events.close();
  });

  const read: World['read'] = async () => {
    const stream = await conn.xrange(`${bullPrefix(prefix)}:${QueueName.RunEvents}:events`, '-', '+');
    const added: { id: string; event: RunEvent }[] = [];
    const duplicated: string[] = [];
    for (const [, fields] of stream) {
      const f = new Map<string, string>();
      for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!, fields[i + 1]!);
      const jobId = f.get('jobId');
      if (jobId === undefined) continue;
      if (f.get('event') === 'duplicated') duplicated.push(jobId);
      if (f.get('event') !== 'added') continue;
      const job = await Job.fromId<RunEvent>(events, jobId);
      if (job) added.push({ id: jobId, event: job.data });
    }
    return { added, duplicated };
  };

  return {
    prefix,
    dataDir,
    modelsDir,
    blobs,
    images,
    env,
    config,
    training,
    events,
    runDir: (runId) => join(dataDir, 'runs', runId),
    start(extraEnv = {}, workerId = `${prefix}-w`, deps = {}) {
      const handle = startTrainingWorker(
        {
          config: { ...config, WORKER_ID: workerId },
          logger: createLogger('silent'),
          blobs,
          env: { ...process.env, PYTHONPATH: PYTHON_PACKAGES, STANDIN_STEP_SECONDS: '0.05', ...extraEnv },
          killGraceMs: 2000,
          cancelPollMs: 200,
          gpu: () => Promise.resolve(null),
          ...deps,
        },
        conn,
      );
      cleanups.push(() => handle.close());
      return handle;
    },
    add: (payload, jobId) => training.add(JobName.TrainRun, payload as TrainRunPayload, { jobId: jobId ?? String(payload.runId) }),
    read,
    async waitForEvent(predicate, what, ms = 30_000) {
      return waitFor(what, async () => (await read()).added.find((a) => predicate(a.event))?.event, ms);
    },
  };
}

function recipe(): ResolvedRecipe {
  const base = resolveRecipe('quick', 'sd15', { epochs: EPOCHS, batchSize: 1, seed: 1234 });
  return { ...base, repeats: { mode: 'fixed', repeats: 2 }, sample: { ...base.sample, ...SAMPLE, steps: 4 } };
}

function payloadFor(world: World, runId: string, overrides: Partial<TrainRunPayload> = {}): TrainRunPayload {
  const r = recipe();
  const plan = planRun({
    base: 'sd15',
    trigger: 'zkchar',
    className: '1girl',
    recipe: r,
    concepts: [
      {
        name: 'main',
        isMain: true,
        images: Object.entries(world.images).map(([id, img]) => ({
          id,
          width: 512,
          height: 512,
          captioned: img.caption !== null,
          ...(img.caption !== null ? { caption: img.caption } : {}),
        })),
      },
    ],
  });
  expect(plan.stepsPerEpoch).toBe(STEPS_PER_EPOCH);
  return {
    runId,
    guildId: 'g1',
    datasetId: 'd1',
    datasetName: 'Zk Char',
    baseModel: BASE_MODEL,
    plan,
    recipe: r,
    images: world.images,
    samplePrompts: PROMPTS,
    seed: 1234,
    outputName: OUTPUT_NAME,
    ...overrides,
  };
}

const kinds = (added: { event: RunEvent }[]) => added.map((a) => a.event.kind);
const epochEvents = (added: { event: RunEvent }[]) => added.map((a) => a.event).filter((e): e is Extract<RunEvent, { kind: 'epoch' }> => e.kind === 'epoch');

async function trainerRecord(world: World, runId: string): Promise<{ pid: number; pgid: number }> {
  return JSON.parse(await readFile(join(world.runDir(runId), 'trainer.json'), 'utf8')) as { pid: number; pgid: number };
}

async function pixel(image: Buffer | string, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(image).raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i]!, data[i + 1]!, data[i + 2]!];
}

// --- tests --------------------------------------------------------------------------------------

describe('training worker', () => {
  it('runs a run: started, progress, every epoch once with its grid and checkpoint, then finished', async () => {
    const world = await makeWorld();
    // The folder is looked into below; an ended run's folder is otherwise cleared (tested apart).
    world.config.KEEP_RUN_FOLDERS = true;
    const handle = world.start({ STANDIN_STEP_SECONDS: '0.1' });
    const runId = 'run-full';
    const job = await world.add(payloadFor(world, runId));

    const busy = await waitFor('the heartbeat to show the run', async () => (await listWorkers(conn, world.prefix)).find((w) => w.busyWith === runId));
    expect(busy.id).toBe(`${world.prefix}-w`);
    const finished = await world.waitForEvent((e) => e.kind === 'finished', 'finished');
    const { added, duplicated } = await world.read();

    // Order: started, progress…, epochs 1..3 in order, finished last; nothing twice.
    const k = kinds(added);
    expect(k[0]).toBe('started');
    expect(k.at(-1)).toBe('finished');
    expect(k.filter((x) => x === 'failed' || x === 'cancelled')).toEqual([]);
    expect(k.indexOf('progress')).toBeGreaterThan(0);
    expect(k.indexOf('progress')).toBeLessThan(k.indexOf('epoch'));
    expect(duplicated).toEqual([]);
    expect(added[0]!.event).toEqual({
      kind: 'started',
      runId,
      workerId: `${world.prefix}-w`,
      resumedFromEpoch: null,
      epochs: EPOCHS,
      stepsPerEpoch: STEPS_PER_EPOCH,
      totalSteps: EPOCHS * STEPS_PER_EPOCH,
    });
    const progress = added.map((a) => a.event).filter((e): e is Extract<RunEvent, { kind: 'progress' }> => e.kind === 'progress');
    for (const p of progress) {
      expect(p.step).toBeGreaterThanOrEqual(1);
      expect(p.step).toBeLessThanOrEqual(EPOCHS * STEPS_PER_EPOCH);
      expect(p.epoch).toBe(Math.floor((p.step - 1) / STEPS_PER_EPOCH) + 1);
      expect(p.totalSteps).toBe(EPOCHS * STEPS_PER_EPOCH);
      expect(p.loss).toBeGreaterThan(0);
    }
    // At most one progress event a second (PROGRESS_INTERVAL_SECONDS=1).
    for (let i = 1; i < progress.length; i++) expect(progress[i]!.at - progress[i - 1]!.at).toBeGreaterThanOrEqual(1000);

    const epochs = epochEvents(added);
    expect(epochs.map((e) => e.epoch)).toEqual([1, 2, 3]);
    const layout = sampleGridLayout(
      SAMPLE,
      PROMPTS.map((p, i) => `#${i + 1} ${p}`),
    );
    for (const e of epochs) {
      expect(e.epochs).toBe(EPOCHS);
      // The checkpoint: a blob that parses as safetensors, of this epoch.
      const ckpt = e.checkpoint!;
      expect(ckpt.sha256).toBe(ckpt.blob);
      expect((await world.blobs.stat(ckpt.blob))?.size).toBe(ckpt.bytes);
      const header = await readSafetensorsHeader(world.blobs.path(ckpt.blob));
      expect(header.metadata.ss_epoch).toBe(String(e.epoch));
      expect(header.metadata.ss_output_name).toBe(OUTPUT_NAME);
      // The grid: one JPEG, the prompts side by side, each cell showing that prompt's sample.
      const grid = e.grid!;
      expect(grid.sha256).toBe(grid.blob);
      const gridFile = world.blobs.path(grid.blob);
      const meta = await sharp(gridFile).metadata();
      expect(meta.format).toBe('jpeg');
      expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);
      expect(grid.bytes).toBeLessThan(8 * 1024 * 1024);
      const sampleDir = join(world.runDir(runId), 'output', 'sample');
      for (const [idx, cell] of layout.cells.entries()) {
        const sample = (await readdir(sampleDir)).find((n) =>
          n.startsWith(`${OUTPUT_NAME}_e${String(e.epoch).padStart(6, '0')}_${String(idx).padStart(2, '0')}_`),
        );
        expect(sample).toBeDefined();
        // The sample's top band (its prompt's colour) and its stripes (its epoch) are in the cell.
        for (const [x, y] of [
          [4, 4],
          [SAMPLE.width - 3, SAMPLE.height - 3],
        ] as const) {
          const want = await pixel(join(sampleDir, sample!), x, y);
          const got = await pixel(gridFile, cell.left + x, cell.top + y);
          got.forEach((v, c) => expect(Math.abs(v - want[c]!)).toBeLessThanOrEqual(24));
        }
      }
    }
    // Every artifact is marked as one before its event goes out, so the bot's orphan sweep keeps it.
    const kept = await conn.smembers(sharedKeys.artifacts(world.prefix));
    expect(kept.sort()).toEqual(epochs.flatMap((e) => [e.grid!.blob, e.checkpoint!.blob]).sort());
    // The last epoch's checkpoint is the final file.
    expect(finished).toMatchObject({ kind: 'finished', runId, final: epochs[2]!.checkpoint });

    // Staged as hard links, captions as the payload says.
    const staged = join(world.runDir(runId), 'dataset', '2_main');
    for (const [id, img] of Object.entries(world.images)) {
      const [a, b] = await Promise.all([stat(join(staged, `${id}.png`)), stat(world.blobs.path(img.blob))]);
      expect([a.dev, a.ino]).toEqual([b.dev, b.ino]);
    }
    expect(await readFile(join(staged, 'img0.txt'), 'utf8')).toBe('zkchar, smile\n');
    expect(await readFile(join(staged, 'img1.txt'), 'utf8')).toBe('zkchar, red eyes second line\n');
    expect(await exists(join(staged, 'img2.txt'))).toBe(false);

    // The job completed; the run folder keeps its files (KEEP_RUN_FOLDERS); no trainer is left; the worker is free again.
    await waitFor('job completed', async () => (await job.getState()) === 'completed');
    const done = await Job.fromId(world.training, runId);
    expect(done?.returnvalue).toMatchObject({ outcome: 'finished', final: epochs[2]!.checkpoint });
    expect(await exists(join(world.runDir(runId), 'output', `${OUTPUT_NAME}-000001.safetensors`))).toBe(true);
    expect(groupAlive((await trainerRecord(world, runId)).pgid)).toBe(false);
    await waitFor('the heartbeat to show the worker idle', async () => (await listWorkers(conn, world.prefix))[0]?.busyWith === null);

    // Delivered again after the trainer ended but before the end was recorded (a worker crash in
    // between): no training, the end is reported again, nothing new is added.
    const statePath = join(world.runDir(runId), 'run-state.json');
    const state = JSON.parse(await readFile(statePath, 'utf8')) as { attempts: number; finished: unknown };
    expect(state.attempts).toBe(1);
    await writeFile(statePath, JSON.stringify({ ...state, finished: null }));
    const again = await world.add(payloadFor(world, runId), `${runId}-again`);
    await waitFor('the second delivery to complete', async () => (await again.getState()) === 'completed');
    const after = await world.read();
    expect(after.added.map((x) => x.id)).toEqual(added.map((x) => x.id));
    expect(after.duplicated).toEqual([`${runId}.finished`]);
    expect((JSON.parse(await readFile(statePath, 'utf8')) as { attempts: number }).attempts).toBe(1);
    expect((await Job.fromId(world.training, `${runId}-again`))?.returnvalue).toMatchObject({ outcome: 'finished', final: epochs[2]!.checkpoint });
    await handle.close();
  });

  it('cancels a run mid-way: the whole trainer group is gone, saved epochs are kept and reported, the job completes', async () => {
    const world = await makeWorld();
    // A launcher in front of the stand-in, like `accelerate launch` (it does not forward signals).
    const launcher = join(world.dataDir, 'launcher.py');
    const childPidFile = join(world.dataDir, 'child.pid');
    await writeFile(
      launcher,
      'import os, subprocess, sys\np = subprocess.Popen(sys.argv[1:])\nopen(os.environ["LAUNCHER_PID_FILE"], "w").write(str(p.pid))\nsys.exit(p.wait())\n',
    );
    world.config.TRAINER_CMD = `python3 ${launcher} python3`;
    world.start({ STANDIN_STEP_SECONDS: '0.3', LAUNCHER_PID_FILE: childPidFile });
    const runId = 'run-cancel';
    const job = await world.add(payloadFor(world, runId));

    await world.waitForEvent((e) => e.kind === 'epoch' && e.epoch === 1, 'epoch 1');
    const { pid, pgid } = await trainerRecord(world, runId);
    const childPid = Number(await readFile(childPidFile, 'utf8'));
    expect(alive(pid) && alive(childPid)).toBe(true);
    await conn.set(sharedKeys.runCancel(world.prefix, runId), '1');

    const cancelled = await world.waitForEvent((e) => e.kind === 'cancelled', 'cancelled', 10_000);
    expect(cancelled).toEqual({ kind: 'cancelled', runId, lastEpoch: 1 });
    expect(alive(pid)).toBe(false);
    expect(alive(childPid)).toBe(false);
    expect(groupAlive(pgid)).toBe(false);

    const { added } = await world.read();
    expect(kinds(added).filter((k) => k === 'finished' || k === 'failed')).toEqual([]);
    expect(epochEvents(added).map((e) => e.epoch)).toEqual([1]);
    // What was saved is kept in the blob store; the run can no longer resume, so its folder is cleared.
    expect(await world.blobs.has(epochEvents(added)[0]!.checkpoint!.blob)).toBe(true);
    await waitFor('job completed', async () => (await job.getState()) === 'completed');
    expect((await readdir(world.runDir(runId))).sort()).toEqual(['ended.json', 'run-state.json']);
    expect((await Job.fromId(world.training, runId))?.returnvalue).toMatchObject({ outcome: 'cancelled', lastEpoch: 1 });
  });

  it("cancels through the processor's AbortSignal too (worker.cancelJob)", async () => {
    const world = await makeWorld();
    const handle = world.start({ STANDIN_STEP_SECONDS: '0.3' });
    const runId = 'run-abort';
    const job = await world.add(payloadFor(world, runId));
    await world.waitForEvent((e) => e.kind === 'progress', 'progress');
    const { pgid } = await trainerRecord(world, runId);
    expect(handle.worker.cancelJob(runId, 'cancelled by test')).toBe(true);
    expect(await world.waitForEvent((e) => e.kind === 'cancelled', 'cancelled', 10_000)).toEqual({ kind: 'cancelled', runId, lastEpoch: null });
    expect(groupAlive(pgid)).toBe(false);
    await waitFor('job completed', async () => (await job.getState()) === 'completed');
  });

  it('never starts a trainer for a run cancelled before it starts', async () => {
    const world = await makeWorld();
    const runId = 'run-early-cancel';
    await conn.set(sharedKeys.runCancel(world.prefix, runId), '1');
    world.start();
    const job = await world.add(payloadFor(world, runId));
    expect(await world.waitForEvent((e) => e.kind === 'cancelled', 'cancelled')).toEqual({ kind: 'cancelled', runId, lastEpoch: null });
    expect(kinds((await world.read()).added)).toEqual(['cancelled']);
    expect(await exists(join(world.runDir(runId), 'trainer.json'))).toBe(false);
    expect(await exists(join(world.runDir(runId), 'output'))).toBe(false);
    await waitFor('job completed', async () => (await job.getState()) === 'completed');
  });

  it('fails a run at once when the loss becomes NaN, with the absolute step and the log tail', async () => {
    const world = await makeWorld();
    world.start({ STANDIN_STEP_SECONDS: '0.15', STANDIN_NAN_AT_STEP: '8' });
    const runId = 'run-nan';
    const job = await world.add(payloadFor(world, runId));
    // Read while it trains: the folder of a failed run is cleared.
    const { pgid } = await waitFor('the trainer record', () => trainerRecord(world, runId).catch(() => null));

    const failed = await world.waitForEvent((e) => e.kind === 'failed', 'failed');
    if (failed.kind !== 'failed') throw new Error('unreachable');
    expect(failed.reason).toBe('the loss became NaN at step 8');
    expect(failed.logTail.length).toBeGreaterThan(0);
    expect(failed.logTail.length).toBeLessThanOrEqual(30);
    expect(failed.logTail.join('\n')).toMatch(/avr_loss=nan/);
    const { added } = await world.read();
    expect(epochEvents(added).map((e) => e.epoch)).toEqual([1]);
    expect(kinds(added)).not.toContain('finished');
    // Stopped straight away: epoch 2 (which would end at step 12) was never saved.
    expect(epochEvents(added).some((e) => e.epoch === 2)).toBe(false);
    expect(groupAlive(pgid)).toBe(false);
    await waitFor('job failed', async () => (await job.getState()) === 'failed');
    expect((await Job.fromId(world.training, runId))?.failedReason).toBe('the loss became NaN at step 8');
  });

  it('reports a trainer crash with its exit code, the exception and the log tail', async () => {
    const world = await makeWorld();
    world.start({ STANDIN_CRASH_AT_STEP: '9' });
    const runId = 'run-crash';
    await world.add(payloadFor(world, runId));
    const failed = await world.waitForEvent((e) => e.kind === 'failed', 'failed');
    if (failed.kind !== 'failed') throw new Error('unreachable');
    // The script's own error, not the launcher's CalledProcessError that ends the log.
    expect(failed.reason).toMatch(/^the trainer exited with code 1: torch\.OutOfMemoryError: CUDA out of memory/);
    expect(failed.logTail.some((l) => l.startsWith('torch.OutOfMemoryError'))).toBe(true);
    expect(failed.logTail.at(-1)).toMatch(/^subprocess\.CalledProcessError: .* returned non-zero exit status 1\.$/);
    expect(epochEvents((await world.read()).added).map((e) => e.epoch)).toEqual([1]);
  });

  it('resumes a run whose worker was SIGKILLed mid-epoch 2, stopping the orphaned trainer; every epoch is reported once', async () => {
    const world = await makeWorld();
    const runId = 'run-crash-resume';
    const argsDump = join(world.dataDir, 'args.json');
    // Worker A: a real worker process (src/worker/main.ts), slow steps.
    const a: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/worker/main.ts'], {
      cwd: REPO,
      // 0.7 s a step: epoch 2 lasts ~4 s, ample time to freeze A's trainer inside it.
      env: { ...process.env, ...world.env, WORKER_ID: 'crash-a', STANDIN_STEP_SECONDS: '0.7', STANDIN_DUMP_ARGS: argsDump },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let aErr = '';
    a.stderr?.on('data', (c: Buffer) => (aErr += c.toString('utf8')));
    const aExited = new Promise<void>((r) => a.once('exit', () => r()));
    cleanups.push(async () => {
      if (a.exitCode === null && a.signalCode === null) a.kill('SIGKILL');
      await aExited;
    });
    await world.add(payloadFor(world, runId));

    await world.waitForEvent((e) => e.kind === 'epoch' && e.epoch === 1, `epoch 1 from worker A ${aErr}`, 45_000);
    // Events are sent at least once (idempotent by id): A records epoch 1 as sent just after
    // sending it. Kill A only once it has, so that a duplicate add below means a real re-report.
    for (const deadline = Date.now() + 10_000; ;) {
      const saved = await readFile(join(world.runDir(runId), 'run-state.json'), 'utf8').then(
        (t) => JSON.parse(t) as { reportedEpochs: number[] },
        () => null,
      );
      if (saved?.reportedEpochs.includes(1)) break;
      if (Date.now() > deadline) throw new Error('worker A never recorded epoch 1 as reported');
      await new Promise((r) => setTimeout(r, 20));
    }
    const orphan = await trainerRecord(world, runId);
    // Freeze A's trainer somewhere in epoch 2, then kill A alone: the trainer (its own group) lives on.
    process.kill(-orphan.pgid, 'SIGSTOP');
    cleanups.push(() => {
      if (groupAlive(orphan.pgid)) process.kill(-orphan.pgid, 'SIGKILL');
      return Promise.resolve();
    });
    a.kill('SIGKILL');
    await aExited;
    const killedAt = Date.now();
    expect(groupAlive(orphan.pgid)).toBe(true);
    const beforeCrash = await world.read();
    expect(epochEvents(beforeCrash.added).map((e) => e.epoch)).toEqual([1]);

    // Worker B takes the run over once A's lock has expired.
    world.start({ STANDIN_STEP_SECONDS: '0.05', STANDIN_DUMP_ARGS: argsDump }, 'crash-b');
    const finished = await world.waitForEvent((e) => e.kind === 'finished', 'finished after the resume', 45_000);
    const finishedSeenAt = Date.now();
    expect(finished.kind).toBe('finished');
    // The run's time counts from its first start on worker A, not from B's resume: it was sent
    // after A was killed and before the test saw it.
    const { firstStartedAt } = JSON.parse(await readFile(join(world.runDir(runId), 'run-state.json'), 'utf8')) as { firstStartedAt: number };
    if (finished.kind === 'finished') {
      expect(finished.seconds).toBeGreaterThanOrEqual(Math.round((killedAt - firstStartedAt) / 1000));
      expect(finished.seconds).toBeLessThanOrEqual(Math.round((finishedSeenAt - firstStartedAt) / 1000));
    }

    // The orphan was stopped before B's trainer started (it never got to write epoch 2).
    expect(groupAlive(orphan.pgid)).toBe(false);
    const { added, duplicated } = await world.read();
    const started = added.filter((x) => x.event.kind === 'started').map((x) => x.event);
    expect(started).toEqual([
      expect.objectContaining({ kind: 'started', workerId: 'crash-a', resumedFromEpoch: null }),
      expect.objectContaining({ kind: 'started', workerId: 'crash-b', resumedFromEpoch: 1 }),
    ]);
    expect(epochEvents(added).map((e) => e.epoch)).toEqual([1, 2, 3]);
    expect(duplicated.filter((id) => /\.(epoch|started|finished|failed|cancelled)/.test(id))).toEqual([]);
    expect(kinds(added).filter((k) => k === 'finished')).toHaveLength(1);
    expect(kinds(added)).not.toContain('failed');
    // B's progress continues from the saved epoch, in absolute steps.
    const resumedAt = added.findIndex((x) => x.event.kind === 'started' && x.event.resumedFromEpoch === 1);
    for (const x of added.slice(resumedAt)) {
      if (x.event.kind === 'progress') expect(x.event.step).toBeGreaterThan(STEPS_PER_EPOCH);
    }
    // B's trainer was told to resume from epoch 1's state and start at epoch 2 (the contract's worker rule).
    const args = JSON.parse(await readFile(argsDump, 'utf8')) as { resume: string; initial_epoch: number };
    expect(args.resume).toBe(join(world.runDir(runId), 'output', `${OUTPUT_NAME}-000001-state`));
    expect(args.initial_epoch).toBe(2);
    // Epoch 2's checkpoint comes from B's trainer (a fresh, complete file).
    const ckpt2 = epochEvents(added).find((e) => e.epoch === 2)!.checkpoint!;
    expect((await readSafetensorsHeader(world.blobs.path(ckpt2.blob))).metadata.ss_epoch).toBe('2');
  }, 90_000);

  it('hands a run back to the queue on a graceful shutdown; the next worker resumes it', async () => {
    const world = await makeWorld();
    const runId = 'run-shutdown';
    const first = world.start({ STANDIN_STEP_SECONDS: '0.3' });
    const job = await world.add(payloadFor(world, runId));
    await world.waitForEvent((e) => e.kind === 'epoch' && e.epoch === 1, 'epoch 1');
    const { pgid } = await trainerRecord(world, runId);
    await first.close();
    expect(groupAlive(pgid)).toBe(false);
    expect(await job.getState()).toBe('waiting');
    expect(kinds((await world.read()).added).filter((k) => k === 'failed' || k === 'cancelled' || k === 'finished')).toEqual([]);
    expect(await conn.exists(sharedKeys.worker(world.prefix, `${world.prefix}-w`))).toBe(0);

    world.start({ STANDIN_STEP_SECONDS: '0.05' }, 'second');
    await world.waitForEvent((e) => e.kind === 'finished', 'finished');
    const { added } = await world.read();
    expect(epochEvents(added).map((e) => e.epoch)).toEqual([1, 2, 3]);
    expect(added.filter((x) => x.event.kind === 'started').map((x) => (x.event.kind === 'started' ? x.event.resumedFromEpoch : -1))).toEqual([null, 1]);
  });

  it('fails a bad payload or a missing base model with a clear reason, spawning nothing', async () => {
    const world = await makeWorld();
    world.start();
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['bad-plan', { ...payloadFor(world, 'bad-plan'), plan: { base: 'sd15' } }, /^the run's payload is invalid \(plan\./],
      ['bad-image', { ...payloadFor(world, 'bad-image'), images: {} }, /image img0 has no master in the payload/],
      [
        'no-model',
        { ...payloadFor(world, 'no-model'), baseModel: 'nope.safetensors' },
        /^the base model nope\.safetensors is not in this worker's models folder$/,
      ],
      ['sneaky-model', { ...payloadFor(world, 'sneaky-model'), baseModel: `../models/${BASE_MODEL}` }, /is not a plain file name/],
      ['abs-model', { ...payloadFor(world, 'abs-model'), baseModel: join(world.modelsDir, BASE_MODEL) }, /is not a plain file name/],
    ];
    for (const [, payload] of cases) await world.add(payload);
    // No usable run id: the job fails, there is no one to report to.
    const anonymous = await world.training.add(JobName.TrainRun, { runId: 'has:colon' } as unknown as TrainRunPayload, { jobId: 'anon' });

    for (const [runId, , reason] of cases) {
      const failed = await world.waitForEvent((e) => e.kind === 'failed' && e.runId === runId, `failed ${runId}`);
      if (failed.kind !== 'failed') throw new Error('unreachable');
      expect(failed.reason).toMatch(reason);
      expect(failed.logTail).toEqual([]);
      const job = await Job.fromId(world.training, runId);
      await waitFor(`${runId} failed`, async () => (await job!.getState()) === 'failed');
      expect((await Job.fromId(world.training, runId))?.failedReason).toMatch(reason);
      expect(await exists(join(world.runDir(runId), 'trainer.json'))).toBe(false);
      expect(await exists(join(world.runDir(runId), 'dataset'))).toBe(false);
    }
    await waitFor('anonymous job failed', async () => (await anonymous.getState()) === 'failed');
    const { added } = await world.read();
    expect(kinds(added).every((k) => k === 'failed')).toBe(true);
    expect(added).toHaveLength(cases.length);
  });

  it("clears a finished run's folder; stopped at any point of the clearing, the run delivered again reports the same end without training", async () => {
    const world = await makeWorld();
    world.config.KEEP_RUN_FOLDERS = true;
    const keeping = world.start();
    const runId = 'run-clear';
    const job = await world.add(payloadFor(world, runId));
    const finished = await world.waitForEvent((e) => e.kind === 'finished', 'finished');
    if (finished.kind !== 'finished') throw new Error('unreachable');
    await waitFor('job completed', async () => (await job.getState()) === 'completed');
    await keeping.close();
    const dir = world.runDir(runId);
    const whole = join(world.dataDir, 'run-clear-whole');
    await cp(dir, whole, { recursive: true });
    const entries = (await readdir(whole)).filter((e) => e !== 'run-state.json').sort();
    expect(entries).toEqual(['dataset', 'output', 'trainer.json', 'trainer.log']);

    world.config.KEEP_RUN_FOLDERS = false;
    world.start();
    // -1: stopped before the end was recorded; k ≥ 0: after it, with the first k entries removed.
    for (let k = -1; k <= entries.length; k++) {
      await rm(dir, { recursive: true, force: true });
      await cp(whole, dir, { recursive: true });
      if (k >= 0) {
        let left = k;
        const stop = new Error('stopped');
        await clearEndedRun(
          dir,
          { outcome: 'finished' },
          {
            beforeRemove: () => {
              if (left-- === 0) throw stop;
            },
          },
        ).catch((err: unknown) => {
          if (err !== stop) throw err;
        });
        expect((await readdir(dir)).length).toBe(2 + entries.length - k);
      }
      const again = await world.add(payloadFor(world, runId), `${runId}-again-${k}`);
      await waitFor(`delivery ${k} completed`, async () => (await again.getState()) === 'completed');
      expect((await Job.fromId(world.training, `${runId}-again-${k}`))?.returnvalue).toMatchObject({ outcome: 'finished', final: finished.final });
      expect((await readdir(dir)).sort()).toEqual(['ended.json', 'run-state.json']);
    }
    const { added, duplicated } = await world.read();
    // Trained once: one start, each epoch once; the end reported again each time (the same event).
    expect(kinds(added).filter((k) => k === 'started')).toHaveLength(1);
    expect(epochEvents(added).map((e) => e.epoch)).toEqual([1, 2, 3]);
    expect(duplicated).toContain(`${runId}.finished`);
    expect(await world.blobs.has(finished.final.blob)).toBe(true);
  });

  it("clears a failed run's folder, and a run delivered again after that fails the same way without training", async () => {
    const world = await makeWorld();
    world.start({ STANDIN_CRASH_AT_STEP: '5' });
    const runId = 'run-clear-failed';
    const job = await world.add(payloadFor(world, runId));
    const failed = await world.waitForEvent((e) => e.kind === 'failed', 'failed');
    if (failed.kind !== 'failed') throw new Error('unreachable');
    await waitFor('job failed', async () => (await job.getState()) === 'failed');
    expect((await readdir(world.runDir(runId))).sort()).toEqual(['ended.json', 'run-state.json']);
    const again = await world.add(payloadFor(world, runId), `${runId}-again`);
    await waitFor('the second delivery to fail', async () => (await again.getState()) === 'failed');
    expect((await Job.fromId(world.training, `${runId}-again`))?.failedReason).toBe(failed.reason);
    expect(kinds((await world.read()).added).filter((k) => k === 'started')).toHaveLength(1);
  });

  it('refuses to start a run that cannot fit on the disk, with the numbers, before staging anything', async () => {
    const world = await makeWorld();
    world.start({}, `${world.prefix}-w`, { freeBytes: () => Promise.resolve(1024 * 1024) });
    const runId = 'run-no-disk';
    const job = await world.add(payloadFor(world, runId));
    const failed = await world.waitForEvent((e) => e.kind === 'failed', 'failed');
    if (failed.kind !== 'failed') throw new Error('unreachable');
    expect(failed.reason).toMatch(
      /^the worker does not have enough free disk space for this run: it needs about [\d.]+ [KMG]B more \(3 checkpoints of [\d.]+ MB, training states [\d.]+ [KMG]B, dataset [\d.]+ KB, samples [\d.]+ MB\) and 1 MB is free$/,
    );
    await waitFor('job failed', async () => (await job.getState()) === 'failed');
    expect(kinds((await world.read()).added)).toEqual(['failed']);
    expect(await exists(join(world.runDir(runId), 'dataset'))).toBe(false);
  });

  it('beats with its id, GPU and base models while running, and removes its heartbeat on close', async () => {
    const world = await makeWorld();
    await writeFile(join(world.modelsDir, 'ponyDiffusionV6XL.safetensors'), 'not really a model');
    await writeFile(join(world.modelsDir, 'mystery.ckpt'), 'not really a model');
    await writeFile(join(world.modelsDir, 'notes.txt'), 'not a model');
    await mkdir(join(world.modelsDir, 'sub.safetensors'));
    const handle = world.start({}, 'gpu-box-1');
    const key = sharedKeys.worker(world.prefix, 'gpu-box-1');
    const info = await waitFor('heartbeat', async () => (await listWorkers(conn, world.prefix))[0]);
    expect(info).toMatchObject({ id: 'gpu-box-1', gpu: null, busyWith: null });
    // System memory, and the free space of the disk DATA_DIR is on.
    expect(info.ramMiB).toBe(Math.round(totalmem() / 2 ** 20));
    const disk = await statfs(world.dataDir);
    expect(Math.abs(info.diskFreeMiB! - (disk.bavail * disk.bsize) / 2 ** 20)).toBeLessThan(1024);
    expect(info.models).toEqual([
      { file: 'mystery.ckpt', base: null },
      { file: 'ponyDiffusionV6XL.safetensors', base: 'sdxl' },
      { file: BASE_MODEL, base: 'sd15' },
    ]);
    // The trainer's Python imports every optimizer's package (the test's empty ones).
    expect(info.optimizers).toEqual([...OPTIMIZERS]);
    const ttl = await conn.ttl(key);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(3);
    // It keeps beating: the time moves on.
    await waitFor('a later beat', async () => ((await listWorkers(conn, world.prefix))[0]?.at ?? 0) > info.at, 5_000);
    await handle.close();
    expect(await conn.exists(key)).toBe(0);
    expect(await listWorkers(conn, world.prefix)).toEqual([]);
  });

  it('does not offer an optimizer whose package the trainer cannot import, and offers none when the check fails', async () => {
    const world = await makeWorld();
    const partial = await mkdtemp(join(tmpdir(), 'python-packages-'));
    cleanups.push(() => rm(partial, { recursive: true, force: true }));
    for (const name of await readdir(PYTHON_PACKAGES)) {
      if (name !== 'dadaptation' && name !== 'README.md') await cp(join(PYTHON_PACKAGES, name), join(partial, name), { recursive: true });
    }
    const handle = world.start({ PYTHONPATH: partial }, 'no-dadapt');
    const info = await waitFor('heartbeat', async () => (await listWorkers(conn, world.prefix)).find((w) => w.id === 'no-dadapt'));
    expect(info.optimizers).toEqual(OPTIMIZERS.filter((o) => o !== 'DAdaptAdam'));
    await handle.close();

    world.config.TRAINER_PYTHON = join(world.dataDir, 'no-such-python');
    const broken = world.start({}, 'no-python');
    const none = await waitFor('heartbeat', async () => (await listWorkers(conn, world.prefix)).find((w) => w.id === 'no-python'));
    expect(none.optimizers).toEqual([]);
    await broken.close();
  });
});
