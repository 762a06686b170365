import { MAX_REASON_CHARS, MIN_REASON_CHARS, type ImageSelection } from '../core/dataset-rules.ts';
import { UserError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { effectiveRating, isAbove, ratingRank, type Rating } from '../core/rating.ts';
import type { Dataset, DatasetStore, ImageRecord } from '../store/dataset-store.ts';
import type { ExpiringStore } from '../store/expiring-store.ts';
import { type AuditEntry, type ModerationStore, type ModerationTarget, type Report } from '../store/moderation-store.ts';
import { ACTIVE_STATUSES, type Run, type RunStore } from '../store/run-store.ts';
import type { ImageRemovalService, Remover } from './image-removal.ts';
import type { TrainingService } from './training.ts';

export interface ModerationDeps {
  store: DatasetStore;
  runs: RunStore;
  moderation: ModerationStore;
  removal: ImageRemovalService;
  training: TrainingService;
  expiring: ExpiringStore;
  logger: Logger;
}

/** An image rated above what its dataset's channel takes: by whom, and the limit. */
export interface RatingFlag {
  rating: Rating;
  /** Who rated it that high: the photo classifier, the tagger, or both. */
  by: string;
  limit: Rating;
}

/** One entry of the moderation queue: why it is there. */
export interface QueueItem {
  target: ModerationTarget;
  dataset: Dataset;
  rating: RatingFlag | null;
  reports: Report[];
}

/** The highest rating a dataset takes (its channel's policy): asked of Discord by the caller. */
export type LimitOf = (dataset: Dataset) => Promise<Rating>;

/** Who acts, and why (a removal needs a reason). */
export interface ModeratorAction {
  moderatorId: string;
  reason: string | null;
}

const SOURCE_NAMES = { classifier: 'photo classifier', tagger: 'tagger' } as const;

/** The image's rating flag, unless a moderator kept it at this rating (or a higher one) already. */
function ratingFlagOf(image: ImageRecord, limit: Rating, approved: Rating | undefined): RatingFlag | null {
  const rating = effectiveRating(image.ratings);
  if (rating === null || !isAbove(rating, limit)) return null;
  if (approved !== undefined && ratingRank(approved) >= ratingRank(rating)) return null;
  const by = Object.entries(image.ratings ?? {})
    .filter(([, r]) => r === rating)
    .map(([source]) => SOURCE_NAMES[source as keyof typeof SOURCE_NAMES] ?? source);
  return { rating, by: by.join(' and '), limit };
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * Moderation: what is flagged (images rated above their channel's policy by the classifier or the
 * tagger, and members' reports), and what moderators do about it, each action in the audit log.
 */
export class ModerationService {
  constructor(private readonly deps: ModerationDeps) {}

  /** The dataset's images rated above `limit` that no moderator kept. */
  async ratingFlags(dataset: Dataset, limit: Rating): Promise<Map<number, RatingFlag>> {
    return this.flagsAmong(dataset, limit, await this.deps.store.listImages(dataset.id));
  }

  /** Of the given images, those rated above `limit` that no moderator kept (removed ones are left out). */
  async ratingFlagsOf(dataset: Dataset, limit: Rating, nos: readonly number[]): Promise<Map<number, RatingFlag>> {
    return this.flagsAmong(dataset, limit, await this.deps.store.getImages(dataset.id, [...nos]));
  }

  private async flagsAmong(dataset: Dataset, limit: Rating, images: readonly ImageRecord[]): Promise<Map<number, RatingFlag>> {
    const approvals = await this.deps.moderation.approvals(dataset.id);
    const flags = new Map<number, RatingFlag>();
    for (const image of images) {
      const flag = ratingFlagOf(image, limit, approvals.get(image.no));
      if (flag) flags.set(image.no, flag);
    }
    return flags;
  }

  /** Everything waiting for a moderator in a guild: datasets first (by name), then their images. */
  async queue(guildId: string, limitOf: LimitOf): Promise<QueueItem[]> {
    const { store, moderation } = this.deps;
    const datasets = await store.listDatasets(guildId);
    const byId = new Map(datasets.map((d) => [d.id, d]));
    const items = new Map<string, QueueItem>();
    const keyOf = (t: ModerationTarget) => (t.kind === 'dataset' ? t.datasetId : `${t.datasetId}#${t.no}`);
    for (const dataset of datasets) {
      for (const [no, flag] of await this.ratingFlags(dataset, await limitOf(dataset))) {
        const target: ModerationTarget = { kind: 'image', datasetId: dataset.id, no };
        items.set(keyOf(target), { target, dataset, rating: flag, reports: [] });
      }
    }
    const stale: ModerationTarget[] = [];
    for (const target of await moderation.reportedTargets(guildId)) {
      const dataset = byId.get(target.datasetId);
      const gone = !dataset || (target.kind === 'image' && (await store.getImage(target.datasetId, target.no)) === null);
      if (gone) {
        stale.push(target);
        continue;
      }
      const reports = await moderation.reports(guildId, target);
      if (reports.length === 0) continue;
      const item = items.get(keyOf(target)) ?? { target, dataset, rating: null, reports: [] };
      item.reports = reports;
      items.set(keyOf(target), item);
    }
    // Reports of what was removed meanwhile (by its contributor, say) have nothing left to review.
    await moderation.closeReports(guildId, stale);
    const order = (i: QueueItem) => [i.dataset.name, i.target.kind === 'dataset' ? 0 : i.target.no] as const;
    return [...items.values()].sort((a, b) => {
      const [an, ano] = order(a);
      const [bn, bno] = order(b);
      return an.localeCompare(bn) || ano - bno;
    });
  }

  /** A member's report; refused when they reported the same image or dataset before. */
  async report(dataset: Dataset, target: ModerationTarget, reporterId: string, reason: string): Promise<void> {
    const text = reason.replace(/\s+/g, ' ').trim();
    if (text.length < MIN_REASON_CHARS || text.length > MAX_REASON_CHARS) {
      throw new UserError(`Please say briefly what is wrong (${MIN_REASON_CHARS}–${MAX_REASON_CHARS} characters).`);
    }
    if (target.kind === 'image') await this.imageOf(dataset, target.no);
    const added = await this.deps.moderation.report(dataset.guildId, target, { reporterId, reason: text, at: Date.now() });
    const what = target.kind === 'image' ? `image #${target.no} of **${dataset.name}**` : `**${dataset.name}**`;
    if (!added) throw new UserError(`You have already reported ${what}: the moderators have it.`);
    await this.deps.moderation.noteArrival(dataset.guildId, { kind: 'report', target, reason: text });
    this.deps.logger.info({ datasetId: dataset.id, target, userId: reporterId }, 'member report recorded');
  }

  /** Why a dataset may not start a run now, or be exported (a moderator has to review it), or null. */
  async hold(dataset: Dataset, limit: Rating, action: 'start' | 'be exported' = 'start'): Promise<string | null> {
    const flags = await this.ratingFlags(dataset, limit);
    const targets = (await this.deps.moderation.reportedTargets(dataset.guildId)).filter((t) => t.datasetId === dataset.id);
    let reports = 0;
    for (const t of targets) {
      if (t.kind === 'image' && (await this.deps.store.getImage(dataset.id, t.no)) === null) continue;
      reports += (await this.deps.moderation.reports(dataset.guildId, t)).length;
    }
    if (flags.size === 0 && reports === 0) return null;
    const why = [
      ...(flags.size > 0 ? [`${plural(flags.size, 'image')} rated above what its channel takes (${limit})`] : []),
      ...(reports > 0 ? [`${plural(reports, 'report')} from members`] : []),
    ];
    return (
      `**${dataset.name}** is waiting for a moderator: ${why.join(' and ')}. ` +
      `It can ${action} once a member with Manage Messages reviews it in \`/moderation queue\` and approves it.`
    );
  }

  /** Keeps every flagged image at its rating and closes every report on the dataset and its images. */
  async approveDataset(dataset: Dataset, limit: Rating, by: ModeratorAction): Promise<AuditEntry> {
    const flags = await this.ratingFlags(dataset, limit);
    await this.deps.moderation.approve(dataset.id, new Map([...flags].map(([no, f]) => [no, f.rating])));
    const closed = await this.closeAll(dataset);
    return this.log(dataset, 'approve-dataset', null, by, { images: flags.size, reportsClosed: closed });
  }

  /** Keeps one image at its rating and closes its reports. */
  async approveImage(dataset: Dataset, no: number, by: ModeratorAction): Promise<AuditEntry> {
    const image = await this.imageOf(dataset, no);
    const rating = effectiveRating(image.ratings);
    if (rating !== null) await this.deps.moderation.approve(dataset.id, new Map([[no, rating]]));
    const closed = await this.deps.moderation.closeReports(dataset.guildId, [{ kind: 'image', datasetId: dataset.id, no }]);
    return this.log(dataset, 'approve-image', no, by, { reportsClosed: closed });
  }

  /** Closes a target's reports without acting on it (a rating flag stays). */
  async dismiss(dataset: Dataset, target: ModerationTarget, by: ModeratorAction): Promise<AuditEntry> {
    const closed = await this.deps.moderation.closeReports(dataset.guildId, [target]);
    if (closed === 0) throw new UserError('There are no open reports on that any more.');
    return this.log(dataset, 'dismiss', target.kind === 'image' ? target.no : null, by, { reportsClosed: closed });
  }

  /** Removes one image (its records and files, unless a run in progress still needs them) and closes its reports. */
  async removeImage(dataset: Dataset, no: number, by: ModeratorAction): Promise<AuditEntry> {
    await this.imageOf(dataset, no);
    await this.deps.removal.removeSelected(dataset, { mine: false, nos: [no] }, { userId: by.moderatorId, moderator: true });
    const closed = await this.deps.moderation.closeReports(dataset.guildId, [{ kind: 'image', datasetId: dataset.id, no }]);
    return this.log(dataset, 'remove-image', no, by, { images: 1, reportsClosed: closed });
  }

  /**
   * `/dataset remove` by its owner or a moderator: the selected images go as for anyone, and those
   * that other members gave are written to the audit log (their reports closed), so a contributor's
   * "where did my picture go" has an answer. Returns the numbers removed.
   */
  async removeSelected(dataset: Dataset, selection: ImageSelection, by: Remover): Promise<number[]> {
    const { store, removal, moderation } = this.deps;
    const others = new Set((await store.listImages(dataset.id)).filter((i) => i.contributorId !== by.userId).map((i) => i.no));
    const removed = await removal.removeSelected(dataset, selection, by);
    const theirs = removed.filter((no) => others.has(no));
    if (theirs.length > 0) {
      const closed = await moderation.closeReports(
        dataset.guildId,
        theirs.map((no) => ({ kind: 'image', datasetId: dataset.id, no })),
      );
      await this.log(dataset, 'remove-images', null, { moderatorId: by.userId, reason: null }, { images: theirs.length, reportsClosed: closed }, theirs);
    }
    return removed;
  }

  /**
   * Removes a whole dataset: it leaves the server at once (nothing is added or started any more),
   * its waiting and running runs are cancelled, every run's files are withheld with the reason,
   * and its images go from Redis and disk (files a running run still reads go when it ends).
   */
  async removeDataset(dataset: Dataset, by: ModeratorAction & { reason: string }): Promise<AuditEntry> {
    const { store, runs, training, removal, moderation, expiring, logger } = this.deps;
    if (!(await store.deleteDataset(dataset))) throw new UserError(`**${dataset.name}** was removed already.`);
    const all = await runs.listForDataset(dataset.id, 1000);
    let cancelled = 0;
    for (const run of all.filter((r) => ACTIVE_STATUSES.includes(r.status))) {
      await training.cancel(run, by.moderatorId);
      cancelled++;
    }
    const withholding = { by: by.moderatorId, reason: by.reason, at: Date.now() };
    for (const run of all) await moderation.withholdRun(run.id, withholding, [...artifactBlobs(run), ...(await expiring.deliveredBlobsOf(run.id))]);
    const closed = await this.closeAll(dataset);
    const images = await removal.removeDataset(dataset.id);
    await moderation.forgetDataset(dataset.guildId, dataset.id);
    logger.info({ datasetId: dataset.id, userId: by.moderatorId, images, cancelled, withheld: all.length }, 'dataset removed by a moderator');
    return this.log(dataset, 'remove-dataset', null, by, { images, runsCancelled: cancelled, runsWithheld: all.length, reportsClosed: closed });
  }

  /** One page of a guild's audit log, newest first. */
  logPage(guildId: string, offset: number, limit: number): Promise<{ entries: AuditEntry[]; total: number }> {
    return this.deps.moderation.logPage(guildId, offset, limit);
  }

  /** Why a run's files are withheld (in words for members), or null. */
  async withheldReason(run: Run): Promise<string | null> {
    const w = await this.deps.moderation.withheld(run.id);
    if (!w) return null;
    return `The files of run \`${run.id}\` (**${run.datasetName}**) are withheld: a moderator removed the dataset <t:${Math.floor(w.at / 1000)}:R>. Reason: ${w.reason}`;
  }

  private async closeAll(dataset: Dataset): Promise<number> {
    const targets = (await this.deps.moderation.reportedTargets(dataset.guildId)).filter((t) => t.datasetId === dataset.id);
    return this.deps.moderation.closeReports(dataset.guildId, targets);
  }

  private async imageOf(dataset: Dataset, no: number): Promise<ImageRecord> {
    const image = await this.deps.store.getImage(dataset.id, no);
    if (!image) throw new UserError(`**${dataset.name}** has no image #${no} (any more).`);
    return image;
  }

  private async log(
    dataset: Dataset,
    action: AuditEntry['action'],
    no: number | null,
    by: ModeratorAction,
    effect: AuditEntry['effect'],
    nos?: number[],
  ): Promise<AuditEntry> {
    const entry: AuditEntry = {
      at: Date.now(),
      moderatorId: by.moderatorId,
      action,
      guildId: dataset.guildId,
      datasetId: dataset.id,
      datasetName: dataset.name,
      no,
      ...(nos ? { nos } : {}),
      reason: by.reason,
      effect,
    };
    await this.deps.moderation.log(entry);
    return entry;
  }
}

/** Every file a run produced: epoch checkpoints and grids, the final file. */
function artifactBlobs(run: Run): string[] {
  const out = new Set<string>();
  for (const epoch of Object.values(run.epochs)) {
    if (epoch.checkpoint) out.add(epoch.checkpoint.blob);
    if (epoch.grid) out.add(epoch.grid.blob);
  }
  if (run.final) out.add(run.final.blob);
  return [...out];
}
