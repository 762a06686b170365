import type { Redis } from 'ioredis';
import { z } from 'zod';
import { RunOverridesSchema } from '../core/recipes.ts';
import { keys, type Keys } from './keys.ts';

/** A `/train plan` waiting for its Start button. */
const PendingPlanSchema = z.object({
  datasetId: z.string(),
  request: z.object({ recipe: z.string(), overrides: RunOverridesSchema, model: z.string().nullable() }),
  createdBy: z.string(),
});
export type PendingPlan = z.infer<typeof PendingPlanSchema>;

/** Tags offered for pruning, waiting for the "Prune these" button. */
const PruneSuggestionSchema = z.object({ datasetId: z.string(), concept: z.string(), tags: z.array(z.string()) });
export type PruneSuggestion = z.infer<typeof PruneSuggestionSchema>;

/** A file of an upload as Discord gave it (its link stays valid far longer than an upload is held). */
const FileRefSchema = z.object({ name: z.string().max(300), url: z.string().url(), size: z.number().int().nonnegative() });

/**
 * An upload that asked a member for their first attestation: its attachments' details, held until
 * they confirm (then taken in as sent), or for `HELD_UPLOAD_MINUTES`.
 */
const HeldUploadSchema = z.object({
  datasetId: z.string(),
  concept: z.string(),
  contributor: z.object({ id: z.string(), name: z.string() }),
  /** Where the upload was made: the report's channel policy, and the thread a posted message is in. */
  channelId: z.string(),
  /** The message the images were posted in (thread intake); null for `/dataset add`. */
  sourceMessageId: z.string().nullable(),
  files: z.array(FileRefSchema).max(10),
  zip: FileRefSchema.nullable(),
});
export type HeldUpload = z.infer<typeof HeldUploadSchema>;
export const HELD_UPLOAD_MINUTES = 15;

/** A delivered LoRA file (the trainer's output with our metadata), kept in the blob store. */
const DeliveredFileSchema = z.object({ blob: z.string(), bytes: z.number().int().nonnegative() });
export type DeliveredFile = z.infer<typeof DeliveredFileSchema>;

/** Which delivered file: a run's epoch with its step count, as of one vote result (both are in its metadata). */
export interface DeliveredFileId {
  runId: string;
  epoch: number;
  steps: number;
  winner: { epoch: number; votes: number } | null;
}

/** One kind of value: where it lives, how long, and its shape. */
export interface ExpiringSlot<Id, T> {
  put(id: Id, value: T): Promise<void>;
  /** The value, or null when it expired, never existed, or no longer has the expected shape. */
  get(id: Id): Promise<T | null>;
  /** Like `get`, and removes it in the same step: of two callers, one gets it. */
  take(id: Id): Promise<T | null>;
  delete(id: Id): Promise<void>;
}

/**
 * Values that matter for a while and then go: plans waiting for Start, prune suggestions, the
 * cache of delivered files. Each is checked against its schema when read, so a value written by
 * another version of the bot reads as gone rather than as something it is not.
 */
export class ExpiringStore {
  private readonly k: Keys;
  readonly plans: ExpiringSlot<string, PendingPlan>;
  readonly pruneSuggestions: ExpiringSlot<string, PruneSuggestion>;
  readonly deliveredFiles: ExpiringSlot<DeliveredFileId, DeliveredFile>;
  readonly heldUploads: ExpiringSlot<{ guildId: string; userId: string }, HeldUpload>;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.k = keys(prefix);
    this.plans = this.slot(PendingPlanSchema, 3600, (id: string) => this.k.pendingPlan(id));
    this.pruneSuggestions = this.slot(PruneSuggestionSchema, 24 * 3600, (id: string) => this.k.pruneSuggestion(id));
    this.heldUploads = this.slot(HeldUploadSchema, HELD_UPLOAD_MINUTES * 60, (id: { guildId: string; userId: string }) =>
      this.k.heldUpload(id.guildId, id.userId),
    );
    this.deliveredFiles = this.slot(DeliveredFileSchema, 30 * 24 * 3600, (id: DeliveredFileId) =>
      this.k.deliveredFile(id.runId, id.epoch, id.steps, id.winner ? `${id.winner.epoch}.${id.winner.votes}` : 'none'),
    );
  }

  /** The blobs of every delivered file of a run still cached (a withheld run's links to them are refused). */
  async deliveredBlobsOf(runId: string): Promise<string[]> {
    const blobs = new Set<string>();
    let cursor = '0';
    do {
      const [next, found] = await this.redis.scan(cursor, 'MATCH', this.k.deliveredFilePattern(runId), 'COUNT', 200);
      cursor = next;
      if (found.length === 0) continue;
      for (const json of await this.redis.mget(found)) {
        const file = json === null ? null : DeliveredFileSchema.safeParse(JSON.parse(json));
        if (file?.success) blobs.add(file.data.blob);
      }
    } while (cursor !== '0');
    return [...blobs];
  }

  private slot<Id, T>(schema: z.ZodType<T>, ttlSeconds: number, key: (id: Id) => string): ExpiringSlot<Id, T> {
    const redis = this.redis;
    return {
      async put(id, value) {
        await redis.set(key(id), JSON.stringify(schema.parse(value)), 'EX', ttlSeconds);
      },
      async get(id) {
        return parse(await redis.get(key(id)));
      },
      async take(id) {
        return parse(await redis.getdel(key(id)));
      },
      async delete(id) {
        await redis.del(key(id));
      },
    };
    function parse(json: string | null): T | null {
      if (json === null) return null;
      let raw: unknown;
      try {
        raw = JSON.parse(json);
      } catch {
        return null;
      }
      const parsed = schema.safeParse(raw);
      return parsed.success ? parsed.data : null;
    }
  }
}
