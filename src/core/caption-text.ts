import { UserError } from './errors.ts';
import { MAX_CAPTION_CHARS, normalizeTag, stripLeadingTriggers, tagKey } from './tag-ops.ts';
import { isBaseFamily, isTransformerFamily } from './model-family.ts';

/**
 * Sentence captions and caption modes.
 *
 * An image can have two captions side by side: its tags (WD14, or tags that came with the upload)
 * and a sentence (Florence-2, or a sentence that came with the upload). The dataset's caption mode
 * decides what the trainer reads:
 * - `tags`:      `trigger, concept trigger, tag, tag, …` (booru-style, for anime on SD 1.5/SDXL)
 * - `sentences`: `trigger, concept trigger, a photo of …` (photos, styles, FLUX and Chroma)
 * - `both`:      `trigger, concept trigger, a photo of …, tag, tag, …`
 * In every mode the triggers come first, as a short phrase, so kohya's `keep_tokens` keeps them.
 */

export const CAPTION_MODES = ['tags', 'sentences', 'both'] as const;
export type CaptionMode = (typeof CAPTION_MODES)[number];

/** The two captions an image can have. */
export type CaptionTrack = 'tags' | 'sentences';

export function isCaptionMode(value: unknown): value is CaptionMode {
  return typeof value === 'string' && (CAPTION_MODES as readonly string[]).includes(value);
}

/** The tracks a mode trains on, hence the ones the machines must fill. */
export function tracksOf(mode: CaptionMode): CaptionTrack[] {
  return mode === 'both' ? ['tags', 'sentences'] : [mode];
}

/**
 * The mode a dataset starts with: sentences for styles (mostly photos and paintings) and for any
 * base trained on natural language (FLUX.1, Chroma), tags for characters and concepts on SD 1.5
 * and SDXL, v-prediction included (booru-tagged anime checkpoints such as NoobAI).
 */
export function defaultCaptionMode(kind: string, base: string): CaptionMode {
  if (isBaseFamily(base) && isTransformerFamily(base)) return 'sentences';
  return kind === 'style' ? 'sentences' : 'tags';
}

/** The dataset's mode: the one chosen for it, or the default for its kind and base. */
export function captionModeOf(dataset: { kind: string; base: string; captionMode?: CaptionMode | undefined }): CaptionMode {
  return dataset.captionMode ?? defaultCaptionMode(dataset.kind, dataset.base);
}

export const CAPTION_MODE_LABELS: Record<CaptionMode, string> = {
  tags: 'tags',
  sentences: 'sentences',
  both: 'a sentence, then tags',
};

// C0/C1 controls and the Unicode line and paragraph separators; tabs and line breaks become spaces.
const CONTROL_IN_SENTENCE = /[^\P{Cc}\t\n\r]/u;

/** One line, inner whitespace collapsed, NFC. */
export function normalizeSentence(text: string): string {
  return text
    .normalize('NFC')
    .replace(/[\s\u2028\u2029]+/gu, ' ')
    .trim();
}

/** Refuses an empty sentence, one over 2000 characters, or one holding a control character. */
export function validateSentence(text: string): void {
  const sentence = normalizeSentence(text);
  if (sentence === '') throw new UserError('A sentence caption cannot be empty.');
  const length = [...sentence].length;
  if (length > MAX_CAPTION_CHARS) {
    throw new UserError(`That sentence is ${length} characters long; a caption can have at most ${MAX_CAPTION_CHARS}.`);
  }
  const control = CONTROL_IN_SENTENCE.exec(text);
  if (control) {
    const code = `U+${(control[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
    throw new UserError(`That sentence holds a control character (${code}); remove it and try again.`);
  }
}

const FUNCTION_WORDS = new Set([
  'a',
  'an',
  'the',
  'is',
  'are',
  'was',
  'were',
  'be',
  'with',
  'of',
  'in',
  'on',
  'at',
  'and',
  'or',
  'to',
  'from',
  'by',
  'for',
  'its',
  'it',
  'this',
  'that',
  'there',
  'their',
  'his',
  'her',
  'as',
  'into',
  'while',
  'has',
  'have',
]);

function wordsOf(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}][\p{L}\p{N}'’-]*/gu) ?? [];
}

/**
 * Whether caption text reads as prose rather than a tag list. Tags are short comma-separated
 * phrases (`1girl, long hair, looking at viewer`); a sentence has long runs between commas, ends
 * with a full stop, or is full of articles and prepositions.
 */
export function looksLikeSentence(text: string): boolean {
  const clean = normalizeSentence(text);
  const words = wordsOf(clean);
  if (words.length < 4) return false;
  const parts = text
    .split(/[,\r\n]/)
    .map((p) => wordsOf(p).length)
    .filter((n) => n > 0);
  const longest = Math.max(0, ...parts);
  const mean = words.length / Math.max(1, parts.length);
  const functionShare = words.filter((w) => FUNCTION_WORDS.has(w)).length / words.length;
  if (/[.!?]["')\]]?$/.test(clean) && words.length >= 5 && (mean >= 3 || functionShare >= 0.15)) return true;
  if (longest >= 7) return true;
  return mean >= 3.5 && functionShare >= 0.15;
}

/** Removes the triggers from the start of a sentence ("mdvl_city, a photo …" → "a photo …"). */
export function stripLeadingTriggerPhrase(sentence: string, triggers: readonly string[]): string {
  let rest = normalizeSentence(sentence);
  const keys = new Set(triggers.map(tagKey).filter((k) => k !== ''));
  for (;;) {
    const m = /^([^,]{1,100}),\s*/u.exec(rest);
    if (!m || !keys.has(tagKey(m[1]!))) return rest;
    rest = rest.slice(m[0].length);
  }
}

/** "The image shows …" → "the image shows …", "A photo" → "a photo"; "NASA …" and "iPhone …" stay. */
function lowerFirstWord(sentence: string): string {
  return /^\p{Lu}(?:\p{Ll}|\s)/u.test(sentence) ? sentence.charAt(0).toLowerCase() + sentence.slice(1) : sentence;
}

/**
 * The caption file's text for a mode, or null when the caption that mode needs is missing.
 * `both` falls back to what is there when only one of the two exists.
 */
export function composeForMode(
  mode: CaptionMode,
  datasetTrigger: string,
  conceptTrigger: string | null,
  tags: readonly string[] | null,
  sentence: string | null,
): string | null {
  const triggers = [normalizeTag(datasetTrigger)];
  const concept = conceptTrigger === null ? '' : normalizeTag(conceptTrigger);
  if (concept !== '') triggers.push(concept);
  const cleanTags = tags === null ? null : stripLeadingTriggers(tags, triggers);
  const cleanSentence = sentence === null ? null : stripLeadingTriggerPhrase(sentence, triggers);
  const parts: string[] = [...triggers];
  const wantSentence = mode !== 'tags';
  const wantTags = mode !== 'sentences';
  let found = false;
  if (wantSentence && cleanSentence) {
    parts.push(lowerFirstWord(cleanSentence).replace(/[.\s]+$/u, ''));
    found = true;
  }
  if (wantTags && cleanTags !== null) {
    parts.push(...cleanTags);
    found = true;
  }
  return found ? parts.filter((p) => p !== '').join(', ') : null;
}

/** The result of a find-and-replace over one sentence. */
export interface SentenceEdit {
  text: string;
  changed: boolean;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Replaces every whole-word occurrence of `from` (a word or phrase, case-insensitive, any run of
 * spaces) with `to`. A capitalised match ("Street") gets a capitalised replacement ("Alley").
 * An empty `to` removes the phrase.
 */
export function replaceInSentence(sentence: string, from: string, to: string): SentenceEdit {
  const needle = normalizeSentence(from);
  if (needle === '') return { text: sentence, changed: false };
  const pattern = needle.split(' ').map(escapeRegExp).join('\\s+');
  const re = new RegExp(`(?<![\\p{L}\\p{N}_])${pattern}(?![\\p{L}\\p{N}_])`, 'giu');
  const target = normalizeSentence(to);
  const replaced = sentence.replace(re, (match: string) => {
    const capitalised = /^\p{Lu}/u.test(match) && match !== match.toUpperCase();
    return capitalised && target !== '' ? target.charAt(0).toUpperCase() + target.slice(1) : target;
  });
  const text = normalizeSentence(replaced.replace(/\s+([,.;:!?])/g, '$1'));
  return { text, changed: text !== sentence };
}

const STOP_WORDS = new Set([
  ...FUNCTION_WORDS,
  'image',
  'picture',
  'shows',
  'showing',
  'shown',
  'appears',
  'can',
  'seen',
  'also',
  'which',
  'who',
  'some',
  'several',
  'other',
  'one',
  'two',
  'they',
  'them',
  'she',
  'he',
  'we',
  'you',
  'i',
  'not',
  'no',
  'but',
  'so',
  'than',
  'then',
  'very',
  'up',
  'down',
  'out',
  'over',
  'under',
  'behind',
  'front',
  'left',
  'right',
  'side',
  'background',
  'foreground',
]);

export interface PhraseFrequency {
  phrase: string;
  /** How many sentences hold it. */
  count: number;
  share: number;
}

/**
 * Frequent words and phrases (up to three words) across sentences, counted once per sentence.
 * Phrases never start or end with a stop word; a phrase is left out when a longer one holding it
 * is in exactly as many sentences (it says nothing more). By count, then longer first, then A–Z.
 */
export function phraseFrequencies(sentences: readonly string[], minCount = 1): PhraseFrequency[] {
  const counts = new Map<string, number>();
  for (const s of sentences) {
    const words = wordsOf(s);
    const seen = new Set<string>();
    for (let n = 1; n <= 3; n++) {
      for (let i = 0; i + n <= words.length; i++) {
        const gram = words.slice(i, i + n);
        if (STOP_WORDS.has(gram[0]!) || STOP_WORDS.has(gram[n - 1]!)) continue;
        if (gram.some((w) => /^\p{N}+$/u.test(w)) && n === 1) continue;
        seen.add(gram.join(' '));
      }
    }
    for (const p of seen) counts.set(p, (counts.get(p) ?? 0) + 1);
  }
  const entries = [...counts.entries()].filter(([, c]) => c >= minCount);
  // Each phrase drops its shorter parts that are in exactly as many sentences (linear, not pairwise).
  const said = new Set<string>();
  for (const [p, c] of entries) {
    const words = p.split(' ');
    for (let n = 1; n < words.length; n++) {
      for (let i = 0; i + n <= words.length; i++) {
        const part = words.slice(i, i + n).join(' ');
        if (counts.get(part) === c) said.add(part);
      }
    }
  }
  const kept = entries.filter(([p]) => !said.has(p));
  const total = sentences.length;
  return kept
    .sort(([pa, a], [pb, b]) => b - a || pb.split(' ').length - pa.split(' ').length || (pa < pb ? -1 : pa > pb ? 1 : 0))
    .map(([phrase, count]) => ({ phrase, count, share: total === 0 ? 0 : count / total }));
}
