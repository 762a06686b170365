import { UserError } from './errors.ts';

/**
 * Pure tag operations of the caption workshop.
 *
 * A stored caption is its list of tags only; the written caption file is composed as the dataset
 * trigger, then the concept's trigger (if any), then the tags, joined by ", " (kohya reads the
 * first line and splits on `,`; `keep_tokens` holds the leading triggers fixed).
 *
 * Case and spelling: a tag keeps the case and the `_`/space spelling it was written in (WD14 tags
 * are lower-case already; a member's `CharaA` or `Outfit1` stays as typed, like trigger words do).
 * Comparisons — duplicates, remove, replace, frequencies, triggers — go through `tagKey`, which
 * ignores case (CLIP lower-cases prompts anyway) and treats `_` and a space alike (WD14 writes
 * `long_hair`, or `long hair` with `--remove_underscore`; a member typing either means the same tag).
 */

export const MAX_TAG_CHARS = 100;
export const MAX_CAPTION_CHARS = 2000;

// C0/C1 controls, plus the Unicode line and paragraph separators (invisible line breaks).
const CONTROL = /[\p{Cc}\u2028\u2029]/u;
// In caption text, line breaks separate tags like commas do, and a tab is just whitespace.
const CONTROL_IN_TEXT = /[^\P{Cc}\t\n\r]|[\u2028\u2029]/u;

/** Counts characters as a member sees them (code points, not UTF-16 units). */
function charCount(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

function codePoint(ch: string): string {
  return `U+${(ch.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
}

/** A tag as it may appear inside a user-facing message: no backticks, no controls, short. */
function shown(tag: string): string {
  const clean = tag.replace(/[\p{Cc}\u2028\u2029`]/gu, ' ');
  const chars = [...clean];
  return chars.length <= 40 ? clean : `${chars.slice(0, 39).join('')}…`;
}

/** Trims, collapses inner whitespace to one space and applies Unicode NFC. Case is kept. */
export function normalizeTag(raw: string): string {
  return raw.normalize('NFC').replace(/\s+/gu, ' ').trim();
}

/** The identity of a tag for comparisons: case-insensitive, `_` and space alike. */
export function tagKey(tag: string): string {
  return normalizeTag(tag.replace(/_/g, ' ')).toLowerCase();
}

export function sameTag(a: string, b: string): boolean {
  return tagKey(a) === tagKey(b);
}

/** Normalises every tag, drops empty ones and duplicates (the first spelling wins). */
export function tidyTags(tags: readonly string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const raw of tags) {
    const tag = normalizeTag(raw);
    if (tag === '') continue;
    const key = tagKey(tag);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(tag);
  }
  return out;
}

/** Splits caption text on commas and line breaks into tidy tags (see `tidyTags`). */
export function parseTags(text: string): string[] {
  return tidyTags(text.split(/[,\r\n]/));
}

/** Refuses a tag that is empty, longer than 100 characters, or holds a control character or a comma. */
export function validateTag(tag: string): void {
  if (normalizeTag(tag) === '') throw new UserError('A tag cannot be empty.');
  const length = charCount(tag);
  if (length > MAX_TAG_CHARS) {
    throw new UserError(`The tag \`${shown(tag)}\` is ${length} characters long; a tag can have at most ${MAX_TAG_CHARS}.`);
  }
  const control = CONTROL.exec(tag);
  if (control) {
    throw new UserError(`The tag \`${shown(tag)}\` holds a control character (${codePoint(control[0])}); remove it and try again.`);
  }
  if (tag.includes(',')) {
    throw new UserError(`The tag \`${shown(tag)}\` holds a comma; commas separate tags, so write it as two tags.`);
  }
}

/** Validates every tag, and the length of the tags joined as they are written (", "). */
export function validateTags(tags: readonly string[]): void {
  for (const tag of tags) validateTag(tag);
  const length = charCount(tags.join(', '));
  if (length > MAX_CAPTION_CHARS) {
    throw new UserError(`That caption would be ${length} characters long; a caption can have at most ${MAX_CAPTION_CHARS}.`);
  }
}

/**
 * Refuses caption text (what a member typed or pasted) longer than 2000 characters or holding a
 * control character. Line breaks and tabs are allowed: they separate tags or are whitespace.
 */
export function validateCaptionText(text: string): void {
  const length = charCount(text);
  if (length > MAX_CAPTION_CHARS) {
    throw new UserError(`That caption is ${length} characters long; a caption can have at most ${MAX_CAPTION_CHARS}.`);
  }
  const control = CONTROL_IN_TEXT.exec(text);
  if (control) {
    const at = charCount(text.slice(0, control.index)) + 1;
    throw new UserError(`That caption holds a control character (${codePoint(control[0])} at character ${at}); remove it and try again.`);
  }
}

/**
 * Removes the triggers from a tag list: a caption from a zip (or a tagger told to put the trigger
 * first) usually starts with them, and they must not be written twice, since `composeCaption` puts
 * them in front. A trigger found later in the list is dropped too, for the same reason.
 */
export function stripLeadingTriggers(tags: readonly string[], triggers: readonly string[]): string[] {
  const keys = new Set(triggers.map(tagKey).filter((k) => k !== ''));
  return tags.filter((t) => !keys.has(tagKey(t)));
}

/**
 * The caption as written for kohya: dataset trigger, concept trigger (if any), then the tags,
 * joined by ", ". A tag equal to a trigger is not repeated.
 */
export function composeCaption(datasetTrigger: string, conceptTrigger: string | null, tags: readonly string[]): string {
  const triggers = [normalizeTag(datasetTrigger)];
  const concept = conceptTrigger === null ? '' : normalizeTag(conceptTrigger);
  if (concept !== '') triggers.push(concept);
  return [...triggers, ...stripLeadingTriggers(tags, triggers)].join(', ');
}

/** kohya's `keep_tokens` for captions made by `composeCaption`: the triggers stay in front. */
export function keepTokens(conceptTrigger: string | null): number {
  return conceptTrigger !== null && normalizeTag(conceptTrigger) !== '' ? 2 : 1;
}

/** The result of a bulk tag operation on one caption. */
export interface TagEdit {
  tags: string[];
  changed: boolean;
}

/** What `CaptionStore.applyBulk` wants from an operation: the new tags, or null when unchanged. */
export function changedOrNull(edit: TagEdit): string[] | null {
  return edit.changed ? edit.tags : null;
}

/** Removes every tag matching one of `toRemove` (by `tagKey`). */
export function removeTags(tags: readonly string[], toRemove: readonly string[]): TagEdit {
  const keys = new Set(toRemove.map(tagKey).filter((k) => k !== ''));
  const out = tags.filter((t) => !keys.has(tagKey(t)));
  return { tags: out, changed: out.length !== tags.length };
}

/**
 * Replaces `from` with `to` in place. When `to` is already in the caption, `from` is only dropped
 * (no duplicate). Replacing a tag with another spelling of itself (`Red_Hair` → `red hair`)
 * rewrites it in place.
 */
export function replaceTag(tags: readonly string[], from: string, to: string): TagEdit {
  const fromKey = tagKey(from);
  const target = normalizeTag(to);
  const index = tags.findIndex((t) => tagKey(t) === fromKey);
  if (fromKey === '' || index < 0) return { tags: [...tags], changed: false };
  if (target === '') return removeTags(tags, [from]);
  const toKey = tagKey(target);
  if (toKey !== fromKey && tags.some((t) => tagKey(t) === toKey)) {
    return { tags: tags.filter((_, i) => i !== index), changed: true };
  }
  if (tags[index] === target) return { tags: [...tags], changed: false };
  const out = [...tags];
  out[index] = target;
  return { tags: out, changed: true };
}

/**
 * Adds the tags not already present, in the given order, at the start or the end. Tags already in
 * the caption stay where they are.
 */
export function addTags(tags: readonly string[], toAdd: readonly string[], position: 'start' | 'end'): TagEdit {
  const present = new Set(tags.map(tagKey));
  const fresh = tidyTags(toAdd).filter((t) => !present.has(tagKey(t)));
  if (fresh.length === 0) return { tags: [...tags], changed: false };
  return { tags: position === 'start' ? [...fresh, ...tags] : [...tags, ...fresh], changed: true };
}

export interface TagFrequency {
  /** The first spelling met. */
  tag: string;
  /** How many captions hold the tag. */
  count: number;
  /** count / number of captions, 0–1. */
  share: number;
}

/** How many captions hold each tag; by count (most first), then tag. */
export function tagFrequencies(captions: readonly (readonly string[])[]): TagFrequency[] {
  const counts = new Map<string, { tag: string; count: number }>();
  for (const tags of captions) {
    const seen = new Set<string>();
    for (const tag of tags) {
      const key = tagKey(tag);
      if (key === '' || seen.has(key)) continue;
      seen.add(key);
      const entry = counts.get(key);
      if (entry) entry.count++;
      else counts.set(key, { tag: normalizeTag(tag), count: 1 });
    }
  }
  const total = captions.length;
  return [...counts.entries()]
    .sort(([ka, a], [kb, b]) => b.count - a.count || (ka < kb ? -1 : ka > kb ? 1 : 0))
    .map(([, { tag, count }]) => ({ tag, count, share: total === 0 ? 0 : count / total }));
}

/**
 * Breast-size tags: the seed guide's one firm rule of pruning is never to fold these into a
 * trigger ("people really do get angry at not being able to change" them).
 */
export const NEVER_PRUNE_TAGS: readonly string[] = ['flat_chest', 'small_breasts', 'medium_breasts', 'large_breasts', 'huge_breasts', 'gigantic_breasts'];

/**
 * Tags for what changes from one picture to the next: expression, gaze, pose, framing and setting. Even in
 * nearly every image they are not part of who or what the trigger stands for; pruned, the LoRA
 * would draw them whenever the trigger is used (a subject that always smiles and looks at you), so
 * they are never suggested. The tagger's categories cannot tell them apart (all are "general"
 * tags), hence this list.
 */
export const VARIABLE_TAGS: readonly string[] = [
  // expression
  ...'smile grin smirk laughing open_mouth closed_mouth parted_lips teeth tongue_out blush frown crying tears angry sad'.split(' '),
  ...'surprised expressionless serious closed_eyes half-closed_eyes one_eye_closed wink :d :o :p ;d :3'.split(' '),
  // gaze
  ...'looking_at_viewer looking_away looking_back looking_to_the_side looking_up looking_down looking_at_another eye_contact'.split(' '),
  // pose and action
  ...'standing sitting lying kneeling squatting walking running jumping leaning_forward head_tilt arms_up arm_up hand_up'.split(' '),
  ...'arms_behind_back hands_on_hips hand_on_hip crossed_arms outstretched_arm waving v peace_sign pointing on_back on_stomach'.split(' '),
  'contrapposto',
  // setting (a set shot in one place still is not the subject)
  ...'outdoors indoors day night sky cloud sunset sunlight simple_background white_background grey_background'.split(' '),
  ...'gradient_background blurry_background blurry depth_of_field scenery'.split(' '),
  // framing
  ...'upper_body full_body cowboy_shot portrait close-up from_side from_behind from_above from_below'.split(' '),
];

export interface PruneOptions {
  /** Share of captions a tag must be in, 0–1. Default 0.9. */
  threshold?: number;
  /** Fewer captions than this give no suggestion. Default 3. */
  minImages?: number;
  /** Tags never suggested, typically the triggers. */
  exclude?: readonly string[];
  /** Tags never suggested whatever the data says. Default `NEVER_PRUNE_TAGS` and `VARIABLE_TAGS`; pass [] to allow all. */
  neverPrune?: readonly string[];
}

/**
 * Tags in at least `threshold` of the captions (pass one concept's captions): the traits that make
 * the subject what it is, pruned so that the concept's trigger carries them. What changes between
 * pictures (`VARIABLE_TAGS`) is never offered. Ordered like `tagFrequencies`.
 */
export function pruneSuggestions(captions: readonly (readonly string[])[], opts: PruneOptions = {}): string[] {
  const threshold = opts.threshold ?? 0.9;
  const minImages = opts.minImages ?? 3;
  if (captions.length === 0 || captions.length < minImages) return [];
  const excluded = new Set([...(opts.exclude ?? []), ...(opts.neverPrune ?? [...NEVER_PRUNE_TAGS, ...VARIABLE_TAGS])].map(tagKey));
  // Compare counts, not float shares: 27 of 30 is exactly 90 %, whatever 27 / 30 rounds to.
  const needed = Math.max(1, Math.ceil(threshold * captions.length - 1e-9));
  return tagFrequencies(captions)
    .filter((f) => f.count >= needed && !excluded.has(tagKey(f.tag)))
    .map((f) => f.tag);
}
