/**
 * The training workers' heartbeats, as the bot reads them (worker/worker-registry.ts writes them:
 * one key per worker under `sharedKeys.worker`, expiring after three missed beats).
 */
import type { Redis } from 'ioredis';
import { sharedKeys, type WorkerInfo } from '../queues/contract.ts';

/** The live training workers (those that beat within three intervals), sorted by id. */
export async function listWorkers(redis: Redis, prefix: string): Promise<WorkerInfo[]> {
  const keys = new Set<string>();
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', sharedKeys.workerPattern(prefix), 'COUNT', 200);
    cursor = next;
    for (const key of batch) keys.add(key);
  } while (cursor !== '0');
  if (keys.size === 0) return [];
  const values = await redis.mget(...keys);
  const workers: WorkerInfo[] = [];
  for (const value of values) {
    if (value === null) continue;
    try {
      const info = JSON.parse(value) as WorkerInfo;
      if (typeof info.id === 'string' && Array.isArray(info.models)) workers.push(info);
    } catch {
      // Not a heartbeat we wrote: skip it.
    }
  }
  return workers.sort((a, b) => a.id.localeCompare(b.id));
}
