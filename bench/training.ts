/**
 * The training worker's own overhead, without a GPU:
 * (a) staging a 1,000-image dataset in kohya's layout (hard links to the masters; then the same
 *     again, as a resumed run does, when everything is already in place);
 * (b) from a job's pickup to the trainer process running (payload check, stale-trainer scan,
 *     staging, the three files, `started` sent, spawn), median over a few runs, with the sd-scripts
 *     stand-in (a test fixture) as the trainer, for a 3-image and a 1,000-image dataset.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { BlobStore } from '../src/core/blob-store.ts';
import { loadConfig } from '../src/core/config.ts';
import { createLogger } from '../src/core/logger.ts';
import { planRun, type Plan, type PlanImageInput } from '../src/core/plan.ts';
import { resolveRecipe, type ResolvedRecipe } from '../src/core/recipes.ts';
import { writeSafetensors } from '../src/core/safetensors.ts';
import { bullPrefix, defaultJobOptions, JobName, QueueName, type TrainRunPayload } from '../src/queues/contract.ts';
import { stageDataset, type StageConcept } from '../src/worker/staging.ts';
import { startTrainingWorker } from '../src/worker/training.ts';
import type { TrainRunResult } from '../src/worker/training-run.ts';
import { startRedis } from '../test/harness/redis-server.ts';

const IMAGES = 1000;
const RUNS = 5;
const STANDIN_DIR = fileURLToPath(new URL('../test/fixtures/sd-scripts/', import.meta.url));

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** `n` small, distinct PNG masters in the blob store. */
async function putMasters(blobs: BlobStore, n: number): Promise<Record<string, { blob: string; caption: string | null }>> {
  const images: Record<string, { blob: string; caption: string | null }> = {};
  for (let i = 0; i < n; i++) {
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: i % 256, g: (i * 7) % 256, b: (i * 13) % 256 } } })
      .png({ compressionLevel: 1 })
      .toBuffer();
    images[`img${String(i).padStart(4, '0')}`] = { blob: (await blobs.putBuffer(png)).id, caption: i % 10 === 9 ? null : `zkchar, tag${i % 17}, tag${i % 5}` };
  }
  return images;
}

async function benchStaging(blobs: BlobStore, images: Record<string, { blob: string; caption: string | null }>, dir: string) {
  const concepts: StageConcept[] = [{ folder: '1_main', images: Object.entries(images).map(([id, v]) => ({ id, blob: v.blob, caption: v.caption })) }];
  const fresh: number[] = [];
  const again: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const staging = path.join(dir, `stage-${i}`);
    let t = performance.now();
    const first = await stageDataset(blobs, staging, concepts);
    fresh.push(performance.now() - t);
    t = performance.now();
    const second = await stageDataset(blobs, staging, concepts);
    again.push(performance.now() - t);
    if (first.linked !== IMAGES || second.unchanged !== IMAGES) throw new Error(`unexpected staging result ${JSON.stringify({ first, second })}`);
  }
  console.log(`  (a) staging ${IMAGES} images (hard links + ${Object.values(images).filter((v) => v.caption).length} captions), median of ${RUNS}:`);
  console.log(
    `      fresh ${median(fresh).toFixed(0)} ms (${((median(fresh) * 1000) / IMAGES).toFixed(0)} µs/image); re-stage (all in place) ${median(again).toFixed(0)} ms`,
  );
}

async function benchPickup(dir: string, blobs: BlobStore, sets: [string, Record<string, { blob: string; caption: string | null }>][]) {
  const redisServer = await startRedis();
  const conn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  const modelsDir = path.join(dir, 'models');
  await mkdir(modelsDir, { recursive: true });
  await writeSafetensors(path.join(modelsDir, 'tiny.safetensors'), [{ name: 'x', dtype: 'F32', shape: [1], data: new Uint8Array(4) }]);
  const config = loadConfig({
    REDIS_URL: redisServer.url,
    REDIS_PREFIX: 'bench',
    DATA_DIR: blobs.dataDir,
    MODELS_DIR: modelsDir,
    SD_SCRIPTS_DIR: STANDIN_DIR,
    TRAINER_CMD: 'python3',
    WORKER_ID: 'bench',
    PROGRESS_INTERVAL_SECONDS: '60',
  });
  // The stand-in imports the optimizer's package as sd-scripts does: empty ones stand in for them.
  const env = { ...process.env, PYTHONPATH: fileURLToPath(new URL('../test/fixtures/python-packages', import.meta.url)) };
  const handle = startTrainingWorker({ config, logger: createLogger('silent'), blobs, env, killGraceMs: 2000, gpu: () => Promise.resolve(null) }, conn);
  const prefix = bullPrefix('bench');
  const queue = new Queue<TrainRunPayload>(QueueName.Training, { connection: conn, prefix, defaultJobOptions: defaultJobOptions[QueueName.Training] });
  // Connection options, not an instance: BullMQ then owns (and closes) the blocking connection.
  const queueEvents = new QueueEvents(QueueName.Training, { connection: { host: '127.0.0.1', port: redisServer.port, maxRetriesPerRequest: null }, prefix });
  await queueEvents.waitUntilReady();
  try {
    for (const [label, images] of sets) {
      const { recipe, plan } = benchPlan(Object.entries(images).map(([id, v]) => ({ id, width: 64, height: 64, captioned: v.caption !== null })));
      const times: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const runId = `${label}-${i}`;
        const job = await queue.add(
          JobName.TrainRun,
          {
            runId,
            guildId: 'g',
            datasetId: 'd',
            datasetName: 'bench',
            baseModel: 'tiny.safetensors',
            plan,
            recipe,
            images,
            samplePrompts: ['zkchar'],
            seed: 7,
            outputName: `bench-${i}`,
          },
          { jobId: runId },
        );
        const result = (await job.waitUntilFinished(queueEvents, 300_000)) as TrainRunResult;
        if (result.outcome !== 'finished' || result.timings.pickupToSpawnMs === null) throw new Error(`run ${runId}: ${JSON.stringify(result)}`);
        times.push(result.timings.pickupToSpawnMs);
      }
      console.log(
        `  (b) job pickup → trainer running, ${label} (${Object.keys(images).length} images): median ${median(times).toFixed(0)} ms over ${RUNS} runs (min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)})`,
      );
    }
  } finally {
    await handle.close();
    await queue.close();
    await queueEvents.close();
    conn.disconnect();
    await redisServer.stop();
  }
}

/** What the training benches train: `quick` on SD 1.5, one epoch of one repeat, tiny samples, one concept of `images`. */
export function benchPlan(images: PlanImageInput[]): { recipe: ResolvedRecipe; plan: Plan } {
  const recipe = { ...resolveRecipe('quick', 'sd15', { epochs: 1, seed: 7 }), repeats: { mode: 'fixed' as const, repeats: 1 } };
  recipe.sample = { ...recipe.sample, width: 64, height: 64, steps: 1 };
  return { recipe, plan: planRun({ base: 'sd15', trigger: 'zkchar', recipe, concepts: [{ name: 'main', isMain: true, images }] }) };
}

export async function benchTraining(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-bench-training-'));
  try {
    const blobs = new BlobStore(path.join(dir, 'data'));
    await blobs.init();
    const t = performance.now();
    const many = await putMasters(blobs, IMAGES);
    console.log(`  ${IMAGES} PNG masters (64 px) generated and stored in ${(performance.now() - t).toFixed(0)} ms (once); ${os.availableParallelism()} CPUs`);
    await benchStaging(blobs, many, dir);
    const few = Object.fromEntries(Object.entries(many).slice(0, 3));
    await benchPickup(dir, blobs, [
      ['small', few],
      ['large', many],
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await benchTraining();
}
