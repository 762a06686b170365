import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import type { OutputInfo, Sharp } from 'sharp';
import { TAGGER_MODEL_FILE, TAGGER_TAGS_FILE, TaggerUnavailableError } from './tagger-model.ts';

export { TaggerUnavailableError };

/**
 * The WD14-family ONNX tagger (kohya `finetune/tag_images_by_wd14_tagger.py --onnx`, contract §8).
 * The one module that imports onnxruntime-node and sets its options.
 *
 * Preprocessing follows kohya: alpha composited on white (PIL's rounding), padded to a square
 * with 255 (`pad//2` left/top, the odd pixel right/bottom), resized to the model's size, RGB→BGR,
 * float32 0–255 NHWC, no normalisation, no EXIF rotation (masters are already upright).
 *
 * Resizing is the one place that is not bit-exact, because sharp (libvips) has neither of kohya's
 * filters. Shrinking uses libvips' Catmull-Rom `cubic` reduce for cv2 INTER_AREA (the closest
 * of sharp's kernels: on photo-like images the mean difference is 0.2–1.5 levels out of 255, a few
 * pixels up to ~10; an integer-factor shrink is *not* an exact box average). Enlarging (images
 * whose long side is under the model size) uses libvips' upscaler (bicubic interpolation; sharp
 * ignores the kernel when enlarging) for PIL LANCZOS: mean difference ~1 level on smooth images,
 * more on noisy ones. Images with an embedded ICC profile are converted to sRGB by sharp, where PIL
 * would take the raw values.
 *
 * Inference runs in batches; `session.run` blocks the main thread (onnxruntime-node runs it
 * synchronously inside a setImmediate), so the next batches' decoding and resizing are queued on
 * libuv's thread pool *before* each run and proceed while it runs. Only the short JS steps
 * (padding, the BGR float copy) happen between runs.
 */

export const DEFAULT_TAGGER_SIZE = 448;
export const DEFAULT_BATCH_SIZE = 8;
export const DEFAULT_GENERAL_THRESHOLD = 0.35;
export const DEFAULT_CHARACTER_THRESHOLD = 0.85;

/** Images being prepared ahead of the running batch: at least this many, and at least three batches. */
const PREFETCH_IMAGES = 24;

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
  /** Time spent inside `session.run`, from the start of the native call to its result. */
  inferenceMs: number;
  /** Time `tag` waited for a batch's images to be decoded and resized (the pipeline not keeping up). */
  waitMs: number;
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

  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(modelPath, sessionOptions(opts));
  } catch (err) {
    throw new TaggerUnavailableError(
      `ONNX Runtime could not load the tagger model ${modelPath} (a damaged or incomplete download, or not an ONNX model): ${errText(err)}. ` +
        'Replace the file (delete it to have it downloaded again).',
      { cause: err },
    );
  }
  try {
    const info = describeModel(session, dir, modelPath, rows.length);
    return new OnnxTagger(session, info, rows);
  } catch (err) {
    await session.release().catch(() => undefined);
    throw err;
  }
}

function sessionOptions(opts: LoadTaggerOptions): ort.InferenceSession.SessionOptions {
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

function describeModel(session: ort.InferenceSession, dir: string, modelPath: string, tagCount: number): TaggerInfo {
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
  private readonly totals: TaggerStats = { images: 0, batches: 0, inferenceMs: 0, waitMs: 0 };
  private readonly general: number[] = [];
  private readonly character: number[] = [];
  private readonly rating: number[] = [];

  constructor(
    private readonly session: ort.InferenceSession,
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
    await this.session.release();
  }

  private async tagAll(images: readonly (Buffer | string)[], opts: TagOptions): Promise<TagResult[]> {
    if (this.closed) throw new Error('The tagger is closed.');
    const n = images.length;
    if (n === 0) return [];
    const batchSize = this.info.fixedBatch ?? Math.max(1, Math.floor(opts.batchSize ?? DEFAULT_BATCH_SIZE));
    const batches = Math.ceil(n / batchSize);
    const ahead = Math.max(3, Math.ceil(PREFETCH_IMAGES / batchSize));

    const prepared = new Map<number, Promise<Float32Array>>();
    const prepare = (k: number) => {
      if (k >= batches || prepared.has(k)) return;
      const p = this.prepareBatch(images, k * batchSize, Math.min(n, (k + 1) * batchSize), batchSize);
      // Awaited in turn below; until then a failure must not count as unhandled.
      p.catch(() => undefined);
      prepared.set(k, p);
    };
    for (let k = 0; k <= ahead; k++) prepare(k);

    const post = postprocessor(this.rows, this.general, this.character, this.rating, opts);
    const results: TagResult[] = [];
    for (let k = 0; k < batches; k++) {
      const batch = prepared.get(k);
      if (!batch) throw new Error(`batch ${k} was not prepared`);
      const waitStart = performance.now();
      const data = await batch;
      this.totals.waitMs += performance.now() - waitStart;
      prepared.delete(k);
      // Queue the next batch's decoding before blocking the main thread in session.run.
      prepare(k + ahead);
      if (this.closed) throw new Error('The tagger was closed while tagging.');
      const probs = await this.infer(data, batchSize);
      const count = Math.min(batchSize, n - k * batchSize);
      const width = this.rows.length;
      for (let i = 0; i < count; i++) results.push(post(probs.subarray(i * width, (i + 1) * width)));
      this.totals.images += count;
    }
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
    const input = new ort.Tensor('float32', data, [batchSize, size, size, 3]);
    // onnxruntime-node runs the model in a setImmediate queued synchronously by run(); this one,
    // queued just before, fires right before it, so the I/O callbacks handled in between (other
    // images' preprocessing) are not counted as inference.
    let nativeStart = 0;
    setImmediate(() => {
      nativeStart = performance.now();
    });
    const called = performance.now();
    let out: ort.InferenceSession.ReturnType;
    try {
      out = await this.session.run({ [inputName]: input }, [outputName]);
    } catch (err) {
      throw new Error(`Tagger inference failed: ${errText(err)}`, { cause: err });
    }
    this.totals.inferenceMs += performance.now() - (nativeStart || called);
    this.totals.batches += 1;

    const result = out[outputName];
    const width = this.rows.length;
    if (!(result instanceof ort.Tensor) || result.type !== 'float32') {
      throw new TaggerUnavailableError(`The tagger model in ${modelDir} does not output float32 scores.`);
    }
    if (result.size !== batchSize * width) {
      throw new TaggerUnavailableError(
        `The tagger model in ${modelDir} gives ${result.size / batchSize} scores per image but ${TAGGER_TAGS_FILE} lists ${width} tags: ` +
          'the two files come from different taggers.',
      );
    }
    return result.data as Float32Array;
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
 * Each sharp call is one trip to the thread pool and back; since the main thread is blocked while
 * a batch is inferred, the common cases take one or two: a square opaque image is one pipeline
 * (decode, resize, swap), any other opaque image two (decode and pad; resize and swap — sharp
 * always resizes before padding within one pipeline). Images with alpha are composited in JS, with
 * PIL's rounding (sharp's flatten rounds differently).
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
  const finish = (pipeline: Sharp): Promise<Buffer> =>
    (side === size ? pipeline : pipeline.resize(size, size, { fit: 'fill', kernel: side > size ? 'cubic' : 'lanczos3' }))
      .recomb(SWAP_RB)
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer()
      .then((bgr) => {
        if (bgr.length !== size * size * 3) throw new Error(`preprocessing produced ${bgr.length} bytes, not ${size}×${size}×3`);
        return bgr;
      });
  const fromRaw = (data: Uint8Array) => sharp(data, { raw: { width: side, height: side, channels: 3 } });

  if (meta.hasAlpha) {
    const { data, info } = await decode().ensureAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    expectRaw(info, width, height, 4);
    return finish(fromRaw(compositeAndPad(data, width, height, side)));
  }
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const pad = { top, bottom: side - height - top, left, right: side - width - left, background: WHITE };
  if (width === height) return finish(decode());
  if (side === size) return finish(decode().extend(pad));
  const { data, info } = await decode().extend(pad).toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  expectRaw(info, side, side, 3);
  return finish(fromRaw(data));
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

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
