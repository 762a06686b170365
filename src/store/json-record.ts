import type { Redis } from 'ioredis';

// Compare-and-set of one JSON record: writes only if nobody changed it since it was read.
export const CAS_LUA = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`;

const MAX_ATTEMPTS = 500;

/**
 * Read-modify-write of a JSON record that stays correct with several writers, in this process or
 * others: `change` gets the current value and is applied again to a fresher one whenever another
 * write landed in between (so it must be a pure function of its argument). Returns null when the
 * record does not exist, the current value when `change` returns null (nothing to write), else
 * the value written.
 */
export async function updateJsonRecord<T>(redis: Redis, key: string, change: (current: T) => T | null): Promise<T | null> {
  for (let attempt = 1; ; attempt++) {
    const json = await redis.get(key);
    if (json === null) return null;
    const current = JSON.parse(json) as T;
    const next = change(current);
    if (next === null) return current;
    if ((await redis.eval(CAS_LUA, 1, key, json, JSON.stringify(next))) === 1) return next;
    if (attempt >= MAX_ATTEMPTS) throw new Error(`record ${key} kept changing; gave up after ${attempt} attempts`);
    // Someone wrote in between: back off a little (jittered) and apply the change to their result.
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, attempt * 2)));
  }
}
