import { looksLikeSentence, normalizeSentence, stripLeadingTriggerPhrase, validateSentence } from '../core/caption-text.ts';
import { MAX_CAPTION_CHARS, parseTags, stripLeadingTriggers, validateTag } from '../core/tag-ops.ts';

/**
 * The tags of a caption that arrived with an image (a `.txt` in a zip): triggers we add ourselves
 * are dropped, invalid tags are left out, and the total is kept within Discord-sized limits.
 */
export function captionFromUpload(text: string, triggers: string[]): string[] {
  const tags: string[] = [];
  let length = 0;
  for (const tag of stripLeadingTriggers(parseTags(text), triggers)) {
    try {
      validateTag(tag);
    } catch {
      continue;
    }
    if (length + tag.length + 2 > MAX_CAPTION_CHARS - 200) break;
    tags.push(tag);
    length += tag.length + 2;
  }
  return tags;
}

export type UploadCaption = { track: 'tags'; tags: string[] } | { track: 'sentences'; sentence: string };

/**
 * What a caption that arrived with an image is: a sentence (kept whole, leading triggers dropped)
 * or a tag list (see `captionFromUpload`). Null when nothing usable is left.
 */
export function recogniseUploadCaption(text: string, triggers: string[]): UploadCaption | null {
  if (looksLikeSentence(text)) {
    const sentence = [...stripLeadingTriggerPhrase(normalizeSentence(text), triggers)].slice(0, MAX_CAPTION_CHARS - 200).join('');
    try {
      validateSentence(sentence);
      return { track: 'sentences', sentence };
    } catch {
      return null;
    }
  }
  const tags = captionFromUpload(text, triggers);
  return tags.length > 0 ? { track: 'tags', tags } : null;
}
