/**
 * A worker process (`npm run worker`): consumes the queues named in WORKER_QUEUES. Tagging can
 * also run inside the bot (TAGGER_IN_BOT, the default); a GPU host runs the training worker here.
 */
import type { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { BlobStore } from '../core/blob-store.ts';
import { loadProcessConfig } from '../core/config.ts';
import { createLogger } from '../core/logger.ts';
import { CaptionStore } from '../store/caption-store.ts';
import { DatasetStore } from '../store/dataset-store.ts';
import { NoticeSender } from '../queues/notices.ts';
import { startTaggingWorker } from './tagging.ts';
import { ModerationStore } from '../store/moderation-store.ts';
import { remoteSettingsProblems, startRemoteWorker } from './remote-worker.ts';
import { startTrainingWorker } from './training.ts';

const config = loadProcessConfig();

const logger = createLogger(config.LOG_LEVEL).child({ process: 'worker' });

// A GPU lent from elsewhere: only the bot's URL and a token; no Redis, no shared disk.
if (config.LORA_GUILD_URL !== undefined || config.WORKER_TOKEN !== undefined) {
  const problems = remoteSettingsProblems(config);
  if (problems.length > 0 || !config.WORKER_QUEUES.includes('training')) {
    if (!config.WORKER_QUEUES.includes('training')) problems.push('WORKER_QUEUES: a remote worker trains; set WORKER_QUEUES=training');
    process.stderr.write(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
    process.exit(2);
  }
  const remote = startRemoteWorker(config, { config, logger: logger.child({ unit: 'training' }), env: process.env });
  const stop = (signal: string) => {
    logger.info({ signal }, 'worker shutting down');
    void remote.close().then(() => process.exit(0));
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  const why = await remote.done;
  process.exit(why === 'token-refused' ? 3 : 0);
}
const redis = new Redis(config.REDIS_URL, { maxRetriesPerRequest: null });
redis.on('error', (err) => logger.warn({ err }, 'redis connection error'));
const blobs = new BlobStore(config.DATA_DIR);
await blobs.init();
const store = new DatasetStore(redis, config.REDIS_PREFIX);
const captions = new CaptionStore(redis, config.REDIS_PREFIX);
const sentences = new CaptionStore(redis, config.REDIS_PREFIX, 'sentences');
const notices = new NoticeSender(redis, config.REDIS_PREFIX);

const workers: Worker[] = [];
const closers: (() => Promise<void>)[] = [];
const visible: Promise<void>[] = [];
for (const queue of config.WORKER_QUEUES) {
  if (queue === 'tagging') {
    const { worker, service } = startTaggingWorker(
      {
        config,
        logger: logger.child({ unit: 'tagging' }),
        store,
        captions,
        sentences,
        blobs,
        notices,
        moderation: new ModerationStore(redis, config.REDIS_PREFIX),
      },
      redis,
    );
    workers.push(worker);
    closers.push(() => service.close());
  } else if (queue === 'training') {
    // Not in `workers`: closing a BullMQ worker waits for its job, and a run lasts hours. The
    // handle's close() stops the trainer and hands the run back to the queue (it resumes later).
    const training = startTrainingWorker({ config, logger: logger.child({ unit: 'training' }), blobs, env: process.env }, redis);
    closers.push(() => training.close());
    visible.push(training.registry.firstBeat);
  } else {
    logger.fatal({ queue }, 'this worker does not handle that queue yet');
    process.exit(2);
  }
}
// Ready once the bot can see what this worker offers (its first heartbeat).
await Promise.all(visible);
logger.info({ queues: config.WORKER_QUEUES }, 'worker ready');

async function shutdown(signal: string) {
  logger.info({ signal }, 'worker shutting down');
  await Promise.all(workers.map((w) => w.close()));
  await Promise.all(closers.map((c) => c()));
  await notices.close();
  redis.disconnect();
  process.exit(0);
}
process.once('SIGINT', () => void shutdown('SIGINT'));
process.once('SIGTERM', () => void shutdown('SIGTERM'));
