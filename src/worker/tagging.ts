import { DelayedError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BlobStore } from '../core/blob-store.ts';
import type { Config } from '../core/config.ts';
import { BatchImageError, isUserError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { captionModeOf, tracksOf, type CaptionTrack } from '../core/caption-text.ts';
import { ensureCaptionerModel } from '../core/captioner-model.ts';
import { CaptionerUnavailableError, loadCaptioner, type Captioner } from '../core/florence-captioner.ts';
import { isAbove, isRating } from '../core/rating.ts';
import { stripLeadingTriggers } from '../core/tag-ops.ts';
import { ModelUnavailableError } from '../core/model-files.ts';
import { ensureTaggerModel, TaggerUnavailableError } from '../core/tagger-model.ts';
import { loadTagger, type Tagger, type TagResult } from '../core/wd14-tagger.ts';
import { bullPrefix, QueueName, type TagImagesPayload } from '../queues/contract.ts';
import type { CaptionStore } from '../store/caption-store.ts';
import type { DatasetStore, ImageRecord } from '../store/dataset-store.ts';
import type { NoticeSender } from '../queues/notices.ts';
import type { ModerationStore } from '../store/moderation-store.ts';

export interface TaggingDeps {
  config: Config;
  logger: Logger;
  store: DatasetStore;
  captions: CaptionStore;
  sentences: CaptionStore;
  blobs: BlobStore;
  notices: NoticeSender;
  /** Images the tagger rates above general are noted for the moderators' next notice. */
  moderation: ModerationStore;
}

export interface TaggingResult {
  tagged: number[];
  /** Already captioned (kept), removed meanwhile, or unreadable. */
  skipped: number[];
}

export interface DescribeResult {
  described: number[];
  /** Already described (kept), removed meanwhile, or unreadable. */
  skipped: number[];
}

/**
 * Captions dataset images by machine: tags with the WD14 tagger, sentences with the Florence-2
 * captioner, each only where the dataset's caption mode needs it and the image has none yet. Each
 * model is loaded once, on first use; while one is unavailable, jobs wait (delayed, not failed) and
 * admins get one clear message in the logs.
 */
export class TaggingService {
  private readonly tagger: OnDemandModel<Tagger>;
  private readonly captioner: OnDemandModel<Captioner>;

  constructor(private readonly deps: TaggingDeps) {
    const { config, logger } = deps;
    this.tagger = new OnDemandModel('tagger', 'Tagging', logger, () =>
      ensureTaggerModel({ modelDir: config.TAGGER_MODEL_DIR, modelUrl: config.TAGGER_MODEL_URL, dataDir: config.DATA_DIR, logger }).then((dir) =>
        loadTagger(dir),
      ),
    );
    this.captioner = new OnDemandModel('captioner', 'Captioning', logger, () =>
      ensureCaptionerModel({ modelDir: config.CAPTIONER_MODEL_DIR, modelUrl: config.CAPTIONER_MODEL_URL, dataDir: config.DATA_DIR, logger }).then((dir) =>
        loadCaptioner(dir, { maxNewTokens: config.CAPTIONER_MAX_TOKENS }),
      ),
    );
  }

  /** The tracks a job fills: `/tags retag` only tags; otherwise what the dataset's mode trains on. */
  async tracksFor(payload: TagImagesPayload): Promise<CaptionTrack[]> {
    if (payload.retag) return ['tags'];
    if (payload.tracks) return payload.tracks;
    const dataset = await this.deps.store.getDataset(payload.datasetId);
    return dataset ? tracksOf(captionModeOf(dataset)) : [];
  }

  /** A job's dataset and images, with what `track` holds for them; null when the dataset is gone or another server's. */
  private async jobImages(payload: TagImagesPayload, track: CaptionStore) {
    const { store } = this.deps;
    const dataset = await store.getDataset(payload.datasetId);
    if (!dataset || dataset.guildId !== payload.guildId) return null;
    const images = await store.getImages(dataset.id, payload.imageNos);
    const current = await track.getMany(
      dataset.id,
      images.map((i) => i.no),
    );
    return { dataset, images, current };
  }

  /** Writes a sentence for every listed image that has none yet. */
  async describeImages(payload: TagImagesPayload): Promise<DescribeResult> {
    const { sentences } = this.deps;
    const found = await this.jobImages(payload, sentences);
    if (!found) return { described: [], skipped: payload.imageNos };
    const { dataset, images, current } = found;
    const todo = images.filter((i) => !current.has(i.no));
    const skipped = payload.imageNos.filter((n) => !todo.some((i) => i.no === n));
    if (todo.length === 0) return { described: [], skipped };

    const captioner = await this.captioner.get();
    const described: number[] = [];
    const batch = this.deps.config.CAPTIONER_BATCH;
    for (let i = 0; i < todo.length; i += batch) {
      const chunk = todo.slice(i, i + batch);
      const texts = await this.describeAll(captioner, chunk);
      for (const [j, img] of chunk.entries()) {
        const text = texts[j];
        if (!text) {
          skipped.push(img.no);
          continue;
        }
        const written = await sentences.setIfUntagged(dataset.id, img.no, [text], { by: 'captioner', source: 'captioner' });
        (written.written ? described : skipped).push(img.no);
      }
    }
    return { described, skipped: skipped.sort((a, b) => a - b) };
  }

  private describeAll(captioner: Captioner, images: ImageRecord[]): Promise<(string | null)[]> {
    const paths = images.map((i) => this.deps.blobs.path(i.masterBlob));
    return this.sparingUnreadable(paths, (some) => captioner.caption(some), 'an image could not be described; describing the others one by one');
  }

  /**
   * One batched call of the model over `paths`; when an image can't be read, each is tried alone,
   * so an unreadable image gets null instead of failing the others.
   */
  private async sparingUnreadable<R>(paths: string[], run: (paths: string[]) => Promise<R[]>, warning: string): Promise<(R | null)[]> {
    try {
      return await run(paths);
    } catch (err) {
      if (!(err instanceof BatchImageError)) throw err;
      this.deps.logger.warn({ err }, warning);
      const out: (R | null)[] = [];
      for (const p of paths) {
        try {
          out.push((await run([p]))[0] ?? null);
        } catch (one) {
          if (!(one instanceof BatchImageError)) throw one;
          out.push(null);
        }
      }
      return out;
    }
  }

  /** Logs an unavailable captioner once per distinct problem (admin-facing). */
  reportCaptionerUnavailable(err: CaptionerUnavailableError): void {
    this.captioner.reportUnavailable(err);
  }

  async tagImages(payload: TagImagesPayload): Promise<TaggingResult> {
    const { store, captions } = this.deps;
    const found = await this.jobImages(payload, captions);
    if (!found) return { tagged: [], skipped: payload.imageNos };
    const { dataset, images, current } = found;
    // A caption that arrived with the image (and nobody edited since) is still tagged: the
    // tagger's tags are added after it, and the uploaded version stays in the history.
    const fromUpload = (no: number) => current.get(no)?.source === 'upload';
    const todo = payload.retag ? images : images.filter((i) => !current.has(i.no) || fromUpload(i.no));
    const skipped = payload.imageNos.filter((n) => !todo.some((i) => i.no === n));
    if (todo.length === 0) return { tagged: [], skipped };

    const tagger = await this.tagger.get();
    const concepts = new Map((await store.getConcepts(dataset.id)).map((c) => [c.name, c]));
    const results = await this.tagAll(tagger, todo, dataset.undesiredTags ?? []);
    const tagged: number[] = [];
    const rated: number[] = [];
    for (const [i, img] of todo.entries()) {
      const result = results[i];
      if (!result) {
        skipped.push(img.no);
        continue;
      }
      if (isRating(result.rating) && (await store.setRating(dataset.id, img.no, 'tagger', result.rating)) && isAbove(result.rating, 'general')) {
        rated.push(img.no);
      }
      const triggers = [dataset.trigger, concepts.get(img.concept)?.trigger ?? ''].filter(Boolean);
      const tags = stripLeadingTriggers(result.tags, triggers);
      const meta = { by: 'tagger', source: 'tagger' as const };
      if (payload.retag) {
        await captions.set(dataset.id, img.no, tags, meta);
        tagged.push(img.no);
      } else if (fromUpload(img.no)) {
        const uploaded = current.get(img.no)!;
        const merged = [...uploaded.tags, ...tags];
        try {
          await captions.set(dataset.id, img.no, merged, { ...meta, ifVersion: uploaded.version });
          tagged.push(img.no);
        } catch (err) {
          // Edited or removed while the tagger ran: the member's caption stays as it is.
          if (!isUserError(err)) throw err;
          skipped.push(img.no);
        }
      } else {
        const written = await captions.setIfUntagged(dataset.id, img.no, tags, meta);
        (written.written ? tagged : skipped).push(img.no);
      }
    }
    // Whether they are above what the dataset's channel takes is judged by the bot, which sees the channel.
    if (rated.length > 0) await this.deps.moderation.noteArrival(dataset.guildId, { kind: 'rated', datasetId: dataset.id, nos: rated });
    return { tagged, skipped: skipped.sort((a, b) => a - b) };
  }

  private tagAll(tagger: Tagger, images: ImageRecord[], undesired: string[]): Promise<(TagResult | null)[]> {
    const { config, blobs } = this.deps;
    const opts = {
      generalThreshold: config.TAGGER_GENERAL_THRESHOLD,
      characterThreshold: config.TAGGER_CHARACTER_THRESHOLD,
      undesired,
      includeRating: true,
    };
    const paths = images.map((i) => blobs.path(i.masterBlob));
    return this.sparingUnreadable(paths, (some) => tagger.tag(some, opts), 'an image could not be tagged; tagging the others one by one');
  }

  /** Logs an unavailable tagger once per distinct problem (admin-facing). */
  reportUnavailable(err: TaggerUnavailableError): void {
    this.tagger.reportUnavailable(err);
  }

  async close(): Promise<void> {
    await Promise.all([this.tagger.release(), this.captioner.release()]);
  }
}

/**
 * A model loaded on first use and kept; a load that fails is tried again at the next use. While it
 * is unavailable, each distinct problem is logged once, and its end once.
 */
class OnDemandModel<M extends { info: { modelDir: string }; close(): Promise<void> }> {
  private loading: Promise<M> | null = null;
  private lastProblem: string | null = null;

  constructor(
    /** `tagger`, `captioner`: how the logs name it. */
    private readonly name: string,
    /** What waits for it in the logs (`Tagging` jobs). */
    private readonly jobs: string,
    private readonly logger: Logger,
    private readonly load: () => Promise<M>,
  ) {}

  async get(): Promise<M> {
    if (!this.loading) {
      this.loading = this.load();
      this.loading.catch(() => {
        this.loading = null;
      });
    }
    const model = await this.loading;
    if (this.lastProblem !== null) {
      this.logger.info({ model: model.info.modelDir }, `${this.name} model available again`);
      this.lastProblem = null;
    }
    return model;
  }

  reportUnavailable(err: ModelUnavailableError): void {
    if (this.lastProblem === err.message) return;
    this.lastProblem = err.message;
    this.logger.error({ err }, `${this.name} unavailable: ${err.message}. ${this.jobs} jobs wait until it is fixed.`);
  }

  /** Forgets the model at once, and frees it once its load has settled. */
  async release(): Promise<void> {
    const loading = this.loading;
    this.loading = null;
    if (loading) await (await loading.catch(() => null))?.close();
  }
}

export function startTaggingWorker(deps: TaggingDeps, connection: Redis): { worker: Worker; service: TaggingService } {
  const service = new TaggingService(deps);
  const log = deps.logger.child({ queue: QueueName.Tagging });
  const worker = new Worker<TagImagesPayload, TaggingResult>(
    QueueName.Tagging,
    async (job: Job<TagImagesPayload, TaggingResult>, token?: string) => {
      // Each part is announced as soon as it is done, and one model being unavailable does not
      // hold back the other: the job then waits, and a retry finds the done part's images
      // captioned and says nothing twice.
      const tracks = await service.tracksFor(job.data);
      let result: TaggingResult = { tagged: [], skipped: [] };
      let waiting = false;
      const part = async (run: () => Promise<void>) => {
        try {
          await run();
        } catch (err) {
          if (err instanceof TaggerUnavailableError) service.reportUnavailable(err);
          else if (err instanceof CaptionerUnavailableError) service.reportCaptionerUnavailable(err);
          else throw err;
          waiting = true;
        }
      };
      if (tracks.includes('tags')) {
        await part(async () => {
          result = await service.tagImages(job.data);
          if (result.tagged.length > 0) await announce(deps, job, result);
        });
      }
      if (tracks.includes('sentences')) {
        await part(async () => {
          const described = await service.describeImages(job.data);
          if (described.described.length > 0) await announceDescribed(deps, job, described);
        });
      }
      if (waiting) {
        await job.moveToDelayed(Date.now() + deps.config.TAGGER_RETRY_SECONDS * 1000, token);
        throw new DelayedError();
      }
      return result;
    },
    { connection, prefix: bullPrefix(deps.config.REDIS_PREFIX), concurrency: 1 },
  );
  worker.on('failed', (job, err) => log.error({ err, jobId: job?.id }, 'tagging job failed'));
  worker.on('error', (err) => log.error({ err }, 'tagging worker error'));
  return { worker, service };
}

async function announce(deps: TaggingDeps, job: Job<TagImagesPayload>, result: TaggingResult) {
  const dataset = await deps.store.getDataset(job.data.datasetId);
  if (!dataset) return;
  const n = result.tagged.length;
  const nos = result.tagged;
  const range = n === 1 ? `#${nos[0]}` : `#${nos[0]}–#${nos[n - 1]}`;
  const content =
    `🏷️ Tagged ${n} image${n === 1 ? '' : 's'} of **${dataset.name}** (${range}). ` + 'Review with `/tags top` and `/caption show`; prune with `/tags remove`.';
  await deps.notices.post(dataset.threadId ?? dataset.channelId, content, `tagged:${job.id ?? ''}:${nos.join(',')}`);
}

async function announceDescribed(deps: TaggingDeps, job: Job<TagImagesPayload>, result: DescribeResult) {
  const dataset = await deps.store.getDataset(job.data.datasetId);
  if (!dataset) return;
  const nos = result.described;
  const n = nos.length;
  const range = n === 1 ? `#${nos[0]}` : `#${nos[0]}–#${nos[n - 1]}`;
  const content =
    `📝 Described ${n} image${n === 1 ? '' : 's'} of **${dataset.name}** in a sentence (${range}). ` +
    'Read them with `/caption show`; change a word everywhere with `/caption replace`.';
  await deps.notices.post(dataset.threadId ?? dataset.channelId, content, `described:${job.id ?? ''}:${nos.join(',')}`);
}
