import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { fetch as undiciFetch } from 'undici';
import type { Logger } from './logger.ts';

/**
 * Where the WD14 tagger's two files come from: an admin's folder (TAGGER_MODEL_DIR), or a one-time
 * download from TAGGER_MODEL_URL into `DATA_DIR/models/tagger/<hash of the URL>/`.
 *
 * Downloads are streamed to a temporary file beside the target and renamed into place, so a
 * crash never leaves a half file under the real name. Integrity: a checksum known in advance
 * (the `expectedSha256` option, or `KNOWN_TAGGER_CHECKSUMS` for the URL) is enforced; otherwise
 * the SHA-256 of the first download is recorded in `<file>.sha256` (sha256sum format) and every
 * later load checks the file against it (trust on first use). A file that no longer matches is
 * fetched again, and the new copy must match the recorded sum.
 */

export const TAGGER_MODEL_FILE = 'model.onnx';
export const TAGGER_TAGS_FILE = 'selected_tags.csv';

/** The tagger cannot be used; the message is for the bot's admin (what is wrong, what to do). */
export class TaggerUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TaggerUnavailableError';
  }
}

export type TaggerFileKey = 'model' | 'tags';

/**
 * SHA-256 of published tagger files, by normalised TAGGER_MODEL_URL. Only immutable (commit-pinned)
 * URLs belong here: `resolve/main` moves when the repository is updated.
 *
 * The default URL (`SmilingWolf/wd-vit-tagger-v3/resolve/main`) is not listed: its model.onnx
 * comes from commit 790b0e9 ("Update model files"), whose LFS hash could not be confirmed, and
 * selected_tags.csv is a plain git file with no published hash. It is covered by the
 * `.sha256` files written on first download instead.
 */
export const KNOWN_TAGGER_CHECKSUMS: Readonly<Record<string, Partial<Record<TaggerFileKey, string>>>> = {
  // The first upload of wd-vit-tagger-v3 (Hugging Face LFS pointer, 379 MB); superseded on main.
  'https://huggingface.co/SmilingWolf/wd-vit-tagger-v3/resolve/296b77dc3cc1b0ff235bd1c19da8ff28b23cbc3c': {
    model: '0c21152f1febcd04867c4dbc7bddf781db701f7c0e14fa3b787656477a16514c',
  },
};

export interface EnsureTaggerModelOptions {
  /** TAGGER_MODEL_DIR: a folder an admin filled by hand; used as is (nothing is downloaded). */
  modelDir?: string | undefined;
  /** TAGGER_MODEL_URL: the folder URL holding `model.onnx` and `selected_tags.csv`. */
  modelUrl: string;
  /** DATA_DIR: downloads go under `models/tagger/`. */
  dataDir: string;
  /** SHA-256 (hex) the files must have; overrides `KNOWN_TAGGER_CHECKSUMS` and the recorded sums. */
  expectedSha256?: Partial<Record<TaggerFileKey, string>>;
  /** Refuse a file larger than this (default 4 GiB; the largest WD14 model is about 1.3 GB). */
  maxBytes?: number;
  signal?: AbortSignal;
  /** For tests; defaults to undici's fetch. */
  fetchImpl?: typeof undiciFetch;
  logger?: Logger;
}

const FILES: readonly { key: TaggerFileKey; name: string }[] = [
  { key: 'model', name: TAGGER_MODEL_FILE },
  { key: 'tags', name: TAGGER_TAGS_FILE },
];

const DEFAULT_MAX_BYTES = 4 * 1024 ** 3;
const HINT_DIR = 'or set TAGGER_MODEL_DIR to a folder holding model.onnx and selected_tags.csv';

/** The folder a URL's files are kept in: `DATA_DIR/models/tagger/<first 16 hex of sha256(url)>`. */
export function taggerCacheDir(dataDir: string, modelUrl: string): string {
  const id = createHash('sha256').update(normalizeUrl(modelUrl)).digest('hex').slice(0, 16);
  return path.join(dataDir, 'models', 'tagger', id);
}

const inFlight = new Map<string, Promise<string>>();

/**
 * Returns a folder holding `model.onnx` and `selected_tags.csv`, downloading them on first use.
 * Throws `TaggerUnavailableError` with an admin-facing message when that cannot be done.
 */
export async function ensureTaggerModel(opts: EnsureTaggerModelOptions): Promise<string> {
  if (opts.modelDir !== undefined) return checkModelDir(opts.modelDir);
  const dir = taggerCacheDir(opts.dataDir, opts.modelUrl);
  // Two callers in one process share one download.
  let pending = inFlight.get(dir);
  if (!pending) {
    pending = fillCacheDir(dir, opts).finally(() => inFlight.delete(dir));
    inFlight.set(dir, pending);
  }
  return pending;
}

async function checkModelDir(dir: string): Promise<string> {
  for (const { name } of FILES) {
    const file = path.join(dir, name);
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile() || st.size === 0) {
      throw new TaggerUnavailableError(
        `The tagger model folder ${dir} (TAGGER_MODEL_DIR) has no ${st ? 'usable ' : ''}${name}. ` +
          'It needs model.onnx and selected_tags.csv from a WD14 tagger (e.g. SmilingWolf/wd-vit-tagger-v3), ' +
          'or unset TAGGER_MODEL_DIR to download them from TAGGER_MODEL_URL.',
      );
    }
  }
  return dir;
}

async function fillCacheDir(dir: string, opts: EnsureTaggerModelOptions): Promise<string> {
  const baseUrl = normalizeUrl(opts.modelUrl);
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw new TaggerUnavailableError(`Cannot create the tagger model folder ${dir}: ${describe(err)}. Check DATA_DIR.`, { cause: err });
  }
  for (const { key, name } of FILES) {
    const file = path.join(dir, name);
    const known = opts.expectedSha256?.[key] ?? KNOWN_TAGGER_CHECKSUMS[baseUrl]?.[key];
    const recorded = known === undefined ? await readSidecar(file) : undefined;
    const expected = known ?? recorded;
    const present = await sha256OfFile(file);
    if (present !== undefined) {
      if (expected === undefined) {
        // Put there by hand or by a run that stopped before recording: trust it from now on.
        await writeSidecar(file, present);
        continue;
      }
      if (present === expected.toLowerCase()) continue;
      opts.logger?.warn({ file, expected, actual: present }, 'tagger file does not match its checksum; downloading it again');
      await rm(file, { force: true });
    }
    const url = `${baseUrl}/${name}`;
    opts.logger?.info({ url, dir }, 'downloading tagger file');
    const got = await download(url, file, opts);
    if (expected !== undefined && got.sha256 !== expected.toLowerCase()) {
      await rm(file, { force: true });
      const whose = known !== undefined ? 'the published checksum' : `the checksum recorded at the first download (${sidecarPath(file)})`;
      throw new TaggerUnavailableError(
        `The tagger file downloaded from ${url} has SHA-256 ${got.sha256}, not ${expected.toLowerCase()} (${whose}). ` +
          'Either the download was damaged or the file changed upstream. Try again; to accept a new upstream version, ' +
          `delete ${dir}; ${HINT_DIR}.`,
      );
    }
    if (known === undefined) await writeSidecar(file, got.sha256);
    await rememberHash(file, got.sha256);
    opts.logger?.info({ url, bytes: got.bytes, sha256: got.sha256 }, 'tagger file downloaded');
  }
  await writeFile(path.join(dir, 'source.txt'), `${baseUrl}\n`).catch(() => undefined);
  return dir;
}

async function download(url: string, file: string, opts: EnsureTaggerModelOptions): Promise<{ bytes: number; sha256: string }> {
  const fetchImpl = opts.fetchImpl ?? undiciFetch;
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const failed = (why: string, cause?: unknown) =>
    new TaggerUnavailableError(
      `Could not download the tagger model file ${url}: ${why}. ` +
        `Check TAGGER_MODEL_URL (the folder holding model.onnx and selected_tags.csv) and that this machine can reach ${hostOf(url)}, ${HINT_DIR}.`,
      cause === undefined ? undefined : { cause },
    );

  let res: Awaited<ReturnType<typeof undiciFetch>>;
  try {
    res = await fetchImpl(url, { redirect: 'follow', ...(opts.signal ? { signal: opts.signal } : {}) });
  } catch (err) {
    throw failed(describe(err), err);
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel().catch(() => undefined);
    throw failed(`the server answered ${res.status} ${res.statusText}`.trim());
  }
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) {
    await res.body.cancel().catch(() => undefined);
    throw failed(`it is ${declared} bytes, more than the ${maxBytes} allowed`);
  }

  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomUUID().slice(0, 8)}.part`);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    await pipeline(
      Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>),
      async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          bytes += chunk.byteLength;
          if (bytes > maxBytes) throw new Error(`it is larger than the ${maxBytes} bytes allowed`);
          hash.update(chunk);
          yield chunk;
        }
      },
      createWriteStream(tmp),
    );
    if (Number.isFinite(declared) && bytes !== declared) {
      throw new Error(`the connection ended after ${bytes} of ${declared} bytes`);
    }
    if (bytes === 0) throw new Error('the file is empty');
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw failed(describe(err), err);
  }
  return { bytes, sha256: hash.digest('hex') };
}

function sidecarPath(file: string): string {
  return `${file}.sha256`;
}

async function readSidecar(file: string): Promise<string | undefined> {
  const text = await readFile(sidecarPath(file), 'utf8').catch(() => undefined);
  const match = text?.match(/^([0-9a-f]{64})\b/i);
  return match?.[1]?.toLowerCase();
}

/** `<hex>  <name>` like sha256sum, so `sha256sum -c model.onnx.sha256` works in the folder. */
async function writeSidecar(file: string, sha256: string): Promise<void> {
  const target = sidecarPath(file);
  const tmp = `${target}.${process.pid}.tmp`;
  await writeFile(tmp, `${sha256}  ${path.basename(file)}\n`);
  await rename(tmp, target);
}

// Hashing a 400 MB model takes about a second; skip it when the file is unchanged since last time.
const hashCache = new Map<string, { size: number; mtimeMs: number; sha256: string }>();

async function sha256OfFile(file: string): Promise<string | undefined> {
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  const cached = hashCache.get(file);
  if (cached && cached.size === st.size && cached.mtimeMs === st.mtimeMs) return cached.sha256;
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) hash.update(chunk);
  });
  const sha256 = hash.digest('hex');
  hashCache.set(file, { size: st.size, mtimeMs: st.mtimeMs, sha256 });
  return sha256;
}

async function rememberHash(file: string, sha256: string): Promise<void> {
  const st = await stat(file);
  hashCache.set(file, { size: st.size, mtimeMs: st.mtimeMs, sha256 });
}

function normalizeUrl(url: string): string {
  return url.trim().replace(/\/+$/, '');
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  // undici's fetch reports network failures as `TypeError: fetch failed` with the reason as cause.
  const cause = err.cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code && !cause.message.includes(code) ? `${cause.message} (${code})` : cause.message;
  }
  return err.message;
}
