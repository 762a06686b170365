import { createHash } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { UserError } from './errors.ts';

/**
 * Safe attachment downloads: only from allowed origins, never following redirects, capped in
 * size (declared, Content-Length and counted), with timeouts, streamed to disk with a SHA-256
 * computed on the way. A failed download leaves no file behind.
 *
 * Attachment URLs are signed (`?ex=…&is=…&hm=…`), so no message or error text here ever
 * contains a URL's path or query; only its origin.
 */

export type DownloadOptions = {
  /** ATTACHMENT_HOSTS entries: `host` (https on port 443 only) or `http(s)://host[:port]` (exactly that origin). */
  allowedHosts: string[];
  maxBytes: number;
  /** The size Discord reported for the attachment, checked before connecting. */
  declaredSize?: number;
  signal?: AbortSignal;
  /** Deadline for the whole download; also caps the wait for headers and between body chunks. Default 5 min. */
  timeoutMs?: number;
};

export type DownloadResult = { bytes: number; sha256: string };

/** Why a download failed; `retryable` says whether trying again later may help. */
export type DownloadFailure = 'refused' | 'too-large' | 'http-status' | 'redirect' | 'timeout' | 'network' | 'truncated';

/** A download failure worth showing to the user, with a message free of URLs. */
export class DownloadError extends UserError {
  constructor(
    message: string,
    readonly failure: DownloadFailure,
    readonly status: number | undefined = undefined,
  ) {
    super(message);
    this.name = 'DownloadError';
  }

  get retryable(): boolean {
    if (this.failure === 'http-status') return this.status === undefined || this.status === 429 || this.status >= 500;
    return this.failure === 'timeout' || this.failure === 'network' || this.failure === 'truncated';
  }
}

const DEFAULT_TIMEOUT_MS = 5 * 60_000;
/** The longest wait for response headers or for the next body chunk. */
const MAX_IDLE_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Our own dispatcher, so a global dispatcher installed elsewhere (a redirect interceptor, a mock)
 * never changes what a download does. Created on first use.
 */
let agent: Agent | undefined;
function downloadAgent(): Dispatcher {
  agent ??= new Agent({ connectTimeout: CONNECT_TIMEOUT_MS, keepAliveTimeout: 10_000 });
  return agent;
}

// ---------------------------------------------------------------------------------------------
// Origins

/** The origin an ATTACHMENT_HOSTS entry allows, or undefined when the entry is malformed. */
function entryOrigin(entry: string): string | undefined {
  const trimmed = entry.trim();
  if (trimmed === '') return undefined;
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed) ? trimmed : `https://${trimmed}`;
  let parsed: URL;
  try {
    parsed = new URL(withScheme);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return undefined;
  if (parsed.username !== '' || parsed.password !== '') return undefined;
  if (parsed.pathname !== '/' || parsed.search !== '' || parsed.hash !== '') return undefined;
  return parsed.origin;
}

function parseUrl(url: string): URL | undefined {
  try {
    return new URL(url);
  } catch {
    return undefined;
  }
}

/**
 * Whether `url` may be downloaded: http(s), no user name or password, and an origin (scheme,
 * host, port) that one of `allowedHosts` allows. An entry without a scheme allows `https://host`
 * on the default port only; an entry with a scheme and/or port allows exactly that origin.
 */
export function isAllowedUrl(url: string, allowedHosts: readonly string[]): boolean {
  const parsed = parseUrl(url);
  if (!parsed) return false;
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return false;
  if (parsed.username !== '' || parsed.password !== '') return false;
  return allowedHosts.some((entry) => entryOrigin(entry) === parsed.origin);
}

/** How a URL's origin is named in a message: the host for plain https, else scheme + host. */
function displayOrigin(parsed: URL): string {
  const shown = parsed.protocol === 'https:' ? parsed.host : `${parsed.protocol}//${parsed.host}`;
  return shown.length > 100 ? `${shown.slice(0, 99)}…` : shown;
}

function refuseUrl(url: string, allowedHosts: readonly string[]): DownloadError {
  const allowed = allowedHosts.join(', ');
  const parsed = parseUrl(url);
  if (!parsed || (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')) {
    return new DownloadError(`that is not a download link; downloads are only allowed from ${allowed}`, 'refused');
  }
  if (parsed.username !== '' || parsed.password !== '') {
    return new DownloadError(`links with a user name or password are not allowed (${displayOrigin(parsed)})`, 'refused');
  }
  return new DownloadError(`${displayOrigin(parsed)} is not an allowed host; downloads are only allowed from ${allowed}`, 'refused');
}

// ---------------------------------------------------------------------------------------------
// Sizes

const KB = 1024;
const MB = 1024 * KB;
const GB = 1024 * MB;

/** A size as people read it ("60 MB", "1.5 GB", "800 KB"); binary units, Discord's labels. */
export function formatBytes(bytes: number): string {
  const fmt = (v: number) => (v >= 10 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1));
  if (bytes >= GB) return `${fmt(bytes / GB)} GB`;
  if (bytes >= MB) return `${fmt(bytes / MB)} MB`;
  if (bytes >= KB) return `${fmt(bytes / KB)} KB`;
  return `${bytes} bytes`;
}

function tooLarge(size: number, maxBytes: number): DownloadError {
  const shown = formatBytes(size);
  const limit = formatBytes(maxBytes);
  return new DownloadError(shown === limit ? `attachment is over the ${limit} limit` : `attachment is ${shown}; the limit is ${limit}`, 'too-large');
}

/** The body passed the cap; its real size is unknown. */
function overCap(maxBytes: number): DownloadError {
  return new DownloadError(`attachment is over the ${formatBytes(maxBytes)} limit`, 'too-large');
}

function contentLength(headers: Record<string, string | string[] | undefined>): number | undefined {
  const value = headers['content-length'];
  if (typeof value !== 'string' || !/^\d{1,16}$/.test(value.trim())) return undefined;
  return Number(value.trim());
}

// ---------------------------------------------------------------------------------------------
// Download

/** Counts, caps and hashes the bytes flowing through. */
class MeterStream extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');

  constructor(private readonly maxBytes: number) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.maxBytes) {
      callback(overCap(this.maxBytes));
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Drops a response body we will not read (destroying it closes the connection). */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => {});
  body.destroy();
}

function errorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/** Maps a transport error to a DownloadError; local file-system errors pass through unchanged. */
function transportError(err: unknown, origin: string): unknown {
  if (err instanceof DownloadError) return err;
  const code = errorCode(err);
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new DownloadError(`the download from ${origin} timed out`, 'timeout');
  }
  if (code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') {
    return new DownloadError(`the download from ${origin} was cut off`, 'truncated');
  }
  if (code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new DownloadError(`the connection to ${origin} broke off during the download`, 'truncated');
  }
  if (
    code !== undefined &&
    (code.startsWith('UND_ERR') ||
      code.startsWith('HPE_') ||
      ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT'].includes(code) ||
      code.startsWith('ERR_TLS') ||
      code.startsWith('ERR_SSL') ||
      code.includes('CERT'))
  ) {
    return new DownloadError(`could not download from ${origin}`, 'network');
  }
  return err;
}

/**
 * Downloads `url` into a new file at `dest` (which must not exist) and returns its size and
 * SHA-256. Refuses disallowed origins and oversize files before connecting where it can; never
 * follows redirects; aborts as soon as the body passes `maxBytes`. On any failure the partial
 * file is removed and the error is a DownloadError (a UserError) unless it is a local
 * file-system error or the caller's own abort (rethrown as the signal's reason).
 */
export async function downloadToFile(url: string, dest: string, opts: DownloadOptions): Promise<DownloadResult> {
  const { allowedHosts, maxBytes } = opts;
  if (!isAllowedUrl(url, allowedHosts)) throw refuseUrl(url, allowedHosts);
  const target = new URL(url);
  const origin = displayOrigin(target);

  if (opts.declaredSize !== undefined && Number.isFinite(opts.declaredSize) && opts.declaredSize > maxBytes) {
    throw tooLarge(opts.declaredSize, maxBytes);
  }
  opts.signal?.throwIfAborted();

  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const idleMs = Math.min(timeoutMs, MAX_IDLE_MS);
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new DownloadError(`the download from ${origin} timed out`, 'timeout'));
  }, timeoutMs);
  const onCallerAbort = () => controller.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onCallerAbort, { once: true });

  let created = false;
  try {
    const response = await request(target, {
      dispatcher: downloadAgent(),
      method: 'GET',
      headers: { 'accept-encoding': 'identity', 'user-agent': 'LoRA-Guild (attachment intake)' },
      signal: controller.signal,
      headersTimeout: idleMs,
      bodyTimeout: idleMs,
    });
    const { statusCode, headers, body } = response;
    // undici may report a cut connection on the body again after the pipeline below has settled;
    // the pipeline sees the first report, and a late one must not become an uncaught exception.
    body.on('error', () => undefined);

    if (statusCode >= 300 && statusCode < 400) {
      discard(body);
      throw new DownloadError(`${origin} answered with a redirect, which is not followed`, 'redirect', statusCode);
    }
    if (statusCode < 200 || statusCode >= 300) {
      discard(body);
      throw new DownloadError(`could not download the file from ${origin} (HTTP ${statusCode})`, 'http-status', statusCode);
    }
    const length = contentLength(headers);
    if (length !== undefined && length > maxBytes) {
      discard(body);
      throw tooLarge(length, maxBytes);
    }

    let file;
    try {
      file = await open(dest, 'wx');
    } catch (err) {
      discard(body);
      throw err;
    }
    created = true;
    const meter = new MeterStream(maxBytes);
    await pipeline(body, meter, file.createWriteStream());
    return { bytes: meter.bytes, sha256: meter.digest() };
  } catch (err) {
    if (created) await rm(dest, { force: true });
    if (opts.signal?.aborted && !timedOut) throw opts.signal.reason;
    if (timedOut) throw new DownloadError(`the download from ${origin} timed out`, 'timeout');
    throw transportError(err, origin);
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onCallerAbort);
  }
}
