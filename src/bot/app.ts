import { Client, Events, GatewayIntentBits, type Interaction, type Message } from 'discord.js';
import { hostname } from 'node:os';
import { Queue, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { BlobStore } from '../core/blob-store.ts';
import { requireBotCredentials, type Config } from '../core/config.ts';
import { mutexOf } from '../core/limiter.ts';
import type { Logger } from '../core/logger.ts';
import { bullPrefix, defaultJobOptions, JobName, QueueName, sharedKeys, type TagImagesPayload, type TrainRunPayload } from '../queues/contract.ts';
import { CaptionStore } from '../store/caption-store.ts';
import { DatasetStore, newId } from '../store/dataset-store.ts';
import { ExpiringStore } from '../store/expiring-store.ts';
import { EventClaims } from '../store/event-claims.ts';
import { RedisLocks } from '../store/redis-lock.ts';
import { GuildSettingsStore, RunStore, VoteStore } from '../store/run-store.ts';
import { NoticeSender } from '../queues/notices.ts';
import { startTaggingWorker, type TaggingService } from '../worker/tagging.ts';
import { keepUploadCaptions } from './captions.ts';
import { startNoticePoster } from './notice-poster.ts';
import { startRunReporter } from './run-reporter.ts';
import { voteButton } from './votes.ts';
import { generationQueues } from './generation.ts';
import { startGenerationPoster } from './generation-poster.ts';
import { GenerationLine } from './generation-line.ts';
import { TallyUpdater } from './tally.ts';
import { labelOfWorker } from './workers.ts';
import type { BotContext } from './context.ts';
import { startHttpServer, type HttpServerHandle } from './http-server.ts';
import { LeaseManager } from './leases.ts';
import { createWorkerApi, WORKER_API_PREFIX } from './worker-api.ts';
import { RunEventQueue } from '../queues/run-events.ts';
import { WorkerStore } from '../store/worker-store.ts';
import { IntakeService } from './intake.ts';
import { RatingService } from './rater.ts';
import { acceptedIn, channelPolicy } from './content-policy.ts';
import { effectiveRating, isAbove, postingOf } from '../core/rating.ts';
import { ImageRemovalService } from './image-removal.ts';
import { ModerationService } from './moderation.ts';
import { ModerationNotifier } from './moderation-notices.ts';
import { ModerationStore } from '../store/moderation-store.ts';
import { DeliveryService } from './delivery.ts';
import { DatasetExporter } from './dataset-export.ts';
import { TrainingService } from './training.ts';
import { componentHandlers, slashCommands } from './handlers.ts';
import { createInteractionRouter } from './interactions.ts';
import { handleThreadMessage } from './message-intake.ts';

export interface BotHandle {
  client: Client;
  ctx: BotContext;
  http: HttpServerHandle;
  stop(): Promise<void>;
}

const HOUR = 3600_000;

function botIntents(config: Config): GatewayIntentBits[] {
  const intents = [GatewayIntentBits.Guilds];
  if (config.DISCORD_MESSAGE_CONTENT) intents.push(GatewayIntentBits.GuildMessages, GatewayIntentBits.MessageContent);
  return intents;
}

/** Wires the bot's services and logs in. The one place that knows how the pieces fit. */
export async function startBot(config: Config, logger: Logger): Promise<BotHandle> {
  const { token } = requireBotCredentials(config);
  const redis = new Redis(config.REDIS_URL, { lazyConnect: true });
  redis.on('error', (err) => logger.warn({ err }, 'redis connection error'));
  await redis.connect();
  const queueConnection = new Redis(config.REDIS_URL, { maxRetriesPerRequest: null });
  queueConnection.on('error', (err) => logger.warn({ err }, 'redis (queues) connection error'));

  const store = new DatasetStore(redis, config.REDIS_PREFIX);
  const moderationStore = new ModerationStore(redis, config.REDIS_PREFIX);
  const captions = new CaptionStore(redis, config.REDIS_PREFIX);
  const sentences = new CaptionStore(redis, config.REDIS_PREFIX, 'sentences');
  const notices = new NoticeSender(queueConnection, config.REDIS_PREFIX);
  const blobs = new BlobStore(config.DATA_DIR);
  await blobs.init();
  // Locks and claims live in Redis: several bot processes may share this deployment.
  const locks = new RedisLocks(redis, config.REDIS_PREFIX, { ttlMs: config.LOCK_TTL_SECONDS * 1000, logger: logger.child({ unit: 'locks' }) });
  const blobLock = mutexOf(locks, 'blobs');
  const claims = new EventClaims(redis, config.REDIS_PREFIX, `${hostname()}:${process.pid}:${newId(3)}`);
  const taggingQueue = new Queue<TagImagesPayload>(QueueName.Tagging, {
    connection: queueConnection,
    prefix: bullPrefix(config.REDIS_PREFIX),
    defaultJobOptions: defaultJobOptions[QueueName.Tagging],
  });

  const trainingQueue = new Queue<TrainRunPayload>(QueueName.Training, {
    connection: queueConnection,
    prefix: bullPrefix(config.REDIS_PREFIX),
    defaultJobOptions: defaultJobOptions[QueueName.Training],
  });
  const runs = new RunStore(redis, config.REDIS_PREFIX);
  const settings = new GuildSettingsStore(redis, config.REDIS_PREFIX);
  const votes = new VoteStore(redis, config.REDIS_PREFIX);

  const rating = new RatingService(config, logger.child({ unit: 'rating' }));
  const intake = new IntakeService({
    config,
    rater: rating,
    // A dataset takes what its own channel allows: more when it lives in an age-restricted one.
    acceptLimit: async (dataset) => {
      const policy = await channelPolicy(client, settings, dataset.guildId, dataset.channelId);
      return { limit: policy.accepted, where: policy.ageRestricted ? 'this dataset' : 'a dataset outside age-restricted channels' };
    },
    store,
    blobs,
    blobLock,
    locks,
    logger: logger.child({ unit: 'intake' }),
    onAccepted: async (dataset, nos, captioned) => {
      // Captions that came with the images (a .txt in a zip) are kept as tags or as a sentence;
      // the machines fill what the dataset's caption mode needs and is still missing.
      await keepUploadCaptions({ store, captions, sentences }, dataset, captioned);
      // Rated above general at intake: the moderators' next notice says whether that is above the channel's policy.
      const rated = (await store.getImages(dataset.id, nos)).filter((image) => {
        const r = effectiveRating(image.ratings);
        return r !== null && isAbove(r, 'general');
      });
      if (rated.length > 0) await moderationStore.noteArrival(dataset.guildId, { kind: 'rated', datasetId: dataset.id, nos: rated.map((i) => i.no) });
      await taggingQueue.add(JobName.TagImages, {
        guildId: dataset.guildId,
        datasetId: dataset.id,
        imageNos: nos,
        retag: false,
        requestedBy: 'intake',
      });
    },
  });
  // Nothing the bot writes pings anyone: names in member text (and <@id> in ours) only display.
  const client = new Client({ intents: botIntents(config), rest: { api: config.DISCORD_API_URL }, allowedMentions: { parse: [], repliedUser: false } });
  const tallies = new TallyUpdater({ client, runs, votes, logger, intervalMs: config.VOTE_EDIT_SECONDS * 1000, epochButton: voteButton });
  const workers = new WorkerStore(redis, config.REDIS_PREFIX);
  const expiring = new ExpiringStore(redis, config.REDIS_PREFIX);
  const removal = new ImageRemovalService({ store, captions, runs, blobs, blobLock, logger: logger.child({ unit: 'removal' }) });
  const onBlobsUnpinned = (ids: string[]) => removal.deleteUnpinned(ids);
  const training = new TrainingService({
    redis,
    redisPrefix: config.REDIS_PREFIX,
    store,
    captions,
    sentences,
    runs,
    settings,
    trainingQueue,
    workerStore: workers,
    expiring,
    logger: logger.child({ unit: 'training' }),
    onBlobsUnpinned,
  });
  const moderation = new ModerationService({
    store,
    runs,
    moderation: moderationStore,
    removal,
    training,
    expiring,
    logger: logger.child({ unit: 'moderation' }),
  });
  const delivery = new DeliveryService({ redis, redisPrefix: config.REDIS_PREFIX, votes, blobs, blobLock, expiring });
  const exporter = new DatasetExporter({ store, captions, sentences, blobs, logger: logger.child({ unit: 'export' }) });
  const genQueues = generationQueues(queueConnection, config.REDIS_PREFIX);
  const generations = {
    redis,
    prefix: config.REDIS_PREFIX,
    queue: genQueues.generate,
    results: genQueues.generated,
    runs,
    store,
    settings,
    blobs,
    workers,
    logger: logger.child({ unit: 'generations' }),
  };
  const line = new GenerationLine({
    redis,
    prefix: config.REDIS_PREFIX,
    queue: genQueues.generate,
    workers,
    client,
    logger: generations.logger,
    intervalMs: config.LINE_EDIT_SECONDS * 1000,
  });
  const ctx: BotContext = {
    config,
    logger,
    redis,
    store,
    captions,
    sentences,
    blobs,
    intake,
    blobLock,
    claims,
    taggingQueue,
    trainingQueue,
    runs,
    votes,
    tallies,
    settings,
    notices,
    workers,
    training,
    removal,
    delivery,
    exporter,
    expiring,
    generations,
    line,
    moderation,
  };

  // Leftovers of a crash: half-written temp files, and blobs written just before a record that
  // never landed (only ones older than the grace period, so nothing in flight is touched).
  await blobs.cleanTemp(HOUR);
  void blobs
    .sweep(
      async (id) =>
        (await store.blobRefCount(id)) > 0 || (await redis.sismember(sharedKeys.artifacts(config.REDIS_PREFIX), id)) === 1 || (await runs.isPinned(id)),
      HOUR,
    )
    .then((r) => logger.info(r, 'blob sweep done'))
    .catch((err: unknown) => logger.warn({ err }, 'blob sweep failed'));

  const route = createInteractionRouter(ctx, slashCommands, componentHandlers);
  client.on(Events.InteractionCreate, (interaction: Interaction) => {
    claims
      .claim('interaction', interaction.id)
      .then((mine) => (mine ? route(interaction) : undefined))
      .catch((err: unknown) => logger.error({ err }, 'interaction routing failed'));
  });
  if (config.DISCORD_MESSAGE_CONTENT) {
    client.on(Events.MessageCreate, (message: Message) => {
      handleThreadMessage(message, ctx).catch((err: unknown) => logger.error({ err }, 'message handling failed'));
    });
  }
  client.on(Events.Error, (err) => logger.error({ err }, 'discord client error'));
  client.on(Events.Warn, (message) => logger.warn({ discord: message }, 'discord client warning'));

  let tagging: { worker: Worker; service: TaggingService } | null = null;
  if (config.TAGGER_IN_BOT) {
    tagging = startTaggingWorker(
      { config, logger: logger.child({ unit: 'tagging' }), store, captions, sentences, blobs, notices, moderation: moderationStore },
      queueConnection,
    );
  }

  // Remote workers (GPUs lent from anywhere) lease runs over HTTPS; their input links are signed.
  let leases: LeaseManager | null = null;
  let runEvents: RunEventQueue | null = null;
  let workerApi: ReturnType<typeof createWorkerApi> | null = null;
  if (config.DOWNLOAD_SECRET) {
    runEvents = new RunEventQueue(queueConnection, config.REDIS_PREFIX);
    leases = new LeaseManager({
      redis,
      queueConnection,
      prefix: config.REDIS_PREFIX,
      leaseMs: config.LEASE_SECONDS * 1000,
      stalledMs: config.TRAINING_STALLED_SECONDS * 1000,
      workers,
      logger,
      onBlobsReleased: async (ids) => {
        // A superseded resume state: no longer kept, deleted unless something else uses the bytes.
        await redis.srem(sharedKeys.artifacts(config.REDIS_PREFIX), ...ids);
        for (const id of ids) {
          if ((await store.blobRefCount(id)) === 0 && !(await runs.isPinned(id))) await blobs.delete(id);
        }
      },
    });
    leases.start();
    workerApi = createWorkerApi({
      redis,
      prefix: config.REDIS_PREFIX,
      blobs,
      dataDir: config.DATA_DIR,
      workers,
      leases,
      events: runEvents,
      generated: genQueues.generated,
      logger,
      secret: config.DOWNLOAD_SECRET,
      leaseSeconds: config.LEASE_SECONDS,
      heartbeatSeconds: config.WORKER_HEARTBEAT_SECONDS,
      uploadMaxBytes: config.WORKER_UPLOAD_MAX_BYTES,
    });
  } else {
    logger.info('remote training workers are off: set DOWNLOAD_SECRET (and PUBLIC_URL) to let members lend GPUs');
  }

  const http = await startHttpServer({
    ...(workerApi ? { workerApi: { prefix: WORKER_API_PREFIX, handle: workerApi.handle } } : {}),
    host: config.HTTP_HOST,
    port: config.HTTP_PORT,
    redis,
    logger,
    blobs,
    datasetExport: exporter,
    redisPrefix: config.REDIS_PREFIX,
    downloadLimits: {
      burst: config.DOWNLOAD_RATE_BURST,
      perMinute: config.DOWNLOAD_RATE_PER_MINUTE,
      concurrentPerKey: config.DOWNLOAD_MAX_PER_CLIENT,
      concurrentTotal: config.DOWNLOAD_MAX_CONCURRENT,
    },
    trustProxyHops: config.HTTP_TRUST_PROXY_HOPS,
    isWithheld: (blobId) => moderationStore.isBlobWithheld(blobId),
    ...(config.DOWNLOAD_SECRET ? { downloadSecret: config.DOWNLOAD_SECRET } : {}),
  });
  const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
  await client.login(token);
  await ready;
  // What workers reported while the bot was away is posted now that it can reach Discord.
  const poster: Worker = startNoticePoster(client, queueConnection, config.REDIS_PREFIX, logger);
  const reporter: Worker = startRunReporter(
    {
      client,
      runs,
      votes,
      blobs,
      logger,
      settings,
      statusEditIntervalMs: config.PROGRESS_INTERVAL_SECONDS * 1000,
      workerLabel: (id) => labelOfWorker({ redis, prefix: config.REDIS_PREFIX, workerStore: workers }, id),
      // Samples are rated like uploads and posted as the run's channel allows (threads take their parent's flag).
      posting: async (run, image) => {
        // A run of a dataset the moderators removed shows nothing of it any more.
        if (await moderationStore.withheld(run.id)) return { how: 'withhold', rating: null, why: 'a moderator removed this dataset.' };
        const [sampleRating = null] = await rating.rate([image]);
        return { how: postingOf(sampleRating, await channelPolicy(client, settings, run.guildId, run.channelId)), rating: sampleRating };
      },
      onBlobsUnpinned,
      holdOnStart: async (run) => {
        const dataset = await store.getDataset(run.datasetId);
        return dataset ? moderation.hold(dataset, await acceptedIn(client, settings, dataset)) : null;
      },
      stop: (run) => training.cancel(run, client.user?.id ?? 'bot'),
    },
    queueConnection,
    config.REDIS_PREFIX,
  );
  const generationPoster: Worker = startGenerationPoster({ ...generations, client, line }, queueConnection, config.REDIS_PREFIX);
  line.start();
  const moderationNotices = new ModerationNotifier({
    client,
    store,
    settings,
    moderationStore,
    moderation,
    intervalMs: config.MODERATION_NOTICE_SECONDS * 1000,
    logger: logger.child({ unit: 'moderation-notices' }),
  });
  moderationNotices.start();
  logger.info({ user: client.user?.tag, guilds: client.guilds.cache.size, httpPort: http.port }, 'bot ready');

  let stopped = false;
  return {
    client,
    ctx,
    http,
    async stop() {
      if (stopped) return;
      stopped = true;
      await tagging?.worker.close();
      await tagging?.service.close();
      await rating.close();
      await poster.close();
      await reporter.close();
      await generationPoster.close();
      await moderationNotices.stop();
      await line.stop();
      tallies.stop();
      await client.destroy();
      await http.close();
      await leases?.close();
      await runEvents?.close();
      await taggingQueue.close();
      await trainingQueue.close();
      await genQueues.generate.close();
      await genQueues.generated.close();
      await notices.close();
      queueConnection.disconnect();
      redis.disconnect();
    },
  };
}
