import type { Client } from 'discord.js';
import type { Logger } from '../core/logger.ts';
import type { DatasetStore } from '../store/dataset-store.ts';
import { targetKey, type Arrival, type ModerationStore, type ModerationTarget } from '../store/moderation-store.ts';
import type { GuildSettingsStore } from '../store/run-store.ts';
import { acceptedIn } from './content-policy.ts';
import type { ModerationService, RatingFlag } from './moderation.ts';
import { truncate } from './reports.ts';

export interface ModerationNoticeDeps {
  client: Client;
  store: DatasetStore;
  settings: GuildSettingsStore;
  moderationStore: ModerationStore;
  moderation: ModerationService;
  /** At most one notice per guild this often; what arrives in between is listed together. */
  intervalMs: number;
  logger: Logger;
}

/** One line of a notice: an image or dataset, and why it waits for review. */
interface NoticeItem {
  target: ModerationTarget;
  datasetName: string;
  flag: RatingFlag | null;
  reports: number;
  /** The first report's words, shortened and stripped of markup. */
  quote: string | null;
}

const MAX_ITEMS = 10;
const QUOTE_CHARS = 40;

/**
 * A short excerpt of a member's words for a channel others read: letters, digits and plain
 * punctuation only (no mentions, links or markdown), cut short.
 */
export function shortQuote(text: string, max = QUOTE_CHARS): string {
  const plain = text
    .replace(/[^\p{L}\p{N} .,!?'’-]+/gu, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return `“${truncate(plain, max)}”`;
}

function itemLine(item: NoticeItem): string {
  const what = item.target.kind === 'dataset' ? `dataset **${item.datasetName}**` : `image #${item.target.no} of **${item.datasetName}**`;
  const why: string[] = [];
  if (item.flag) why.push(`rated ${item.flag.rating}, its channel takes up to ${item.flag.limit}`);
  if (item.reports > 0) {
    const by = item.reports === 1 ? 'a member' : `${item.reports} members`;
    why.push(`reported by ${by}${item.quote ? `: ${item.quote}` : ''}`);
  }
  return `• ${what} — ${why.join(' · ')}`;
}

/** The notice: what arrived, why, and where to review it. Never an image, never who reported. */
export function noticeText(items: readonly NoticeItem[]): string {
  const shown = items.slice(0, MAX_ITEMS).map(itemLine);
  const more = items.length > MAX_ITEMS ? [`• and ${items.length - MAX_ITEMS} more`] : [];
  const head = `🛡️ New for review: ${items.length} item${items.length === 1 ? '' : 's'}`;
  return truncate([head, ...shown, ...more, '`/moderation queue` to review.'].join('\n'), 1990);
}

/**
 * Tells each server's moderation channel what arrived for review (members' reports, images
 * rated above what their channel takes), at most one notice per server per interval. What the
 * bot and the tagging workers noted waits in Redis, so any bot process may post it, once.
 */
export class ModerationNotifier {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  /** Channels whose last post failed (logged once until one succeeds). */
  private readonly failing = new Set<string>();

  constructor(private readonly deps: ModerationNoticeDeps) {}

  start(): void {
    const every = Math.min(this.deps.intervalMs, 5000);
    this.timer = setInterval(() => this.tick(), every);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  private tick(): void {
    if (this.running) return;
    this.running = this.flushAll()
      .catch((err: unknown) => this.deps.logger.warn({ err }, 'moderation notices failed'))
      .finally(() => {
        this.running = null;
      });
  }

  /** Posts the notices that are due (a server noticed too recently waits for the next round). */
  async flushAll(): Promise<void> {
    for (const guildId of await this.deps.moderationStore.guildsWithArrivals()) await this.flush(guildId);
  }

  private async flush(guildId: string): Promise<void> {
    const { moderationStore, settings, intervalMs } = this.deps;
    const channelId = (await settings.get(guildId)).moderationChannelId;
    if (!channelId) {
      // No channel named: nobody is told (the queue lists it all the same).
      await moderationStore.takeArrivals(guildId);
      return;
    }
    if (!(await moderationStore.claimNotice(guildId, intervalMs))) return;
    const items = await this.itemsOf(guildId, await moderationStore.takeArrivals(guildId));
    if (items.length === 0) {
      await moderationStore.releaseNotice(guildId);
      return;
    }
    await this.post(guildId, channelId, noticeText(items));
  }

  /** What of the arrivals still waits for review: open reports, images still flagged. */
  private async itemsOf(guildId: string, arrivals: readonly Arrival[]): Promise<NoticeItem[]> {
    const { store, moderationStore, moderation, client, settings } = this.deps;
    const items = new Map<string, NoticeItem>();
    const datasets = new Map<string, Awaited<ReturnType<DatasetStore['getDataset']>>>();
    const datasetOf = async (id: string) => {
      if (!datasets.has(id)) datasets.set(id, await store.getDataset(id));
      return datasets.get(id) ?? null;
    };
    const itemOf = (target: ModerationTarget, datasetName: string): NoticeItem => {
      const key = targetKey(target);
      const item = items.get(key) ?? { target, datasetName, flag: null, reports: 0, quote: null };
      items.set(key, item);
      return item;
    };
    for (const arrival of arrivals) {
      if (arrival.kind === 'rated') {
        const dataset = await datasetOf(arrival.datasetId);
        if (!dataset) continue;
        const flags = await moderation.ratingFlagsOf(dataset, await acceptedIn(client, settings, dataset), arrival.nos);
        for (const [no, flag] of flags) itemOf({ kind: 'image', datasetId: dataset.id, no }, dataset.name).flag = flag;
        continue;
      }
      const dataset = await datasetOf(arrival.target.datasetId);
      if (!dataset) continue;
      // Dismissed or removed meanwhile: nothing left to review.
      if ((await moderationStore.reports(guildId, arrival.target)).length === 0) continue;
      if (arrival.target.kind === 'image' && (await store.getImage(dataset.id, arrival.target.no)) === null) continue;
      const item = itemOf(arrival.target, dataset.name);
      item.reports++;
      item.quote ??= shortQuote(arrival.reason);
    }
    return [...items.values()];
  }

  /** A post that fails (no permission, channel deleted) is logged once per channel, and dropped. */
  private async post(guildId: string, channelId: string, content: string): Promise<void> {
    const key = `${guildId}:${channelId}`;
    try {
      const channel = await this.deps.client.channels.fetch(channelId);
      if (!channel?.isSendable()) throw new Error('not a channel the bot can post in');
      await channel.send({ content, allowedMentions: { parse: [] } });
      this.failing.delete(key);
    } catch (err) {
      if (this.failing.has(key)) return;
      this.failing.add(key);
      this.deps.logger.warn({ err, guildId, channelId }, 'moderation notice not posted: the moderation channel is gone or the bot may not post there');
    }
  }
}
