/** A counting semaphore: at most `limit` tasks run at once; the rest wait in order. */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!(limit >= 1)) throw new RangeError('limit must be at least 1');
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }

  get pending(): number {
    return this.waiting.length;
  }
}

/**
 * Mutual exclusion by name. An implementation may span processes (`store/redis-lock.ts`): then
 * `lost` aborts when the lock could not be kept (its holder should stop writing), and waiting too
 * long for it rejects with a `LockTimeoutError`.
 */
export interface NamedLocks {
  run<T>(name: string, task: (lost: AbortSignal) => Promise<T>): Promise<T>;
}

/** One named lock of a `NamedLocks`. */
export interface Mutex {
  run<T>(task: (lost: AbortSignal) => Promise<T>): Promise<T>;
}

export function mutexOf(locks: NamedLocks, name: string): Mutex {
  return { run: (task) => locks.run(name, task) };
}

/** A lock that could not be taken in time (someone else holds it for long). */
export class LockTimeoutError extends Error {
  constructor(
    readonly lockName: string,
    waitedMs: number,
  ) {
    super(`lock ${lockName} not acquired within ${waitedMs} ms`);
    this.name = 'LockTimeoutError';
  }
}

/** Never aborts: an in-process lock cannot be lost. */
const KEPT = new AbortController().signal;

/** Runs tasks one at a time per key (e.g. per dataset), in arrival order, in this process only. */
export class KeyedMutex implements NamedLocks {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, task: (lost: AbortSignal) => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const run = () => task(KEPT);
    const result = previous.then(run, run);
    const tail = result.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await result;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
