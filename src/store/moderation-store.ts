import type { Redis } from 'ioredis';
import { z } from 'zod';
import { MAX_REASON_CHARS } from '../core/dataset-rules.ts';
import { RATINGS, type Rating } from '../core/rating.ts';
import { keys, type Keys } from './keys.ts';

/** What a report or a moderator's action is about: one image of a dataset, or the whole dataset. */
export type ModerationTarget = { kind: 'dataset'; datasetId: string } | { kind: 'image'; datasetId: string; no: number };

/** A target as one key part: `d.<dataset>` or `i.<dataset>.<no>`. */
export function targetKey(target: ModerationTarget): string {
  return target.kind === 'dataset' ? `d.${target.datasetId}` : `i.${target.datasetId}.${target.no}`;
}

export function parseTargetKey(text: string): ModerationTarget | null {
  const dataset = /^d\.([a-z0-9]{1,16})$/.exec(text);
  if (dataset) return { kind: 'dataset', datasetId: dataset[1]! };
  const image = /^i\.([a-z0-9]{1,16})\.(\d{1,7})$/.exec(text);
  if (image) return { kind: 'image', datasetId: image[1]!, no: Number(image[2]) };
  return null;
}

const ReportSchema = z.object({ reporterId: z.string(), reason: z.string().max(MAX_REASON_CHARS), at: z.number() });
export type Report = z.infer<typeof ReportSchema>;

const RatingSchema = z.enum(RATINGS);

const AuditEntrySchema = z.object({
  at: z.number(),
  moderatorId: z.string(),
  action: z.enum(['remove-image', 'remove-images', 'remove-dataset', 'approve-image', 'approve-dataset', 'dismiss']),
  guildId: z.string(),
  datasetId: z.string(),
  /** The dataset's name when the action was taken (a removed dataset has no record left). */
  datasetName: z.string(),
  /** The image, for an action on one image. */
  no: z.number().int().positive().nullable(),
  /** The images, for `remove-images` (`/dataset remove` of images other members gave). */
  nos: z.array(z.number().int().positive()).max(1000).optional(),
  reason: z.string().max(MAX_REASON_CHARS).nullable(),
  /** What it did, in numbers: images removed, runs cancelled, runs withheld, reports closed. */
  effect: z.object({
    images: z.number().int().nonnegative().optional(),
    runsCancelled: z.number().int().nonnegative().optional(),
    runsWithheld: z.number().int().nonnegative().optional(),
    reportsClosed: z.number().int().nonnegative().optional(),
  }),
});
export type AuditEntry = z.infer<typeof AuditEntrySchema>;

/**
 * Something that arrived for review, noted for the moderators' next notice: a member's report, or
 * images that were rated (whether they are flagged is judged when the notice is written).
 */
const ArrivalSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('report'), target: z.string(), reason: z.string().max(MAX_REASON_CHARS) }),
  z.object({ kind: z.literal('rated'), datasetId: z.string(), nos: z.array(z.number().int().positive()).max(1000) }),
]);
export type Arrival = { kind: 'report'; target: ModerationTarget; reason: string } | { kind: 'rated'; datasetId: string; nos: number[] };

// Everything noted for a guild, taken at once: a second bot process finds it gone.
const TAKE_ARRIVED_LUA = `
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return items
`;

const WithheldSchema = z.object({ by: z.string(), reason: z.string().max(MAX_REASON_CHARS), at: z.number() });
export type Withholding = z.infer<typeof WithheldSchema>;

function parsed<T>(schema: z.ZodType<T>, json: string | null): T | null {
  if (json === null) return null;
  try {
    const result = schema.safeParse(JSON.parse(json));
    return result.success ? result.data : null;
  } catch {
    return null;
  }
}

// One report per member per target: the report and the guild's index of reported targets, together.
const REPORT_LUA = `
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
return redis.call('HLEN', KEYS[1])
`;

/**
 * Reports, moderators' approvals, withheld runs and the audit log, in Redis. Every value is
 * checked against its schema when read: a record of another shape reads as absent.
 */
export class ModerationStore {
  private readonly k: Keys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.k = keys(prefix);
  }

  /** Records a member's report; false when they already reported this target. */
  async report(guildId: string, target: ModerationTarget, report: Report): Promise<boolean> {
    const key = targetKey(target);
    const added = await this.redis.eval(
      REPORT_LUA,
      2,
      this.k.modReports(guildId, key),
      this.k.modReported(guildId),
      report.reporterId,
      JSON.stringify(ReportSchema.parse(report)),
      String(report.at),
      key,
    );
    return Number(added) > 0;
  }

  /** Reported targets, oldest report first. */
  async reportedTargets(guildId: string): Promise<ModerationTarget[]> {
    const all = await this.redis.zrange(this.k.modReported(guildId), '0', '-1');
    return all.map((t) => parseTargetKey(t)).filter((t): t is ModerationTarget => t !== null);
  }

  async reports(guildId: string, target: ModerationTarget): Promise<Report[]> {
    const all = await this.redis.hvals(this.k.modReports(guildId, targetKey(target)));
    return all
      .map((j) => parsed(ReportSchema, j))
      .filter((r): r is Report => r !== null)
      .sort((a, b) => a.at - b.at);
  }

  /** Closes the reports of the given targets; returns how many reports were closed. */
  async closeReports(guildId: string, targets: readonly ModerationTarget[]): Promise<number> {
    if (targets.length === 0) return 0;
    const names = targets.map(targetKey);
    const counts = await Promise.all(names.map((n) => this.redis.hlen(this.k.modReports(guildId, n))));
    await this.redis
      .multi()
      .del(...names.map((n) => this.k.modReports(guildId, n)))
      .zrem(this.k.modReported(guildId), ...names)
      .exec();
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Notes something new for the guild's moderators (their next notice lists it). */
  async noteArrival(guildId: string, arrival: Arrival): Promise<void> {
    const json =
      arrival.kind === 'report'
        ? { kind: arrival.kind, target: targetKey(arrival.target), reason: arrival.reason }
        : { kind: arrival.kind, datasetId: arrival.datasetId, nos: arrival.nos };
    await this.redis
      .multi()
      .rpush(this.k.modArrived(guildId), JSON.stringify(ArrivalSchema.parse(json)))
      .sadd(this.k.modArrivedGuilds(), guildId)
      .exec();
  }

  /** Guilds with something noted for their moderators. */
  async guildsWithArrivals(): Promise<string[]> {
    return this.redis.smembers(this.k.modArrivedGuilds());
  }

  /** Takes (and forgets) what was noted for a guild, oldest first. */
  async takeArrivals(guildId: string): Promise<Arrival[]> {
    const jsons = (await this.redis.eval(TAKE_ARRIVED_LUA, 2, this.k.modArrived(guildId), this.k.modArrivedGuilds(), guildId)) as string[];
    const out: Arrival[] = [];
    for (const json of jsons) {
      const note = parsed(ArrivalSchema, json);
      if (note?.kind === 'rated') out.push(note);
      else if (note?.kind === 'report') {
        const target = parseTargetKey(note.target);
        if (target) out.push({ kind: 'report', target, reason: note.reason });
      }
    }
    return out;
  }

  /** Whether a guild may have a moderation notice now; if so, the next waits `intervalMs`. */
  async claimNotice(guildId: string, intervalMs: number): Promise<boolean> {
    return (await this.redis.set(this.k.modNoticeGate(guildId), '1', 'PX', intervalMs, 'NX')) === 'OK';
  }

  /** Gives back a claimed notice that had nothing to say. */
  async releaseNotice(guildId: string): Promise<void> {
    await this.redis.del(this.k.modNoticeGate(guildId));
  }

  /** The rating each image of a dataset was kept at by a moderator. */
  async approvals(datasetId: string): Promise<Map<number, Rating>> {
    const all = await this.redis.hgetall(this.k.modApproved(datasetId));
    const out = new Map<number, Rating>();
    for (const [no, rating] of Object.entries(all)) {
      const r = RatingSchema.safeParse(rating);
      if (r.success) out.set(Number(no), r.data);
    }
    return out;
  }

  async approve(datasetId: string, images: ReadonlyMap<number, Rating>): Promise<void> {
    if (images.size === 0) return;
    await this.redis.hset(this.k.modApproved(datasetId), Object.fromEntries([...images].map(([no, r]) => [String(no), r])));
  }

  async forgetDataset(guildId: string, datasetId: string): Promise<void> {
    const targets = (await this.reportedTargets(guildId)).filter((t) => t.datasetId === datasetId);
    await this.closeReports(guildId, targets);
    await this.redis.del(this.k.modApproved(datasetId));
  }

  /** Withholds a run's files: fetches are refused with the reason, and so are links to `blobs`. */
  async withholdRun(runId: string, withholding: Withholding, blobs: readonly string[]): Promise<void> {
    const multi = this.redis.multi().set(this.k.runWithheld(runId), JSON.stringify(WithheldSchema.parse(withholding)));
    if (blobs.length > 0) multi.sadd(this.k.withheldBlobs(), ...blobs);
    await multi.exec();
  }

  async withheld(runId: string): Promise<Withholding | null> {
    return parsed(WithheldSchema, await this.redis.get(this.k.runWithheld(runId)));
  }

  async isBlobWithheld(blobId: string): Promise<boolean> {
    return (await this.redis.sismember(this.k.withheldBlobs(), blobId)) === 1;
  }

  /** Appends to the guild's audit log (never edited or trimmed by the bot). */
  async log(entry: AuditEntry): Promise<void> {
    await this.redis.lpush(this.k.modLog(entry.guildId), JSON.stringify(AuditEntrySchema.parse(entry)));
  }

  /** One page of the audit log, newest first, and how many entries it has in all. */
  async logPage(guildId: string, offset: number, limit: number): Promise<{ entries: AuditEntry[]; total: number }> {
    const [jsons, total] = await Promise.all([this.redis.lrange(this.k.modLog(guildId), offset, offset + limit - 1), this.redis.llen(this.k.modLog(guildId))]);
    return { entries: jsons.map((j) => parsed(AuditEntrySchema, j)).filter((e): e is AuditEntry => e !== null), total };
  }
}
