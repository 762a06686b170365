import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from './logger.ts';
import { ensureModelFiles, ModelUnavailableError, type ModelFilesSpec } from './model-files.ts';
import { isRating, type Rating } from './rating.ts';
import { decodeForModel } from './sharp.ts';
import { SessionThread } from './tagger-session.ts';

/**
 * A small image classifier that rates photos (the WD14 tagger rates anime-style images when it
 * tags them). Any Hugging Face image-classification export in the Transformers.js layout works:
 * `model_quantized.onnx` (input `[batch, 3, H, W]` float32, output `[batch, labels]` logits),
 * `config.json` (its `id2label`) and `preprocessor_config.json` (size, rescale, mean, std).
 *
 * The default, AdamCodd/vit-base-nsfw-detector's ONNX export (a ViT-base fine-tuned on sfw/nsfw
 * photos, Apache-2.0, 88 MB quantised), is maintained with a Transformers.js export beside the
 * weights, so its preprocessing is stated in files rather than guessed. Labels are mapped to
 * ratings by name (NSFW-detector vocabularies: sfw/normal/neutral/drawings → general,
 * sexy/suggestive → sensitive, nsfw/porn/hentai → explicit, or the four rating names themselves).
 */

export const RATER_MODEL_FILE = 'model_quantized.onnx';
export const RATER_CONFIG_FILE = 'config.json';
export const RATER_PREPROCESSOR_FILE = 'preprocessor_config.json';

/** The rater cannot be used; the message is for the bot's admin (what is wrong, what to do). */
export class RaterUnavailableError extends ModelUnavailableError {
  override name = 'RaterUnavailableError';
}

type RaterFileKey = 'model' | 'config' | 'preprocessor';

const RATER_SPEC: ModelFilesSpec<RaterFileKey> = {
  label: 'rater',
  files: [
    { key: 'model', name: RATER_MODEL_FILE },
    { key: 'config', name: RATER_CONFIG_FILE },
    { key: 'preprocessor', name: RATER_PREPROCESSOR_FILE },
  ],
  dirVar: 'RATER_MODEL_DIR',
  urlVar: 'RATER_MODEL_URL',
  filesText: `${RATER_MODEL_FILE}, ${RATER_CONFIG_FILE} and ${RATER_PREPROCESSOR_FILE}`,
  sourceText: 'an image classifier (e.g. AdamCodd/vit-base-nsfw-detector/onnx)',
  known: {},
  unavailable: (message, options) => new RaterUnavailableError(message, options),
};

/** A folder holding the classifier's files: the admin's, or downloaded once (hash recorded, like the tagger's). */
export function ensureRaterModel(opts: { modelDir?: string | undefined; modelUrl: string; dataDir: string; logger?: Logger }): Promise<string> {
  return ensureModelFiles(RATER_SPEC, opts);
}

const LABEL_RATINGS: Readonly<Record<string, Rating>> = {
  sfw: 'general',
  safe: 'general',
  normal: 'general',
  neutral: 'general',
  drawings: 'general',
  sexy: 'sensitive',
  suggestive: 'sensitive',
  nsfw: 'explicit',
  porn: 'explicit',
  hentai: 'explicit',
};

export function ratingOfLabel(label: string): Rating | null {
  const key = label.trim().toLowerCase();
  if (isRating(key)) return key;
  return LABEL_RATINGS[key] ?? null;
}

export interface ImageRater {
  /** One rating per image (the classifier's top label); an unreadable image gets null. */
  rate(images: readonly (Buffer | string)[]): Promise<(Rating | null)[]>;
  close(): Promise<void>;
}

interface Preprocess {
  size: number;
  rescale: number;
  mean: [number, number, number];
  std: [number, number, number];
}

export async function loadRater(dir: string): Promise<ImageRater> {
  const files = [RATER_MODEL_FILE, RATER_CONFIG_FILE].map((f) => path.join(dir, f));
  for (const file of files) {
    if (!(await stat(file).catch(() => undefined))?.isFile()) {
      throw new RaterUnavailableError(`The image rater file ${file} is missing. The folder must hold ${RATER_SPEC.filesText}.`);
    }
  }
  const labels = await readLabels(path.join(dir, RATER_CONFIG_FILE));
  const pre = await readPreprocess(path.join(dir, RATER_PREPROCESSOR_FILE));
  let session: SessionThread;
  try {
    session = await SessionThread.start(path.join(dir, RATER_MODEL_FILE), {
      executionProviders: ['cpu'],
      graphOptimizationLevel: 'all',
      interOpNumThreads: 1,
      logSeverityLevel: 3,
    });
  } catch (err) {
    throw new RaterUnavailableError(`ONNX Runtime could not load the image rater in ${dir}: ${String(err)}`, { cause: err });
  }
  const input = session.model.inputNames[0];
  const output = session.model.outputNames[0];
  const meta = session.model.inputMetadata[0];
  if (!input || !output) {
    await session.close();
    throw new RaterUnavailableError(`The image rater in ${dir} has no input or no output.`);
  }
  if (meta?.isTensor) {
    const [, c, h] = meta.shape;
    if (meta.shape.length !== 4 || (typeof c === 'number' && c !== 3)) {
      await session.close();
      throw new RaterUnavailableError(`The image rater in ${dir} does not take [batch, 3, height, width] images.`);
    }
    if (typeof h === 'number') pre.size = h;
  }
  return new OnnxRater(session, input, output, labels, pre);
}

async function readLabels(file: string): Promise<Rating[]> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new RaterUnavailableError(`Cannot read ${file}: ${String(err)}`, { cause: err });
  }
  const id2label = (parsed as { id2label?: Record<string, unknown> } | null)?.id2label;
  if (!id2label || typeof id2label !== 'object') throw new RaterUnavailableError(`${file} has no id2label.`);
  const out: Rating[] = [];
  for (const [id, label] of Object.entries(id2label)) {
    const i = Number(id);
    const rating = typeof label === 'string' ? ratingOfLabel(label) : null;
    if (!Number.isInteger(i) || i < 0 || rating === null) {
      throw new RaterUnavailableError(`${file}: label ${id} = ${JSON.stringify(label)} is not one the rater knows how to rate.`);
    }
    out[i] = rating;
  }
  if (out.length === 0 || Array.from(out).some((r) => r === undefined)) throw new RaterUnavailableError(`${file}: the labels are not numbered 0…n-1.`);
  return out;
}

async function readPreprocess(file: string): Promise<Preprocess> {
  const pre: Preprocess = { size: 224, rescale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch {
    return pre;
  }
  const p = JSON.parse(raw) as Record<string, unknown>;
  const size = p.size as { height?: unknown } | number | undefined;
  if (typeof size === 'number') pre.size = size;
  else if (typeof size?.height === 'number') pre.size = size.height;
  if (typeof p.rescale_factor === 'number') pre.rescale = p.rescale_factor;
  const triple = (v: unknown) => (Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === 'number') ? (v as [number, number, number]) : null);
  pre.mean = triple(p.image_mean) ?? pre.mean;
  pre.std = triple(p.image_std) ?? pre.std;
  return pre;
}

class OnnxRater implements ImageRater {
  constructor(
    private readonly session: SessionThread,
    private readonly input: string,
    private readonly output: string,
    private readonly labels: readonly Rating[],
    private readonly pre: Preprocess,
  ) {}

  async rate(images: readonly (Buffer | string)[]): Promise<(Rating | null)[]> {
    const out: (Rating | null)[] = [];
    for (const image of images) {
      let data: Float32Array;
      try {
        data = await this.pixels(image);
      } catch {
        out.push(null);
        continue;
      }
      const { size } = this.pre;
      const result = await this.session.run(this.input, this.output, data, [1, 3, size, size]);
      const logits = result.data;
      if (!(logits instanceof Float32Array) || logits.length !== this.labels.length) {
        throw new RaterUnavailableError(`The image rater gives ${String((logits as { length?: number }).length)} scores, not ${this.labels.length}.`);
      }
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
      out.push(this.labels[best] ?? null);
    }
    return out;
  }

  /** Flattened on white, resized to the model's square, CHW, rescaled and normalised. */
  private async pixels(image: Buffer | string): Promise<Float32Array> {
    const { size, rescale, mean, std } = this.pre;
    const rgb = await decodeForModel(image)
      .flatten({ background: '#ffffff' })
      .resize(size, size, { fit: 'fill' })
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer();
    const plane = size * size;
    const data = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) data[c * plane + i] = ((rgb[i * 3 + c] ?? 0) * rescale - mean[c]!) / std[c]!;
    }
    return data;
  }

  close(): Promise<void> {
    return this.session.close();
  }
}
