/**
 * /dl admission over real HTTP on 127.0.0.1: the per-client burst and rate, the per-client and
 * global caps on downloads in flight, 429 with Retry-After, and which address counts as the client.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpServer, type HttpServerHandle } from '../../src/bot/http-server.ts';
import { BlobStore } from '../../src/core/blob-store.ts';
import { createLogger } from '../../src/core/logger.ts';
import { signDownload } from '../../src/core/signed-url.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

const SECRET = 'download-limits-test-secret-0123456789abcdef';

let redisServer: RedisHandle;
let redis: Redis;
let dataDir: string;
let blobs: BlobStore;
let smallId: string;
let bigId: string;
/** Behind one trusted proxy: X-Forwarded-For names the client. */
let proxied: HttpServerHandle;
/** Reached directly: the socket's address is the client, whatever the header says. */
let direct: HttpServerHandle;
// Own connections, so held downloads never queue behind each other or other files' requests.
const agent = new Agent({ connections: 64, pipelining: 0 });

beforeAll(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url);
  dataDir = await mkdtemp(join(tmpdir(), 'download-limits-test-'));
  blobs = new BlobStore(dataDir);
  await blobs.init();
  smallId = (await blobs.putBuffer(randomBytes(1000))).id;
  // Far more than socket buffers hold: a download of it stays in flight while its body is unread.
  bigId = (await blobs.putBuffer(randomBytes(64 * 1024 * 1024))).id;
  const logger = createLogger('silent');
  const common = { host: '127.0.0.1', port: 0, redis, logger, blobs, downloadSecret: SECRET };
  proxied = await startHttpServer({
    ...common,
    downloadLimits: { burst: 3, perMinute: 6, concurrentPerKey: 2, concurrentTotal: 3 },
    trustProxyHops: 1,
  });
  direct = await startHttpServer({ ...common, downloadLimits: { burst: 2, perMinute: 1, concurrentPerKey: 2, concurrentTotal: 10 } });
});

afterAll(async () => {
  await proxied?.close();
  await direct?.close();
  await agent.close();
  redis?.disconnect();
  await redisServer?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

function link(blob = smallId, name = 'aria-e04.safetensors'): string {
  return signDownload({ secret: SECRET, blobId: blob, fileName: name, expiresAt: new Date(Date.now() + 3600_000) });
}

/** A request whose body is left unread (the caller reads or destroys it). */
function open(server: HttpServerHandle, path: string, client?: string): Promise<Dispatcher.ResponseData> {
  return request(`http://127.0.0.1:${server.port}${path}`, {
    dispatcher: agent,
    headers: client === undefined ? {} : { 'x-forwarded-for': `6.6.6.6, ${client}` },
  });
}

/** The client hangs up mid-body (undici then reports the abort on the body, which is expected here). */
function hangUp(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => undefined);
  res.body.destroy();
}

async function fetchText(server: HttpServerHandle, path: string, client?: string) {
  const res = await open(server, path, client);
  const body = await res.body.text();
  return { status: res.statusCode, retryAfter: res.headers['retry-after'], body };
}

async function refusals(server: HttpServerHandle): Promise<Record<string, number>> {
  const res = await request(`http://127.0.0.1:${server.port}/metrics`, { dispatcher: agent });
  const text = await res.body.text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^loraguild_download_refusals_total\{reason="([^"]+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('download limits per client', () => {
  it('serves a burst, then answers 429 with the seconds until the next download is allowed', async () => {
    const before = await refusals(proxied);
    for (let i = 0; i < 3; i++) expect((await fetchText(proxied, link(), '198.51.100.1')).status).toBe(200);
    const limited = await fetchText(proxied, link(), '198.51.100.1');
    expect(limited.status).toBe(429);
    // 6 a minute: a token every 10 s, and the bucket is empty.
    expect(limited.retryAfter).toBe('10');
    expect(limited.body).toMatch(/too many download requests/i);
    expect((await refusals(proxied))['rate-limited']).toBe((before['rate-limited'] ?? 0) + 1);
    // Another member is not held back by the first.
    expect((await fetchText(proxied, link(), '198.51.100.2')).status).toBe(200);
  });

  it('counts refused links too, so guessing signatures is rate limited', async () => {
    const bad = link().replace(/sig=[^&]+/, 'sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
    for (let i = 0; i < 3; i++) expect((await fetchText(proxied, bad, '198.51.100.3')).status).toBe(403);
    expect((await fetchText(proxied, bad, '198.51.100.3')).status).toBe(429);
    expect((await fetchText(proxied, link(), '198.51.100.3')).status).toBe(429);
  });

  it('caps downloads in flight per client and for everyone, and frees a slot when a client hangs up', async () => {
    const held: Dispatcher.ResponseData[] = [];
    try {
      held.push(await open(proxied, link(bigId), '203.0.113.10'), await open(proxied, link(bigId), '203.0.113.10'));
      expect(held.map((r) => r.statusCode)).toEqual([200, 200]);

      const third = await fetchText(proxied, link(), '203.0.113.10');
      expect(third.status).toBe(429);
      expect(third.retryAfter).toBe('5');
      expect(third.body).toMatch(/at once/);

      held.push(await open(proxied, link(bigId), '203.0.113.11'));
      expect(held[2]!.statusCode).toBe(200);
      const crowded = await fetchText(proxied, link(), '203.0.113.12');
      expect(crowded.status).toBe(429);
      expect(crowded.body).toMatch(/server is busy/i);
      const counted = await refusals(proxied);
      expect(counted.busy).toBeGreaterThanOrEqual(1);
      expect(counted['server-busy']).toBeGreaterThanOrEqual(1);

      // The first client goes away mid-download: its slot is free again as soon as the server sees it.
      hangUp(held.shift()!);
      let next = await fetchText(proxied, link(), '203.0.113.12');
      while (next.status === 429) {
        expect(next.body).toMatch(/server is busy/i);
        await new Promise((r) => setTimeout(r, 20));
        next = await fetchText(proxied, link(), '203.0.113.12');
      }
      expect(next.status).toBe(200);
    } finally {
      for (const r of held) hangUp(r);
    }
  });

  it('ignores X-Forwarded-For when no proxy is trusted, and never limits /healthz', async () => {
    expect((await fetchText(direct, link(), '198.51.100.20')).status).toBe(200);
    expect((await fetchText(direct, link(), '198.51.100.21')).status).toBe(200);
    const spoofed = await fetchText(direct, link(), '198.51.100.22');
    expect(spoofed.status).toBe(429);
    expect(spoofed.retryAfter).toBe('60');
    const health = await request(`http://127.0.0.1:${direct.port}/healthz`, { dispatcher: agent });
    await health.body.dump();
    expect(health.statusCode).toBe(200);
  });
});
