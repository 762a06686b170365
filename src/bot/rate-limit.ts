/**
 * Admission control for HTTP routes: a token bucket per key (a client address, an API token…)
 * plus a cap on requests in flight per key and across all keys. In-process: each bot process
 * counts its own clients, so N processes behind one address admit up to N times the policy.
 *
 * A key that is idle (nothing in flight) and whose bucket has refilled is indistinguishable from
 * a new one, so it is forgotten: memory follows the active clients, not every client ever seen.
 */
import { isIP } from 'node:net';

export interface RatePolicy {
  /** Requests a key may make back to back (the bucket's size). */
  burst: number;
  /** Sustained requests per minute per key (the refill rate). */
  perMinute: number;
  /** Requests of one key in flight at once. */
  concurrentPerKey: number;
  /** Requests in flight at once across every key. */
  concurrentTotal: number;
  /** Retry-After for a refusal because too much is in flight (nothing says when it frees). */
  busyRetrySeconds?: number;
}

export type RefusalReason = 'rate' | 'busy' | 'server-busy';

export type Admission =
  | {
      ok: true;
      /** Ends the request's hold on its concurrency slots; calling it again does nothing. */
      release: () => void;
    }
  | { ok: false; reason: RefusalReason; retryAfterSeconds: number };

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms, on the limiter's clock). */
  at: number;
  active: number;
}

const SWEEP_ABOVE = 1_000;
const SWEEP_EVERY_MS = 1_000;

export class KeyedRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private active = 0;
  private lastSweep = -Infinity;
  private readonly perMs: number;

  constructor(
    readonly policy: RatePolicy,
    private readonly now: () => number = () => performance.now(),
  ) {
    for (const [name, value] of Object.entries(policy)) {
      if (!(typeof value === 'number' && Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number`);
    }
    if (policy.burst < 1) throw new RangeError('burst must be at least 1');
    this.perMs = policy.perMinute / 60_000;
  }

  /** Requests in flight now, across every key. */
  get inFlight(): number {
    return this.active;
  }

  /** Keys remembered now (for tests and metrics). */
  get trackedKeys(): number {
    return this.buckets.size;
  }

  /** Admits one request of `key`, or says why not and when to come back. */
  admit(key: string): Admission {
    const t = this.now();
    const busyRetry = this.policy.busyRetrySeconds ?? 5;
    if (this.active >= this.policy.concurrentTotal) return { ok: false, reason: 'server-busy', retryAfterSeconds: busyRetry };

    let bucket = this.buckets.get(key);
    if (bucket) {
      this.refill(bucket, t);
    } else {
      bucket = { tokens: this.policy.burst, at: t, active: 0 };
      this.buckets.set(key, bucket);
    }
    if (bucket.active >= this.policy.concurrentPerKey) return { ok: false, reason: 'busy', retryAfterSeconds: busyRetry };
    if (bucket.tokens < 1) {
      return { ok: false, reason: 'rate', retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / this.perMs / 1000)) };
    }
    bucket.tokens -= 1;
    bucket.active += 1;
    this.active += 1;
    this.maybeSweep(t);

    let released = false;
    const held = bucket;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        held.active -= 1;
        this.active -= 1;
      },
    };
  }

  private refill(bucket: Bucket, t: number): void {
    bucket.tokens = Math.min(this.policy.burst, bucket.tokens + (t - bucket.at) * this.perMs);
    bucket.at = t;
  }

  /** Forgets keys with nothing in flight and a full bucket (at most once a second). */
  private maybeSweep(t: number): void {
    if (this.buckets.size <= SWEEP_ABOVE || t - this.lastSweep < SWEEP_EVERY_MS) return;
    this.lastSweep = t;
    for (const [key, bucket] of this.buckets) {
      if (bucket.active > 0) continue;
      this.refill(bucket, t);
      if (bucket.tokens >= this.policy.burst) this.buckets.delete(key);
    }
  }
}

/**
 * The key of a client address: IPv4 as is (also when written IPv4-mapped, `::ffff:a.b.c.d`),
 * IPv6 by its /64, which is what one subscriber is usually given. Anything else is its own key.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (mapped?.[1] && isIP(mapped[1]) === 4) return mapped[1];
  if (isIP(address) !== 6) return address;
  const groups = expandIPv6(address);
  return groups ? `${groups.slice(0, 4).join(':')}::/64` : address;
}

/** The eight 16-bit groups of an IPv6 address (zone id dropped), lower-case hex, or null. */
function expandIPv6(address: string): string[] | null {
  let text = address.split('%', 1)[0] ?? '';
  // A trailing dotted quad becomes two hex groups.
  const quad = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  return groups.map((g) => Number.parseInt(g, 16).toString(16));
}

/**
 * The client's address as seen by the outermost of `trustedHops` reverse proxies in front of us:
 * each appends the address it received from to X-Forwarded-For, so the entry `trustedHops` from
 * the right is the one our own proxies vouch for (entries further left are whatever the client
 * wrote). With no trusted proxy, or a header too short or malformed, the socket's address.
 */
export function clientAddress(socketAddress: string | undefined, forwardedFor: string | string[] | undefined, trustedHops: number): string {
  const direct = socketAddress ?? 'unknown';
  if (trustedHops <= 0 || forwardedFor === undefined) return direct;
  const entries = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor)
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e.length > 0);
  const candidate = entries[entries.length - trustedHops];
  return candidate !== undefined && isIP(candidate) !== 0 ? candidate : direct;
}
