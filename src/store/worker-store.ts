/**
 * Remote training workers: the GPUs members lend to a guild. Each has an identity created with
 * `/worker add`, a token shown once, and only the token's SHA-256 kept at rest. A token has the
 * shape `lgw_<workerId>_<secret>`: the id finds the record, and the stored hash is compared in
 * constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import { z } from 'zod';

export const WORKER_NAME = /^[\p{L}\p{N}][\p{L}\p{N} ._-]{0,31}$/u;
const WORKER_ID = /^w[a-z0-9]{10}$/;
const TOKEN = /^lgw_(w[a-z0-9]{10})_([A-Za-z0-9_-]{43})$/;

const RemoteWorkerSchema = z.object({
  id: z.string().regex(WORKER_ID),
  guildId: z.string().min(1),
  name: z.string().min(1).max(32),
  /** The member who lends the GPU (who added it). */
  ownerId: z.string().min(1),
  tokenSha256: z.string().regex(/^[0-9a-f]{64}$/),
  createdAt: z.number().int(),
});
export type RemoteWorker = z.infer<typeof RemoteWorkerSchema>;

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

/** The id inside a well-formed token, or null. Never logs or returns the secret part. */
function workerIdOfToken(token: string): string | null {
  return TOKEN.exec(token)?.[1] ?? null;
}

export class WorkerStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(id: string) {
    return `${this.prefix}:rworker:${id}`;
  }
  private guildIndex(guildId: string) {
    return `${this.prefix}:guild:${guildId}:rworkers`;
  }

  /** Creates a worker identity; returns it with its token (the only time the token exists in clear). */
  async add(input: { guildId: string; name: string; ownerId: string }): Promise<{ worker: RemoteWorker; token: string }> {
    const id = `w${randomBytes(8).readBigUInt64BE().toString(36).padStart(10, '0').slice(-10)}`;
    const token = `lgw_${id}_${randomBytes(32).toString('base64url')}`;
    const worker: RemoteWorker = { id, guildId: input.guildId, name: input.name, ownerId: input.ownerId, tokenSha256: sha256(token), createdAt: Date.now() };
    const ok = await this.redis.set(this.key(id), JSON.stringify(worker), 'NX');
    if (ok !== 'OK') throw new Error('worker id collision');
    await this.redis.zadd(this.guildIndex(input.guildId), worker.createdAt, id);
    return { worker, token };
  }

  async get(id: string): Promise<RemoteWorker | null> {
    if (!WORKER_ID.test(id)) return null;
    const json = await this.redis.get(this.key(id));
    if (json === null) return null;
    const parsed = RemoteWorkerSchema.safeParse(JSON.parse(json));
    return parsed.success ? parsed.data : null;
  }

  /** The worker a token belongs to, or null (unknown, revoked or wrong secret). Constant-time compare. */
  async authenticate(token: string): Promise<RemoteWorker | null> {
    const id = workerIdOfToken(token);
    if (id === null) return null;
    const worker = await this.get(id);
    if (!worker) return null;
    const expected = Buffer.from(worker.tokenSha256, 'hex');
    const actual = Buffer.from(sha256(token), 'hex');
    return timingSafeEqual(expected, actual) ? worker : null;
  }

  async listForGuild(guildId: string): Promise<RemoteWorker[]> {
    const ids = await this.redis.zrange(this.guildIndex(guildId), '0', '-1');
    const workers = await Promise.all(ids.map((id) => this.get(id)));
    return workers.filter((w): w is RemoteWorker => w !== null);
  }

  /** Finds a guild's worker by id or (case-insensitive) name. */
  async find(guildId: string, idOrName: string): Promise<RemoteWorker | null> {
    const wanted = idOrName.trim().toLowerCase();
    return (await this.listForGuild(guildId)).find((w) => w.id === wanted || w.name.toLowerCase() === wanted) ?? null;
  }

  /** Revokes a worker's token at once (the record is deleted). */
  async remove(worker: RemoteWorker): Promise<void> {
    await this.redis.multi().del(this.key(worker.id)).zrem(this.guildIndex(worker.guildId), worker.id).exec();
  }
}
