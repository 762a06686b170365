import { describe, expect, it } from 'vitest';
import { addressKey, clientAddress, KeyedRateLimiter, type RatePolicy } from '../../src/bot/rate-limit.ts';

const POLICY: RatePolicy = { burst: 3, perMinute: 6, concurrentPerKey: 2, concurrentTotal: 4, busyRetrySeconds: 7 };

function limiter(policy: RatePolicy = POLICY) {
  const clock = { t: 0 };
  return { clock, limiter: new KeyedRateLimiter(policy, () => clock.t) };
}

function admitAndRelease(l: KeyedRateLimiter, key: string) {
  const a = l.admit(key);
  if (a.ok) a.release();
  return a;
}

describe('KeyedRateLimiter', () => {
  it('admits a burst, then refuses until a token has refilled, saying how long that takes', () => {
    const { clock, limiter: l } = limiter();
    for (let i = 0; i < 3; i++) expect(admitAndRelease(l, 'a').ok).toBe(true);
    // 6 per minute: one token every 10 s.
    expect(l.admit('a')).toEqual({ ok: false, reason: 'rate', retryAfterSeconds: 10 });
    clock.t = 4_000;
    expect(l.admit('a')).toEqual({ ok: false, reason: 'rate', retryAfterSeconds: 6 });
    clock.t = 10_000;
    expect(admitAndRelease(l, 'a').ok).toBe(true);
    expect(l.admit('a')).toMatchObject({ ok: false, reason: 'rate' });
  });

  it('never refills past the burst', () => {
    const { clock, limiter: l } = limiter();
    clock.t = 3_600_000;
    for (let i = 0; i < 3; i++) expect(admitAndRelease(l, 'a').ok).toBe(true);
    expect(l.admit('a')).toMatchObject({ ok: false, reason: 'rate' });
  });

  it('counts each key on its own', () => {
    const { limiter: l } = limiter();
    for (let i = 0; i < 3; i++) admitAndRelease(l, 'a');
    expect(l.admit('a').ok).toBe(false);
    expect(admitAndRelease(l, 'b').ok).toBe(true);
  });

  it('caps what one key has in flight, and frees the slot on release (once)', () => {
    const { limiter: l } = limiter({ ...POLICY, burst: 10 });
    const first = l.admit('a');
    const second = l.admit('a');
    expect(first.ok && second.ok).toBe(true);
    expect(l.admit('a')).toEqual({ ok: false, reason: 'busy', retryAfterSeconds: 7 });
    if (!first.ok) throw new Error('unreachable');
    first.release();
    first.release();
    expect(l.inFlight).toBe(1);
    const third = l.admit('a');
    expect(third.ok).toBe(true);
    expect(l.admit('a')).toMatchObject({ ok: false, reason: 'busy' });
  });

  it('caps what is in flight across keys', () => {
    const { limiter: l } = limiter({ ...POLICY, concurrentTotal: 3 });
    const held = [l.admit('a'), l.admit('a'), l.admit('b')];
    expect(held.every((h) => h.ok)).toBe(true);
    expect(l.admit('c')).toEqual({ ok: false, reason: 'server-busy', retryAfterSeconds: 7 });
    const [one] = held;
    if (!one?.ok) throw new Error('unreachable');
    one.release();
    expect(l.admit('c').ok).toBe(true);
  });

  it('does not spend a token on a refused request', () => {
    const { limiter: l } = limiter({ ...POLICY, burst: 3, concurrentPerKey: 1 });
    const held = l.admit('a');
    for (let i = 0; i < 5; i++) expect(l.admit('a')).toMatchObject({ ok: false, reason: 'busy' });
    if (!held.ok) throw new Error('unreachable');
    held.release();
    expect(admitAndRelease(l, 'a').ok).toBe(true);
    expect(admitAndRelease(l, 'a').ok).toBe(true);
    expect(l.admit('a')).toMatchObject({ ok: false, reason: 'rate' });
  });

  it('forgets idle keys whose bucket refilled, and keeps the rest', () => {
    const { clock, limiter: l } = limiter({ ...POLICY, concurrentTotal: 10_000 });
    for (let i = 0; i < 1500; i++) admitAndRelease(l, `idle-${i}`);
    const busy = l.admit('busy');
    for (let i = 0; i < 3; i++) admitAndRelease(l, 'spent');
    expect(l.trackedKeys).toBe(1502);
    clock.t = 10_000; // one token back: 'idle-*' are full again, 'spent' is not
    admitAndRelease(l, 'newcomer');
    expect(l.trackedKeys).toBe(3);
    expect(busy.ok).toBe(true);
    expect(l.admit('spent')).toMatchObject({ ok: true });
    expect(l.admit('spent')).toMatchObject({ ok: false, reason: 'rate' });
  });

  it('refuses a policy that cannot work', () => {
    expect(() => new KeyedRateLimiter({ ...POLICY, burst: 0 })).toThrow(/burst/);
    expect(() => new KeyedRateLimiter({ ...POLICY, perMinute: Number.NaN })).toThrow(/perMinute/);
    expect(() => new KeyedRateLimiter({ ...POLICY, concurrentTotal: -1 })).toThrow(/concurrentTotal/);
  });
});

describe('addressKey', () => {
  it.each([
    ['203.0.113.7', '203.0.113.7'],
    ['::ffff:203.0.113.7', '203.0.113.7'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:0db8:0001:0002:ffff::1', '2001:db8:1:2::/64'],
    ['2001:db8:1:2::9%eth0', '2001:db8:1:2::/64'],
    ['::1', '0:0:0:0::/64'],
    ['unknown', 'unknown'],
  ])('keys %s as %s', (address, key) => {
    expect(addressKey(address)).toBe(key);
  });

  it('puts two addresses of one /64 under one key, and of two /64s under two', () => {
    expect(addressKey('2001:db8:a:b::1')).toBe(addressKey('2001:db8:a:b:ffff:ffff:ffff:ffff'));
    expect(addressKey('2001:db8:a:b::1')).not.toBe(addressKey('2001:db8:a:c::1'));
  });
});

describe('clientAddress', () => {
  it('ignores X-Forwarded-For unless proxies are trusted', () => {
    expect(clientAddress('10.0.0.5', '198.51.100.1', 0)).toBe('10.0.0.5');
  });

  it('takes the entry appended by the outermost trusted proxy, not what the client wrote', () => {
    expect(clientAddress('10.0.0.5', '6.6.6.6, 198.51.100.1', 1)).toBe('198.51.100.1');
    expect(clientAddress('10.0.0.5', ['6.6.6.6, 198.51.100.1', '10.0.0.9'], 2)).toBe('198.51.100.1');
  });

  it('falls back to the socket address when the header is short or not an address', () => {
    expect(clientAddress('10.0.0.5', '198.51.100.1', 2)).toBe('10.0.0.5');
    expect(clientAddress('10.0.0.5', 'evil, not-an-ip', 1)).toBe('10.0.0.5');
    expect(clientAddress('10.0.0.5', undefined, 1)).toBe('10.0.0.5');
    expect(clientAddress(undefined, undefined, 0)).toBe('unknown');
  });
});
