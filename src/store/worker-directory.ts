import type { Redis } from 'ioredis';
import { sharedKeys, type WorkerInfo } from '../queues/contract.ts';

/** The training workers whose heartbeat has not expired. */
export async function liveWorkers(redis: Redis, prefix: string): Promise<WorkerInfo[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', sharedKeys.workerPattern(prefix), 'COUNT', '100');
    cursor = next;
    keys.push(...found);
  } while (cursor !== '0');
  if (keys.length === 0) return [];
  const jsons = await redis.mget(keys);
  return jsons
    .filter((j): j is string => j !== null)
    .map((j) => JSON.parse(j) as WorkerInfo)
    .sort((a, b) => a.id.localeCompare(b.id));
}
