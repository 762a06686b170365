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
