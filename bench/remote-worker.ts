/**
 * A GPU lent from elsewhere, without a GPU: the bot's worker API (real HTTP on 127.0.0.1, real
 * Redis, real BullMQ leases) and a remote worker with its own cache folder, the sd-scripts
 * stand-in (a test fixture) as the trainer. For 100 images of about 4 MP:
 * - Start (the job queued) → the remote trainer running, for a first run (every image fetched)
 *   and a second run of the same dataset (everything cached);
 * - bytes downloaded and uploaded on each run (the target for the second: no image bytes at all).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import { LeaseManager } from '../src/bot/leases.ts';
import { startHttpServer } from '../src/bot/http-server.ts';
import { createWorkerApi, WORKER_API_PREFIX } from '../src/bot/worker-api.ts';
import { BlobStore } from '../src/core/blob-store.ts';
import { loadConfig } from '../src/core/config.ts';
import { createLogger } from '../src/core/logger.ts';
import { bullPrefix, defaultJobOptions, JobName, QueueName, type TrainRunPayload } from '../src/queues/contract.ts';
import { RunEventQueue } from '../src/queues/run-events.ts';
import { WorkerStore } from '../src/store/worker-store.ts';
import { startRemoteWorker } from '../src/worker/remote-worker.ts';
import { startRedis } from '../test/harness/redis-server.ts';
import { benchPlan } from './training.ts';

const IMAGES = 100;
const STANDIN_DIR = fileURLToPath(new URL('../test/fixtures/sd-scripts/', import.meta.url));
const SECRET = 'bench-secret-bench-secret-bench-secret-0123';

/** Log lines as objects, to see when the trainer started and what the worker fetched. */
class Lines extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  }
}

async function photo(i: number): Promise<Buffer> {
  // A smooth 4 MP picture (noise upscaled), PNG as masters are: megabytes, like a real photo's master.
  const small = await sharp({
    create: { width: 96, height: 64, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 120 + (i % 40), sigma: 60 } },
  })
    .png()
    .toBuffer();
  return sharp(small).resize(2448, 1632, { kernel: 'cubic' }).png({ compressionLevel: 6 }).toBuffer();
}

export async function benchRemoteWorker(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-bench-remote-'));
  const redisServer = await startRedis();
  const redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  const prefix = 'bench';
  const botBlobs = new BlobStore(path.join(dir, 'bot-data'));
  await botBlobs.init();
  const sink = new Lines();
  const logger = createLogger('info', sink);
  const workers = new WorkerStore(redis, prefix);
  const leases = new LeaseManager({ redis, queueConnection: redis, prefix, leaseMs: 60_000, stalledMs: 60_000, workers, logger: createLogger('silent') });
  leases.start();
  const events = new RunEventQueue(redis, prefix);
  const api = createWorkerApi({
    redis,
    prefix,
    blobs: botBlobs,
    dataDir: path.join(dir, 'bot-data'),
    workers,
    leases,
    events,
    logger: createLogger('silent'),
    secret: SECRET,
    leaseSeconds: 60,
    heartbeatSeconds: 5,
    uploadMaxBytes: 1024 ** 3,
    pollIntervalMs: 100,
  });
  const http = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    redis,
    logger: createLogger('silent'),
    redisPrefix: prefix,
    downloadLimits: { burst: 10, perMinute: 60, concurrentPerKey: 2, concurrentTotal: 8 },
    workerApi: { prefix: WORKER_API_PREFIX, handle: api.handle },
  });
  const queue = new Queue<TrainRunPayload>(QueueName.Training, {
    connection: redis,
    prefix: bullPrefix(prefix),
    defaultJobOptions: defaultJobOptions[QueueName.Training],
  });
  const { token } = await workers.add({ guildId: 'g', name: 'bench', ownerId: 'u' });
  const modelsDir = path.join(dir, 'models');
  await mkdir(modelsDir, { recursive: true });
  // Not a real checkpoint: the worker goes by its name, as for any file whose header it can't read.
  await writeFile(path.join(modelsDir, 'base-sd15.safetensors'), Buffer.alloc(64));
  const config = loadConfig({
    LORA_GUILD_URL: `http://127.0.0.1:${http.port}`,
    WORKER_TOKEN: token,
    ALLOW_INSECURE_WORKER_HTTP: 'true',
    WORKER_QUEUES: 'training',
    WORKER_CACHE_DIR: path.join(dir, 'worker-cache'),
    MODELS_DIR: modelsDir,
    SD_SCRIPTS_DIR: STANDIN_DIR,
    TRAINER_CMD: 'python3',
    WORKER_HEARTBEAT_SECONDS: '5',
    PROGRESS_INTERVAL_SECONDS: '60',
  });
  // The stand-in imports the optimizer's package as sd-scripts does: empty ones stand in for them.
  const env = { ...process.env, PYTHONPATH: path.join(STANDIN_DIR, '../python-packages') };
  const worker = startRemoteWorker(config, { config, logger, env, killGraceMs: 2000, gpu: () => Promise.resolve(null) });
  try {
    let t = performance.now();
    const images: Record<string, { blob: string; caption: string | null }> = {};
    let totalBytes = 0;
    for (let i = 0; i < IMAGES; i++) {
      const ref = await botBlobs.putBuffer(await photo(i));
      totalBytes += ref.size;
      images[`img${String(i).padStart(3, '0')}`] = { blob: ref.id, caption: `zkchar, tag${i % 7}` };
    }
    console.log(
      `  ${IMAGES} PNG masters of 2448×1632 (4 MP), ${(totalBytes / 1024 ** 2).toFixed(0)} MiB in all, made in ${((performance.now() - t) / 1000).toFixed(1)} s (once)`,
    );

    const { recipe, plan } = benchPlan(Object.keys(images).map((id) => ({ id, width: 2448, height: 1632, captioned: true })));
    for (const label of ['first run', 'second run (same dataset)']) {
      const before = { ...worker.client.traffic };
      const runId = `bench${label.startsWith('first') ? 1 : 2}`;
      const seen = sink.lines.length;
      t = performance.now();
      await queue.add(
        JobName.TrainRun,
        {
          runId,
          guildId: 'g',
          datasetId: 'd',
          datasetName: 'bench',
          baseModel: 'base-sd15.safetensors',
          plan,
          recipe,
          images,
          samplePrompts: ['zkchar'],
          seed: 7,
          outputName: `bench-${runId}`,
        },
        { jobId: runId },
      );
      const find = (msg: string) => sink.lines.slice(seen).find((l) => l.msg === msg && l.runId === runId);
      while (!find('trainer started')) await new Promise((r) => setTimeout(r, 20));
      const spawnMs = performance.now() - t;
      const inputs = find('inputs ready')!;
      while ((await queue.getJobCountByTypes('active', 'waiting')) > 0) await new Promise((r) => setTimeout(r, 50));
      const endMs = performance.now() - t;
      const down = worker.client.traffic.downloaded - before.downloaded;
      const up = worker.client.traffic.uploaded - before.uploaded;
      console.log(
        `  ${label}: Start → remote trainer running ${(spawnMs / 1000).toFixed(2)} s (images fetched ${String(inputs.fetched)}, from cache ${String(inputs.cached)}); whole run ${(endMs / 1000).toFixed(1)} s`,
      );
      console.log(`    bytes downloaded ${(down / 1024 ** 2).toFixed(1)} MiB, uploaded ${(up / 1024).toFixed(0)} KiB (checkpoint, grid, state)`);
    }
  } finally {
    // The worker first, then the bot's side.
    for (const part of [worker, queue, http, leases, events]) await part.close();
    redis.disconnect();
    await redisServer.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await benchRemoteWorker();
}
