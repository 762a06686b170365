/**
 * Locks shared by every process of a deployment, in Redis: `SET key token NX PX ttl` to take one,
 * a script that deletes the key only while it still holds our token to give it back (so an expired
 * lock that someone else has taken since is never released by us), and a renewal every third of
 * the TTL while the holder works, with the same check. A holder that cannot renew in time (Redis
 * unreachable, the process stalled) sees its `lost` signal abort and should stop writing.
 *
 * Within one process, waiters queue on an in-process mutex first, so each process has one
 * contender per lock in Redis and its own waiters keep their arrival order.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { KeyedMutex, LockTimeoutError, type NamedLocks } from '../core/limiter.ts';
import type { Logger } from '../core/logger.ts';
import { keys, type Keys } from './keys.ts';

const RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

const RENEW_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`;

export interface RedisLockOptions {
  /** How long a lock outlives a holder that stopped renewing it (crashed). Default 30 s. */
  ttlMs?: number;
  /** How long to wait for a lock before giving up with a LockTimeoutError. Default 5 min. */
  waitMs?: number;
  logger?: Logger;
}

export class RedisLocks implements NamedLocks {
  private readonly k: Keys;
  private readonly local = new KeyedMutex();
  private readonly ttlMs: number;
  private readonly waitMs: number;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly opts: RedisLockOptions = {},
  ) {
    this.k = keys(prefix);
    this.ttlMs = opts.ttlMs ?? 30_000;
    this.waitMs = opts.waitMs ?? 300_000;
    if (!(this.ttlMs >= 30)) throw new RangeError('ttlMs must be at least 30');
  }

  run<T>(name: string, task: (lost: AbortSignal) => Promise<T>): Promise<T> {
    const started = Date.now();
    return this.local.run(name, () => this.hold(name, started, task));
  }

  private async hold<T>(name: string, started: number, task: (lost: AbortSignal) => Promise<T>): Promise<T> {
    const key = this.k.lock(name);
    const token = randomBytes(16).toString('hex');
    await this.acquire(name, key, token, started);

    const lost = new AbortController();
    let renewedAt = Date.now();
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const renew = async () => {
      try {
        const ok = await this.redis.eval(RENEW_LUA, 1, key, token, String(this.ttlMs));
        if (ok === 1) renewedAt = Date.now();
        else lost.abort(new Error(`lock ${name} was lost (it expired and may be held by another process)`));
      } catch (err) {
        this.opts.logger?.warn({ err, lock: name }, 'lock renewal failed');
        if (Date.now() - renewedAt >= this.ttlMs) lost.abort(new Error(`lock ${name} could not be renewed in time`));
      }
      if (!stopped && !lost.signal.aborted) schedule();
    };
    const schedule = () => {
      timer = setTimeout(() => void renew(), Math.max(10, Math.floor(this.ttlMs / 3)));
      timer.unref();
    };
    schedule();
    try {
      return await task(lost.signal);
    } finally {
      stopped = true;
      clearTimeout(timer);
      try {
        await this.redis.eval(RELEASE_LUA, 1, key, token);
      } catch (err) {
        // It expires on its own after the TTL; nothing else to do.
        this.opts.logger?.warn({ err, lock: name }, 'lock release failed');
      }
    }
  }

  private async acquire(name: string, key: string, token: string, started: number): Promise<void> {
    let pause = 5;
    for (;;) {
      if ((await this.redis.set(key, token, 'PX', this.ttlMs, 'NX')) === 'OK') return;
      const waited = Date.now() - started;
      if (waited >= this.waitMs) throw new LockTimeoutError(name, waited);
      // Jittered, growing pauses: contenders do not retry in lockstep, and a long hold costs little.
      await new Promise((r) => setTimeout(r, Math.min(pause, this.waitMs - waited) * (0.5 + Math.random())));
      pause = Math.min(pause * 2, 100);
    }
  }
}
