import type { Redis } from 'ioredis';
import { beforeEach, describe, expect, it } from 'vitest';
import { newId } from '../../src/store/dataset-store.ts';
import { ExpiringStore, type PendingPlan } from '../../src/store/expiring-store.ts';
import { keys } from '../../src/store/keys.ts';
import { redisForFile } from '../harness/redis-per-file.ts';

const server = redisForFile();
let redis: Redis;
let prefix: string;
let store: ExpiringStore;

beforeEach(() => {
  redis = server.redis;
  prefix = `t${newId(4)}`;
  store = new ExpiringStore(redis, prefix);
});

const plan: PendingPlan = {
  datasetId: 'ds1',
  request: { recipe: 'character', overrides: { epochs: 4, learningRate: 0.0002 }, model: 'sd15-base.safetensors' },
  createdBy: '100000000000000001',
};

describe('expiring values', () => {
  it('read back as written, under their own key, each kind with its lifetime', async () => {
    await store.plans.put('p1', plan);
    await store.pruneSuggestions.put('s1', { datasetId: 'ds1', concept: 'main', tags: ['1girl', 'solo'] });
    const file = { runId: 'r1', epoch: 3, steps: 120, winner: { epoch: 2, votes: 5 } };
    await store.deliveredFiles.put(file, { blob: 'a'.repeat(64), bytes: 1234 });

    expect(await store.plans.get('p1')).toEqual(plan);
    expect(await store.pruneSuggestions.get('s1')).toEqual({ datasetId: 'ds1', concept: 'main', tags: ['1girl', 'solo'] });
    expect(await store.deliveredFiles.get(file)).toEqual({ blob: 'a'.repeat(64), bytes: 1234 });
    // Another vote result is another file.
    expect(await store.deliveredFiles.get({ ...file, winner: { epoch: 2, votes: 6 } })).toBeNull();
    expect(await store.deliveredFiles.get({ ...file, winner: null })).toBeNull();
    expect(await store.deliveredFiles.get({ ...file, steps: 60 })).toBeNull();

    const k = keys(prefix);
    expect(await redis.ttl(k.pendingPlan('p1'))).toBeGreaterThan(3500);
    expect(await redis.ttl(k.pendingPlan('p1'))).toBeLessThanOrEqual(3600);
    expect(await redis.ttl(k.pruneSuggestion('s1'))).toBeGreaterThan(24 * 3600 - 100);
    expect(await redis.ttl(k.pruneSuggestion('s1'))).toBeLessThanOrEqual(24 * 3600);
    expect(await redis.ttl(k.deliveredFile('r1', 3, 120, '2.5'))).toBeGreaterThan(30 * 24 * 3600 - 100);
  });

  it('are gone once deleted, and were never there under another id or prefix', async () => {
    await store.plans.put('p1', plan);
    expect(await store.plans.get('p2')).toBeNull();
    expect(await new ExpiringStore(redis, `${prefix}x`).plans.get('p1')).toBeNull();
    await store.plans.delete('p1');
    expect(await store.plans.get('p1')).toBeNull();
  });

  it('read a value of another shape (another version, a hand edit) as gone', async () => {
    const k = keys(prefix);
    await redis.set(k.pendingPlan('bad-json'), '{"datasetId":');
    await redis.set(k.pendingPlan('bad-shape'), JSON.stringify({ ...plan, createdBy: 7 }));
    await redis.set(k.pendingPlan('bad-override'), JSON.stringify({ ...plan, request: { ...plan.request, overrides: { steps: 10 } } }));
    await redis.set(k.pruneSuggestion('bad-tags'), JSON.stringify({ datasetId: 'ds1', concept: 'main', tags: 'solo' }));
    expect(await store.plans.get('bad-json')).toBeNull();
    expect(await store.plans.get('bad-shape')).toBeNull();
    expect(await store.plans.get('bad-override')).toBeNull();
    expect(await store.pruneSuggestions.get('bad-tags')).toBeNull();
  });

  it('refuse to write a value of the wrong shape', async () => {
    await expect(store.deliveredFiles.put({ runId: 'r1', epoch: 1, steps: 40, winner: null }, { blob: 'x', bytes: -1 })).rejects.toThrow();
    expect(await redis.keys(`${prefix}:*`)).toEqual([]);
  });
});
