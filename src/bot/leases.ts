/**
 * Leases: how a remote worker holds a run. The bot takes the run from the BullMQ `training` queue
 * on the worker's behalf (BullMQ's manual processing: `Worker.getNextJob` with a token of ours,
 * `Job.extendLock` on each heartbeat, `moveToCompleted` / `moveToFailed` at the end) and records
 * the lease in Redis, so any bot process can renew or end it. A lease whose heartbeats stop puts
 * the run back at the head of the queue (`moveToWait`), where the next worker resumes it from the
 * last epoch state that was uploaded.
 *
 * In-cluster workers consume the same queue directly; both kinds coexist.
 */
import { randomBytes } from 'node:crypto';
import { Job, Queue, UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Logger } from '../core/logger.ts';
import { VRAM_PRESET_INFO } from '../core/vram-presets.ts';
import { bullPrefix, generationFiles, QueueName, type GeneratePayload, type TrainRunPayload, type WorkerInfo } from '../queues/contract.ts';
import { takeFitting } from '../queues/take-fitting.ts';
import { checkPayload } from '../queues/train-payload.ts';
import { keys, type Keys } from '../store/keys.ts';
import { RedisLocks } from '../store/redis-lock.ts';
import type { RemoteWorker, WorkerStore } from '../store/worker-store.ts';

const LeaseSchema = z.object({
  id: z.string(),
  workerId: z.string(),
  guildId: z.string(),
  runId: z.string(),
  jobId: z.string(),
  /** The BullMQ lock token the bot holds the job with. */
  lockToken: z.string(),
  /** Blob ids this lease may download: the run's images and its resume state. */
  blobs: z.array(z.string()),
  grantedAt: z.number(),
  expiresAt: z.number(),
  /** A training run, or a short image generation (`/lora try`, `/lora compare`). */
  kind: z.enum(['run', 'generate']).default('run'),
});
export type Lease = z.infer<typeof LeaseSchema>;

const ResumeFileSchema = z.object({
  /** A plain file name inside the state folder. */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/),
  blob: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().min(0),
});
export const ResumeStateSchema = z.object({ epoch: z.number().int().min(1), files: z.array(ResumeFileSchema).max(64) });
export type ResumeState = z.infer<typeof ResumeStateSchema>;

const RunProgressSchema = z.object({
  /** Epochs whose event the bot accepted from a remote worker. */
  reportedEpochs: z.array(z.number().int()),
  firstStartedAt: z.number().nullable(),
  resume: ResumeStateSchema.nullable(),
});
export type RemoteRunRecord = z.infer<typeof RunProgressSchema>;

export interface LeaseGrant {
  lease: Lease;
  payload: TrainRunPayload;
  record: RemoteRunRecord;
}

export interface GenerationGrant {
  lease: Lease;
  payload: GeneratePayload;
}

/** What a poll hands a remote worker: a generation (they go first) or a run. */
export type AnyGrant = ({ kind: 'run' } & LeaseGrant) | ({ kind: 'generate' } & GenerationGrant);

/** Whether a waiting generation fits a remote worker: its guild, the base model and FLUX's text encoders and autoencoder. */
export function generationFits(payload: GeneratePayload, worker: RemoteWorker, info: WorkerInfo | null): boolean {
  if (payload.guildId !== worker.guildId || info === null) return false;
  const files = new Set([...info.models.map((m) => m.file), ...(info.companions ?? []).map((c) => c.file)]);
  return generationFiles(payload).every((f) => files.has(f));
}

export interface LeaseManagerOptions {
  redis: Redis;
  /** A connection BullMQ may use for its own (blocking) commands. */
  queueConnection: Redis;
  prefix: string;
  leaseMs: number;
  /**
   * How often BullMQ's stall check runs here (at most 5 s is used). BullMQ lets one checker run
   * per interval across all workers, so a long one here would delay the in-cluster workers' own.
   */
  stalledMs: number;
  workers: WorkerStore;
  logger: Logger;
  /** Called when blobs stop being needed (a superseded resume state); the caller frees them. */
  onBlobsReleased?: (blobs: string[]) => Promise<void>;
  sweepIntervalMs?: number;
}

const EMPTY_RECORD: RemoteRunRecord = { reportedEpochs: [], firstStartedAt: null, resume: null };

/**
 * Whether a waiting run fits a remote worker: the worker's own guild, the base model, the text
 * encoders and autoencoder FLUX.1/Chroma need, and enough GPU memory for the run's memory preset
 * (a worker that could not read its GPU is trusted with it).
 */
export function runFits(payload: TrainRunPayload, worker: Pick<RemoteWorker, 'guildId'>, info: WorkerInfo | null): boolean {
  if (payload.guildId !== worker.guildId || !info) return false;
  if (!info.models.some((m) => m.file === payload.baseModel)) return false;
  const companions = payload.recipe.companions;
  if (companions) {
    const files = new Set((info.companions ?? []).map((c) => c.file));
    if ([companions.clip_l, companions.t5xxl, companions.ae].some((f) => f !== null && !files.has(f))) return false;
  }
  const preset = payload.recipe.memory.preset;
  if (preset !== null && info.gpu !== null && info.gpu.memoryMiB < VRAM_PRESET_INFO[preset].minMiB) return false;
  return true;
}

export class LeaseManager {
  private readonly queue: Queue<TrainRunPayload>;
  private readonly bull: Worker<TrainRunPayload>;
  private readonly genQueue: Queue<GeneratePayload>;
  private readonly genBull: Worker<GeneratePayload>;
  private readonly log: Logger;
  private readonly k: Keys;
  /** Taking does not wait: a worker that finds another take under way asks again on its next poll. */
  private readonly takeLocks: RedisLocks;
  private timer: NodeJS.Timeout | null = null;
  private sweeping: Promise<void> = Promise.resolve();

  constructor(private readonly opts: LeaseManagerOptions) {
    const prefix = bullPrefix(opts.prefix);
    this.queue = new Queue(QueueName.Training, { connection: opts.queueConnection, prefix });
    // No processor: jobs are taken by hand for remote workers (BullMQ "manual processing").
    this.bull = new Worker(QueueName.Training, null, {
      connection: opts.queueConnection,
      prefix,
      lockDuration: opts.leaseMs,
      stalledInterval: Math.min(5_000, opts.stalledMs),
      maxStalledCount: 10,
      name: 'lease-manager',
    });
    this.bull.on('error', (err) => this.log.warn({ err }, 'lease manager queue error'));
    this.genQueue = new Queue<GeneratePayload>(QueueName.Generate, { connection: opts.queueConnection, prefix });
    this.genBull = new Worker(QueueName.Generate, null, {
      connection: opts.queueConnection,
      prefix,
      lockDuration: opts.leaseMs,
      stalledInterval: Math.min(5_000, opts.stalledMs),
      maxStalledCount: 2,
      name: 'lease-manager',
    });
    this.genBull.on('error', (err) => this.log.warn({ err }, 'lease manager queue error'));
    this.log = opts.logger.child({ unit: 'leases' });
    this.k = keys(opts.prefix);
    this.takeLocks = new RedisLocks(opts.redis, opts.prefix, { ttlMs: 15_000, waitMs: 0, logger: this.log });
  }

  private key(id: string) {
    return this.k.lease(id);
  }
  private workerKey(workerId: string) {
    return this.k.workerLease(workerId);
  }
  private get expiryIndex() {
    return this.k.leaseExpiry();
  }
  private recordKey(runId: string) {
    return this.k.remoteRun(runId);
  }

  start(): void {
    // A bot that died holding leases: BullMQ's stall check hands their runs back once the locks lapse.
    void this.bull.startStalledCheckTimer().catch((err: unknown) => this.log.warn({ err }, 'stall check did not start'));
    void this.genBull.startStalledCheckTimer().catch((err: unknown) => this.log.warn({ err }, 'stall check did not start'));
    this.timer = setInterval(() => {
      this.sweeping = this.sweeping.then(() => this.sweep()).catch((err: unknown) => this.log.warn({ err }, 'lease sweep failed'));
    }, this.opts.sweepIntervalMs ?? 1000);
    this.timer.unref();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.sweeping;
    await this.bull.close(true);
    await this.queue.close();
    await this.genBull.close(true);
    await this.genQueue.close();
  }

  async get(id: string): Promise<Lease | null> {
    if (!/^[A-Za-z0-9_-]{16,64}$/.test(id)) return null;
    const json = await this.opts.redis.get(this.key(id));
    if (json === null) return null;
    const parsed = LeaseSchema.safeParse(JSON.parse(json));
    return parsed.success ? parsed.data : null;
  }

  async leaseOfWorker(workerId: string): Promise<Lease | null> {
    const id = await this.opts.redis.get(this.workerKey(workerId));
    return id === null ? null : this.get(id);
  }

  async record(runId: string): Promise<RemoteRunRecord> {
    const json = await this.opts.redis.get(this.recordKey(runId));
    if (json === null) return { ...EMPTY_RECORD };
    const parsed = RunProgressSchema.safeParse(JSON.parse(json));
    return parsed.success ? parsed.data : { ...EMPTY_RECORD };
  }

  private async saveRecord(runId: string, record: RemoteRunRecord): Promise<void> {
    await this.opts.redis.set(this.recordKey(runId), JSON.stringify(record), 'EX', 90 * 24 * 3600);
  }

  private async saveLease(lease: Lease): Promise<void> {
    const ttl = Math.max(60, Math.ceil((lease.expiresAt - Date.now()) / 1000) + 3600);
    await this.opts.redis
      .multi()
      .set(this.key(lease.id), JSON.stringify(lease), 'EX', ttl)
      .set(this.workerKey(lease.workerId), lease.id, 'EX', ttl)
      .zadd(this.expiryIndex, lease.expiresAt, lease.id)
      .exec();
  }

  private async dropLease(lease: Lease): Promise<void> {
    await this.opts.redis
      .multi()
      .del(this.key(lease.id))
      .zrem(this.expiryIndex, lease.id)
      .eval(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`, 1, this.workerKey(lease.workerId), lease.id)
      .exec();
  }

  /**
   * Leases the first waiting run that fits the worker, or returns null. A worker holds one lease at
   * a time: asking again while it holds one returns that lease (its last poll's answer was lost).
   */
  async take(worker: RemoteWorker, info: WorkerInfo | null): Promise<LeaseGrant | null> {
    const held = await this.leaseOfWorker(worker.id);
    if (held?.kind === 'generate') return null;
    if (held) {
      const job = await Job.fromId<TrainRunPayload>(this.queue, held.jobId);
      const checked = job ? checkPayload(job.data) : null;
      if (checked?.ok) return { lease: held, payload: checked.payload, record: await this.record(held.runId) };
      await this.dropLease(held);
    }
    const taken = await takeFitting<TrainRunPayload>({
      locks: this.takeLocks,
      queue: this.queue,
      consumer: this.bull,
      choose: (j) => {
        const checked = checkPayload(j.data);
        return checked.ok && runFits(checked.payload, worker, info);
      },
    });
    if (taken === null || taken === 'busy') return null;
    const { job, token: lockToken } = taken;
    if (!job.id) return null;
    const checked = checkPayload(job.data);
    if (!checked.ok) throw new Error('a chosen run has an invalid payload');
    const payload = checked.payload;
    const record = await this.record(payload.runId);
    const now = Date.now();
    const lease: Lease = {
      id: randomBytes(18).toString('base64url'),
      workerId: worker.id,
      guildId: worker.guildId,
      runId: payload.runId,
      jobId: job.id,
      lockToken,
      blobs: [...new Set([...Object.values(payload.images).map((i) => i.blob), ...(record.resume?.files.map((f) => f.blob) ?? [])])],
      grantedAt: now,
      expiresAt: now + this.opts.leaseMs,
      kind: 'run',
    };
    await this.saveLease(lease);
    this.log.info({ leaseId: lease.id, workerId: worker.id, runId: payload.runId, resumeFrom: record.resume?.epoch ?? null }, 'run leased to a remote worker');
    return { lease, payload, record };
  }

  /**
   * What a worker polling for work gets: the lease it holds, else a generation waiting for a model
   * it has (generations go ahead of waiting runs), else a run.
   */
  async takeAny(worker: RemoteWorker, info: WorkerInfo | null): Promise<AnyGrant | null> {
    const held = await this.leaseOfWorker(worker.id);
    if (held?.kind === 'generate') {
      const job = await Job.fromId<GeneratePayload>(this.genQueue, held.jobId);
      if (job?.data) return { kind: 'generate', lease: held, payload: job.data };
      await this.dropLease(held);
    } else if (!held) {
      const generation = await this.takeGeneration(worker, info);
      if (generation) return { kind: 'generate', ...generation };
    }
    const run = await this.take(worker, info);
    return run && { kind: 'run', ...run };
  }

  private async takeGeneration(worker: RemoteWorker, info: WorkerInfo | null): Promise<GenerationGrant | null> {
    const taken = await takeFitting<GeneratePayload>({
      locks: this.takeLocks,
      queue: this.genQueue,
      consumer: this.genBull,
      choose: (j) => generationFits(j.data, worker, info),
    });
    if (taken === null || taken === 'busy') return null;
    const { job, token: lockToken } = taken;
    if (!job.id) return null;
    const now = Date.now();
    const lease: Lease = {
      id: randomBytes(18).toString('base64url'),
      workerId: worker.id,
      guildId: worker.guildId,
      runId: job.data.runId,
      jobId: job.id,
      lockToken,
      blobs: [...new Set(job.data.cells.map((c) => c.lora))],
      grantedAt: now,
      expiresAt: now + this.opts.leaseMs,
      kind: 'generate',
    };
    await this.saveLease(lease);
    this.log.info({ leaseId: lease.id, workerId: worker.id, requestId: job.data.requestId }, 'generation leased to a remote worker');
    return { lease, payload: job.data };
  }

  /** The generation a generation lease holds (null: its job is gone). */
  async requestOf(lease: Lease): Promise<string | null> {
    if (lease.kind !== 'generate') return null;
    const job = await Job.fromId<GeneratePayload>(this.genQueue, lease.jobId);
    return job?.data?.requestId ?? null;
  }

  private queueOf(lease: Lease): Queue {
    return lease.kind === 'generate' ? this.genQueue : this.queue;
  }

  /** A heartbeat: extends the lease and the job's lock. False when the lease is gone. */
  async renew(lease: Lease): Promise<boolean> {
    const job = await Job.fromId(this.queueOf(lease), lease.jobId);
    if (!job) {
      await this.dropLease(lease);
      return false;
    }
    const extended = await job.extendLock(lease.lockToken, this.opts.leaseMs).catch(() => 0);
    if (!extended) {
      this.log.warn({ leaseId: lease.id, runId: lease.runId }, 'the run was no longer held for this lease');
      await this.dropLease(lease);
      return false;
    }
    await this.saveLease({ ...lease, expiresAt: Date.now() + this.opts.leaseMs });
    return true;
  }

  /** Records what a remote worker reported for the run (accepted epochs, first start, resume state). */
  async updateRecord(runId: string, change: (r: RemoteRunRecord) => RemoteRunRecord): Promise<RemoteRunRecord> {
    const before = await this.record(runId);
    const after = change(structuredClone(before));
    await this.saveRecord(runId, after);
    const kept = new Set(after.resume?.files.map((f) => f.blob) ?? []);
    const released = (before.resume?.files ?? []).map((f) => f.blob).filter((b) => !kept.has(b));
    if (released.length > 0) await this.opts.onBlobsReleased?.(released);
    return after;
  }

  /** The run ended on the worker: the job completes (finished, cancelled) or fails, and the lease ends. */
  async end(lease: Lease, outcome: { ok: true; result: unknown } | { ok: false; reason: string }): Promise<void> {
    const job = await Job.fromId(this.queueOf(lease), lease.jobId);
    try {
      if (job) {
        if (outcome.ok) await job.moveToCompleted(outcome.result, lease.lockToken, false);
        else await job.moveToFailed(new UnrecoverableError(outcome.reason), lease.lockToken, false);
      }
    } catch (err) {
      this.log.warn({ err, leaseId: lease.id, runId: lease.runId }, "could not end the run's job (its lock was lost)");
    }
    await this.dropLease(lease);
    if (lease.kind === 'generate') return;
    const record = await this.record(lease.runId);
    if (record.resume) await this.updateRecord(lease.runId, (r) => ({ ...r, resume: null }));
  }

  /** Gives the run back to the queue (worker shutdown, expired lease, revoked token). */
  async handBack(lease: Lease, why: string): Promise<void> {
    const job = await Job.fromId(this.queueOf(lease), lease.jobId);
    try {
      await job?.moveToWait(lease.lockToken);
    } catch (err) {
      // The lock lapsed first: BullMQ's stall check returns the run to the queue instead.
      this.log.debug({ err, leaseId: lease.id }, 'moveToWait refused; the stall check will hand the run back');
    }
    await this.dropLease(lease);
    this.log.info({ leaseId: lease.id, workerId: lease.workerId, runId: lease.runId, why }, 'run back in the queue');
  }

  /** Ends leases that lapsed, and those of workers whose token was revoked. */
  async sweep(now = Date.now()): Promise<void> {
    const expired = await this.opts.redis.zrangebyscore(this.expiryIndex, '-inf', String(now));
    const all = await this.opts.redis.zrange(this.expiryIndex, '0', '-1');
    for (const id of new Set([...expired, ...all])) {
      const lease = await this.get(id);
      if (!lease) {
        await this.opts.redis.zrem(this.expiryIndex, id);
        continue;
      }
      if (lease.expiresAt <= now) await this.handBack(lease, 'lease expired');
      else if (!(await this.opts.workers.get(lease.workerId))) await this.handBack(lease, 'worker token revoked');
    }
  }
}
