import { readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import sharp from 'sharp';
import type { OutputInfo, Sharp } from 'sharp';
import { TAGGER_MODEL_FILE, TAGGER_TAGS_FILE, TaggerUnavailableError } from './tagger-model.ts';

export { TaggerUnavailableError };

/**
 * The WD14-family ONNX tagger (kohya `finetune/tag_images_by_wd14_tagger.py --onnx`, contract §8).
 * The one module that loads onnxruntime-node (in a worker thread it starts) and sets its options.
 *
 * Preprocessing follows kohya: alpha composited on white (PIL's rounding), padded to a square
 * with 255 (`pad//2` left/top, the odd pixel right/bottom), resized to the model's size, RGB→BGR,
 * float32 0–255 NHWC, no normalisation, no EXIF rotation (masters are already upright).
 *
 * Resizing: enlarging (images whose long side is under the model size) is PIL's LANCZOS
 * reimplemented here, bit for bit. Shrinking — the common case — cannot be exact: sharp (libvips)
 * has no cv2 INTER_AREA, so it uses libvips' Catmull-Rom `cubic` reduce, the closest of sharp's
 * kernels (on photo-like images a mean difference of about 0.5 level out of 255, up to ~20 at
 * sharp edges; an integer-factor shrink is not an exact box average — the kernel reaches past
 * the box). Images with an embedded ICC profile are converted to sRGB by sharp, where PIL
 * would take the raw values.
 *
 * Inference runs in batches, in a worker thread that owns the ONNX Runtime session
 * (onnxruntime-node runs a model synchronously on the calling thread: on the main thread it would
 * stall everything else for a whole batch). While the worker infers batch k, the main thread keeps
 * decoding and resizing the next batches (sharp, on libuv's thread pool), so preprocessing stays off
 * the critical path as long as it is cheaper than inference.
 */

export const DEFAULT_TAGGER_SIZE = 448;
export const DEFAULT_BATCH_SIZE = 8;
export const DEFAULT_GENERAL_THRESHOLD = 0.35;
export const DEFAULT_CHARACTER_THRESHOLD = 0.85;

/** Images being prepared while a batch is inferred: at least this many, and at least two batches. */
const PREFETCH_IMAGES = 16;

export interface LoadTaggerOptions {
  /** ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per physical core). */
  intraOpThreads?: number;
}

export interface TagOptions {
  /** General tags with p >= this are kept (default 0.35). */
  generalThreshold?: number;
  /** Character tags with p >= this are kept (default 0.85). */
  characterThreshold?: number;
  /** Return the rating (argmax of the rating rows) in `rating` (default false). */
  includeRating?: boolean;
  /** Tags to leave out, compared after the underscore rule (`long_hair` and `long hair` both work). */
  undesired?: readonly string[];
  /** Images per `session.run` (default 8); a fixed batch dimension in the model wins. */
  batchSize?: number;
}

export interface TagResult {
  /** General tags (CSV order) then character tags (CSV order); `_` → space for tags longer than 3 characters. */
  tags: string[];
  /** Probability of each returned tag (and of the rating, when asked for), keyed as returned. */
  scores: Record<string, number>;
  /** With `includeRating`: `general`, `sensitive`, `questionable` or `explicit`. Never inside `tags`. */
  rating?: string;
}

export interface TaggerInfo {
  modelDir: string;
  inputName: string;
  outputName: string;
  /** Input height = width. */
  size: number;
  /** The model's fixed batch dimension, if it has one. */
  fixedBatch: number | undefined;
  /** Rows of selected_tags.csv = outputs per image. */
  tagCount: number;
}

export interface TaggerStats {
  images: number;
  batches: number;
  /** Time spent inside `session.run` (measured in the worker thread that runs it). */
  inferenceMs: number;
}

export interface Tagger {
  readonly info: TaggerInfo;
  tag(images: readonly (Buffer | string)[], opts?: TagOptions): Promise<TagResult[]>;
  /** Totals since the tagger was loaded. */
  stats(): TaggerStats;
  /** Waits for running `tag` calls, then frees the model. */
  close(): Promise<void>;
}

/** One input image could not be decoded; `index` is its position in the `tag` call. */
export class TaggerImageError extends Error {
  constructor(
    readonly index: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TaggerImageError';
  }
}

export interface SelectedTag {
  name: string;
  /** The name as returned: `_` → space when longer than 3 characters (kohya `--remove_underscore`). */
  display: string;
  category: number;
}

const CATEGORY_GENERAL = 0;
const CATEGORY_CHARACTER = 4;
const CATEGORY_RATING = 9;

/** Loads `model.onnx` and `selected_tags.csv` from `dir`. Problems are `TaggerUnavailableError`s. */
export async function loadTagger(dir: string, opts: LoadTaggerOptions = {}): Promise<Tagger> {
  const modelPath = path.join(dir, TAGGER_MODEL_FILE);
  const tagsPath = path.join(dir, TAGGER_TAGS_FILE);
  for (const file of [modelPath, tagsPath]) {
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile()) {
      throw new TaggerUnavailableError(
        `The tagger model file ${file} is missing. The folder must hold model.onnx and selected_tags.csv of a WD14 tagger.`,
      );
    }
  }
  let csv: string;
  try {
    csv = await readFile(tagsPath, 'utf8');
  } catch (err) {
    throw new TaggerUnavailableError(`Cannot read ${tagsPath}: ${errText(err)}.`, { cause: err });
  }
  const rows = parseSelectedTags(csv, tagsPath);

  let session: SessionThread;
  try {
    session = await SessionThread.start(modelPath, sessionOptions(opts));
  } catch (err) {
    throw new TaggerUnavailableError(
      `ONNX Runtime could not load the tagger model ${modelPath} (a damaged or incomplete download, or not an ONNX model): ${errText(err)}. ` +
        'Replace the file (delete it to have it downloaded again).',
      { cause: err },
    );
  }
  try {
    const info = describeModel(session.model, dir, modelPath, rows.length);
    return new OnnxTagger(session, info, rows);
  } catch (err) {
    await session.close();
    throw err;
  }
}

function sessionOptions(opts: LoadTaggerOptions): InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    interOpNumThreads: 1,
    ...(opts.intraOpThreads !== undefined ? { intraOpNumThreads: opts.intraOpThreads } : {}),
    // ONNX Runtime logs to stderr on its own; keep it to errors.
    logSeverityLevel: 3,
  };
}

function describeModel(session: ModelIo, dir: string, modelPath: string, tagCount: number): TaggerInfo {
  const bad = (why: string) => new TaggerUnavailableError(`${modelPath} is not a WD14 tagger model: ${why}.`);
  const inputName = session.inputNames[0];
  const outputName = session.outputNames[0];
  if (inputName === undefined || outputName === undefined) throw bad('it has no input or no output');

  const input = session.inputMetadata[0];
  let size = DEFAULT_TAGGER_SIZE;
  let fixedBatch: number | undefined;
  if (input && input.isTensor) {
    if (input.type !== 'float32') throw bad(`its input is ${input.type}, not float32`);
    const shape = input.shape;
    if (shape.length > 0) {
      if (shape.length !== 4 || (typeof shape[3] === 'number' && shape[3] !== 3)) {
        throw bad(`its input shape is [${shape.join(', ')}], not [batch, height, width, 3]`);
      }
      const [batch, h, w] = shape;
      if (typeof h === 'number' && typeof w === 'number') {
        if (h !== w || h <= 0) throw bad(`its input is ${w}×${h}, not square`);
        size = h;
      } else if (typeof h === 'number' || typeof w === 'number') {
        size = typeof h === 'number' ? h : (w as number);
      }
      if (typeof batch === 'number' && batch > 0) fixedBatch = batch;
    }
  } else if (input && !input.isTensor) {
    throw bad('its input is not a tensor');
  }

  const output = session.outputMetadata[0];
  if (output && output.isTensor && output.shape.length > 0) {
    const width = output.shape[output.shape.length - 1];
    if (typeof width === 'number' && width !== tagCount) {
      throw new TaggerUnavailableError(
        `The tagger model ${modelPath} gives ${width} scores per image but ${TAGGER_TAGS_FILE} lists ${tagCount} tags: ` +
          'the two files come from different taggers. Put the matching pair in the folder.',
      );
    }
  }
  return { modelDir: dir, inputName, outputName, size, fixedBatch, tagCount };
}

/** What the model declares, as `InferenceSession` reports it. */
interface ModelIo {
  inputNames: readonly string[];
  outputNames: readonly string[];
  inputMetadata: readonly InferenceSession.ValueMetadata[];
  outputMetadata: readonly InferenceSession.ValueMetadata[];
}

interface RunResult {
  /** The output tensor's element type (`float32` for a tagger). */
  dtype: string;
  data: unknown;
  /** Time inside `session.run`, measured in the worker. */
  ms: number;
}

type FromWorker =
  | ({ type: 'ready' } & ModelIo)
  | { type: 'failed'; message: string }
  | ({ type: 'result'; id: number } & RunResult)
  | { type: 'error'; id: number; message: string }
  | { type: 'released' };

/**
 * The worker's code (CommonJS, run with `eval`, so it needs no loader for TypeScript). It owns the
 * InferenceSession: onnxruntime-node runs a model synchronously on the thread that calls
 * `run`, which would otherwise block the main thread — and with it sharp's callbacks, timers and
 * queue lock renewals — for a whole batch.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.ortPath);
const message = (err) => (err && err.message) || String(err);
ort.InferenceSession.create(workerData.modelPath, workerData.options).then(
  (session) => {
    parentPort.postMessage({
      type: 'ready',
      inputNames: session.inputNames,
      outputNames: session.outputNames,
      inputMetadata: session.inputMetadata,
      outputMetadata: session.outputMetadata,
    });
    // One run at a time, in order, so that each one's time is its own.
    let queue = Promise.resolve();
    const run = async (msg) => {
      try {
        const input = new ort.Tensor('float32', msg.data, msg.dims);
        const started = performance.now();
        const out = await session.run({ [msg.inputName]: input }, [msg.outputName]);
        const ms = performance.now() - started;
        const tensor = out[msg.outputName];
        const data = tensor.data;
        const transfer = ArrayBuffer.isView(data) ? [data.buffer] : [];
        parentPort.postMessage({ type: 'result', id: msg.id, ms, dtype: tensor.type, data }, transfer);
      } catch (err) {
        parentPort.postMessage({ type: 'error', id: msg.id, message: message(err) });
      }
    };
    const release = async () => {
      await session.release().catch(() => undefined);
      parentPort.postMessage({ type: 'released' });
    };
    parentPort.on('message', (msg) => {
      queue = queue.then(() => (msg.type === 'release' ? release() : run(msg)));
    });
  },
  (err) => parentPort.postMessage({ type: 'failed', message: message(err) }),
);
`;

/** An ONNX Runtime session living in a worker thread; batches go there and back without copies. */
class SessionThread {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: RunResult) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;
  private released: (() => void) | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly model: ModelIo,
  ) {
    worker.on('message', (msg: FromWorker) => this.onMessage(msg));
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => this.fail(new Error(`the tagger's worker thread exited (code ${code})`)));
    worker.unref();
  }

  static start(modelPath: string, options: InferenceSession.SessionOptions): Promise<SessionThread> {
    const ortPath = createRequire(import.meta.url).resolve('onnxruntime-node');
    const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { ortPath, modelPath, options } });
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => {
        cleanup();
        reject(err);
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new Error(`the tagger's worker thread exited while loading (code ${code})`));
      };
      const onMessage = (msg: FromWorker) => {
        cleanup();
        if (msg.type === 'ready') {
          const { inputNames, outputNames, inputMetadata, outputMetadata } = msg;
          resolve(new SessionThread(worker, { inputNames, outputNames, inputMetadata, outputMetadata }));
        } else {
          void worker.terminate();
          reject(new Error(msg.type === 'failed' ? msg.message : `unexpected message ${msg.type}`));
        }
      };
      const cleanup = () => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        worker.off('message', onMessage);
      };
      worker.on('error', onError);
      worker.on('exit', onExit);
      worker.on('message', onMessage);
    });
  }

  /** Runs one batch; `data` is handed over to the worker (detached here). */
  run(inputName: string, outputName: string, data: Float32Array, dims: number[]): Promise<RunResult> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<RunResult>((resolve, reject) => {
      // Keep the process alive while a batch is out; an idle tagger does not hold it open.
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'run', id, inputName, outputName, data, dims }, [data.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    if (!this.dead) {
      this.worker.ref();
      await new Promise<void>((resolve) => {
        this.released = resolve;
        // A worker that does not answer is terminated all the same.
        setTimeout(resolve, 5_000).unref();
        this.worker.postMessage({ type: 'release' });
      });
    }
    this.dead ??= new Error('The tagger is closed.');
    await this.worker.terminate();
  }

  private settle(id: number): { resolve: (r: RunResult) => void; reject: (e: Error) => void } | undefined {
    const entry = this.pending.get(id);
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
    return entry;
  }

  private onMessage(msg: FromWorker): void {
    if (msg.type === 'result') this.settle(msg.id)?.resolve({ dtype: msg.dtype, data: msg.data, ms: msg.ms });
    else if (msg.type === 'error') this.settle(msg.id)?.reject(new Error(msg.message));
    else if (msg.type === 'released') this.released?.();
  }

  private fail(err: Error): void {
    this.dead ??= err;
    this.released?.();
    for (const [id, entry] of [...this.pending]) {
      this.settle(id);
      entry.reject(err);
    }
  }
}

class OnnxTagger implements Tagger {
  private closed = false;
  private readonly running = new Set<Promise<unknown>>();
  private readonly totals: TaggerStats = { images: 0, batches: 0, inferenceMs: 0 };
  private readonly general: number[] = [];
  private readonly character: number[] = [];
  private readonly rating: number[] = [];

  constructor(
    private readonly session: SessionThread,
    readonly info: TaggerInfo,
    private readonly rows: readonly SelectedTag[],
  ) {
    rows.forEach((row, i) => {
      if (row.category === CATEGORY_GENERAL) this.general.push(i);
      else if (row.category === CATEGORY_CHARACTER) this.character.push(i);
      else if (row.category === CATEGORY_RATING) this.rating.push(i);
    });
  }

  stats(): TaggerStats {
    return { ...this.totals };
  }

  tag(images: readonly (Buffer | string)[], opts: TagOptions = {}): Promise<TagResult[]> {
    const job = this.tagAll(images, opts);
    this.running.add(job);
    const forget = () => this.running.delete(job);
    void job.then(forget, forget);
    return job;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.running]);
    await this.session.close();
  }

  private async tagAll(images: readonly (Buffer | string)[], opts: TagOptions): Promise<TagResult[]> {
    if (this.closed) throw new Error('The tagger is closed.');
    const n = images.length;
    if (n === 0) return [];
    const batchSize = this.info.fixedBatch ?? Math.max(1, Math.floor(opts.batchSize ?? DEFAULT_BATCH_SIZE));
    const batches = Math.ceil(n / batchSize);
    const ahead = Math.max(2, Math.ceil(PREFETCH_IMAGES / batchSize));

    const prepared = new Map<number, Promise<Float32Array>>();
    const prepare = (k: number) => {
      if (k >= batches || prepared.has(k)) return;
      const p = this.prepareBatch(images, k * batchSize, Math.min(n, (k + 1) * batchSize), batchSize);
      // Awaited in turn below; until then a failure must not count as unhandled.
      p.catch(() => undefined);
      prepared.set(k, p);
    };
    // The first batch alone, so that its images are not queued behind the next ones'.
    prepare(0);

    const post = postprocessor(this.rows, this.general, this.character, this.rating, opts);
    const width = this.rows.length;
    const results: TagResult[] = [];
    const collect = async (k: number, inference: Promise<Float32Array>) => {
      const probs = await inference;
      const count = Math.min(batchSize, n - k * batchSize);
      for (let i = 0; i < count; i++) results.push(post(probs.subarray(i * width, (i + 1) * width)));
      this.totals.images += count;
    };
    // Batch k is handed to the worker before batch k - 1's scores are read, so the worker always
    // has the next batch queued and never waits for the main thread.
    let previous: { k: number; inference: Promise<Float32Array> } | undefined;
    for (let k = 0; k < batches; k++) {
      const batch = prepared.get(k);
      if (!batch) throw new Error(`batch ${k} was not prepared`);
      const data = await batch;
      prepared.delete(k);
      for (let next = k + 1; next <= k + ahead; next++) prepare(next);
      if (this.closed) throw new Error('The tagger was closed while tagging.');
      const inference = this.infer(data, batchSize);
      inference.catch(() => undefined);
      if (previous) await collect(previous.k, previous.inference);
      previous = { k, inference };
    }
    if (previous) await collect(previous.k, previous.inference);
    return results;
  }

  private async prepareBatch(images: readonly (Buffer | string)[], from: number, to: number, batchSize: number): Promise<Float32Array> {
    const size = this.info.size;
    const per = size * size * 3;
    const jobs: Promise<Buffer>[] = [];
    for (let index = from; index < to; index++) {
      const image = images[index];
      jobs.push(
        image === undefined
          ? Promise.reject(new TaggerImageError(index, `Image ${index + 1} is missing.`))
          : taggerBgr(image, size).catch((err: unknown) => {
              const what = typeof image === 'string' ? image : `${image.byteLength}-byte buffer`;
              throw new TaggerImageError(index, `Image ${index + 1} (${what}) could not be read: ${errText(err)}`, { cause: err });
            }),
      );
    }
    const pixels = await Promise.all(jobs);
    // Rows past the last image stay zero (a fixed batch dimension must be filled).
    const data = new Float32Array(batchSize * per);
    pixels.forEach((bgr, i) => data.set(bgr, i * per));
    return data;
  }

  private async infer(data: Float32Array, batchSize: number): Promise<Float32Array> {
    const { inputName, outputName, size, modelDir } = this.info;
    let out: RunResult;
    try {
      out = await this.session.run(inputName, outputName, data, [batchSize, size, size, 3]);
    } catch (err) {
      throw new Error(`Tagger inference failed: ${errText(err)}`, { cause: err });
    }
    this.totals.inferenceMs += out.ms;
    this.totals.batches += 1;

    const width = this.rows.length;
    if (out.dtype !== 'float32' || !(out.data instanceof Float32Array)) {
      throw new TaggerUnavailableError(`The tagger model in ${modelDir} does not output float32 scores.`);
    }
    if (out.data.length !== batchSize * width) {
      throw new TaggerUnavailableError(
        `The tagger model in ${modelDir} gives ${out.data.length / batchSize} scores per image but ${TAGGER_TAGS_FILE} lists ${width} tags: ` +
          'the two files come from different taggers.',
      );
    }
    return out.data;
  }
}

function postprocessor(
  rows: readonly SelectedTag[],
  general: readonly number[],
  character: readonly number[],
  rating: readonly number[],
  opts: TagOptions,
): (probs: Float32Array) => TagResult {
  const generalThreshold = opts.generalThreshold ?? DEFAULT_GENERAL_THRESHOLD;
  const characterThreshold = opts.characterThreshold ?? DEFAULT_CHARACTER_THRESHOLD;
  const undesired = new Set((opts.undesired ?? []).map((t) => displayName(t.trim())).filter((t) => t.length > 0));
  const pick = (probs: Float32Array, indexes: readonly number[], threshold: number, tags: string[], scores: [string, number][]) => {
    for (const i of indexes) {
      const p = probs[i];
      const row = rows[i];
      if (p === undefined || row === undefined || !(p >= threshold) || undesired.has(row.display)) continue;
      tags.push(row.display);
      scores.push([row.display, p]);
    }
  };
  return (probs) => {
    const tags: string[] = [];
    const scores: [string, number][] = [];
    pick(probs, general, generalThreshold, tags, scores);
    pick(probs, character, characterThreshold, tags, scores);
    const result: TagResult = { tags, scores: {} };
    if (opts.includeRating) {
      // numpy argmax: the first of equal maxima.
      let best: number | undefined;
      let bestP = -Infinity;
      for (const i of rating) {
        const p = probs[i] ?? -Infinity;
        if (p > bestP) [best, bestP] = [i, p];
      }
      const row = best === undefined ? undefined : rows[best];
      if (row && !undesired.has(row.display)) {
        result.rating = row.display;
        scores.push([row.display, bestP]);
      }
    }
    result.scores = Object.fromEntries(scores);
    return result;
  };
}

/** kohya `--remove_underscore`: `_` → space only for tags longer than 3 characters (keeps `^_^`). */
function displayName(tag: string): string {
  return tag.length > 3 ? tag.replaceAll('_', ' ') : tag;
}

/** Parses `selected_tags.csv` (`tag_id,name,category,count`; quoted fields allowed). */
export function parseSelectedTags(text: string, file = TAGGER_TAGS_FILE): SelectedTag[] {
  const records = parseCsv(text.replace(/^\uFEFF/, ''));
  const header = records[0]?.map((h) => h.trim().toLowerCase()) ?? [];
  const nameCol = header.indexOf('name');
  const categoryCol = header.indexOf('category');
  if (nameCol < 0 || categoryCol < 0) {
    throw new TaggerUnavailableError(
      `${file} is not a WD14 selected_tags.csv: its first line must name the columns tag_id,name,category,count (found "${(records[0] ?? []).join(',')}").`,
    );
  }
  const rows: SelectedTag[] = [];
  for (let r = 1; r < records.length; r++) {
    const record = records[r] ?? [];
    if (record.length === 1 && record[0]?.trim() === '') continue;
    const name = record[nameCol]?.trim() ?? '';
    const categoryText = record[categoryCol]?.trim() ?? '';
    const category = Number(categoryText);
    if (name === '' || categoryText === '' || !Number.isInteger(category)) {
      throw new TaggerUnavailableError(`${file} line ${r + 1} has no tag name or no numeric category: "${record.join(',')}".`);
    }
    rows.push({ name, display: displayName(name), category });
  }
  if (rows.length === 0) throw new TaggerUnavailableError(`${file} lists no tags.`);
  return rows;
}

/** RFC 4180 records (quoted fields, doubled quotes, CRLF or LF). */
function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      record.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      record.push(field);
      records.push(record);
      record = [];
      field = '';
    } else field += c;
  }
  if (field !== '' || record.length > 0) {
    record.push(field);
    records.push(record);
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// Preprocessing

/**
 * The model input for one image: `size × size × 3` float32, BGR, 0–255, row-major (HWC), as
 * kohya prepares it (see the file comment for the resizing difference).
 */
export async function preprocessForTagger(input: Buffer | string, size: number): Promise<Float32Array> {
  return new Float32Array(await taggerBgr(input, size));
}

const WHITE = { r: 255, g: 255, b: 255 };
/** RGB → BGR, as a colour matrix (exact for integer pixels). */
const SWAP_RB: [[number, number, number], [number, number, number], [number, number, number]] = [
  [0, 0, 1],
  [0, 1, 0],
  [1, 0, 0],
];

/**
 * Decoded, flattened on white, padded to a square, resized and turned BGR: `size × size × 3` bytes.
 *
 * After a header read, a square opaque image that is shrunk takes one sharp pipeline (decode,
 * resize, swap); other opaque images take two (decode and pad; resize and swap), because within
 * one pipeline sharp always resizes before it pads. Images with alpha are composited in JS with
 * PIL's rounding (sharp's flatten rounds differently). Enlarging is PIL's LANCZOS in JS, bit for
 * bit: libvips ignores the kernel when upsizing, and the input is small by definition.
 */
async function taggerBgr(input: Buffer | string, size: number): Promise<Buffer> {
  // `pipelineColourspace('srgb')` makes grey images three channels from the start, and keeps sharp
  // from shrinking JPEGs while decoding them (kohya decodes at full size).
  const decode = () => sharp(input, { failOn: 'error' }).pipelineColourspace('srgb');
  const meta = await sharp(input, { failOn: 'error' }).metadata();
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (!(width > 0 && height > 0)) throw new Error('the image has no dimensions');
  const side = Math.max(width, height);
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const pad = { top, bottom: side - height - top, left, right: side - width - left, background: WHITE };
  const shrinkAndSwap = (pipeline: Sharp): Promise<Buffer> =>
    (side === size ? pipeline : pipeline.resize(size, size, { fit: 'fill', kernel: 'cubic' }))
      .recomb(SWAP_RB)
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer()
      .then((bgr) => {
        if (bgr.length !== size * size * 3) throw new Error(`preprocessing produced ${bgr.length} bytes, not ${size}×${size}×3`);
        return bgr;
      });

  let padded: Uint8Array;
  if (meta.hasAlpha) {
    const { data, info } = await decode().ensureAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    expectRaw(info, width, height, 4);
    padded = compositeAndPad(data, width, height, side);
  } else if (side >= size && (width === height || side === size)) {
    return shrinkAndSwap(width === height ? decode() : decode().extend(pad));
  } else {
    const { data, info } = await decode().extend(pad).toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    expectRaw(info, side, side, 3);
    padded = data;
  }
  if (side < size) return lanczosEnlargeBgr(padded, side, size);
  return shrinkAndSwap(sharp(padded, { raw: { width: side, height: side, channels: 3 } }));
}

function expectRaw(info: OutputInfo, width: number, height: number, channels: number): void {
  if (info.width !== width || info.height !== height || info.channels !== channels) {
    throw new Error(`decoding gave ${info.width}×${info.height}×${info.channels}, expected ${width}×${height}×${channels}`);
  }
}

/** PIL's `paste(mask=alpha)` onto white: round((c·a + 255·(255 − a)) / 255), via PIL's DIV255. */
function onWhite(c: number, a: number): number {
  const t = c * a + 255 * (255 - a) + 128;
  return ((t >> 8) + t) >> 8;
}

/**
 * RGBA → RGB composited on white, padded to `side × side` with white (kohya: `pad_l = pad_x // 2`,
 * `pad_t = pad_y // 2`, the odd pixel to the right/bottom).
 */
function compositeAndPad(rgba: Uint8Array, width: number, height: number, side: number): Buffer {
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const out = Buffer.alloc(side * side * 3, 255);
  for (let y = 0; y < height; y++) {
    let s = y * width * 4;
    let d = ((top + y) * side + left) * 3;
    for (let x = 0; x < width; x++, s += 4, d += 3) {
      const a = rgba[s + 3]!;
      if (a === 255) {
        out[d] = rgba[s]!;
        out[d + 1] = rgba[s + 1]!;
        out[d + 2] = rgba[s + 2]!;
      } else if (a !== 0) {
        out[d] = onWhite(rgba[s]!, a);
        out[d + 1] = onWhite(rgba[s + 1]!, a);
        out[d + 2] = onWhite(rgba[s + 2]!, a);
      }
    }
  }
  return out;
}

/** PIL's 8-bit fixed-point resampling precision (`PRECISION_BITS = 32 - 8 - 2`). */
const PRECISION_BITS = 22;

interface Taps {
  first: Int32Array;
  count: Int32Array;
  /** `maxTaps` fixed-point weights per output pixel. */
  weights: Int32Array;
  maxTaps: number;
}

const tapCache = new Map<string, Taps>();

/** PIL `precompute_coeffs` + `normalize_coeffs_8bpc` for LANCZOS (a = 3) from `inSize` to `outSize`. */
function lanczosTaps(inSize: number, outSize: number): Taps {
  const key = `${inSize}>${outSize}`;
  const cached = tapCache.get(key);
  if (cached) return cached;
  const sinc = (x: number) => (x === 0 ? 1 : Math.sin(x * Math.PI) / (x * Math.PI));
  const lanczos = (x: number) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0);
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const maxTaps = Math.ceil(support) * 2 + 1;
  const taps: Taps = { first: new Int32Array(outSize), count: new Int32Array(outSize), weights: new Int32Array(outSize * maxTaps), maxTaps };
  const k = new Float64Array(maxTaps);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const n = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < n; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) / filterScale);
      total += k[x]!;
    }
    for (let x = 0; x < n; x++) {
      const w = (total !== 0 ? k[x]! / total : k[x]!) * (1 << PRECISION_BITS);
      taps.weights[xx * maxTaps + x] = w < 0 ? Math.trunc(w - 0.5) : Math.trunc(w + 0.5);
    }
    taps.first[xx] = xmin;
    taps.count[xx] = n;
  }
  tapCache.set(key, taps);
  return taps;
}

/** Rounds PIL's way: the sum started at half a unit, shifted down, clipped to 0–255. */
function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** PIL `resize(LANCZOS)` of a square RGB image (horizontal pass first, 8-bit in between), out as BGR. */
function lanczosEnlargeBgr(rgb: Uint8Array, side: number, size: number): Buffer {
  const taps = lanczosTaps(side, size);
  const { first, count, weights, maxTaps } = taps;
  const half = 1 << (PRECISION_BITS - 1);
  const tmp = new Uint8Array(side * size * 3);
  for (let y = 0; y < side; y++) {
    const row = y * side * 3;
    for (let x = 0; x < size; x++) {
      const n = count[x]!;
      const w0 = x * maxTaps;
      let s = row + first[x]! * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let i = 0; i < n; i++, s += 3) {
        const w = weights[w0 + i]!;
        r += rgb[s]! * w;
        g += rgb[s + 1]! * w;
        b += rgb[s + 2]! * w;
      }
      const d = (y * size + x) * 3;
      tmp[d] = clip8(r);
      tmp[d + 1] = clip8(g);
      tmp[d + 2] = clip8(b);
    }
  }
  const out = Buffer.allocUnsafe(size * size * 3);
  const stride = size * 3;
  for (let y = 0; y < size; y++) {
    const n = count[y]!;
    const w0 = y * maxTaps;
    const top = first[y]! * stride;
    for (let x = 0; x < size; x++) {
      let s = top + x * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let i = 0; i < n; i++, s += stride) {
        const w = weights[w0 + i]!;
        r += tmp[s]! * w;
        g += tmp[s + 1]! * w;
        b += tmp[s + 2]! * w;
      }
      const d = (y * size + x) * 3;
      out[d] = clip8(b);
      out[d + 1] = clip8(g);
      out[d + 2] = clip8(r);
    }
  }
  return out;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
