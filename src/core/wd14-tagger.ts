import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { BatchImageError } from './errors.ts';
import { taggerBgr } from './tagger-preprocess.ts';
import { SessionThread, type ModelIo, type RunResult } from './tagger-session.ts';
import { TAGGER_MODEL_FILE, TAGGER_TAGS_FILE, TaggerUnavailableError } from './tagger-model.ts';

export { TaggerUnavailableError };

/**
 * The WD14-family ONNX tagger (kohya `finetune/tag_images_by_wd14_tagger.py --onnx`, contract §8).
 * It sets ONNX Runtime's session options; the session itself lives in a worker thread
 * (tagger-session.ts, tagger-thread.ts) and the input is prepared as kohya does
 * (tagger-preprocess.ts, where the one known difference is described).
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

/** One image given to `tag` could not be decoded; the others of the batch are fine. */
export class TaggerImageError extends BatchImageError {
  override name = 'TaggerImageError';
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
      throw new TaggerUnavailableError(`The tagger model file ${file} is missing. The folder must hold model.onnx and selected_tags.csv of a WD14 tagger.`);
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

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
