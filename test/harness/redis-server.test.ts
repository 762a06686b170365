import { access, readdir } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { startRedis, type RedisHandle } from './redis-server.ts';

const started: RedisHandle[] = [];
const clients: Redis[] = [];

async function start(opts?: { appendOnly?: boolean }): Promise<RedisHandle> {
  const redis = await startRedis(opts);
  started.push(redis);
  return redis;
}

function client(url: string): Redis {
  // No reconnect loops: a test that stops the server wants a prompt failure.
  const c = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  clients.push(c);
  return c;
}

function portAcceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function freshPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => (address && typeof address === 'object' ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.disconnect();
  await Promise.all(started.splice(0).map((r) => r.stop()));
});

describe('startRedis', () => {
  it('starts a server on 127.0.0.1 that answers commands at its url', async () => {
    const redis = await start();
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    const c = client(redis.url);
    await c.connect();
    expect(await c.ping()).toBe('PONG');
    await c.set('k', 'v');
    expect(await c.get('k')).toBe('v');
    expect(await c.config('GET', 'save')).toEqual(['save', '']);
    expect(await c.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
    expect(await c.config('GET', 'dir')).toEqual(['dir', redis.dir]);
  });

  it('gives servers started together their own ports and directories', async () => {
    const [a, b, c] = await Promise.all([start(), start(), start()]);
    if (!a || !b || !c) throw new Error('three servers expected');
    expect(new Set([a.port, b.port, c.port]).size).toBe(3);
    expect(new Set([a.dir, b.dir, c.dir]).size).toBe(3);
    const ca = client(a.url);
    const cb = client(b.url);
    await ca.set('only-in-a', '1');
    expect(await cb.exists('only-in-a')).toBe(0);
  });

  it('stop() kills the server, frees the port and removes the directory, and may be called twice', async () => {
    const redis = await start();
    expect(await portAcceptsConnections(redis.port)).toBe(true);
    await redis.stop();
    expect(await portAcceptsConnections(redis.port)).toBe(false);
    await expect(access(redis.dir)).rejects.toMatchObject({ code: 'ENOENT' });
    await redis.stop();
  });

  it('keeps data across restart() when appendOnly is on', async () => {
    const redis = await start({ appendOnly: true });
    const before = client(redis.url);
    await before.set('dataset', 'kept');
    before.disconnect();
    await redis.restart();
    const after = client(redis.url);
    expect(await after.get('dataset')).toBe('kept');
    expect(await readdir(redis.dir)).toContain('appendonlydir');
  });

  it('keeps appended data even when the server is killed', async () => {
    const redis = await start({ appendOnly: true });
    const before = client(redis.url);
    await before.set('dataset', 'survives-a-crash');
    before.disconnect();
    await redis.restart({ signal: 'SIGKILL' });
    const after = client(redis.url);
    expect(await after.get('dataset')).toBe('survives-a-crash');
  });

  it('loses data across restart() without appendOnly, since snapshots are off', async () => {
    const redis = await start();
    const before = client(redis.url);
    await before.set('dataset', 'gone');
    before.disconnect();
    await redis.restart();
    const after = client(redis.url);
    expect(await after.get('dataset')).toBeNull();
  });

  it('tries another port when the one it picked is taken before redis binds it', async () => {
    const squatter = await start();
    let picks = 0;
    const redis = await startRedis({
      // The first pick collides with a running server, as when another process wins the race.
      pickPort: () => Promise.resolve(picks++ === 0 ? squatter.port : 0).then((p) => (p === 0 ? freshPort() : p)),
    });
    started.push(redis);
    expect(picks).toBe(2);
    expect(redis.port).not.toBe(squatter.port);
    expect(await client(redis.url).ping()).toBe('PONG');
  });

  it('names the missing binary in its error', async () => {
    await expect(startRedis({ binary: '/nonexistent/redis-server' })).rejects.toThrow(/redis-server not found \(tried "\/nonexistent\/redis-server"\)/);
  });
});
