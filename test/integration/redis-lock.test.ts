/**
 * Locks and record updates shared by several processes, against a real Redis. Each "process" is
 * its own RedisLocks/RunStore on its own connection, as two bot processes would have.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LockTimeoutError } from '../../src/core/limiter.ts';
import { newId } from '../../src/store/dataset-store.ts';
import { keys } from '../../src/store/keys.ts';
import { EventClaims } from '../../src/store/event-claims.ts';
import { RedisLocks } from '../../src/store/redis-lock.ts';
import { RunStore, type Run } from '../../src/store/run-store.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

let server: RedisHandle;
const connections: Redis[] = [];

function connect(): Redis {
  const redis = new Redis(server.url);
  connections.push(redis);
  return redis;
}

beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  for (const c of connections) c.disconnect();
  await server.stop();
});

const tick = (ms = 1) => new Promise((r) => setTimeout(r, ms));

describe('RedisLocks', () => {
  it('lets one holder at a time in, across processes, so read-modify-write loses nothing', async () => {
    const prefix = `t${newId(4)}`;
    const redis = connect();
    const processes = [new RedisLocks(connect(), prefix), new RedisLocks(connect(), prefix), new RedisLocks(connect(), prefix)];
    let inside = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        processes[i % 3]!.run('counter', async () => {
          inside += 1;
          most = Math.max(most, inside);
          const n = Number((await redis.get(`${prefix}:n`)) ?? 0);
          await tick();
          await redis.set(`${prefix}:n`, String(n + 1));
          inside -= 1;
        }),
      ),
    );
    expect(most).toBe(1);
    expect(await redis.get(`${prefix}:n`)).toBe('60');
    expect(await redis.exists(keys(prefix).lock('counter'))).toBe(0);
  });

  it('keeps different names apart', async () => {
    const prefix = `t${newId(4)}`;
    const a = new RedisLocks(connect(), prefix);
    const b = new RedisLocks(connect(), prefix);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const held = a.run('one', () => gate);
    await b.run('two', () => Promise.resolve());
    release();
    await held;
  });

  it('renews a lock while its holder works longer than the TTL', async () => {
    const prefix = `t${newId(4)}`;
    const a = new RedisLocks(connect(), prefix, { ttlMs: 400 });
    const b = new RedisLocks(connect(), prefix, { ttlMs: 400 });
    const order: string[] = [];
    let entered!: () => void;
    const aInside = new Promise<void>((r) => (entered = r));
    const first = a.run('long', async (lost) => {
      entered();
      order.push('a+');
      await tick(1500);
      order.push(lost.aborted ? 'a lost' : 'a-');
    });
    await aInside;
    await b.run('long', () => {
      order.push('b');
      return Promise.resolve();
    });
    await first;
    expect(order).toEqual(['a+', 'a-', 'b']);
  });

  it('is taken over once a crashed holder’s TTL runs out', async () => {
    const prefix = `t${newId(4)}`;
    const redis = connect();
    // A holder that died without releasing: its token, its TTL, nobody renewing.
    await redis.set(keys(prefix).lock('orphan'), 'dead-process-token', 'PX', 300);
    const locks = new RedisLocks(connect(), prefix);
    await expect(locks.run('orphan', () => Promise.resolve('taken'))).resolves.toBe('taken');
    expect(await redis.exists(keys(prefix).lock('orphan'))).toBe(0);
  });

  it('tells a holder it lost the lock, and never releases the next holder’s lock', async () => {
    const prefix = `t${newId(4)}`;
    const redis = connect();
    const key = keys(prefix).lock('stolen');
    const a = new RedisLocks(connect(), prefix, { ttlMs: 120 });
    const seen = await a.run('stolen', async (lost) => {
      // As if our TTL ran out during a stall and another process took the lock.
      await redis.set(key, 'other-process-token');
      while (!lost.aborted) await tick(10);
      return String((lost.reason as Error).message);
    });
    expect(seen).toMatch(/lost/);
    expect(await redis.get(key)).toBe('other-process-token');
  });

  it('gives up with a LockTimeoutError after waiting too long', async () => {
    const prefix = `t${newId(4)}`;
    await connect().set(keys(prefix).lock('busy'), 'someone', 'PX', 60_000);
    const locks = new RedisLocks(connect(), prefix, { waitMs: 100 });
    const err: unknown = await locks.run('busy', () => Promise.resolve()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockTimeoutError);
    expect((err as LockTimeoutError).lockName).toBe('busy');
  });

  it('releases the lock when the task fails', async () => {
    const prefix = `t${newId(4)}`;
    const locks = new RedisLocks(connect(), prefix);
    await expect(locks.run('x', () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await connect().exists(keys(prefix).lock('x'))).toBe(0);
    await expect(new RedisLocks(connect(), prefix, { waitMs: 50 }).run('x', () => Promise.resolve(1))).resolves.toBe(1);
  });
});

describe('RunStore.update from several processes', () => {
  it('applies every change exactly once when processes write one run at the same time', async () => {
    const prefix = `t${newId(4)}`;
    const stores = [new RunStore(connect(), prefix), new RunStore(connect(), prefix)];
    const run = { id: 'r1', guildId: 'g', datasetId: 'd', createdAt: 1, epochs: {}, status: 'running' } as unknown as Run;
    await stores[0]!.create(run);
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        stores[i % 2]!.update('r1', (r) => ({ ...r, epochs: { ...r.epochs, [String(i)]: { grid: null, checkpoint: null, messageId: `m${i}` } } })),
      ),
    );
    const final = await stores[1]!.get('r1');
    expect(Object.keys(final!.epochs).sort((x, y) => Number(x) - Number(y))).toEqual(Array.from({ length: 40 }, (_, i) => String(i)));
    expect(await stores[0]!.update('missing', (r) => r)).toBeNull();
    expect(await stores[0]!.update('r1', () => null)).toEqual(final);
  });
});

describe('EventClaims', () => {
  it('gives each event to exactly one process', async () => {
    const prefix = `t${newId(4)}`;
    const claims = [new EventClaims(connect(), prefix, 'p1'), new EventClaims(connect(), prefix, 'p2')];
    const ids = Array.from({ length: 30 }, (_, i) => `ev${i}`);
    const results = await Promise.all(ids.flatMap((id) => claims.map((c) => c.claim('interaction', id))));
    expect(results.filter(Boolean)).toHaveLength(30);
    for (let i = 0; i < ids.length; i++) expect([results[2 * i], results[2 * i + 1]]).toContain(true);
    expect(await claims[0]!.claim('message', 'ev0')).toBe(true);
  });
});
