import { looksLikeSentence, normalizeSentence, stripLeadingTriggerPhrase, validateSentence } from '../core/caption-text.ts';
import { MAX_CAPTION_CHARS, parseTags, stripLeadingTriggers, validateTag } from '../core/tag-ops.ts';
import type { CaptionStore } from '../store/caption-store.ts';
import type { Dataset, DatasetStore } from '../store/dataset-store.ts';

/**
 * The tags of a caption that arrived with an image (a `.txt` in a zip): triggers we add ourselves
 * are dropped, invalid tags are left out, and the total is kept within Discord-sized limits.
 */
function captionFromUpload(text: string, triggers: string[]): string[] {
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
function recogniseUploadCaption(text: string, triggers: string[]): UploadCaption | null {
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

/**
 * Keeps the captions that came with newly accepted images (a `.txt` beside an image in a zip) as
 * their first version: as tags, or as a sentence.
 */
export async function keepUploadCaptions(
  deps: { store: DatasetStore; captions: CaptionStore; sentences: CaptionStore },
  dataset: Dataset,
  nos: number[],
): Promise<void> {
  for (const img of await deps.store.getImages(dataset.id, nos)) {
    const concept = await deps.store.getConcept(dataset.id, img.concept);
    const found = recogniseUploadCaption(img.initialCaption ?? '', [dataset.trigger, concept?.trigger ?? ''].filter(Boolean));
    if (!found) continue;
    const meta = { by: img.contributorId, source: 'upload' as const };
    if (found.track === 'tags') await deps.captions.set(dataset.id, img.no, found.tags, meta);
    else await deps.sentences.set(dataset.id, img.no, [found.sentence], meta);
  }
}
