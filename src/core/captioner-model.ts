import type { fetch as undiciFetch } from 'undici';
import type { Logger } from './logger.ts';
import { ensureModelFiles, modelCacheDir, ModelUnavailableError, type ModelFilesSpec } from './model-files.ts';

/**
 * Where the Florence-2 captioner's files come from: an admin's folder (CAPTIONER_MODEL_DIR), or a
 * one-time download from CAPTIONER_MODEL_URL into `DATA_DIR/models/captioner/<hash of the URL>/`,
 * with each file's SHA-256 recorded beside it and checked on every later load (see model-files.ts).
 */

/** The captioner cannot be used; the message is for the bot's admin (what is wrong, what to do). */
export class CaptionerUnavailableError extends ModelUnavailableError {
  override name = 'CaptionerUnavailableError';
}

/** The export's files, as transformers.js loads them (fp32 sessions under `onnx/`). */
export const CAPTIONER_MODEL_FILES = [
  'config.json',
  'generation_config.json',
  'preprocessor_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'onnx/vision_encoder.onnx',
  'onnx/embed_tokens.onnx',
  'onnx/encoder_model.onnx',
  'onnx/decoder_model_merged.onnx',
] as const;

export type CaptionerFileKey = (typeof CAPTIONER_MODEL_FILES)[number];

const CAPTIONER_SPEC: ModelFilesSpec<CaptionerFileKey> = {
  label: 'captioner',
  files: CAPTIONER_MODEL_FILES.map((name) => ({ key: name, name })),
  dirVar: 'CAPTIONER_MODEL_DIR',
  urlVar: 'CAPTIONER_MODEL_URL',
  filesText: `the Florence-2 ONNX export (${CAPTIONER_MODEL_FILES.join(', ')})`,
  sourceText: 'onnx-community/Florence-2-base-ft',
  known: {},
  unavailable: (message, options) => new CaptionerUnavailableError(message, options),
};

export interface EnsureCaptionerModelOptions {
  modelDir?: string | undefined;
  modelUrl: string;
  dataDir: string;
  expectedSha256?: Partial<Record<CaptionerFileKey, string>>;
  maxBytes?: number;
  signal?: AbortSignal;
  fetchImpl?: typeof undiciFetch;
  logger?: Logger;
}

export function captionerCacheDir(dataDir: string, modelUrl: string): string {
  return modelCacheDir('captioner', dataDir, modelUrl);
}

/**
 * Returns a folder holding the Florence-2 export, downloading it on first use. Throws
 * `CaptionerUnavailableError` with an admin-facing message when that cannot be done.
 */
export async function ensureCaptionerModel(opts: EnsureCaptionerModelOptions): Promise<string> {
  return ensureModelFiles(CAPTIONER_SPEC, opts);
}
