/**
 * Enriches a finished LoRA's safetensors metadata with what the guild knows (reference/
 * kohya-contract.md §7): kohya's `ss_tag_frequency`, the `modelspec.*` trigger phrase and title,
 * and `loraguild.*` keys (contributors, dataset hash, recipe, vote winner, run, epoch).
 *
 * Every existing key is kept; ours are added or overwritten. All values are strings, JSON ones
 * written like Python's `json.dumps` (non-ASCII escaped), as sd-scripts does. The tensor bytes are
 * never touched: `rewriteMetadata` streams them, and `sshs_model_hash` (sha256 of the data section)
 * is checked before and after.
 */
import { createHash } from 'node:crypto';
import { isBlobId } from './blob-store.ts';
import { isBaseFamily, type BaseFamily } from './model-family.ts';
import { dataSectionSha256, readSafetensorsHeader, rewriteMetadata, SafetensorsError } from './safetensors.ts';

export type LoraBase = BaseFamily;

export interface LoraContributor {
  /** Discord user id. */
  id: string;
  name: string;
  /** Images of theirs in the trained dataset. */
  images: number;
}

export interface LoraInfo {
  /** The dataset's trigger word first, then concepts' extra triggers. */
  triggerWords: string[];
  /** Per kohya image folder (`10_aria`): tag → images having it (kohya: lower-cased, once per image). */
  tagFrequency: Record<string, Record<string, number>>;
  contributors: LoraContributor[];
  /** `computeDatasetHash` of the trained images and captions. */
  datasetHash: string;
  recipe: { name: string; [k: string]: unknown };
  voteWinner: { epoch: number; votes: number } | null;
  title: string;
  runId: string;
  epoch: number | 'final';
  /** Training resolution (square side), e.g. 512 or 1024. */
  resolution: number;
  base: LoraBase;
  /**
   * Optimizer steps trained up to this file, a resume's earlier steps included: written as
   * `ss_steps`, which sd-scripts counts from 0 again in a resumed process.
   */
  steps?: number;
}

/** The `loraguild.*` keys this module writes (the JSON ones hold JSON text). */
export const LORAGUILD_KEYS = {
  version: 'loraguild.version',
  runId: 'loraguild.run_id',
  epoch: 'loraguild.epoch',
  datasetHash: 'loraguild.dataset_hash',
  /** JSON `[{id, name, images}]` */
  contributors: 'loraguild.contributors',
  /** JSON: the resolved recipe */
  recipe: 'loraguild.recipe',
  /** JSON `{epoch, votes}` or `null` */
  voteWinner: 'loraguild.vote_winner',
  /** JSON list of the trigger words */
  triggerWords: 'loraguild.trigger_words',
} as const;

export const LORAGUILD_METADATA_VERSION = '1';

/**
 * What sd-scripts writes for each family (reference/model-families.md §5); used only where the
 * trainer's own values are missing. FLUX.1 falls back to dev, the variant our recipes are made for.
 */
const ARCHITECTURE: Record<LoraBase, string> = {
  sd15: 'stable-diffusion-v1/lora',
  sdxl: 'stable-diffusion-xl-v1-base/lora',
  'sdxl-vpred': 'stable-diffusion-xl-v1-base/lora',
  flux1: 'flux-1-dev/lora',
  chroma: 'chroma/lora',
};

const IMPLEMENTATION: Record<LoraBase, string> = {
  sd15: 'diffusers',
  sdxl: 'https://github.com/Stability-AI/generative-models',
  'sdxl-vpred': 'https://github.com/Stability-AI/generative-models',
  flux1: 'https://github.com/black-forest-labs/flux',
  chroma: 'https://huggingface.co/lodestones/Chroma',
};

/** sd-scripts' `ss_base_model_version` per family. */
export const BASE_MODEL_VERSION: Record<LoraBase, string> = {
  sd15: 'sd_v1',
  sdxl: 'sdxl_base_v1-0',
  'sdxl-vpred': 'sdxl_base_v1-0',
  flux1: 'flux1',
  chroma: 'chroma',
};

/** The licence note of a LoRA file on disk (read from its header); null when none or unreadable. */
export async function licenceNoteOf(path: string): Promise<string | null> {
  try {
    return licenceNote((await readSafetensorsHeader(path)).metadata);
  } catch {
    return null;
  }
}

/** The licence note a delivered LoRA needs, from its metadata; null when none. */
export function licenceNote(metadata: Readonly<Record<string, string>>): string | null {
  const arch = metadata['modelspec.architecture'] ?? '';
  if (arch.startsWith('flux-1-dev')) {
    return 'Trained on FLUX.1 [dev]: under its non-commercial licence, this LoRA may not be used commercially (images you make with it may be).';
  }
  return null;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** JSON text with every non-ASCII character escaped, like Python's `json.dumps` default. */
export function jsonAscii(value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError('value cannot be written as JSON');
  return text.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function checkInfo(info: LoraInfo): void {
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!Array.isArray(info.triggerWords) || !info.triggerWords.every((t) => typeof t === 'string')) throw new TypeError('triggerWords must be strings');
  for (const [folder, tags] of Object.entries(info.tagFrequency)) {
    if (folder.length === 0 || typeof tags !== 'object' || tags === null || Array.isArray(tags))
      throw new TypeError(`tag frequency of ${folder} is not an object`);
    for (const [tag, n] of Object.entries(tags)) if (!count(n)) throw new TypeError(`tag frequency of ${tag} in ${folder} is not a count`);
  }
  for (const c of info.contributors) {
    if (typeof c.id !== 'string' || typeof c.name !== 'string' || !count(c.images)) throw new TypeError('a contributor needs an id, a name and an image count');
  }
  if (!SHA256_HEX.test(info.datasetHash)) throw new TypeError('datasetHash must be a sha256 hex digest');
  if (typeof info.recipe.name !== 'string') throw new TypeError('the recipe needs a name');
  if (info.voteWinner !== null && (!count(info.voteWinner.epoch) || !count(info.voteWinner.votes))) throw new TypeError('bad vote winner');
  if (info.epoch !== 'final' && !(Number.isSafeInteger(info.epoch) && info.epoch >= 0)) throw new TypeError('epoch must be a number or "final"');
  if (!Number.isSafeInteger(info.resolution) || info.resolution <= 0) throw new TypeError('resolution must be a positive integer');
  if (!isBaseFamily(info.base)) throw new TypeError('base must be a known base family');
  if (info.steps !== undefined && !(Number.isSafeInteger(info.steps) && info.steps > 0)) throw new TypeError('steps must be a positive integer');
}

/** The trigger words, trimmed, without empties or repeats (first occurrence wins). */
function triggers(words: readonly string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const w of words) {
    const t = w.trim();
    if (t.length === 0 || seen.has(t)) continue;
    seen.add(t);
    out.push(t);
  }
  return out;
}

/**
 * The metadata `enrichLoraMetadata` writes: `existing` with ours merged in. `modelHash` is the
 * data section's sha256; an existing, different `sshs_model_hash` is an error.
 */
export function buildLoraMetadata(existing: Readonly<Record<string, string>>, info: LoraInfo, modelHash: string): Record<string, string> {
  checkInfo(info);
  if (!SHA256_HEX.test(modelHash)) throw new TypeError('modelHash must be a sha256 hex digest');
  const present = existing.sshs_model_hash;
  if (present !== undefined && present.toLowerCase() !== modelHash) {
    throw new SafetensorsError(`sshs_model_hash ${present} does not match the data section (${modelHash}): the file is damaged or was altered`);
  }
  const out: Record<string, string> = { ...existing };
  const setIfMissing = (key: string, value: string) => {
    if (out[key] === undefined || out[key] === '') out[key] = value;
  };

  out.sshs_model_hash = modelHash;
  out.ss_tag_frequency = jsonAscii(info.tagFrequency);
  if (info.steps !== undefined) out.ss_steps = String(info.steps);

  setIfMissing('modelspec.sai_model_spec', '1.0.1');
  setIfMissing('modelspec.architecture', ARCHITECTURE[info.base]);
  setIfMissing('modelspec.implementation', IMPLEMENTATION[info.base]);
  setIfMissing('ss_base_model_version', BASE_MODEL_VERSION[info.base]);
  if (info.base === 'sdxl-vpred') setIfMissing('modelspec.prediction_type', 'v');
  setIfMissing('modelspec.resolution', `${info.resolution}x${info.resolution}`);
  out['modelspec.title'] = info.title;
  const words = triggers(info.triggerWords);
  // The phrase a prompt starts with is the dataset's trigger; concepts' own triggers are
  // alternatives to add, listed in loraguild.trigger_words, never joined into one phrase.
  if (words.length > 0) out['modelspec.trigger_phrase'] = words[0]!;

  out[LORAGUILD_KEYS.version] = LORAGUILD_METADATA_VERSION;
  out[LORAGUILD_KEYS.runId] = info.runId;
  out[LORAGUILD_KEYS.epoch] = String(info.epoch);
  out[LORAGUILD_KEYS.datasetHash] = info.datasetHash;
  out[LORAGUILD_KEYS.contributors] = jsonAscii(info.contributors.map((c) => ({ id: c.id, name: c.name, images: c.images })));
  out[LORAGUILD_KEYS.recipe] = jsonAscii(info.recipe);
  out[LORAGUILD_KEYS.voteWinner] = jsonAscii(info.voteWinner === null ? null : { epoch: info.voteWinner.epoch, votes: info.voteWinner.votes });
  out[LORAGUILD_KEYS.triggerWords] = jsonAscii(words);
  return out;
}

/**
 * Writes `srcPath` to `destPath` (may be the same path; atomic) with the guild's metadata merged
 * into the existing one. Tensor entries and bytes are unchanged; the written file's data section
 * is hashed again and must equal the source's. Returns the metadata written and the model hash.
 */
export async function enrichLoraMetadata(srcPath: string, destPath: string, info: LoraInfo): Promise<{ metadata: Record<string, string>; modelHash: string }> {
  const { metadata: existing } = await readSafetensorsHeader(srcPath);
  const modelHash = await dataSectionSha256(srcPath);
  const metadata = buildLoraMetadata(existing, info, modelHash);
  await rewriteMetadata(srcPath, destPath, metadata);
  const written = await dataSectionSha256(destPath);
  if (written !== modelHash) throw new SafetensorsError(`the rewritten file's data section changed (${written} ≠ ${modelHash})`);
  return { metadata, modelHash };
}

/**
 * A fingerprint of what was trained: sha256 (hex) over the sorted lines `<blob>:<caption>\n`, the
 * caption written as JSON (`null` when the image has no caption file), so that no caption text can
 * forge a line break or be confused with a missing caption. Order of `items` does not matter.
 */
export function computeDatasetHash(items: readonly { blob: string; caption: string | null }[]): string {
  const lines = items.map((item) => {
    if (!isBlobId(item.blob)) throw new TypeError('invalid blob id');
    if (item.caption !== null && typeof item.caption !== 'string') throw new TypeError('caption must be a string or null');
    return `${item.blob}:${JSON.stringify(item.caption)}`;
  });
  lines.sort();
  const hash = createHash('sha256');
  for (const line of lines) hash.update(`${line}\n`, 'utf8');
  return hash.digest('hex');
}
