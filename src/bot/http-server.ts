/**
 * The bot's HTTP side (design.md, Processes): `/healthz`, `/metrics` (Prometheus) and signed,
 * expiring artifact downloads at `/dl/<blob>/<name>?exp=…&sig=…` (data flow step 8).
 *
 * Downloads are streamed from an open file handle (never buffered), honour single byte ranges,
 * stop reading when the client goes away, and are logged by blob id and status only: a signed URL
 * is a secret while it lives, so neither it nor its `sig` ever reaches a log line.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Redis } from 'ioredis';
import { isBlobId, type BlobStore } from '../core/blob-store.ts';
import type { Logger } from '../core/logger.ts';
import { EXPORT_PATH_PREFIX, parseDownloadPath, verifyDownload, verifyExport, type VerifyResult } from '../core/signed-url.ts';
import { bullPrefix, QueueName } from '../queues/contract.ts';
import { listWorkers } from '../store/worker-heartbeats.ts';
import { MetricsRegistry, PROMETHEUS_CONTENT_TYPE, type Counter, type Gauge } from './metrics.ts';
import { codeOf } from '../core/fs-errors.ts';
import { addressKey, clientAddress, KeyedRateLimiter, type RatePolicy, type RefusalReason } from './rate-limit.ts';

export interface HttpServerOptions {
  host: string;
  port: number;
  redis: Redis;
  logger: Logger;
  /** Where artifacts live; without it (or without `downloadSecret`) /dl answers 503. */
  blobs?: BlobStore;
  /** DOWNLOAD_SECRET: the HMAC key of signed links (at least 32 characters). */
  downloadSecret?: string;
  /** REDIS_PREFIX, for the queue counts and live workers (default `lg`, config's default). */
  redisPrefix?: string;
  /** More Prometheus text appended to /metrics (its own HELP/TYPE lines included). */
  metrics?: () => Promise<string> | string;
  /** How long /healthz and /metrics wait for Redis before calling it down. Default 2 s. */
  redisTimeoutMs?: number;
  /** The clock for link expiry (a seam for tests). */
  now?: () => Date;
  /** Per-client rate and concurrency limits of /dl, and the cap on downloads in flight. */
  downloadLimits: RatePolicy;
  /**
   * How many reverse proxies in front of this server append to X-Forwarded-For (HTTP_TRUST_PROXY_HOPS).
   * 0: the client is the socket's peer, and the header is ignored (anyone can write it).
   */
  trustProxyHops?: number;
  /** Whether moderators withheld a file (its dataset was removed): links to it are refused. */
  isWithheld?: (blobId: string) => Promise<boolean>;
  /** Builds the zip a signed `/export/<dataset>/<name>.zip` link asks for (dataset-export.ts); without it /export answers 503. */
  datasetExport?: {
    serve(datasetId: string, fileName: string, res: ServerResponse, head: boolean, onBytes: (n: number) => void): Promise<'missing' | 'served' | 'aborted'>;
  };
  /** The remote workers' API, mounted under its prefix (worker-api.ts). */
  workerApi?: { prefix: string; handle(req: IncomingMessage, res: ServerResponse, pathname: string, query: URLSearchParams, address: string): Promise<void> };
}

export interface HttpServerHandle {
  server: Server;
  port: number;
  /** The server's own counters (downloads, bytes), e.g. for tests. */
  metrics: HttpMetrics;
  close(): Promise<void>;
}

/** The queues /healthz and /metrics report on. */
const REPORTED_QUEUES = [QueueName.Tagging, QueueName.Training, QueueName.Notices, QueueName.RunEvents] as const;

export interface QueueCounts {
  /** Waiting to be picked up (waiting + prioritized; a paused queue's jobs included). */
  waiting: number;
  active: number;
  delayed: number;
  failed: number;
}

export interface HealthReport {
  ok: boolean;
  redis: 'up' | 'down';
  queues: Record<string, QueueCounts> | null;
  /** Training workers whose heartbeat is live. */
  workers: number | null;
}

const DEFAULT_PREFIX = 'lg';
const READ_CHUNK = 256 * 1024;
const CLOSE_GRACE_MS = 5_000;
const ALLOW = 'GET, HEAD';

export interface HttpMetrics {
  registry: MetricsRegistry;
  downloads: Counter;
  downloadBytes: Counter;
  downloadsAborted: Counter;
  downloadRefusals: Counter;
  downloadsActive: Gauge;
  queueJobs: Gauge;
  liveWorkers: Gauge;
  redisUp: Gauge;
  residentMemory: Gauge;
  heapUsed: Gauge;
  uptime: Gauge;
  startTime: Gauge;
}

function createHttpMetrics(): HttpMetrics {
  const registry = new MetricsRegistry();
  return {
    registry,
    downloads: registry.counter('loraguild_downloads_total', 'Signed downloads served to the end, by HTTP status (200 whole file, 206 range).', ['code']),
    downloadBytes: registry.counter('loraguild_download_bytes_total', 'Bytes of artifact sent by signed downloads (aborted ones included).'),
    downloadsAborted: registry.counter('loraguild_downloads_aborted_total', 'Signed downloads the client broke off before the end.'),
    downloadRefusals: registry.counter('loraguild_download_refusals_total', 'Download requests refused, by reason.', ['reason']),
    downloadsActive: registry.gauge('loraguild_downloads_active', 'Downloads being streamed now.'),
    queueJobs: registry.gauge('loraguild_queue_jobs', 'Jobs per queue and state.', ['queue', 'state']),
    liveWorkers: registry.gauge('loraguild_training_workers_live', 'Training workers whose heartbeat is live.'),
    redisUp: registry.gauge('loraguild_redis_up', 'Whether Redis answered the last scrape (1) or not (0).'),
    residentMemory: registry.gauge('process_resident_memory_bytes', 'Resident memory size in bytes.'),
    heapUsed: registry.gauge('nodejs_heap_used_bytes', 'V8 heap in use, in bytes.'),
    uptime: registry.gauge('process_uptime_seconds', 'Seconds since the process started.'),
    startTime: registry.gauge('process_start_time_seconds', 'Start time of the process since the Unix epoch, in seconds.'),
  };
}

class TimeoutError extends Error {}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Job counts read straight from BullMQ's keys (`<prefix>:bull:<queue>:wait|prioritized|paused`
 * lists/sets, `:active` list, `:delayed`/`:failed` sorted sets), in one pipeline and read-only.
 */
async function queueCounts(redis: Redis, prefix: string): Promise<Record<string, QueueCounts>> {
  const bull = bullPrefix(prefix);
  const p = redis.pipeline();
  for (const q of REPORTED_QUEUES) {
    const k = `${bull}:${q}`;
    p.llen(`${k}:wait`).zcard(`${k}:prioritized`).llen(`${k}:paused`).llen(`${k}:active`).zcard(`${k}:delayed`).zcard(`${k}:failed`);
  }
  const replies = (await p.exec()) ?? [];
  const n = (i: number): number => {
    const reply = replies[i];
    if (!reply) throw new Error('redis pipeline answered short');
    const [err, value] = reply;
    if (err) throw err;
    return Number(value);
  };
  const out: Record<string, QueueCounts> = {};
  REPORTED_QUEUES.forEach((q, qi) => {
    const i = qi * 6;
    out[q] = { waiting: n(i) + n(i + 1) + n(i + 2), active: n(i + 3), delayed: n(i + 4), failed: n(i + 5) };
  });
  return out;
}

async function probe(redis: Redis, prefix: string, timeoutMs: number): Promise<HealthReport> {
  // A client that is not connected would queue the commands until it reconnects: say "down" now.
  if (redis.status !== 'ready') throw new Error(`redis connection is ${redis.status}`);
  const [, queues, workers] = await withTimeout(Promise.all([redis.ping(), queueCounts(redis, prefix), listWorkers(redis, prefix)]), timeoutMs);
  return { ok: true, redis: 'up', queues, workers: workers.length };
}

// ---------------------------------------------------------------------------------------------
// Byte ranges

export type RangeDecision = { kind: 'whole' } | { kind: 'range'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * A Range header against a file of `size` bytes (RFC 9110 §14). Single ranges only: a multi-range
 * request, another unit or bad syntax is answered with the whole file (which the RFC allows).
 */
function decideRange(header: string | undefined, size: number): RangeDecision {
  if (header === undefined) return { kind: 'whole' };
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return { kind: 'whole' };
  const [, first = '', last = ''] = m;
  if (first === '' && last === '') return { kind: 'whole' };
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (!Number.isSafeInteger(start) || start >= size) return { kind: 'unsatisfiable' };
  if (last === '') return { kind: 'range', start, end: size - 1 };
  const end = Number(last);
  if (end < start) return { kind: 'unsatisfiable' };
  return { kind: 'range', start, end: Math.min(end, size - 1) };
}

/** Counts what passes through. */
class ByteMeter extends Transform {
  bytes = 0;

  constructor(private readonly onBytes: (n: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.onBytes(chunk.length);
    callback(null, chunk);
  }
}

function sendText(res: ServerResponse, status: number, body: string, head: boolean, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(`${body}\n`, 'utf8');
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': String(bytes.length),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  });
  res.end(head ? undefined : bytes);
}

function sendJson(res: ServerResponse, status: number, value: unknown, head: boolean): void {
  const bytes = Buffer.from(JSON.stringify(value), 'utf8');
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': String(bytes.length), 'cache-control': 'no-store' });
  res.end(head ? undefined : bytes);
}

const REFUSALS = {
  malformed: { status: 403, body: 'This download link is not valid.' },
  'bad-signature': { status: 403, body: 'This download link is not valid.' },
  expired: { status: 410, body: 'This download link has expired. Ask the bot for a fresh one.' },
} as const;

const LIMITED: Record<RefusalReason, string> = {
  rate: 'Too many download requests from your address. Please wait a little and try again.',
  busy: 'Too many downloads from your address at once. Let one finish, then try again.',
  'server-busy': 'The server is busy with other downloads. Please try again in a moment.',
};

/** The bot's HTTP server: health, metrics and signed downloads. */
export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServerHandle> {
  const log = opts.logger.child({ unit: 'http' });
  const prefix = opts.redisPrefix ?? DEFAULT_PREFIX;
  const redisTimeoutMs = opts.redisTimeoutMs ?? 2_000;
  const now = opts.now ?? (() => new Date());
  const m = createHttpMetrics();
  const downloadLimiter = new KeyedRateLimiter(opts.downloadLimits);
  const trustProxyHops = opts.trustProxyHops ?? 0;
  m.startTime.set({}, Math.round((Date.now() - process.uptime() * 1000) / 1000));

  async function health(res: ServerResponse, head: boolean): Promise<void> {
    try {
      sendJson(res, 200, await probe(opts.redis, prefix, redisTimeoutMs), head);
    } catch (err) {
      log.warn({ err }, 'health check: redis unreachable');
      const down: HealthReport = { ok: false, redis: 'down', queues: null, workers: null };
      sendJson(res, 503, down, head);
    }
  }

  async function metricsText(): Promise<string> {
    const memory = process.memoryUsage();
    m.residentMemory.set({}, memory.rss);
    m.heapUsed.set({}, memory.heapUsed);
    m.uptime.set({}, Math.round(process.uptime() * 1000) / 1000);
    m.queueJobs.reset();
    m.liveWorkers.reset();
    try {
      const report = await probe(opts.redis, prefix, redisTimeoutMs);
      m.redisUp.set({}, 1);
      for (const [queue, counts] of Object.entries(report.queues ?? {})) {
        for (const [state, value] of Object.entries(counts)) m.queueJobs.set({ queue, state }, value as number);
      }
      m.liveWorkers.set({}, report.workers ?? 0);
    } catch (err) {
      log.warn({ err }, 'metrics: redis unreachable');
      m.redisUp.set({}, 0);
    }
    let text = m.registry.render();
    if (opts.metrics) {
      try {
        const extra = await opts.metrics();
        if (extra.length > 0) text += extra.endsWith('\n') ? extra : `${extra}\n`;
      } catch (err) {
        log.warn({ err }, 'metrics: the extra collector failed');
      }
    }
    return text;
  }

  async function download(req: IncomingMessage, res: ServerResponse, pathname: string, query: URLSearchParams, head: boolean): Promise<void> {
    const parts = parseDownloadPath(pathname);
    if (!parts) {
      sendText(res, 404, 'Not found.', head);
      return;
    }
    const { blobId, fileName } = parts;
    // Only a well-formed id goes into a log line (it is ours, not a secret); the sig never does.
    const blob = isBlobId(blobId) ? blobId : undefined;
    if (!opts.blobs || opts.downloadSecret === undefined) {
      sendText(res, 503, 'Downloads are not enabled on this server.', head);
      return;
    }
    const verdict = verifyDownload({ secret: opts.downloadSecret, blobId, fileName, exp: query.get('exp'), sig: query.get('sig'), now: now() });
    if (!admitted(res, verdict, head, { blob })) return;

    if (await opts.isWithheld?.(blobId)) {
      m.downloadRefusals.inc({ reason: 'withheld' });
      log.info({ blob, status: 410, reason: 'withheld' }, 'download refused');
      sendText(res, 410, "This file was withheld by the server's moderators.", head);
      return;
    }

    let file: FileHandle;
    try {
      file = await open(opts.blobs.path(blobId), 'r');
    } catch (err) {
      if (codeOf(err) !== 'ENOENT') throw err;
      m.downloadRefusals.inc({ reason: 'missing' });
      log.info({ blob, status: 404, reason: 'missing' }, 'download refused');
      sendText(res, 404, 'This file is no longer available.', head);
      return;
    }

    let owned = true; // until a read stream takes the handle over
    try {
      const { size } = await file.stat();
      const exp = Number(query.get('exp'));
      const maxAge = Math.max(0, exp - Math.floor(now().getTime() / 1000));
      const etag = `"${blobId}"`;
      const headers: Record<string, string> = {
        'accept-ranges': 'bytes',
        'content-type': 'application/octet-stream',
        'content-disposition': `attachment; filename="${fileName}"; filename*=UTF-8''${encodeURIComponent(fileName)}`,
        etag,
        'cache-control': `private, max-age=${maxAge}`,
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
      };

      // If-Range: honour the Range only when the client's copy is this very content.
      const ifRange = req.headers['if-range'];
      const rangeHeader = ifRange === undefined || (typeof ifRange === 'string' && ifRange.trim() === etag) ? req.headers.range : undefined;
      const decision = decideRange(rangeHeader, size);
      if (decision.kind === 'unsatisfiable') {
        log.info({ blob, status: 416 }, 'download range not satisfiable');
        sendText(res, 416, 'Requested range not satisfiable.', head, { 'content-range': `bytes */${size}`, 'accept-ranges': 'bytes', etag });
        return;
      }
      const status = decision.kind === 'range' ? 206 : 200;
      const start = decision.kind === 'range' ? decision.start : 0;
      const end = decision.kind === 'range' ? decision.end : size - 1;
      const length = size === 0 ? 0 : end - start + 1;
      headers['content-length'] = String(length);
      if (decision.kind === 'range') headers['content-range'] = `bytes ${start}-${end}/${size}`;
      res.writeHead(status, headers);
      if (head || length === 0) {
        res.end();
        return;
      }

      const source = file.createReadStream({ start, end, highWaterMark: READ_CHUNK, autoClose: true });
      owned = false;
      const meter = new ByteMeter((n) => m.downloadBytes.inc({}, n));
      m.downloadsActive.set({}, m.downloadsActive.get() + 1);
      try {
        // pipeline destroys the file stream (closing the handle) when the client goes away.
        await pipeline(source, meter, res);
        m.downloads.inc({ code: String(status) });
        log.info({ blob, status, bytes: meter.bytes }, 'download served');
      } catch (err) {
        if (codeOf(err) === 'ERR_STREAM_PREMATURE_CLOSE') {
          m.downloadsAborted.inc();
          log.info({ blob, status, bytes: meter.bytes }, 'download aborted by the client');
        } else {
          throw err;
        }
      } finally {
        m.downloadsActive.set({}, m.downloadsActive.get() - 1);
      }
    } finally {
      if (owned) await file.close();
    }
  }

  /** Says why a signed link is refused (and counts it); true when it may be served. */
  function admitted(res: ServerResponse, verdict: VerifyResult, head: boolean, what: Record<string, string | undefined>): boolean {
    if (verdict.ok) return true;
    const refusal = REFUSALS[verdict.reason];
    m.downloadRefusals.inc({ reason: verdict.reason });
    log.info({ ...what, status: refusal.status, reason: verdict.reason }, 'download refused');
    sendText(res, refusal.status, refusal.body, head);
    return false;
  }

  /** A dataset export: the signed link checked here, the zip built and streamed by `datasetExport`. */
  async function exportDownload(res: ServerResponse, pathname: string, query: URLSearchParams, head: boolean): Promise<void> {
    const parts = parseDownloadPath(pathname, EXPORT_PATH_PREFIX);
    if (!parts) {
      sendText(res, 404, 'Not found.', head);
      return;
    }
    if (!opts.datasetExport || opts.downloadSecret === undefined) {
      sendText(res, 503, 'Downloads are not enabled on this server.', head);
      return;
    }
    const { blobId: datasetId, fileName } = parts;
    const verdict = verifyExport({ secret: opts.downloadSecret, blobId: datasetId, fileName, exp: query.get('exp'), sig: query.get('sig'), now: now() });
    if (!admitted(res, verdict, head, { dataset: /^[a-z0-9]{1,32}$/.test(datasetId) ? datasetId : undefined })) return;
    m.downloadsActive.set({}, m.downloadsActive.get() + 1);
    try {
      const outcome = await opts.datasetExport.serve(datasetId, fileName, res, head, (n) => m.downloadBytes.inc({}, n));
      if (outcome === 'missing') {
        m.downloadRefusals.inc({ reason: 'missing' });
        sendText(res, 404, 'This dataset no longer exists or has no images.', head);
      } else if (outcome === 'aborted') {
        m.downloadsAborted.inc();
      } else {
        m.downloads.inc({ code: '200' });
      }
    } finally {
      m.downloadsActive.set({}, m.downloadsActive.get() - 1);
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = req.url ?? '/';
    const q = raw.indexOf('?');
    const pathname = q < 0 ? raw : raw.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
    if (opts.workerApi && pathname.startsWith(opts.workerApi.prefix)) {
      await opts.workerApi.handle(req, res, pathname, query, clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], trustProxyHops));
      return;
    }
    const known = pathname === '/healthz' || pathname === '/metrics' || pathname.startsWith('/dl/') || pathname.startsWith(EXPORT_PATH_PREFIX);
    if (!known) {
      sendText(res, 404, 'Not found.', req.method === 'HEAD');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendText(res, 405, 'Method not allowed.', false, { allow: ALLOW });
      return;
    }
    const head = req.method === 'HEAD';
    if (pathname === '/healthz') {
      await health(res, head);
    } else if (pathname === '/metrics') {
      const bytes = Buffer.from(await metricsText(), 'utf8');
      res.writeHead(200, { 'content-type': PROMETHEUS_CONTENT_TYPE, 'content-length': String(bytes.length), 'cache-control': 'no-store' });
      res.end(head ? undefined : bytes);
    } else {
      await limitedDownload(req, res, pathname, query, head);
    }
  }

  /** Admits a download by client (429 with Retry-After when over a limit) and holds its slot until the response ends. */
  async function limitedDownload(req: IncomingMessage, res: ServerResponse, pathname: string, query: URLSearchParams, head: boolean): Promise<void> {
    const client = addressKey(clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], trustProxyHops));
    const admission = downloadLimiter.admit(client);
    if (!admission.ok) {
      m.downloadRefusals.inc({ reason: admission.reason === 'rate' ? 'rate-limited' : admission.reason });
      // Debug only: a flood must not become a flood of log lines (the counter tells the story).
      log.debug({ reason: admission.reason, retryAfter: admission.retryAfterSeconds }, 'download limited');
      sendText(res, 429, LIMITED[admission.reason], head, { 'retry-after': String(admission.retryAfterSeconds) });
      return;
    }
    // A response emits 'close' once it is done or its connection went away, whichever is first.
    res.once('close', admission.release);
    if (pathname.startsWith(EXPORT_PATH_PREFIX)) await exportDownload(res, pathname, query, head);
    else await download(req, res, pathname, query, head);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Never the URL: it may be a signed link.
      log.error({ err, method: req.method }, 'http request failed');
      if (!res.headersSent) sendText(res, 500, 'Internal error.', req.method === 'HEAD');
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'http server error'));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    metrics: m,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // Downloads in flight get a grace period, then their sockets are cut.
        setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS).unref();
      }),
  };
}
