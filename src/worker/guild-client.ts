/**
 * A remote worker's side of the bot's worker API (src/bot/worker-api.ts): outbound HTTPS requests
 * only, with the worker token as a bearer token. Transient trouble (network, 5xx, 429) is retried
 * with backoff; uploads continue where the bot says they stopped; downloads are checked against
 * their SHA-256 before anything uses them. Neither the token nor signed query strings are logged.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Agent, request, type Dispatcher } from 'undici';
import type { Logger } from '../core/logger.ts';
import type { RunEvent, WorkerInfo } from '../queues/contract.ts';

export interface ResumeFile {
  name: string;
  blob: string;
  bytes: number;
}
export interface ResumeState {
  epoch: number;
  files: ResumeFile[];
}

export interface LeaseGrant {
  leaseId: string;
  leaseSeconds: number;
  /** A run (absent on a generation lease). */
  payload: unknown;
  /** An image generation (`/lora try`, `/lora compare`): set instead of a run's payload. */
  generation?: unknown;
  resume: ResumeState | null;
  reportedEpochs: number[];
  firstStartedAt: number | null;
  blobAccess: { exp: number; sig: string };
}

export interface HeartbeatAnswer {
  lease: 'ok' | 'gone' | null;
  cancel: boolean;
}

/** The bot refused the token: revoked or wrong. Nothing will work until a new one is set. */
export class TokenRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenRefusedError';
  }
}

/** The lease is gone (expired, or the run was taken back): stop working on it. */
export class LeaseGoneError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LeaseGoneError';
  }
}

/** The bot refused a request for a reason retrying will not change. */
export class RefusedError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'RefusedError';
  }
}

export interface GuildClientOptions {
  baseUrl: string;
  token: string;
  logger: Logger;
  /** Bytes per upload request (default 16 MiB): a dropped connection costs at most one. */
  uploadChunkBytes?: number;
  /** How long transient failures are retried before giving up (default 10 minutes). */
  retryForMs?: number;
  dispatcher?: Dispatcher;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type Body = string | Buffer | Readable | null;

export class GuildClient {
  private readonly base: string;
  private readonly dispatcher: Dispatcher;
  private readonly log: Logger;
  private readonly chunk: number;
  private readonly retryForMs: number;
  /** Bytes received and sent, for the worker's own accounting (and the benchmark). */
  readonly traffic = { downloaded: 0, uploaded: 0 };

  constructor(private readonly opts: GuildClientOptions) {
    this.base = `${opts.baseUrl.replace(/\/+$/, '')}/api/worker/v1/`;
    // Our own connection pool: never the process-wide dispatcher other libraries configure.
    this.dispatcher = opts.dispatcher ?? new Agent({ connect: { timeout: 15_000 }, headersTimeout: 120_000, bodyTimeout: 300_000 });
    this.log = opts.logger.child({ unit: 'guild-client' });
    this.chunk = opts.uploadChunkBytes ?? 16 * 1024 * 1024;
    this.retryForMs = opts.retryForMs ?? 10 * 60_000;
  }

  async close(): Promise<void> {
    if (!this.opts.dispatcher) await this.dispatcher.close();
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${this.opts.token}`, ...extra };
  }

  /**
   * One request, retried while the trouble is transient. `make` builds a fresh body per attempt.
   * Returns the status and the body as text (or streams it into `sink`).
   */
  private async call(
    method: 'GET' | 'POST' | 'PUT',
    path: string,
    opts: { body?: () => Promise<Body> | Body; headers?: Record<string, string>; signal?: AbortSignal; retry?: boolean; accept?: number[] } = {},
  ): Promise<{ status: number; text: string; headers: Record<string, string | string[] | undefined> }> {
    const started = Date.now();
    let delay = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        const body = opts.body ? await opts.body() : null;
        const res = await request(this.base + path, {
          method,
          headers: this.headers(opts.headers),
          body,
          dispatcher: this.dispatcher,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        const text = await res.body.text();
        if (res.statusCode === 401) throw new TokenRefusedError(errorText(text) ?? 'the bot refused this worker token');
        const transient = res.statusCode >= 500 || res.statusCode === 429;
        if (!transient) return { status: res.statusCode, text, headers: res.headers };
        const retryAfter = Number(res.headers['retry-after']);
        if (opts.retry === false || Date.now() - started > this.retryForMs)
          throw new Error(`the bot answered ${res.statusCode}: ${errorText(text) ?? ''}`.trim());
        const wait = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : delay;
        this.log.warn({ status: res.statusCode, route: routeName(path), attempt, waitMs: wait }, 'the bot is busy or failing; retrying');
        await sleep(wait);
      } catch (err) {
        if (err instanceof TokenRefusedError || opts.signal?.aborted) throw err;
        if (err instanceof Error && err.message.startsWith('the bot answered')) throw err;
        if (opts.retry === false || Date.now() - started > this.retryForMs) throw err;
        this.log.warn({ err: describe(err), route: routeName(path), attempt, waitMs: delay }, 'the bot is unreachable; retrying');
        await sleep(delay);
      }
      delay = Math.min(15_000, delay * 2);
    }
  }

  private json<T>(status: number, text: string, path: string): T {
    if (status === 404 && path.startsWith('leases/')) throw new LeaseGoneError(errorText(text) ?? 'the lease is gone');
    if (status >= 400) throw new RefusedError(status, errorText(text) ?? `the bot answered ${status}`);
    return JSON.parse(text) as T;
  }

  async heartbeat(info: Omit<WorkerInfo, 'id' | 'at'>, leaseId: string | null): Promise<HeartbeatAnswer> {
    const body = JSON.stringify({ info, ...(leaseId ? { leaseId } : {}) });
    const res = await this.call('POST', 'heartbeat', { body: () => body, headers: { 'content-type': 'application/json' }, retry: false });
    return this.json<HeartbeatAnswer>(res.status, res.text, 'heartbeat');
  }

  /** Waits up to `waitSeconds` for a run; null when none came. */
  async poll(waitSeconds: number, signal?: AbortSignal): Promise<LeaseGrant | null> {
    const res = await this.call('GET', `lease?wait=${waitSeconds}`, signal ? { signal } : {});
    if (res.status === 204) return null;
    return this.json<LeaseGrant>(res.status, res.text, 'lease');
  }

  /** Downloads a blob of the lease into `dest`, checking its SHA-256; returns its size. */
  async download(grant: LeaseGrant, blob: string, dest: string): Promise<number> {
    const path = `leases/${grant.leaseId}/blobs/${blob}?exp=${grant.blobAccess.exp}&sig=${grant.blobAccess.sig}`;
    const started = Date.now();
    let delay = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await request(this.base + path, { method: 'GET', headers: this.headers(), dispatcher: this.dispatcher });
        if (res.statusCode !== 200) {
          const text = await res.body.text();
          if (res.statusCode === 401) throw new TokenRefusedError(errorText(text) ?? 'token refused');
          if (res.statusCode === 404 && /lease/i.test(text)) throw new LeaseGoneError(errorText(text) ?? 'the lease is gone');
          if (res.statusCode < 500 && res.statusCode !== 429) throw new RefusedError(res.statusCode, errorText(text) ?? `download refused (${res.statusCode})`);
          throw new Error(`download answered ${res.statusCode}`);
        }
        const hash = createHash('sha256');
        let size = 0;
        // A cut connection may be reported again after the pipeline settled: never uncaught.
        res.body.on('error', () => undefined);
        await pipeline(
          res.body,
          async function* (source: AsyncIterable<Buffer>) {
            for await (const chunk of source) {
              hash.update(chunk);
              size += chunk.length;
              yield chunk;
            }
          },
          createWriteStream(dest),
        );
        const actual = hash.digest('hex');
        if (actual !== blob) {
          await rm(dest, { force: true });
          throw new Error(`a download did not match its SHA-256 (${blob.slice(0, 12)}…)`);
        }
        this.traffic.downloaded += size;
        return size;
      } catch (err) {
        await rm(dest, { force: true });
        if (err instanceof TokenRefusedError || err instanceof LeaseGoneError || err instanceof RefusedError) throw err;
        if (Date.now() - started > this.retryForMs) throw err;
        this.log.warn({ err: describe(err), attempt, waitMs: delay }, 'download failed; retrying');
        await sleep(delay);
        delay = Math.min(15_000, delay * 2);
      }
    }
  }

  /**
   * Uploads a file for the lease, in chunks; after a dropped connection it asks the bot how much
   * arrived and continues from there. Returns the blob id (the file's SHA-256).
   */
  async upload(leaseId: string, file: string, sha256?: string): Promise<{ blob: string; bytes: number }> {
    const size = (await stat(file)).size;
    const blob = sha256 ?? (await hashFile(file));
    const base = `leases/${leaseId}/uploads/${blob}`;
    const status = this.json<{ received: number | null; complete: boolean }>(...statusOf(await this.call('GET', base)), base);
    if (status.complete) return { blob, bytes: size };
    let offset = status.received ?? 0;
    let stalls = 0;
    for (;;) {
      const end = Math.min(size, offset + this.chunk);
      const from = offset;
      let res: { status: number; text: string };
      try {
        res = await this.call('PUT', `${base}?size=${size}&offset=${from}`, {
          body: () => (end > from ? createReadStream(file, { start: from, end: end - 1 }) : Buffer.alloc(0)),
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(end - from) },
          retry: false,
        });
      } catch (err) {
        if (err instanceof TokenRefusedError) throw err;
        // The connection dropped mid-chunk: ask where to continue.
        this.log.warn({ err: describe(err), blob, offset: from }, 'upload interrupted; resuming');
        await sleep(Math.min(15_000, 500 * 2 ** Math.min(stalls++, 5)));
        const again = this.json<{ received: number | null; complete: boolean }>(...statusOf(await this.call('GET', base)), base);
        if (again.complete) return { blob, bytes: size };
        offset = again.received ?? 0;
        if (stalls > 40) throw err;
        continue;
      }
      if (res.status === 409) {
        offset = (JSON.parse(res.text) as { received: number }).received;
        continue;
      }
      const answer = this.json<{ received?: number; blob?: string; bytes?: number }>(res.status, res.text, base);
      this.traffic.uploaded += end - from;
      if (answer.blob !== undefined) return { blob: answer.blob, bytes: answer.bytes ?? size };
      offset = answer.received ?? end;
      stalls = 0;
    }
  }

  /** Sends a run event (with the epoch's resume state); retried until the bot has it. */
  async event(leaseId: string, event: RunEvent, state?: ResumeState): Promise<void> {
    const path = `leases/${leaseId}/events`;
    const body = JSON.stringify({ event, ...(state ? { state } : {}) });
    const res = await this.call('POST', path, { body: () => body, headers: { 'content-type': 'application/json' } });
    this.json(res.status, res.text, path);
  }

  /** Reports a generation's images (uploaded first) or why there are none; this ends its lease. */
  async generated(
    leaseId: string,
    result: { ok: true; cells: { epoch: number; weight: number; blob: string; bytes: number }[]; seconds: number } | { ok: false; reason: string },
  ): Promise<void> {
    const path = `leases/${leaseId}/generated`;
    const body = JSON.stringify(result);
    const res = await this.call('POST', path, { body: () => body, headers: { 'content-type': 'application/json' } });
    this.json(res.status, res.text, path);
  }

  async release(leaseId: string): Promise<void> {
    const path = `leases/${leaseId}/release`;
    const res = await this.call('POST', path, { body: () => '{}', headers: { 'content-type': 'application/json' } });
    if (res.status !== 404) this.json(res.status, res.text, path);
  }
}

function statusOf(res: { status: number; text: string }): [number, string] {
  return [res.status, res.text];
}

async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

function errorText(text: string): string | null {
  try {
    const value = JSON.parse(text) as { error?: unknown };
    return typeof value.error === 'string' ? value.error : null;
  } catch {
    return text.trim().slice(0, 200) || null;
  }
}

/** The route without ids or query (never a signature). */
function routeName(path: string): string {
  return path
    .split('?')[0]!
    .replace(/\/[0-9a-f]{64}/, '/<blob>')
    .replace(/leases\/[^/]+/, 'leases/<id>');
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? `${code}: ${err.message}` : err.message;
}
