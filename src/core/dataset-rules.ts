import type { BaseFamily } from './buckets.ts';
import { FAMILY_INFO } from './model-family.ts';
import { UserError } from './errors.ts';

/** Validation of what members type when they create and manage datasets. */

export const DATASET_NAME = /^[a-z0-9][a-z0-9_-]{1,31}$/;
export const CONCEPT_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;
/** How many concepts a dataset may have. */
export const MAX_CONCEPTS = 20;
// Letters and digits of any script, with single inner spaces, _ - ' and .; no commas (tag separator).
const WORD = /^[\p{L}\p{N}](?:[\p{L}\p{N}_.'-]| (?! ))*$/u;

export function validateDatasetName(raw: string): string {
  const name = raw.trim().toLowerCase();
  if (!DATASET_NAME.test(name)) {
    throw new UserError('A dataset name is 2–32 characters: lower-case letters, digits, `-` and `_`, starting with a letter or digit (e.g. `aria-v2`).');
  }
  return name;
}

export function validateConceptName(raw: string): string {
  const name = raw.trim().toLowerCase();
  if (!CONCEPT_NAME.test(name)) {
    throw new UserError('A concept name is 1–32 characters: lower-case letters, digits, `-` and `_` (e.g. `outfit-red`).');
  }
  return name;
}

function validateWord(raw: string, what: string, max: number): string {
  const word = raw.trim();
  if (word.length < 1 || word.length > max || !WORD.test(word)) {
    throw new UserError(`The ${what} must be 1–${max} characters of letters, digits, spaces, \`_\`, \`-\`, \`.\` or \`'\` (no commas: they separate tags).`);
  }
  return word;
}

export function validateTrigger(raw: string): string {
  const trigger = validateWord(raw, 'trigger word', 40);
  if (trigger.length < 2) throw new UserError('The trigger word must be at least 2 characters.');
  return trigger;
}

export function validateClassWord(raw: string): string {
  return validateWord(raw, 'class word', 40);
}

export function defaultResolution(base: BaseFamily): number {
  return FAMILY_INFO[base].nativeResolution;
}

export function validateResolution(value: number | null, base: BaseFamily): number {
  const resolution = value ?? defaultResolution(base);
  if (!Number.isInteger(resolution) || resolution < 256 || resolution > 2048 || resolution % 64 !== 0) {
    throw new UserError('The resolution must be a multiple of 64 between 256 and 2048 (512 is usual for SD 1.5, 1024 for SDXL, FLUX.1 and Chroma).');
  }
  return resolution;
}

export type ImageSelection = { mine: true } | { mine: false; nos: number[] };

/** Parses `3`, `3,7`, `5-8`, `#4 #9` or `mine`. */
export function parseImageSelection(raw: string, maxCount = 500): ImageSelection {
  const text = raw.trim().toLowerCase();
  if (text === 'mine') return { mine: true };
  const nos = new Set<number>();
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const m = /^#?(\d{1,7})(?:-#?(\d{1,7}))?$/.exec(part);
    if (!m) throw new UserError(`\`${part.slice(0, 20)}\` is not an image number. Use numbers like \`3\`, \`3,7\`, \`5-8\`, or \`mine\`.`);
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    if (from < 1 || to < from) throw new UserError(`\`${part}\` is not a valid range.`);
    if (to - from + 1 + nos.size > maxCount) throw new UserError(`That is more than ${maxCount} images at once.`);
    for (let n = from; n <= to; n++) nos.add(n);
  }
  if (nos.size === 0) throw new UserError('Name at least one image number, or `mine`.');
  return { mine: false, nos: [...nos].sort((a, b) => a - b) };
}

/** The length of a reason a member gives for a report, or a moderator for a removal. */
export const MIN_REASON_CHARS = 3;
export const MAX_REASON_CHARS = 300;
