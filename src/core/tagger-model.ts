import type { fetch as undiciFetch } from 'undici';
import type { Logger } from './logger.ts';
import { ensureModelFiles, modelCacheDir, ModelUnavailableError, type ModelFilesSpec } from './model-files.ts';

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
export class TaggerUnavailableError extends ModelUnavailableError {
  override name = 'TaggerUnavailableError';
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

const TAGGER_SPEC: ModelFilesSpec<TaggerFileKey> = {
  label: 'tagger',
  files: FILES,
  dirVar: 'TAGGER_MODEL_DIR',
  urlVar: 'TAGGER_MODEL_URL',
  filesText: 'model.onnx and selected_tags.csv',
  sourceText: 'a WD14 tagger (e.g. SmilingWolf/wd-vit-tagger-v3)',
  known: KNOWN_TAGGER_CHECKSUMS,
  unavailable: (message, options) => new TaggerUnavailableError(message, options),
};

/** The folder a URL's files are kept in: `DATA_DIR/models/tagger/<first 16 hex of sha256(url)>`. */
export function taggerCacheDir(dataDir: string, modelUrl: string): string {
  return modelCacheDir('tagger', dataDir, modelUrl);
}

/**
 * Returns a folder holding `model.onnx` and `selected_tags.csv`, downloading them on first use.
 * Throws `TaggerUnavailableError` with an admin-facing message when that cannot be done.
 */
export async function ensureTaggerModel(opts: EnsureTaggerModelOptions): Promise<string> {
  return ensureModelFiles(TAGGER_SPEC, opts);
}
