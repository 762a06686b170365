/**
 * The bot's HTTP server against a real Redis and a real blob store: signed downloads (whole,
 * HEAD, ranges, refusals, client aborts), /healthz and /metrics, and logs free of signatures.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpServer, type HttpServerHandle } from '../../src/bot/http-server.ts';
import { BlobStore } from '../../src/core/blob-store.ts';
import { createLogger } from '../../src/core/logger.ts';
import { signDownload } from '../../src/core/signed-url.ts';
import { bullPrefix, QueueName, sharedKeys, type WorkerInfo } from '../../src/queues/contract.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

const SECRET = 'integration-test-download-secret-0123456789';
/** An odd size, so ranges near the end are not aligned to anything. */
const SIZE = 1_000_003;
/** Limits no test here reaches; the limits themselves are pinned in download-limits.test.ts. */
const GENEROUS = { burst: 10_000, perMinute: 100_000, concurrentPerKey: 100, concurrentTotal: 100 };
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let redisServer: RedisHandle;
let redis: Redis;
let dataDir: string;
let blobs: BlobStore;
let http: HttpServerHandle;
let origin: string;
let prefix: string;
let content: Buffer;
let blobId: string;
let bigId: string;
const logLines: string[] = [];
const queues: Queue[] = [];

beforeAll(async () => {
  redisServer = await startRedis();
  redis = new Redis(redisServer.url);
  prefix = `t${randomBytes(4).toString('hex')}`;
  dataDir = await mkdtemp(join(tmpdir(), 'http-server-test-'));
  blobs = new BlobStore(dataDir);
  await blobs.init();
  content = randomBytes(SIZE);
  blobId = (await blobs.putBuffer(content)).id;
  bigId = (await blobs.putBuffer(randomBytes(32 * 1024 * 1024))).id;

  const logger = createLogger('debug', { write: (line: string) => void logLines.push(line) });
  http = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    redis,
    logger,
    blobs,
    downloadSecret: SECRET,
    redisPrefix: prefix,
    downloadLimits: GENEROUS,
    metrics: () => '# HELP loraguild_test_extra An extra metric.\n# TYPE loraguild_test_extra gauge\nloraguild_test_extra 42',
  });
  origin = `http://127.0.0.1:${http.port}`;
});

afterAll(async () => {
  for (const q of queues) await q.close();
  await http?.close();
  redis?.disconnect();
  await redisServer?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

function link(opts: { blob?: string; name?: string; expiresAt?: Date } = {}): string {
  return signDownload({
    secret: SECRET,
    blobId: opts.blob ?? blobId,
    fileName: opts.name ?? 'aria-r3k9-e04.safetensors',
    expiresAt: opts.expiresAt ?? new Date(Date.now() + 3600_000),
  });
}

async function get(path: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' | 'POST' | 'DELETE' = 'GET') {
  const res = await request(`${origin}${path}`, { method, headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

function header(h: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** `name{labels}` → value, from Prometheus text. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function scrape(): Promise<{ text: string; values: Map<string, number> }> {
  const res = await get('/metrics');
  expect(res.status).toBe(200);
  expect(header(res.headers, 'content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  const text = res.body.toString('utf8');
  return { text, values: parseMetrics(text) };
}

describe('signed downloads', () => {
  it('serves the exact bytes with download headers', async () => {
    const path = link();
    const res = await get(path);
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(content.length);
    expect(sha256(res.body)).toBe(blobId);
    expect(header(res.headers, 'content-type')).toBe('application/octet-stream');
    expect(header(res.headers, 'content-length')).toBe(String(content.length));
    expect(header(res.headers, 'accept-ranges')).toBe('bytes');
    expect(header(res.headers, 'etag')).toBe(`"${blobId}"`);
    expect(header(res.headers, 'content-disposition')).toBe(`attachment; filename="aria-r3k9-e04.safetensors"; filename*=UTF-8''aria-r3k9-e04.safetensors`);
    const maxAge = Number(/^private, max-age=(\d+)$/.exec(header(res.headers, 'cache-control') ?? '')?.[1]);
    expect(maxAge).toBeGreaterThan(3590);
    expect(maxAge).toBeLessThanOrEqual(3600);
  });

  it('answers HEAD with the same headers and no body', async () => {
    const res = await get(link(), {}, 'HEAD');
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(0);
    expect(header(res.headers, 'content-length')).toBe(String(content.length));
    expect(header(res.headers, 'etag')).toBe(`"${blobId}"`);
    const ranged = await get(link(), { range: 'bytes=0-9' }, 'HEAD');
    expect(ranged.status).toBe(206);
    expect(ranged.body.length).toBe(0);
    expect(header(ranged.headers, 'content-range')).toBe(`bytes 0-9/${content.length}`);
  });

  it.each([
    ['the first 100 bytes', 'bytes=0-99', 0, 99],
    ['a middle range', 'bytes=500000-600123', 500_000, 600_123],
    ['a suffix range', 'bytes=-777', SIZE - 777, SIZE - 1],
    ['an open-ended range', 'bytes=999000-', 999_000, SIZE - 1],
    ['a range running past the end', 'bytes=999990-2000000', 999_990, SIZE - 1],
    ['a suffix longer than the file', 'bytes=-5000000', 0, SIZE - 1],
    ['the last byte', `bytes=${SIZE - 1}-`, SIZE - 1, SIZE - 1],
  ])('serves %s as 206 with Content-Range', async (_label, range, start, end) => {
    const res = await get(link(), { range });
    expect(res.status).toBe(206);
    expect(header(res.headers, 'content-range')).toBe(`bytes ${start}-${end}/${content.length}`);
    expect(header(res.headers, 'content-length')).toBe(String(end - start + 1));
    expect(Buffer.compare(res.body, content.subarray(start, end + 1))).toBe(0);
  });

  it.each([['bytes=1000003-'], ['bytes=2000000-2000010'], ['bytes=-0'], ['bytes=50-10']])('answers %s with 416 and the size', async (range) => {
    const res = await get(link(), { range });
    expect(res.status).toBe(416);
    expect(header(res.headers, 'content-range')).toBe(`bytes */${content.length}`);
  });

  it('answers a multi-range or unparseable Range with the whole file', async () => {
    for (const range of ['bytes=0-9,20-29', 'items=0-9', 'bytes=abc']) {
      const res = await get(link(), { range });
      expect(res.status, range).toBe(200);
      expect(sha256(res.body)).toBe(blobId);
    }
  });

  it('honours If-Range only when it names this content', async () => {
    const match = await get(link(), { range: 'bytes=0-9', 'if-range': `"${blobId}"` });
    expect(match.status).toBe(206);
    expect(match.body.length).toBe(10);
    const stale = await get(link(), { range: 'bytes=0-9', 'if-range': '"somethingelse"' });
    expect(stale.status).toBe(200);
    expect(stale.body.length).toBe(content.length);
  });

  it('refuses an expired link with 410 Gone', async () => {
    const res = await get(link({ expiresAt: new Date(Date.now() - 1000) }));
    expect(res.status).toBe(410);
    expect(res.body.toString()).toMatch(/expired/i);
  });

  it('refuses a tampered sig, blob or name with 403', async () => {
    const good = link();
    const sig = new URL(good, origin).searchParams.get('sig')!;
    const otherSig = sig.startsWith('A') ? `B${sig.slice(1)}` : `A${sig.slice(1)}`;
    const otherBlob = sha256(Buffer.from('another'));
    const cases = [
      good.replace(`sig=${sig}`, `sig=${otherSig}`),
      good.replace(blobId, otherBlob),
      good.replace('aria-r3k9-e04.safetensors', 'aria-r3k9-e05.safetensors'),
      good.replace(/exp=\d+/, (m) => `exp=${Number(m.slice(4)) + 86400}`),
      good.replace(/&sig=.*$/, ''),
      good.replace(blobId, '..%2F..%2Fetc'),
    ];
    for (const path of cases) {
      const res = await get(path);
      expect(res.status, path).toBe(403);
      expect(res.body.toString()).toMatch(/not valid/);
    }
  });

  it('answers 404 for a signed link to a missing blob', async () => {
    const res = await get(link({ blob: sha256(Buffer.from('never stored')) }));
    expect(res.status).toBe(404);
    expect(res.body.toString()).toMatch(/no longer available/);
  });

  it('answers 405 to other methods and 404 elsewhere', async () => {
    for (const path of [link(), '/healthz', '/metrics']) {
      const res = await get(path, {}, 'POST');
      expect(res.status).toBe(405);
      expect(header(res.headers, 'allow')).toBe('GET, HEAD');
    }
    expect((await get(link(), {}, 'DELETE')).status).toBe(405);
    for (const path of ['/', '/dl', '/dl/x', `/dl/${blobId}/a/b.safetensors`, '/favicon.ico', '//healthz']) {
      expect((await get(path)).status, path).toBe(404);
    }
  });

  it('stops reading and frees the file when the client breaks off', async () => {
    const fdsBefore = (await readdir('/proc/self/fd')).length;
    const before = http.metrics.downloadsAborted.get();
    const bytesBefore = http.metrics.downloadBytes.get();
    const res = await request(`${origin}${link({ blob: bigId })}`);
    expect(res.statusCode).toBe(200);
    let got = 0;
    for await (const chunk of res.body) {
      got += (chunk as Buffer).length;
      if (got > 1024 * 1024) break; // leaving the loop destroys the body: the connection closes
    }
    while (http.metrics.downloadsAborted.get() === before) await new Promise((r) => setTimeout(r, 20));
    expect(http.metrics.downloadsAborted.get()).toBe(before + 1);
    expect(http.metrics.downloadsActive.get()).toBe(0);
    // Far less than the 32 MiB file went out: the read stopped with the client.
    const sent = http.metrics.downloadBytes.get() - bytesBefore;
    expect(sent).toBeGreaterThan(1024 * 1024);
    expect(sent).toBeLessThan(16 * 1024 * 1024);
    // The file and the socket close once the server has seen the abort: wait for that, then compare.
    const fds = async () => (await readdir('/proc/self/fd')).length;
    for (let i = 0; i < 250 && (await fds()) > fdsBefore; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await fds()).toBeLessThanOrEqual(fdsBefore);
  });
});

describe('health and metrics', () => {
  it('/healthz reports redis, queue counts and live workers', async () => {
    const tagging = new Queue(QueueName.Tagging, { connection: redis, prefix: bullPrefix(prefix) });
    const notices = new Queue(QueueName.Notices, { connection: redis, prefix: bullPrefix(prefix) });
    queues.push(tagging, notices);
    await tagging.add('tag-images', { n: 1 });
    await tagging.add('tag-images', { n: 2 }, { priority: 5 });
    await notices.add('post-notice', { n: 3 }, { delay: 600_000 });
    const worker: WorkerInfo = { id: 'gpu-1', host: 'h', gpu: null, models: [], busyWith: null, startedAt: Date.now(), at: Date.now() };
    await redis.set(sharedKeys.worker(prefix, worker.id), JSON.stringify(worker), 'EX', 60);

    const res = await get('/healthz');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({
      ok: true,
      redis: 'up',
      queues: {
        tagging: { waiting: 2, active: 0, delayed: 0, failed: 0 },
        training: { waiting: 0, active: 0, delayed: 0, failed: 0 },
        notices: { waiting: 0, active: 0, delayed: 1, failed: 0 },
        'run-events': { waiting: 0, active: 0, delayed: 0, failed: 0 },
      },
      workers: 1,
    });
    // The counts agree with BullMQ's own.
    const own = await tagging.getJobCounts('waiting', 'prioritized');
    expect((own.waiting ?? 0) + (own.prioritized ?? 0)).toBe(2);
  });

  it('/metrics exposes queue gauges, workers, process and download counters that move', async () => {
    const first = await scrape();
    expect(first.text).toMatch(/^# HELP loraguild_downloads_total .+\n# TYPE loraguild_downloads_total counter$/m);
    expect(first.text).toMatch(/^# TYPE loraguild_queue_jobs gauge$/m);
    expect(first.text).toMatch(/^# TYPE process_resident_memory_bytes gauge$/m);
    expect(first.values.get('loraguild_queue_jobs{queue="tagging",state="waiting"}')).toBe(2);
    expect(first.values.get('loraguild_queue_jobs{queue="notices",state="delayed"}')).toBe(1);
    expect(first.values.get('loraguild_training_workers_live')).toBe(1);
    expect(first.values.get('loraguild_redis_up')).toBe(1);
    expect(first.values.get('process_resident_memory_bytes')).toBeGreaterThan(10_000_000);
    expect(first.values.get('process_uptime_seconds')).toBeGreaterThan(0);
    expect(first.values.get('loraguild_test_extra')).toBe(42);

    const res = await get(link());
    expect(res.status).toBe(200);
    // The server counts a download once its side of the stream has finished, which can be just
    // after the client has read the last byte: scrape until it has (bounded).
    const served = (m: Map<string, number>) => m.get('loraguild_downloads_total{code="200"}') ?? 0;
    let second = await scrape();
    for (let i = 0; i < 100 && served(second.values) === served(first.values); i++) {
      await new Promise((r) => setTimeout(r, 20));
      second = await scrape();
    }
    expect(served(second.values)).toBe(served(first.values) + 1);
    expect(second.values.get('loraguild_download_bytes_total')).toBe((first.values.get('loraguild_download_bytes_total') ?? 0) + content.length);
    expect(second.values.get('loraguild_download_refusals_total{reason="expired"}')).toBeGreaterThanOrEqual(1);
  });

  it('says 503 and redis down when Redis is unreachable', async () => {
    const dead = new Redis(redisServer.url, { lazyConnect: true });
    const logger = createLogger('silent');
    const other = await startHttpServer({ host: '127.0.0.1', port: 0, redis: dead, logger, redisPrefix: prefix, downloadLimits: GENEROUS });
    try {
      const res = await request(`http://127.0.0.1:${other.port}/healthz`);
      expect(res.statusCode).toBe(503);
      expect(await res.body.json()).toEqual({ ok: false, redis: 'down', queues: null, workers: null });
      const metrics = await request(`http://127.0.0.1:${other.port}/metrics`);
      expect(metrics.statusCode).toBe(200);
      const values = parseMetrics(await metrics.body.text());
      expect(values.get('loraguild_redis_up')).toBe(0);
      expect([...values.keys()].some((k) => k.startsWith('loraguild_queue_jobs'))).toBe(false);
      // Downloads are off without a store and a secret.
      expect((await request(`http://127.0.0.1:${other.port}${link()}`)).statusCode).toBe(503);
    } finally {
      await other.close();
      dead.disconnect();
    }
  });

  it('says 503 when a connected Redis does not answer in time', async () => {
    const logger = createLogger('silent');
    const slow = new Redis(redisServer.url);
    const probe = new Redis(redisServer.url);
    const other = await startHttpServer({
      host: '127.0.0.1',
      port: 0,
      redis: slow,
      logger,
      redisPrefix: prefix,
      redisTimeoutMs: 150,
      downloadLimits: GENEROUS,
    });
    try {
      await Promise.all([slow.ping(), probe.ping()]);
      await redis.client('PAUSE', 1500, 'ALL');
      // Redis answers the probe only when the pause ends: the health answer must come before.
      const resumed = probe.ping().then(() => 'redis answered' as const);
      const answered = request(`http://127.0.0.1:${other.port}/healthz`);
      expect(await Promise.race([answered.then(() => 'health answered' as const), resumed])).toBe('health answered');
      const res = await answered;
      expect(res.statusCode).toBe(503);
      expect(await res.body.json()).toMatchObject({ ok: false, redis: 'down' });
    } finally {
      await redis.client('UNPAUSE');
      await other.close();
      slow.disconnect();
      probe.disconnect();
    }
  });
});

describe('logs', () => {
  it('never carry a signature or a signed URL, and name blob and status', async () => {
    const path = link();
    const sig = new URL(path, origin).searchParams.get('sig')!;
    await get(path);
    await get(path.replace(blobId, sha256(Buffer.from('x'))));
    await get(link({ expiresAt: new Date(Date.now() - 5000) }));
    const parsed = logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(parsed.length).toBeGreaterThan(5);
    for (const line of logLines) {
      expect(line).not.toContain(sig);
      expect(line).not.toContain('sig=');
      expect(line).not.toContain('/dl/');
    }
    expect(parsed).toContainEqual(expect.objectContaining({ msg: 'download served', blob: blobId, status: 200, bytes: content.length }));
    expect(parsed).toContainEqual(expect.objectContaining({ msg: 'download refused', status: 410, reason: 'expired' }));
    expect(parsed).toContainEqual(expect.objectContaining({ msg: 'download refused', status: 403, reason: 'bad-signature' }));
  });
});
