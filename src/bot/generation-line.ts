/**
 * A waiting image's acknowledgement kept up to date until the image is posted: its place in line as
 * the requests ahead are served, "drawing now" once a GPU took it, then where the result went.
 *
 * What is needed to edit it (the application id and the interaction's token) is kept in Redis with
 * the request, so any bot process (one started after a restart too) goes on editing it, until
 * Discord's 15 minutes for editing an interaction's response are up. One pass every interval looks
 * at every followed request, grouped by server, and edits only what changed, at most once per
 * interval per request. The token is never logged.
 */
import { DiscordAPIError, InteractionWebhook, type Client } from 'discord.js';
import type { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger.ts';
import { generationFiles, type GeneratePayload } from '../queues/contract.ts';
import { keys, type Keys } from '../store/keys.ts';
import { RedisLocks } from '../store/redis-lock.ts';
import type { WorkerStore } from '../store/worker-store.ts';
import { generateJobId, getRequest, gpusFor, lineText, postedResult, waitingInLine, type GenerationRequest, type LineState } from './generation.ts';
import { workersForGuild, type WorkerView } from './workers.ts';

/** Discord's 15 minutes for editing an interaction's response, less a margin for a slow edit. */
export const ACK_EDITABLE_MS = 14 * 60_000;

/** Where a request was acknowledged, and what the acknowledgement shows now. */
interface Acknowledgement {
  appId: string;
  token: string;
  /** Until when it may be edited, ms since the epoch. */
  until: number;
  shown: string;
}

export interface GenerationLineDeps {
  redis: Redis;
  prefix: string;
  queue: Queue<GeneratePayload>;
  workers: WorkerStore;
  client: Client;
  logger: Logger;
  /** The pass's interval, and the least time between two edits of one acknowledgement. */
  intervalMs: number;
}

export class GenerationLine {
  private readonly locks: RedisLocks;
  private readonly k: Keys;
  private timer: NodeJS.Timeout | null = null;
  private passing: Promise<void> | null = null;

  constructor(private readonly deps: GenerationLineDeps) {
    this.locks = new RedisLocks(deps.redis, deps.prefix, { ttlMs: 15_000, waitMs: 20_000, logger: deps.logger });
    this.k = keys(deps.prefix);
  }

  /**
   * Follows a request whose acknowledgement shows `shown`, sent with the interaction's token. A
   * result posted meanwhile is shown at once.
   */
  async follow(request: GenerationRequest, interaction: { applicationId: string; token: string; createdTimestamp: number }, shown: string): Promise<void> {
    const { redis, intervalMs } = this.deps;
    const ack: Acknowledgement = { appId: interaction.applicationId, token: interaction.token, until: interaction.createdTimestamp + ACK_EDITABLE_MS, shown };
    if (ack.until <= Date.now()) return;
    try {
      await redis
        .multi()
        .set(this.k.generationAck(request.id), JSON.stringify(ack), 'PXAT', ack.until)
        .set(this.k.generationAckEdited(request.id), '1', 'PX', intervalMs)
        .zadd(this.k.generationAcks(), ack.until, request.id)
        .exec();
      if ((await postedResult(this.deps, request.id)) !== null) await this.posted(request.id);
    } catch (err) {
      // The member was answered; only the updates are lost.
      this.deps.logger.warn({ err, requestId: request.id }, 'could not follow a generation’s place in line');
    }
  }

  /** The request's result was posted: its acknowledgement says where, and is no longer followed. */
  async posted(requestId: string): Promise<void> {
    try {
      await this.locks.run(`gen-ack:${requestId}`, async () => {
        const [ack, request, posted] = await Promise.all([this.ack(requestId), getRequest(this.deps, requestId), postedResult(this.deps, requestId)]);
        if (!ack || !request || !posted) return;
        const text = lineText(request, { kind: 'posted', ...posted });
        if (text !== ack.shown) await this.edit(requestId, ack, text);
        await this.unfollow(requestId);
      });
    } catch (err) {
      this.deps.logger.warn({ err, requestId }, 'could not show where an image was posted');
    }
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      if (this.passing) return;
      this.passing = this.pass()
        .catch((err: unknown) => this.deps.logger.warn({ err }, 'could not update the places in line'))
        .finally(() => {
          this.passing = null;
        });
    }, this.deps.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.passing;
  }

  /** One look at every followed request: each acknowledgement whose text changed is edited. */
  async pass(): Promise<void> {
    const { redis, prefix, queue } = this.deps;
    await redis.zremrangebyscore(this.k.generationAcks(), '-inf', String(Date.now()));
    const ids = await redis.zrangebyscore(this.k.generationAcks(), '-inf', '+inf');
    if (ids.length === 0) return;
    const [waiting, active] = await Promise.all([waitingInLine(queue), queue.getActive(0, 499)]);
    const drawing = new Set(active.map((j) => j.id));
    const byGuild = new Map<string, GenerationRequest[]>();
    for (const id of ids) {
      const request = await getRequest(this.deps, id);
      if (!request) {
        await this.unfollow(id);
        continue;
      }
      byGuild.set(request.guildId, [...(byGuild.get(request.guildId) ?? []), request]);
    }
    for (const [guildId, requests] of byGuild) {
      let views: WorkerView[] | null = null;
      for (const request of requests) {
        const state = await this.stateOf(request, waiting, drawing, async () => {
          views ??= await workersForGuild({ redis, prefix, workerStore: this.deps.workers }, guildId);
          return views;
        });
        if (state === 'posted') await this.posted(request.id);
        else if (state) await this.show(request, state);
      }
    }
  }

  private async stateOf(
    request: GenerationRequest,
    waiting: Job<GeneratePayload>[],
    drawing: Set<string | undefined>,
    views: () => Promise<WorkerView[]>,
  ): Promise<LineState | 'posted' | null> {
    if ((await postedResult(this.deps, request.id)) !== null) return 'posted';
    const jobId = generateJobId(request.id);
    if (drawing.has(jobId)) return { kind: 'drawing' };
    const at = waiting.findIndex((j) => j.id === jobId);
    // Neither waiting nor drawing: drawn, and about to be posted.
    if (at < 0) return null;
    const { busyWith } = gpusFor(await views(), generationFiles(waiting[at]!.data));
    return { kind: 'waiting', position: at + 1, waitingForRun: busyWith };
  }

  /** Edits the acknowledgement to the state, when its text changed and the last edit is an interval old. */
  private async show(request: GenerationRequest, state: LineState): Promise<void> {
    const { redis, intervalMs } = this.deps;
    const text = lineText(request, state);
    const before = await this.ack(request.id);
    if (!before || before.shown === text) return;
    if ((await redis.set(this.k.generationAckEdited(request.id), '1', 'PX', intervalMs, 'NX')) === null) return;
    await this.locks.run(`gen-ack:${request.id}`, async () => {
      // The result may have been posted meanwhile: that edit is the last.
      const ack = await this.ack(request.id);
      if (!ack || (await postedResult(this.deps, request.id)) !== null) return;
      if (await this.edit(request.id, ack, text)) {
        await redis.set(this.k.generationAck(request.id), JSON.stringify({ ...ack, shown: text }), 'PXAT', ack.until);
      }
    });
  }

  /** Whether the edit went through; an acknowledgement Discord no longer lets edit is no longer followed. */
  private async edit(requestId: string, ack: Acknowledgement, content: string): Promise<boolean> {
    try {
      await new InteractionWebhook(this.deps.client as Client<true>, ack.appId, ack.token).editMessage('@original', { content });
      return true;
    } catch (err) {
      // Only the code and status: the error's URL holds the interaction's token.
      const about = err instanceof DiscordAPIError ? { code: err.code, status: err.status } : { message: err instanceof Error ? err.name : 'unknown' };
      if (err instanceof DiscordAPIError && (err.status === 401 || err.status === 404)) {
        this.deps.logger.info({ requestId, ...about }, 'an acknowledgement can no longer be edited');
        await this.unfollow(requestId);
      } else {
        this.deps.logger.warn({ requestId, ...about }, 'could not edit an acknowledgement');
      }
      return false;
    }
  }

  private async ack(requestId: string): Promise<Acknowledgement | null> {
    const json = await this.deps.redis.get(this.k.generationAck(requestId));
    return json ? (JSON.parse(json) as Acknowledgement) : null;
  }

  private async unfollow(requestId: string): Promise<void> {
    const { redis } = this.deps;
    await redis.multi().del(this.k.generationAck(requestId)).zrem(this.k.generationAcks(), requestId).exec();
  }
}
