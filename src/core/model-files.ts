import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { Agent, fetch as undiciFetch } from 'undici';
import type { Logger } from './logger.ts';

/**
 * Model files kept like the tagger's (see tagger-model.ts): an admin's folder, or a one-time
 * download into `DATA_DIR/models/<label>/<hash of the URL>/`, streamed to a temporary file and
 * renamed into place, each file checked against a known SHA-256 or the one recorded at its first
 * download (`<file>.sha256`).
 */

const DEFAULT_MAX_BYTES = 4 * 1024 ** 3;

/** A model cannot be used; the message is for the bot's admin (what is wrong, what to do). Each model has its own subclass. */
export class ModelUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelUnavailableError';
  }
}

const inFlight = new Map<string, Promise<string>>();

/** What differs between the models kept this way: their files, names and error type. */
export interface ModelFilesSpec<K extends string> {
  /** 'tagger', 'captioner': in messages, logs and the cache folder `DATA_DIR/models/<label>/`. */
  label: string;
  files: readonly { key: K; name: string }[];
  /** The admin's folder setting, e.g. TAGGER_MODEL_DIR. */
  dirVar: string;
  /** The download URL setting, e.g. TAGGER_MODEL_URL. */
  urlVar: string;
  /** What the files are, for messages: "model.onnx and selected_tags.csv". */
  filesText: string;
  /** Where they come from, for messages: "a WD14 tagger (e.g. SmilingWolf/wd-vit-tagger-v3)". */
  sourceText: string;
  known: Readonly<Record<string, Partial<Record<K, string>>>>;
  unavailable: (message: string, options?: { cause?: unknown }) => ModelUnavailableError;
}

export interface EnsureModelFilesOptions<K extends string> {
  modelDir?: string | undefined;
  modelUrl: string;
  dataDir: string;
  expectedSha256?: Partial<Record<K, string>>;
  maxBytes?: number;
  signal?: AbortSignal;
  fetchImpl?: typeof undiciFetch;
  logger?: Logger;
}

/** The folder a URL's files are kept in: `DATA_DIR/models/<label>/<first 16 hex of sha256(url)>`. */
export function modelCacheDir(label: string, dataDir: string, modelUrl: string): string {
  const id = createHash('sha256').update(normalizeUrl(modelUrl)).digest('hex').slice(0, 16);
  return path.join(dataDir, 'models', label, id);
}

/**
 * Returns a folder holding the spec's files, downloading them on first use. Throws the spec's
 * unavailable error with an admin-facing message when that cannot be done.
 */
export async function ensureModelFiles<K extends string>(spec: ModelFilesSpec<K>, opts: EnsureModelFilesOptions<K>): Promise<string> {
  if (opts.modelDir !== undefined) return checkModelDir(spec, opts.modelDir);
  const dir = modelCacheDir(spec.label, opts.dataDir, opts.modelUrl);
  // Two callers in one process share one download.
  let pending = inFlight.get(dir);
  if (!pending) {
    pending = fillCacheDir(spec, dir, opts).finally(() => inFlight.delete(dir));
    inFlight.set(dir, pending);
  }
  return pending;
}

async function checkModelDir<K extends string>(spec: ModelFilesSpec<K>, dir: string): Promise<string> {
  for (const { name } of spec.files) {
    const file = path.join(dir, name);
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile() || st.size === 0) {
      throw spec.unavailable(
        `The ${spec.label} model folder ${dir} (${spec.dirVar}) has no ${st ? 'usable ' : ''}${name}. ` +
          `It needs ${spec.filesText} from ${spec.sourceText}, ` +
          `or unset ${spec.dirVar} to download them from ${spec.urlVar}.`,
      );
    }
  }
  return dir;
}

function hintDir(spec: ModelFilesSpec<string>): string {
  return `or set ${spec.dirVar} to a folder holding ${spec.filesText}`;
}

async function fillCacheDir<K extends string>(spec: ModelFilesSpec<K>, dir: string, opts: EnsureModelFilesOptions<K>): Promise<string> {
  const baseUrl = normalizeUrl(opts.modelUrl);
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw spec.unavailable(`Cannot create the ${spec.label} model folder ${dir}: ${describe(err)}. Check DATA_DIR.`, { cause: err });
  }
  for (const { key, name } of spec.files) {
    const file = path.join(dir, name);
    await mkdir(path.dirname(file), { recursive: true });
    const known = opts.expectedSha256?.[key] ?? spec.known[baseUrl]?.[key];
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
      opts.logger?.warn({ file, expected, actual: present }, `${spec.label} file does not match its checksum; downloading it again`);
      await rm(file, { force: true });
    }
    const url = `${baseUrl}/${name}`;
    opts.logger?.info({ url, dir }, `downloading ${spec.label} file`);
    const got = await download(spec, url, file, opts);
    if (expected !== undefined && got.sha256 !== expected.toLowerCase()) {
      await rm(file, { force: true });
      const whose = known !== undefined ? 'the published checksum' : `the checksum recorded at the first download (${sidecarPath(file)})`;
      throw spec.unavailable(
        `The ${spec.label} file downloaded from ${url} has SHA-256 ${got.sha256}, not ${expected.toLowerCase()} (${whose}). ` +
          'Either the download was damaged or the file changed upstream. Try again; to accept a new upstream version, ' +
          `delete ${dir}; ${hintDir(spec)}.`,
      );
    }
    if (known === undefined) await writeSidecar(file, got.sha256);
    await rememberHash(file, got.sha256);
    opts.logger?.info({ url, bytes: got.bytes, sha256: got.sha256 }, `${spec.label} file downloaded`);
  }
  await writeFile(path.join(dir, 'source.txt'), `${baseUrl}\n`).catch(() => undefined);
  return dir;
}

/**
 * Our own connection pool for model downloads (undici's defaults), never the process-wide
 * dispatcher that other libraries share and may configure. Created on first use.
 */
let agent: Agent | undefined;
function modelAgent(): Agent {
  agent ??= new Agent();
  return agent;
}

async function download<K extends string>(
  spec: ModelFilesSpec<K>,
  url: string,
  file: string,
  opts: EnsureModelFilesOptions<K>,
): Promise<{ bytes: number; sha256: string }> {
  const fetchImpl = opts.fetchImpl ?? undiciFetch;
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const failed = (why: string, cause?: unknown) =>
    spec.unavailable(
      `Could not download the ${spec.label} model file ${url}: ${why}. ` +
        `Check ${spec.urlVar} (the folder holding ${spec.filesText}) and that this machine can reach ${hostOf(url)}, ${hintDir(spec)}.`,
      cause === undefined ? undefined : { cause },
    );

  let res: Awaited<ReturnType<typeof undiciFetch>>;
  try {
    res = await fetchImpl(url, { redirect: 'follow', dispatcher: modelAgent(), ...(opts.signal ? { signal: opts.signal } : {}) });
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
