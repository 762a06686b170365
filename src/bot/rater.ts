import type { Config } from '../core/config.ts';
import { ensureRaterModel, loadRater, RaterUnavailableError, type ImageRater } from '../core/image-rater.ts';
import type { Logger } from '../core/logger.ts';
import type { Rating } from '../core/rating.ts';

/**
 * The photo classifier as the bot uses it at intake: loaded on first use, fetched once when no
 * folder is given. While it cannot be loaded, images go unrated by it (the tagger still rates them
 * when it tags) and the admin is told once per distinct problem.
 */
export class RatingService {
  private rater: Promise<ImageRater> | null = null;
  private lastProblem: string | null = null;

  constructor(
    private readonly config: Config,
    private readonly logger: Logger,
  ) {}

  get enabled(): boolean {
    return this.config.IMAGE_RATING;
  }

  async rate(images: readonly Buffer[]): Promise<(Rating | null)[]> {
    if (!this.enabled || images.length === 0) return images.map(() => null);
    try {
      const rater = await this.loaded();
      return await rater.rate(images);
    } catch (err) {
      if (!(err instanceof RaterUnavailableError)) throw err;
      if (this.lastProblem !== err.message) {
        this.lastProblem = err.message;
        this.logger.error({ err }, `image rater unavailable: ${err.message}. Images are rated by the tagger only until it is fixed.`);
      }
      return images.map(() => null);
    }
  }

  private async loaded(): Promise<ImageRater> {
    if (!this.rater) {
      const { config } = this;
      this.rater = ensureRaterModel({
        modelDir: config.RATER_MODEL_DIR,
        modelUrl: config.RATER_MODEL_URL,
        dataDir: config.DATA_DIR,
        logger: this.logger,
      }).then((dir) => loadRater(dir));
      this.rater.catch(() => {
        this.rater = null;
      });
    }
    const rater = await this.rater;
    if (this.lastProblem !== null) {
      this.logger.info('image rater available again');
      this.lastProblem = null;
    }
    return rater;
  }

  async close(): Promise<void> {
    const r = this.rater;
    this.rater = null;
    if (r) await (await r.catch(() => null))?.close();
  }
}
