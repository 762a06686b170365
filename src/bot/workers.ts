/**
 * The training workers as members see them: the GPUs lent to a guild (their identities in the
 * WorkerStore, whether or not they are online) and the in-cluster workers that serve every guild,
 * each with its last heartbeat. Used by /worker list, /train plan and the run messages.
 */
import type { Redis } from 'ioredis';
import { familyLabel, type BaseFamily } from '../core/model-family.ts';
import { sharedKeys, workersServing, type WorkerInfo } from '../queues/contract.ts';
import type { RemoteWorker, WorkerStore } from '../store/worker-store.ts';
import { listWorkers } from '../store/worker-heartbeats.ts';

export interface WorkerDirectoryDeps {
  redis: Redis;
  prefix: string;
  workerStore: WorkerStore;
}

export interface WorkerView {
  /** The heartbeat id (a lent GPU's WorkerStore id). */
  id: string;
  online: boolean;
  /** The live heartbeat, or the last one the bot saw (for a lent GPU that is offline), or null. */
  info: WorkerInfo | null;
  /** Set for a GPU a member lends to this guild. */
  lent: RemoteWorker | null;
}

/** How long the last heartbeat of a lent GPU is remembered (for its models while it is offline). */
const SEEN_TTL_SECONDS = 30 * 24 * 3600;

const seenKey = (prefix: string, id: string) => `${prefix}:rworker-seen:${id}`;

/**
 * Every worker that may train for this guild: the GPUs lent to it (online or not) and the live
 * in-cluster workers. Another guild's GPU is never among them. Lent GPUs first, by name.
 */
export async function workersForGuild(deps: WorkerDirectoryDeps, guildId: string): Promise<WorkerView[]> {
  const [live, lent] = await Promise.all([listWorkers(deps.redis, deps.prefix), deps.workerStore.listForGuild(guildId)]);
  const serving = workersServing(live, guildId);
  const liveById = new Map(serving.map((w) => [w.id, w]));
  const views: WorkerView[] = [];
  const remember = deps.redis.multi();
  let remembered = 0;
  for (const identity of [...lent].sort((a, b) => a.name.localeCompare(b.name))) {
    const info = liveById.get(identity.id);
    if (info?.remote?.guildId === guildId) {
      remember.set(seenKey(deps.prefix, identity.id), JSON.stringify(info), 'EX', SEEN_TTL_SECONDS);
      remembered++;
      views.push({ id: identity.id, online: true, info, lent: identity });
    } else {
      views.push({ id: identity.id, online: false, info: await lastSeen(deps, identity.id), lent: identity });
    }
  }
  if (remembered > 0) await remember.exec();
  // A heartbeat of a lent GPU whose identity is gone (just removed) is not shown: its lease is ending.
  for (const info of serving) if (info.remote === undefined) views.push({ id: info.id, online: true, info, lent: null });
  return views;
}

async function lastSeen(deps: WorkerDirectoryDeps, id: string): Promise<WorkerInfo | null> {
  const json = await deps.redis.get(seenKey(deps.prefix, id));
  if (json === null) return null;
  try {
    const info = JSON.parse(json) as WorkerInfo;
    return typeof info.id === 'string' && Array.isArray(info.models) ? info : null;
  } catch {
    return null;
  }
}

/** Forgets what was remembered about a lent GPU (after `/worker remove`). */
export async function forgetWorker(deps: WorkerDirectoryDeps, id: string): Promise<void> {
  await deps.redis.del(seenKey(deps.prefix, id));
}

/** "NVIDIA GeForce RTX 4090" → "RTX 4090". */
export function shortGpuName(name: string): string {
  const short = name
    .replace(/^NVIDIA\s+/i, '')
    .replace(/^GeForce\s+/i, '')
    .trim();
  return short || name;
}

export function gpuText(gpu: WorkerInfo['gpu'] | undefined): string {
  if (!gpu) return 'GPU';
  return shortGpuName(gpu.name);
}

/** Who trains, for run messages: "<@owner>'s RTX 4090" for a lent GPU, "`gpu-1` (RTX 4090)" otherwise. */
export function trainerLabel(id: string, info: WorkerInfo | null, lent: Pick<RemoteWorker, 'ownerId'> | null): string {
  const owner = lent?.ownerId ?? info?.remote?.ownerId;
  if (owner) return `<@${owner}>'s ${gpuText(info?.gpu)}`;
  return info?.gpu ? `\`${id}\` (${gpuText(info.gpu)})` : `\`${id}\``;
}

/** The label of the worker with this id, from its heartbeat or its identity; for the run reporter. */
export async function labelOfWorker(deps: WorkerDirectoryDeps, id: string): Promise<string> {
  let info: WorkerInfo | null = null;
  const json = await deps.redis.get(sharedKeys.worker(deps.prefix, id)).catch(() => null);
  if (json !== null) {
    try {
      info = JSON.parse(json) as WorkerInfo;
    } catch {
      info = null;
    }
  }
  const lent = info?.remote ? null : await deps.workerStore.get(id);
  if (!info && lent) info = await lastSeen(deps, id);
  return trainerLabel(id, info, lent);
}

export function familyText(base: BaseFamily | null): string {
  return base ? familyLabel(base) : 'family unknown';
}

export function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

export function mib(value: number): string {
  return value >= 1024 ? `${Math.round(value / 1024)} GiB` : `${Math.round(value)} MiB`;
}
