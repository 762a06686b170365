import type { CaptionMode } from '../core/caption-text.ts';
import { DEFAULT_POLICY, type ContentPolicy } from '../core/rating.ts';
import type { BaseFamily } from '../core/model-family.ts';
import type { Redis } from 'ioredis';
import type { ResolvedRecipe } from '../core/recipes.ts';
import type { ArtifactRef } from '../queues/contract.ts';
import { updateJsonRecord } from './json-record.ts';

export type RunStatus = 'queued' | 'running' | 'finished' | 'failed' | 'cancelled';

export interface RunEpoch {
  grid: ArtifactRef | null;
  checkpoint: ArtifactRef | null;
  /** The Discord message that shows this epoch (once posted). */
  messageId: string | null;
}

export interface Run {
  id: string;
  guildId: string;
  datasetId: string;
  datasetName: string;
  /** Where the run reports: the dataset's thread, or its channel. */
  channelId: string;
  createdBy: string;
  createdAt: number;
  recipe: ResolvedRecipe;
  baseModel: string;
  outputName: string;
  summary: {
    epochs: number;
    stepsPerEpoch: number;
    totalSteps: number;
    estimateSeconds: number;
    /** The plan's seconds per step (batch 1, native resolution); absent on runs from before it was kept. */
    secondsPerStep?: number;
    images: number;
    concepts: { name: string; folder: string; repeats: number; images: number }[];
  };
  status: RunStatus;
  workerId: string | null;
  /** Whose GPU trains it, as run messages say it ("<@member>'s RTX 4090"), once started. */
  workerLabel?: string | null;
  startedAt: number | null;
  finishedAt: number | null;
  progress: { step: number; totalSteps: number; epoch: number; epochs: number; loss: number | null; etaSeconds: number | null; at: number } | null;
  statusMessageId: string | null;
  statusEditedAt: number | null;
  /** The message after the run with the comparison, the tally and the vote menu. */
  summaryMessageId?: string | null;
  /** Who the finished message mentions (the starter, then contributors who allow it), fixed once. */
  mentions?: string[];
  /** The delivered file's licence note, if its base has one. */
  licenceNote?: string | null;
  epochs: Record<string, RunEpoch>;
  final: ArtifactRef | null;
  failure: { reason: string; logTail: string[] } | null;
  cancelRequestedBy: string | null;
  /** Why the bot stopped the run as it started (its dataset waits for a moderator), said when it ends. */
  stoppedBecause?: string | null;
  /** What the delivered file's metadata credits and describes, fixed when the run was started. */
  credits: {
    triggers: string[];
    contributors: { id: string; name: string; images: number }[];
    /** kohya's ss_tag_frequency: per staging folder, tag → images. */
    tagFrequency: Record<string, Record<string, number>>;
    datasetHash: string;
    base: BaseFamily;
    resolution: number;
  };
}

export const ACTIVE_STATUSES: readonly RunStatus[] = ['queued', 'running'];

/** Runs in Redis. Updates are compare-and-set, safe with several bot processes writing one run. */
export class RunStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(id: string) {
    return `${this.prefix}:run:${id}`;
  }
  private guildIndex(guildId: string) {
    return `${this.prefix}:guild:${guildId}:runs`;
  }
  private datasetIndex(datasetId: string) {
    return `${this.prefix}:ds:${datasetId}:runs`;
  }

  async create(run: Run): Promise<void> {
    await this.redis
      .multi()
      .set(this.key(run.id), JSON.stringify(run), 'NX')
      .zadd(this.guildIndex(run.guildId), run.createdAt, run.id)
      .zadd(this.datasetIndex(run.datasetId), run.createdAt, run.id)
      .exec();
  }

  async get(id: string): Promise<Run | null> {
    const json = await this.redis.get(this.key(id));
    return json ? (JSON.parse(json) as Run) : null;
  }

  /**
   * Applies `change` to the current record atomically, whichever process writes the run too.
   * `change` may be called more than once (on a fresher record after a conflicting write), so it
   * must only compute the next record. Returns null for an unknown run; `change` returning null
   * means nothing to write.
   */
  async update(id: string, change: (run: Run) => Run | null): Promise<Run | null> {
    return updateJsonRecord<Run>(this.redis, this.key(id), change);
  }

  async listForGuild(guildId: string, limit = 50): Promise<Run[]> {
    const ids = await this.redis.zrevrange(this.guildIndex(guildId), 0, limit - 1);
    return this.many(ids);
  }

  async listForDataset(datasetId: string, limit = 50): Promise<Run[]> {
    const ids = await this.redis.zrevrange(this.datasetIndex(datasetId), 0, limit - 1);
    return this.many(ids);
  }

  private async many(ids: string[]): Promise<Run[]> {
    if (ids.length === 0) return [];
    const jsons = await this.redis.mget(ids.map((id) => this.key(id)));
    return jsons.filter((j): j is string => j !== null).map((j) => JSON.parse(j) as Run);
  }

  /**
   * Keeps a run's input blobs from being deleted while it may still need them (an image removed
   * meanwhile loses its record, not its file). Released once, when the run ends.
   */
  async pinBlobs(runId: string, blobs: string[]): Promise<void> {
    const unique = [...new Set(blobs)];
    if (unique.length === 0) return;
    const multi = this.redis.multi().sadd(`${this.prefix}:run:${runId}:pins`, ...unique);
    for (const b of unique) multi.hincrby(`${this.prefix}:pins`, b, 1);
    await multi.exec();
  }

  /** Releases a run's pins; returns the blobs no run pins any more (their files may now go, if nothing else uses them). */
  async releaseBlobs(runId: string): Promise<string[]> {
    return (await this.redis.eval(
      `local blobs = redis.call('SMEMBERS', KEYS[1])
       local free = {}
       for _, b in ipairs(blobs) do
         if redis.call('HINCRBY', KEYS[2], b, -1) <= 0 then
           redis.call('HDEL', KEYS[2], b)
           table.insert(free, b)
         end
       end
       redis.call('DEL', KEYS[1])
       return free`,
      2,
      `${this.prefix}:run:${runId}:pins`,
      `${this.prefix}:pins`,
    )) as string[];
  }

  async isPinned(blobId: string): Promise<boolean> {
    return Number((await this.redis.hget(`${this.prefix}:pins`, blobId)) ?? 0) > 0;
  }

  /** Whether a worker's event was already shown in Discord (so it is posted once). */
  async eventDone(eventId: string): Promise<boolean> {
    return (await this.redis.exists(`${this.prefix}:runevent:${eventId}`)) === 1;
  }

  async markEventDone(eventId: string): Promise<void> {
    await this.redis.set(`${this.prefix}:runevent:${eventId}`, '1', 'EX', 30 * 24 * 3600);
  }
}

export interface GuildSettings {
  /** Members with this role (or Manage Guild) may start runs; null: Manage Guild only. */
  trainerRoleId: string | null;
  maxQueuedPerMember: number;
  maxQueuedPerGuild: number;
  /** Any member may lend a GPU with `/worker add`; false: Manage Guild only. */
  membersMayLend: boolean;
  /** The caption mode new datasets start with; null: by their kind and base (see caption-text.ts). */
  captionMode: CaptionMode | null;
  /** Images (`/lora try`, `/lora compare`) a member may have waiting or being drawn at once. */
  maxGenerationsPerMember: number;
  /** What channels that are not age-restricted show, spoiler and take (see rating.ts). */
  moderation: ContentPolicy;
  /** Where moderators are told what waits for review; null: nowhere (`/moderation queue` still lists it). */
  moderationChannelId: string | null;
}

const DEFAULT_GUILD_SETTINGS: GuildSettings = {
  moderation: DEFAULT_POLICY,
  trainerRoleId: null,
  maxQueuedPerMember: 2,
  maxQueuedPerGuild: 5,
  membersMayLend: false,
  captionMode: null,
  maxGenerationsPerMember: 3,
  moderationChannelId: null,
};

export class GuildSettingsStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(guildId: string) {
    return `${this.prefix}:guild:${guildId}:settings`;
  }

  async get(guildId: string): Promise<GuildSettings> {
    const json = await this.redis.get(this.key(guildId));
    return { ...DEFAULT_GUILD_SETTINGS, ...(json ? (JSON.parse(json) as Partial<GuildSettings>) : {}) };
  }

  async set(guildId: string, settings: GuildSettings): Promise<void> {
    await this.redis.set(this.key(guildId), JSON.stringify(settings));
  }

  private quietKey(guildId: string) {
    return `${this.prefix}:guild:${guildId}:quiet`;
  }

  /** Whether a member is mentioned when a run of a dataset they contributed to finishes (default yes). */
  async setMentioned(guildId: string, userId: string, mentioned: boolean): Promise<void> {
    if (mentioned) await this.redis.srem(this.quietKey(guildId), userId);
    else await this.redis.sadd(this.quietKey(guildId), userId);
  }

  async isMentioned(guildId: string, userId: string): Promise<boolean> {
    return (await this.redis.sismember(this.quietKey(guildId), userId)) === 0;
  }

  /** The listed members who did not turn mentions off. */
  async mentionable(guildId: string, userIds: readonly string[]): Promise<string[]> {
    if (userIds.length === 0) return [];
    const quiet = await this.redis.smismember(this.quietKey(guildId), ...userIds);
    return userIds.filter((_, i) => quiet[i] === 0);
  }
}

export interface Tally {
  /** Votes per epoch (only epochs with votes). */
  counts: Map<number, number>;
  total: number;
  /** Most votes; a tie goes to the later epoch (it trained longer). Null when nobody voted. */
  best: number | null;
  /** The epochs sharing the most votes when two or more do (ascending), else empty. */
  tied: number[];
}

/** One vote per member per run; voting again moves it. */
export class VoteStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(runId: string) {
    return `${this.prefix}:run:${runId}:votes`;
  }

  /** Records the member's vote; returns the epoch they voted for before, if any. */
  async vote(runId: string, userId: string, epoch: number): Promise<number | null> {
    const previous = await this.redis.eval(
      "local p = redis.call('HGET', KEYS[1], ARGV[1]); redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); return p",
      1,
      this.key(runId),
      userId,
      String(epoch),
    );
    return previous === null ? null : Number(previous);
  }

  async voteOf(runId: string, userId: string): Promise<number | null> {
    const v = await this.redis.hget(this.key(runId), userId);
    return v === null ? null : Number(v);
  }

  async tally(runId: string): Promise<Tally> {
    const all = await this.redis.hvals(this.key(runId));
    const counts = new Map<number, number>();
    for (const v of all) counts.set(Number(v), (counts.get(Number(v)) ?? 0) + 1);
    let best: number | null = null;
    for (const [epoch, n] of counts) {
      const bestCount = best === null ? -1 : (counts.get(best) ?? 0);
      if (n > bestCount || (n === bestCount && best !== null && epoch > best)) best = epoch;
    }
    const top = best === null ? 0 : (counts.get(best) ?? 0);
    const leaders = [...counts].filter(([, n]) => n === top).map(([e]) => e);
    const tied = leaders.length > 1 ? leaders.sort((a, b) => a - b) : [];
    return { counts: new Map([...counts].sort((a, b) => a[0] - b[0])), total: all.length, best, tied };
  }
}
