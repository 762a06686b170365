/**
 * The HTTP API remote training workers use, under `/api/worker/v1/` on the bot's HTTP server. A
 * worker only ever makes outbound requests here, with `Authorization: Bearer <worker token>`:
 *
 *   POST /heartbeat                        what it is and has; answers cancel / lease state
 *   GET  /lease?wait=<s>                   long poll for a run that fits it (200 lease, 204 none)
 *   GET  /leases/<id>/blobs/<sha256>       an input (image master, resume state), signed + expiring
 *   GET  /leases/<id>/uploads/<sha256>     how much of an upload arrived (to resume it)
 *   PUT  /leases/<id>/uploads/<sha256>?size=<n>&offset=<k>   appends bytes; verified at the end
 *   POST /leases/<id>/events               a run event (idempotent by its id)
 *   POST /leases/<id>/release              hands the run back to the queue (worker shutting down)
 *
 * A token reaches only its own worker's lease: another lease's id, a blob outside the lease, or an
 * upload under someone else's lease is refused.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm, stat, truncate } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { BlobStore } from '../core/blob-store.ts';
import { codeOf } from '../core/fs-errors.ts';
import type { Logger } from '../core/logger.ts';
import { JobName, runEventId, sharedKeys, type GeneratedPayload, type WorkerInfo } from '../queues/contract.ts';
import type { RunEventQueue } from '../queues/run-events.ts';
import type { RemoteWorker, WorkerStore } from '../store/worker-store.ts';
import { ResumeStateSchema, type Lease, type LeaseManager } from './leases.ts';
import { addressKey, KeyedRateLimiter, type RatePolicy } from './rate-limit.ts';

export const WORKER_API_PREFIX = '/api/worker/v1/';
const SHA = /^[0-9a-f]{64}$/;
const MAX_JSON_BYTES = 256 * 1024;
const MAX_POLL_SECONDS = 30;

export interface WorkerApiOptions {
  redis: Redis;
  prefix: string;
  blobs: BlobStore;
  dataDir: string;
  workers: WorkerStore;
  leases: LeaseManager;
  events: RunEventQueue;
  /** Where generations done on a lent GPU are posted from (the `generated` queue). */
  generated?: Queue<GeneratedPayload>;
  logger: Logger;
  /** Signs the lease's input URLs (DOWNLOAD_SECRET). */
  secret: string;
  leaseSeconds: number;
  heartbeatSeconds: number;
  uploadMaxBytes: number;
  limits?: RatePolicy;
  /** How long a long poll waits between looks at the queue (default 1 s). */
  pollIntervalMs?: number;
}

const ModelSchema = z.object({ file: z.string().min(1).max(255), base: z.string().max(32).nullable() }).loose();
const HeartbeatSchema = z.object({
  leaseId: z.string().max(64).optional(),
  info: z
    .object({
      host: z.string().max(255),
      gpu: z.object({ name: z.string().max(200), memoryMiB: z.number().int().min(0) }).nullable(),
      models: z.array(ModelSchema).max(500),
      busyWith: z.string().max(64).nullable(),
      startedAt: z.number(),
      ramMiB: z.number().int().min(0).optional(),
      diskFreeMiB: z.number().int().min(0).optional(),
    })
    .loose(),
});

const Ref = z.object({ blob: z.string().regex(SHA), bytes: z.number().int().min(0), sha256: z.string().regex(SHA) });
const EventSchema = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('started'),
    runId: z.string(),
    workerId: z.string(),
    resumedFromEpoch: z.number().int().nullable(),
    epochs: z.number().int(),
    stepsPerEpoch: z.number().int(),
    totalSteps: z.number().int(),
  }),
  z.object({
    kind: z.literal('progress'),
    runId: z.string(),
    step: z.number().int(),
    totalSteps: z.number().int(),
    epoch: z.number().int(),
    epochs: z.number().int(),
    loss: z.number().nullable(),
    rate: z.number().nullable(),
    etaSeconds: z.number().nullable(),
    at: z.number(),
  }),
  z.object({
    kind: z.literal('epoch'),
    runId: z.string(),
    epoch: z.number().int().min(1),
    epochs: z.number().int(),
    grid: Ref.nullable(),
    checkpoint: Ref.nullable(),
  }),
  z.object({ kind: z.literal('finished'), runId: z.string(), final: Ref, seconds: z.number() }),
  z.object({ kind: z.literal('failed'), runId: z.string(), reason: z.string().max(2000), logTail: z.array(z.string().max(2000)).max(60) }),
  z.object({ kind: z.literal('cancelled'), runId: z.string(), lastEpoch: z.number().int().nullable() }),
]);
const EventBodySchema = z.object({ event: EventSchema, state: ResumeStateSchema.optional() });

const BLOB_ID = z.string().regex(/^[0-9a-f]{64}$/);
const GeneratedBodySchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    cells: z
      .array(
        z.object({
          epoch: z.number().int().min(1),
          weight: z.number().min(-2).max(2),
          blob: BLOB_ID,
          bytes: z
            .number()
            .int()
            .min(1)
            .max(64 * 1024 * 1024),
        }),
      )
      .min(1)
      .max(64),
    seconds: z.number().min(0).max(86_400),
  }),
  z.object({ ok: z.literal(false), reason: z.string().min(1).max(500) }),
]);

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(JSON.stringify(body), 'utf8');
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': String(bytes.length), 'cache-control': 'no-store', ...headers });
  res.end(bytes);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_JSON_BYTES) throw new HttpError(413, 'Request body too large.');
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new HttpError(400, 'The body is not JSON.');
  }
}

function parse<T>(schema: z.ZodType<T>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
    throw new HttpError(400, `Invalid request (${problems.join('; ')}).`);
  }
  return parsed.data;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function signLeaseAccess(secret: string, leaseId: string, exp: number): string {
  return createHmac('sha256', secret).update(`lease-blobs:${leaseId}:${exp}`).digest('base64url');
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

export function createWorkerApi(opts: WorkerApiOptions) {
  const log = opts.logger.child({ unit: 'worker-api' });
  const limiter = new KeyedRateLimiter(opts.limits ?? { burst: 300, perMinute: 3000, concurrentPerKey: 8, concurrentTotal: 256 });
  const uploadsDir = join(opts.dataDir, 'uploads');
  const pollIntervalMs = opts.pollIntervalMs ?? 1000;

  async function authenticate(req: IncomingMessage): Promise<RemoteWorker> {
    const header = req.headers.authorization;
    const token = typeof header === 'string' && header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    const worker = token ? await opts.workers.authenticate(token) : null;
    if (!worker) throw new HttpError(401, 'This worker token is not valid: it was revoked, or mistyped. Ask for a new one with /worker add.');
    return worker;
  }

  async function ownLease(worker: RemoteWorker, leaseId: string): Promise<Lease> {
    const lease = await opts.leases.get(leaseId);
    // Another worker's lease looks exactly like one that does not exist.
    if (!lease || lease.workerId !== worker.id) throw new HttpError(404, 'No such lease for this worker (it ended, or expired).');
    return lease;
  }

  async function liveInfo(workerId: string): Promise<WorkerInfo | null> {
    const json = await opts.redis.get(sharedKeys.worker(opts.prefix, workerId));
    return json ? (JSON.parse(json) as WorkerInfo) : null;
  }

  async function heartbeat(worker: RemoteWorker, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = parse(HeartbeatSchema, await readJson(req));
    const info: WorkerInfo = {
      ...(body.info as Omit<WorkerInfo, 'id' | 'at' | 'remote'>),
      models: body.info.models.map((m) => ({ ...m })) as WorkerInfo['models'],
      id: worker.id,
      at: Date.now(),
      remote: { guildId: worker.guildId, ownerId: worker.ownerId, name: worker.name },
    };
    await opts.redis.set(sharedKeys.worker(opts.prefix, worker.id), JSON.stringify(info), 'EX', Math.max(3, 3 * opts.heartbeatSeconds));
    let lease: 'ok' | 'gone' | null = null;
    let cancel = false;
    if (body.leaseId !== undefined) {
      const held = await opts.leases.get(body.leaseId);
      lease = held && held.workerId === worker.id && (await opts.leases.renew(held)) ? 'ok' : 'gone';
      if (held && lease === 'ok' && held.kind === 'run') cancel = (await opts.redis.get(sharedKeys.runCancel(opts.prefix, held.runId))) !== null;
    }
    send(res, 200, { lease, cancel, leaseSeconds: opts.leaseSeconds });
  }

  async function poll(worker: RemoteWorker, req: IncomingMessage, res: ServerResponse, query: URLSearchParams): Promise<void> {
    const wait = Math.min(MAX_POLL_SECONDS, Math.max(0, Number(query.get('wait') ?? 0) || 0));
    const deadline = Date.now() + wait * 1000;
    let gone = false;
    req.on('close', () => (gone = true));
    res.on('close', () => (gone = true));
    for (;;) {
      const grant = await opts.leases.takeAny(worker, await liveInfo(worker.id));
      if (grant) {
        if (gone) {
          // Nobody to tell: the work goes straight back (the worker asks again and gets it).
          await opts.leases.handBack(grant.lease, 'the worker left before the answer');
          return;
        }
        const exp = Math.floor(grant.lease.expiresAt / 1000) + 24 * 3600;
        const blobAccess = { exp, sig: signLeaseAccess(opts.secret, grant.lease.id, exp) };
        if (grant.kind === 'generate') {
          send(res, 200, { leaseId: grant.lease.id, leaseSeconds: opts.leaseSeconds, generation: grant.payload, blobAccess });
          return;
        }
        send(res, 200, {
          leaseId: grant.lease.id,
          leaseSeconds: opts.leaseSeconds,
          payload: grant.payload,
          resume: grant.record.resume,
          reportedEpochs: grant.record.reportedEpochs,
          firstStartedAt: grant.record.firstStartedAt,
          blobAccess,
        });
        return;
      }
      if (gone || Date.now() + pollIntervalMs > deadline) break;
      await sleep(pollIntervalMs);
    }
    if (!gone) {
      res.writeHead(204, { 'cache-control': 'no-store' });
      res.end();
    }
  }

  async function blob(worker: RemoteWorker, res: ServerResponse, leaseId: string, id: string, query: URLSearchParams): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    const exp = Number(query.get('exp'));
    const sig = query.get('sig') ?? '';
    const expected = signLeaseAccess(opts.secret, lease.id, exp);
    const valid = Number.isInteger(exp) && sig.length === expected.length && timingSafeEqual(Buffer.from(sig), Buffer.from(expected));
    if (!valid) throw new HttpError(403, 'This link is not valid for this lease.');
    if (exp * 1000 < Date.now()) throw new HttpError(410, 'This link has expired.');
    if (!SHA.test(id) || !lease.blobs.includes(id)) throw new HttpError(403, 'This file is not part of the run this worker holds.');
    const size = (await opts.blobs.stat(id))?.size;
    if (size === undefined) throw new HttpError(404, 'This file is no longer available.');
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size), 'cache-control': 'no-store', etag: `"${id}"` });
    await pipeline(opts.blobs.createReadStream(id), res);
  }

  function partPath(lease: Lease, sha: string): string {
    return join(uploadsDir, `${lease.id}-${sha}.part`);
  }

  async function received(path: string): Promise<number> {
    try {
      return (await stat(path)).size;
    } catch (err) {
      if (codeOf(err) === 'ENOENT') return 0;
      throw err;
    }
  }

  async function uploadStatus(worker: RemoteWorker, res: ServerResponse, leaseId: string, sha: string): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    if (!SHA.test(sha)) throw new HttpError(400, 'Not a SHA-256.');
    const done = await opts.blobs.has(sha);
    send(res, 200, { received: done ? null : await received(partPath(lease, sha)), complete: done });
  }

  async function upload(worker: RemoteWorker, req: IncomingMessage, res: ServerResponse, leaseId: string, sha: string, query: URLSearchParams): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    if (!SHA.test(sha)) throw new HttpError(400, 'Not a SHA-256.');
    const size = Number(query.get('size'));
    const offset = Number(query.get('offset') ?? 0);
    if (!Number.isSafeInteger(size) || size < 0) throw new HttpError(400, "size must be the file's length in bytes.");
    if (size > opts.uploadMaxBytes) throw new HttpError(413, `This file (${size} bytes) is over the upload limit of ${opts.uploadMaxBytes} bytes.`);
    if (await opts.blobs.has(sha)) {
      req.resume();
      send(res, 201, { blob: sha, bytes: size });
      return;
    }
    await mkdir(uploadsDir, { recursive: true });
    const path = partPath(lease, sha);
    const have = await received(path);
    if (!Number.isSafeInteger(offset) || offset !== have) {
      req.resume();
      send(res, 409, { error: `The upload continues at byte ${have}.`, received: have });
      return;
    }
    let total = have;
    let over = false;
    const out = createWriteStream(path, { flags: 'a' });
    try {
      await pipeline(
        req,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            if (total + chunk.length > size) {
              over = true;
              yield chunk.subarray(0, size - total);
              total = size;
              return;
            }
            total += chunk.length;
            yield chunk;
          }
        },
        out,
      );
    } catch (err) {
      // A dropped connection keeps what arrived: the worker asks where to continue.
      log.info({ leaseId: lease.id, blob: sha, received: total, err: codeOf(err) ?? String(err) }, 'upload interrupted');
      if (!res.headersSent && !res.destroyed) send(res, 400, { error: 'The upload was interrupted.', received: await received(path) });
      return;
    }
    if (over) {
      await rm(path, { force: true });
      throw new HttpError(413, `More bytes arrived than the declared size (${size}); the upload was discarded.`);
    }
    if (total < size) {
      send(res, 200, { received: total });
      return;
    }
    if (total !== (await received(path))) await truncate(path, total);
    const actual = await sha256File(path);
    if (actual !== sha) {
      await rm(path, { force: true });
      log.warn({ leaseId: lease.id, workerId: worker.id, expected: sha, actual }, 'upload refused: its bytes do not match its hash');
      throw new HttpError(422, 'The uploaded bytes do not match their SHA-256; the upload was discarded.');
    }
    const ref = await opts.blobs.putFile(path, { move: true });
    send(res, 201, { blob: ref.id, bytes: ref.size });
  }

  async function checkRefs(refs: ({ blob: string; bytes: number } | null)[]): Promise<void> {
    for (const ref of refs) {
      if (!ref) continue;
      const st = await opts.blobs.stat(ref.blob);
      if (!st || st.size !== ref.bytes) throw new HttpError(409, `The file ${ref.blob.slice(0, 12)}… was not uploaded (or not whole): upload it first.`);
    }
  }

  async function keepArtifacts(ids: string[]): Promise<void> {
    if (ids.length > 0) await opts.redis.sadd(sharedKeys.artifacts(opts.prefix), ...ids);
  }

  async function event(worker: RemoteWorker, req: IncomingMessage, res: ServerResponse, leaseId: string): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    if (lease.kind !== 'run') throw new HttpError(409, 'This lease is an image generation, not a run.');
    const body = parse(EventBodySchema, await readJson(req));
    const event = body.event;
    if (event.runId !== lease.runId) throw new HttpError(403, 'This event is about another run than the one this worker holds.');
    switch (event.kind) {
      case 'started':
        // Who trains is the token's worker, whatever the body says.
        event.workerId = worker.id;
        await opts.leases.updateRecord(lease.runId, (r) => ({ ...r, firstStartedAt: r.firstStartedAt ?? Date.now() }));
        break;
      case 'epoch': {
        await checkRefs([event.grid, event.checkpoint, ...(body.state?.files.map((f) => ({ blob: f.blob, bytes: f.bytes })) ?? [])]);
        await keepArtifacts(
          [event.grid?.blob, event.checkpoint?.blob, ...(body.state?.files.map((f) => f.blob) ?? [])].filter((b): b is string => b !== undefined),
        );
        const state = body.state;
        await opts.leases.updateRecord(lease.runId, (r) => ({
          ...r,
          reportedEpochs: [...new Set([...r.reportedEpochs, event.epoch])].sort((a, b) => a - b),
          resume: state && state.epoch === event.epoch && (r.resume === null || state.epoch >= r.resume.epoch) ? state : r.resume,
        }));
        break;
      }
      case 'finished':
        await checkRefs([event.final]);
        await keepArtifacts([event.final.blob]);
        break;
      default:
        break;
    }
    await opts.events.send(event);
    if (event.kind === 'finished' || event.kind === 'cancelled') await opts.leases.end(lease, { ok: true, result: { outcome: event.kind } });
    else if (event.kind === 'failed') await opts.leases.end(lease, { ok: false, reason: event.reason });
    send(res, 200, { ok: true, id: runEventId(event) });
  }

  /** The images of a generation lease (uploaded first), or why there are none: posted by the bot. */
  async function generated(worker: RemoteWorker, req: IncomingMessage, res: ServerResponse, leaseId: string): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    if (lease.kind !== 'generate') throw new HttpError(409, 'This lease is a run, not an image generation.');
    if (!opts.generated) throw new HttpError(503, 'This bot does not take images from lent GPUs.');
    const body = parse(GeneratedBodySchema, await readJson(req));
    const requestId = await opts.leases.requestOf(lease);
    if (requestId === null) throw new HttpError(404, 'No such lease for this worker (it ended, or expired).');
    let result: GeneratedPayload;
    if (body.ok) {
      await checkRefs(body.cells);
      await keepArtifacts(body.cells.map((c) => c.blob));
      result = {
        requestId,
        ok: true,
        workerId: worker.id,
        cells: body.cells.map(({ epoch, weight, blob }) => ({ epoch, weight, blob })),
        seconds: body.seconds,
      };
    } else {
      result = { requestId, ok: false, workerId: worker.id, reason: body.reason };
    }
    await opts.generated.add(JobName.Generated, result, { jobId: `generated-${requestId}` });
    await opts.leases.end(lease, body.ok ? { ok: true, result: { images: body.cells.length } } : { ok: false, reason: body.reason });
    send(res, 200, { ok: true });
  }

  async function release(worker: RemoteWorker, res: ServerResponse, leaseId: string): Promise<void> {
    const lease = await ownLease(worker, leaseId);
    await opts.leases.handBack(lease, 'the worker handed it back');
    send(res, 200, { ok: true });
  }

  /** Handles one request under WORKER_API_PREFIX. */
  async function handle(req: IncomingMessage, res: ServerResponse, pathname: string, query: URLSearchParams, address: string): Promise<void> {
    const route = pathname.slice(WORKER_API_PREFIX.length).split('/');
    const method = req.method ?? 'GET';
    let admission = limiter.admit(`ip:${addressKey(address)}`);
    try {
      if (!admission.ok) throw new HttpError(429, 'Too many requests.', { 'retry-after': String(admission.retryAfterSeconds) });
      const worker = await authenticate(req);
      admission.release();
      admission = limiter.admit(`worker:${worker.id}`);
      if (!admission.ok) throw new HttpError(429, 'Too many requests.', { 'retry-after': String(admission.retryAfterSeconds) });
      const [first, leaseId, what, id] = route;
      if (route.length === 1 && first === 'heartbeat' && method === 'POST') return await heartbeat(worker, req, res);
      if (route.length === 1 && first === 'lease' && method === 'GET') return await poll(worker, req, res, query);
      if (first === 'leases' && leaseId !== undefined && route.length === 3 && what === 'events' && method === 'POST')
        return await event(worker, req, res, leaseId);
      if (first === 'leases' && leaseId !== undefined && route.length === 3 && what === 'release' && method === 'POST')
        return await release(worker, res, leaseId);
      if (first === 'leases' && leaseId !== undefined && route.length === 3 && what === 'generated' && method === 'POST')
        return await generated(worker, req, res, leaseId);
      if (first === 'leases' && leaseId !== undefined && route.length === 4 && id !== undefined) {
        if (what === 'blobs' && method === 'GET') return await blob(worker, res, leaseId, id, query);
        if (what === 'uploads' && method === 'GET') return await uploadStatus(worker, res, leaseId, id);
        if (what === 'uploads' && method === 'PUT') return await upload(worker, req, res, leaseId, id, query);
      }
      throw new HttpError(404, 'Not found.');
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      req.resume();
      if (!res.headersSent) send(res, err.status, { error: err.message }, err.headers);
      if (err.status === 401 || err.status === 403) log.info({ status: err.status, route: route[0] }, 'worker request refused');
    } finally {
      if (admission.ok) admission.release();
    }
  }

  return { handle };
}
