/**
 * What src/queues/bullmq-internals.ts assumes about BullMQ, checked against the installed BullMQ
 * on a real Redis: where an active job's lock lives, and how BullMQ words the failure of a job
 * that stalled too often. An upgrade that changes either fails here.
 */
import { createRequire } from 'node:module';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failedForStalling, jobLockKey } from '../../src/queues/bullmq-internals.ts';
import { newId } from '../../src/store/dataset-store.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

const bullmqVersion = (createRequire(import.meta.url)('bullmq/package.json') as { version: string }).version;

let server: RedisHandle;
const closers: (() => Promise<unknown>)[] = [];

function connect(): Redis {
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  closers.push(() => Promise.resolve(redis.disconnect()));
  return redis;
}

function fresh(): { name: string; prefix: string; queue: Queue } {
  const name = `q${newId(4)}`;
  const prefix = `t${newId(4)}`;
  const queue = new Queue(name, { connection: connect(), prefix });
  closers.push(() => queue.close());
  return { name, prefix, queue };
}

function worker(name: string, prefix: string, processor: ((job: Job, token?: string) => Promise<unknown>) | null, opts: object = {}): Worker {
  const w = new Worker(name, processor, { connection: connect(), prefix, ...opts });
  closers.push(() => w.close(true));
  return w;
}

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await server.stop();
});

describe(`BullMQ ${bullmqVersion} internals`, () => {
  it('keeps an active job’s lock at jobLockKey, holding the token its processor was given, and drops it when the job ends', async () => {
    const { name, prefix, queue } = fresh();
    const redis = connect();
    const w = worker(name, prefix, async (job, token) => ({ key: jobLockKey(job), token, held: await redis.get(jobLockKey(job)) }));
    const completed = new Promise<{ job: Job; result: { key: string; token: string; held: string | null } }>((resolve) =>
      w.on('completed', (job, result: { key: string; token: string; held: string | null }) => resolve({ job, result })),
    );
    const added = await queue.add('lock', { n: 1 }, { jobId: 'job-1' });
    const { result } = await completed;
    expect(result.key).toBe(`${prefix}:${name}:job-1:lock`);
    expect(typeof result.token).toBe('string');
    expect(result.held).toBe(result.token);
    expect(await redis.exists(jobLockKey(added))).toBe(0);
  });

  it('fails a job that stalled more than maxStalledCount times with the message failedForStalling recognises, without running it again', async () => {
    const { name, prefix, queue } = fresh();
    const redis = connect();
    await queue.add('stall', { n: 2 }, { jobId: 'job-2' });
    // A worker takes the job and dies: nobody renews its lock.
    const dead = worker(name, prefix, null, { lockDuration: 500 });
    const taken = await dead.getNextJob('dead-token');
    expect(taken?.id).toBe('job-2');
    expect(await redis.get(jobLockKey(taken))).toBe('dead-token');
    await until('the dead worker’s lock to expire', async () => (await redis.exists(jobLockKey(taken))) === 0);

    let ran = false;
    const survivor = worker(
      name,
      prefix,
      () => {
        ran = true;
        return Promise.resolve(null);
      },
      { stalledInterval: 200, maxStalledCount: 0 },
    );
    const failed = await new Promise<{ job: Job | undefined; err: Error }>((resolve) => survivor.on('failed', (job, err) => resolve({ job, err })));
    expect(failed.job?.id).toBe('job-2');
    expect(failedForStalling(failed.err)).toBe(true);
    expect(ran).toBe(false);
    const stored = await queue.getJob('job-2');
    expect(await stored?.getState()).toBe('failed');
    expect(failedForStalling({ message: stored?.failedReason ?? '' })).toBe(true);
  });

  it('does not take a processor’s own failure for a stall', async () => {
    const { name, prefix, queue } = fresh();
    const w = worker(name, prefix, () => Promise.reject(new Error('the run stalled at step 3: out of memory')));
    const failed = new Promise<Error>((resolve) => w.on('failed', (_job, err) => resolve(err)));
    await queue.add('own', { n: 3 });
    const err = await failed;
    expect(err.message).toBe('the run stalled at step 3: out of memory');
    expect(failedForStalling(err)).toBe(false);
  });
});
