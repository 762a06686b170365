import type { IncomingMessage, ServerResponse } from 'node:http';

/** Small pieces the fake Discord builds on: ids, waiting for records, HTTP bodies. */

const DISCORD_EPOCH = 1_420_070_400_000n;

/** Makes snowflakes that sort by creation and carry the current time, as Discord's do. */
export class SnowflakeSource {
  private last = 0n;

  next(): string {
    const fromClock = (BigInt(Date.now()) - DISCORD_EPOCH) << 22n;
    this.last = fromClock > this.last ? fromClock : this.last + 1n;
    return this.last.toString();
  }
}

interface Waiter<T> {
  predicate: (item: T) => boolean;
  resolve: (item: T) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * An append-only log whose readers can wait for an entry: `waitFor` resolves with the first entry
 * already logged that matches, or the first one to arrive later, and rejects after a timeout with a
 * message that shows what did arrive.
 */
export class WaitableLog<T> {
  readonly items: T[] = [];
  private readonly waiters = new Set<Waiter<T>>();

  constructor(private readonly describeRecent: (items: readonly T[]) => string) {}

  push(item: T): void {
    this.items.push(item);
    for (const waiter of this.waiters) {
      if (waiter.predicate(item)) {
        this.waiters.delete(waiter);
        clearTimeout(waiter.timer);
        waiter.resolve(item);
      }
    }
  }

  waitFor(predicate: (item: T) => boolean, timeoutMs: number, what: string): Promise<T> {
    const found = this.items.find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter<T> = {
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}.\n${this.describeRecent(this.items)}`));
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /** Rejects every pending wait (the fake is closing). */
  abort(reason: string): void {
    for (const waiter of this.waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(reason));
    }
    this.waiters.clear();
  }
}

export async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export interface ParsedFile {
  field: string;
  filename: string;
  contentType: string;
  data: Buffer;
}

export interface ParsedBody {
  json?: unknown;
  files: ParsedFile[];
  /** Why the body could not be read, if it could not. */
  error?: string;
}

/** Reads a JSON body, or a multipart body as discord.js sends it (`payload_json` plus `files[n]`). */
export async function parseBody(raw: Buffer, contentType: string | undefined): Promise<ParsedBody> {
  if (raw.length === 0) return { files: [] };
  const type = (contentType ?? '').toLowerCase();
  if (type.startsWith('multipart/form-data')) {
    let form: FormData;
    try {
      form = await new Response(raw, { headers: { 'content-type': contentType ?? '' } }).formData();
    } catch (err) {
      return { files: [], error: `unreadable multipart body: ${String(err)}` };
    }
    const files: ParsedFile[] = [];
    let json: unknown;
    let error: string | undefined;
    for (const [field, value] of form.entries()) {
      if (typeof value === 'string') {
        if (field === 'payload_json') {
          try {
            json = JSON.parse(value);
          } catch {
            error = 'payload_json is not JSON';
          }
        }
        continue;
      }
      files.push({
        field,
        filename: value.name,
        contentType: value.type,
        data: Buffer.from(await value.arrayBuffer()),
      });
    }
    const parsed: ParsedBody = { files };
    if (json !== undefined) parsed.json = json;
    if (error !== undefined) parsed.error = error;
    return parsed;
  }
  try {
    return { json: JSON.parse(raw.toString('utf8')), files: [] };
  } catch {
    return { files: [], error: 'body is not JSON' };
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (body === undefined || status === 204) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

export function flattenHeaders(headers: IncomingMessage['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

const TYPES_BY_EXTENSION: Record<string, string> = {
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  gif: 'image/gif',
  avif: 'image/avif',
  txt: 'text/plain; charset=utf-8',
  json: 'application/json',
  toml: 'application/toml',
  zip: 'application/zip',
};

/** The content type Discord reports for an upload: the declared one, else one from the extension. */
export function contentTypeFor(filename: string, declared: string | undefined): string | undefined {
  if (declared && declared !== 'application/octet-stream') return declared;
  const ext = filename.split('.').pop()?.toLowerCase() ?? '';
  return TYPES_BY_EXTENSION[ext] ?? declared;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
