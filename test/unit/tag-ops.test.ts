import { describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import {
  addTags,
  changedOrNull,
  composeCaption,
  keepTokens,
  MAX_CAPTION_CHARS,
  normalizeTag,
  parseTags,
  pruneSuggestions,
  removeTags,
  replaceTag,
  sameTag,
  stripLeadingTriggers,
  tagFrequencies,
  tidyTags,
  validateCaptionText,
  validateTag,
  validateTags,
} from '../../src/core/tag-ops.ts';

function userErrorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(UserError);
    return (err as UserError).message;
  }
  throw new Error('expected a UserError');
}

describe('normalizeTag and tag identity', () => {
  it('trims, collapses inner whitespace and keeps case and underscores', () => {
    expect(normalizeTag('  long \t  hair\u00a0 ')).toBe('long hair');
    expect(normalizeTag('CharaA')).toBe('CharaA');
    expect(normalizeTag('long_hair')).toBe('long_hair');
    expect(normalizeTag('cafe\u0301')).toBe('café');
  });

  it('treats case and underscore/space spellings as the same tag', () => {
    expect(sameTag('Long_Hair', 'long hair')).toBe(true);
    expect(sameTag('long_hair', 'long-hair')).toBe(false);
  });
});

describe('parseTags', () => {
  it('splits on commas and line breaks, drops empties and keeps the first of duplicates', () => {
    expect(parseTags('1girl, long_hair,,\n  solo \r\nLong Hair, smile,\n')).toEqual(['1girl', 'long_hair', 'solo', 'smile']);
  });

  it('gives nothing for blank text', () => {
    expect(parseTags(' , \n ,')).toEqual([]);
  });

  it('tidyTags does the same on a list', () => {
    expect(tidyTags([' a ', 'A', '', 'b  c'])).toEqual(['a', 'b c']);
  });
});

describe('validateTag', () => {
  it('accepts ordinary WD14 and member tags', () => {
    expect(() => validateTag('name_(series)')).not.toThrow();
    expect(() => validateTag('^_^')).not.toThrow();
    expect(() => validateTag('x'.repeat(100))).not.toThrow();
    expect(() => validateTag('少女')).not.toThrow();
  });

  it('refuses an empty tag', () => {
    expect(userErrorOf(() => validateTag('  '))).toMatch(/empty/);
  });

  it('refuses a tag over 100 characters, counting characters not UTF-16 units', () => {
    expect(userErrorOf(() => validateTag('x'.repeat(101)))).toMatch(/101 characters.*at most 100/);
    expect(() => validateTag('😀'.repeat(100))).not.toThrow();
  });

  it('refuses control characters and commas, saying which', () => {
    expect(userErrorOf(() => validateTag('bad\u0007tag'))).toMatch(/control character \(U\+0007\)/);
    expect(userErrorOf(() => validateTag('line\nbreak'))).toMatch(/U\+000A/);
    expect(userErrorOf(() => validateTag('a,b'))).toMatch(/comma/);
  });

  it('validateTags also bounds the joined caption', () => {
    const tags = Array.from({ length: 21 }, (_, i) => `${String(i).padStart(2, '0')}${'x'.repeat(94)}`);
    // 21 × 96 + 20 × 2 = 2056 characters
    expect(userErrorOf(() => validateTags(tags))).toMatch(/2056 characters.*at most 2000/);
    expect(() => validateTags(tags.slice(0, 20))).not.toThrow();
  });
});

describe('validateCaptionText', () => {
  it('accepts exactly 2000 characters with line breaks and tabs', () => {
    const text = `a,\tb\r\n${'c'.repeat(MAX_CAPTION_CHARS - 6)}`;
    expect([...text]).toHaveLength(2000);
    expect(() => validateCaptionText(text)).not.toThrow();
  });

  it('refuses 2001 characters, saying the length', () => {
    expect(userErrorOf(() => validateCaptionText('x'.repeat(2001)))).toMatch(/2001 characters.*at most 2000/);
  });

  it('refuses a control character, saying which and where', () => {
    expect(userErrorOf(() => validateCaptionText('1girl, so\u0000lo'))).toMatch(/control character \(U\+0000 at character 10\)/);
    expect(userErrorOf(() => validateCaptionText('a\u001bb'))).toMatch(/U\+001B/);
    expect(userErrorOf(() => validateCaptionText('a\u2028b'))).toMatch(/U\+2028/);
  });
});

describe('triggers and composition', () => {
  it('strips triggers a zip caption already starts with, in any case or spelling', () => {
    expect(stripLeadingTriggers(['OHWX', 'outfit one', '1girl'], ['ohwx', 'outfit_one'])).toEqual(['1girl']);
    expect(stripLeadingTriggers(['1girl', 'solo'], ['ohwx'])).toEqual(['1girl', 'solo']);
  });

  it('drops a trigger found later too, so it is never written twice', () => {
    expect(stripLeadingTriggers(['1girl', 'ohwx', 'solo'], ['ohwx'])).toEqual(['1girl', 'solo']);
  });

  it('composes dataset trigger, concept trigger, then tags, joined by ", "', () => {
    expect(composeCaption('ohwx', null, ['1girl', 'solo'])).toBe('ohwx, 1girl, solo');
    expect(composeCaption('ohwx', 'Outfit1', ['1girl', 'solo'])).toBe('ohwx, Outfit1, 1girl, solo');
    expect(composeCaption('ohwx', '', [])).toBe('ohwx');
    expect(composeCaption('ohwx', 'Outfit1', ['outfit1', 'ohwx', 'smile'])).toBe('ohwx, Outfit1, smile');
  });

  it('keeps one token per trigger', () => {
    expect(keepTokens(null)).toBe(1);
    expect(keepTokens('  ')).toBe(1);
    expect(keepTokens('Outfit1')).toBe(2);
    // What kohya keeps (comma-separated tokens from the left) is exactly the triggers.
    const caption = composeCaption('ohwx', 'Outfit1', ['1girl']);
    expect(
      caption
        .split(',')
        .slice(0, keepTokens('Outfit1'))
        .map((s) => s.trim()),
    ).toEqual(['ohwx', 'Outfit1']);
  });
});

describe('bulk operations', () => {
  const tags = ['1girl', 'long_hair', 'red_eyes', 'smile'];

  it('removeTags removes every match and says whether anything changed', () => {
    expect(removeTags(tags, ['Long Hair', 'smile'])).toEqual({ tags: ['1girl', 'red_eyes'], changed: true });
    expect(removeTags(tags, ['blue_eyes'])).toEqual({ tags, changed: false });
  });

  it('replaceTag keeps the position', () => {
    expect(replaceTag(tags, 'long hair', 'very_long_hair')).toEqual({
      tags: ['1girl', 'very_long_hair', 'red_eyes', 'smile'],
      changed: true,
    });
  });

  it('replaceTag only drops the old tag when the new one is already there', () => {
    expect(replaceTag(tags, 'long_hair', 'SMILE')).toEqual({ tags: ['1girl', 'red_eyes', 'smile'], changed: true });
  });

  it('replaceTag leaves a caption without the tag alone, and can respell a tag in place', () => {
    expect(replaceTag(tags, 'blue_eyes', 'red_eyes')).toEqual({ tags, changed: false });
    expect(replaceTag(tags, 'long_hair', 'long hair')).toEqual({ tags: ['1girl', 'long hair', 'red_eyes', 'smile'], changed: true });
    expect(replaceTag(tags, 'long_hair', 'long_hair')).toEqual({ tags, changed: false });
  });

  it('addTags adds missing tags at the start or the end, in order, without duplicates', () => {
    expect(addTags(tags, ['outfit1', 'Smile', 'hat'], 'start')).toEqual({
      tags: ['outfit1', 'hat', '1girl', 'long_hair', 'red_eyes', 'smile'],
      changed: true,
    });
    expect(addTags(tags, ['hat', 'hat'], 'end')).toEqual({ tags: [...tags, 'hat'], changed: true });
    expect(addTags(tags, ['1GIRL'], 'end')).toEqual({ tags, changed: false });
  });

  it('never mutates the input', () => {
    const copy = [...tags];
    removeTags(tags, ['smile']);
    replaceTag(tags, 'smile', 'grin');
    addTags(tags, ['hat'], 'start');
    expect(tags).toEqual(copy);
  });

  it('changedOrNull turns a result into what applyBulk takes', () => {
    expect(changedOrNull(removeTags(tags, ['smile']))).toEqual(['1girl', 'long_hair', 'red_eyes']);
    expect(changedOrNull(removeTags(tags, ['hat']))).toBeNull();
  });
});

describe('tagFrequencies', () => {
  it('counts captions holding each tag, by count then tag, with shares', () => {
    const freq = tagFrequencies([['solo', '1girl', 'smile'], ['1girl', 'solo'], ['1girl', 'Smile', 'hat'], ['1girl']]);
    expect(freq).toEqual([
      { tag: '1girl', count: 4, share: 1 },
      { tag: 'smile', count: 2, share: 0.5 },
      { tag: 'solo', count: 2, share: 0.5 },
      { tag: 'hat', count: 1, share: 0.25 },
    ]);
  });

  it('counts a tag once per caption and handles no captions', () => {
    expect(tagFrequencies([['a', 'A', 'a']])).toEqual([{ tag: 'a', count: 1, share: 1 }]);
    expect(tagFrequencies([])).toEqual([]);
  });
});

describe('pruneSuggestions', () => {
  const concept = (n: number, withTag: number, tag = 'red_hair') =>
    Array.from({ length: n }, (_, i) => (i < withTag ? ['1girl', tag, `pose${i}`] : ['1girl', `pose${i}`]));

  it('suggests a tag in exactly 90% of the images, not one just below', () => {
    expect(pruneSuggestions(concept(10, 9))).toEqual(['1girl', 'red_hair']);
    expect(pruneSuggestions(concept(10, 8))).toEqual(['1girl']);
    // 27/30 is 0.9 exactly; 26/30 is not.
    expect(pruneSuggestions(concept(30, 27))).toContain('red_hair');
    expect(pruneSuggestions(concept(30, 26))).not.toContain('red_hair');
  });

  it('excludes the triggers and, by default, breast size', () => {
    const caps = [
      ['ohwx', 'large_breasts', 'red_hair'],
      ['ohwx', 'large breasts', 'red_hair'],
      ['OHWX', 'large_breasts', 'red_hair'],
    ];
    expect(pruneSuggestions(caps, { exclude: ['ohwx'] })).toEqual(['red_hair']);
    expect(pruneSuggestions(caps, { exclude: ['ohwx'], neverPrune: [] })).toEqual(['large_breasts', 'red_hair']);
  });

  it('never offers what changes between pictures (expression, gaze, pose), in either spelling', () => {
    const caps = Array.from({ length: 10 }, () => ['red_hair', 'smile', 'looking at viewer', 'standing', 'upper_body', 'outdoors', 'tiara']);
    expect(pruneSuggestions(caps)).toEqual(['red_hair', 'tiara']);
    expect(pruneSuggestions(caps, { neverPrune: [] })).toHaveLength(7);
  });

  it('says nothing below minImages, and honours a custom threshold', () => {
    expect(pruneSuggestions(concept(2, 2))).toEqual([]);
    expect(pruneSuggestions(concept(2, 2), { minImages: 2 })).toEqual(['1girl', 'red_hair']);
    expect(pruneSuggestions(concept(10, 5), { threshold: 0.5 })).toEqual(['1girl', 'red_hair']);
    expect(pruneSuggestions([], { minImages: 0 })).toEqual([]);
  });
});
