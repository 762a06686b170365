import { describe, expect, it } from 'vitest';
import {
  captionModeOf,
  composeForMode,
  defaultCaptionMode,
  looksLikeSentence,
  phraseFrequencies,
  replaceInSentence,
  stripLeadingTriggerPhrase,
  tracksOf,
  validateSentence,
} from '../../src/core/caption-text.ts';
import { UserError } from '../../src/core/errors.ts';

describe('looksLikeSentence', () => {
  it.each([
    'A photo of an old city street with stone houses and a church tower.',
    'mdvl_city, a photo of a narrow street in a medieval town, with timber houses',
    'The image shows a woman standing in front of a red brick wall',
    'a castle on a hill at sunset, seen from the river below',
  ])('reads prose as a sentence: %s', (text) => {
    expect(looksLikeSentence(text)).toBe(true);
  });

  it.each([
    '1girl, solo, long hair, looking at viewer, smile, blue eyes, school uniform',
    'ohwx, 1girl, red dress, holding umbrella, outdoors, rain',
    'castle, sky, cloud, no humans, scenery',
    'cat',
    'simple background, white background, upper body, from side, looking to the side',
  ])('reads a tag list as tags: %s', (text) => {
    expect(looksLikeSentence(text)).toBe(false);
  });
});

describe('caption modes', () => {
  it('defaults to sentences for styles and for bases trained on prose, tags for characters on SD 1.5/SDXL', () => {
    expect(defaultCaptionMode('character', 'sd15')).toBe('tags');
    expect(defaultCaptionMode('concept', 'sdxl')).toBe('tags');
    expect(defaultCaptionMode('style', 'sdxl')).toBe('sentences');
    expect(defaultCaptionMode('character', 'flux1')).toBe('sentences');
    expect(defaultCaptionMode('character', 'chroma')).toBe('sentences');
    // v-prediction SDXL checkpoints (NoobAI) are booru-tagged like the rest of SDXL.
    expect(defaultCaptionMode('character', 'sdxl-vpred')).toBe('tags');
  });

  it('a chosen mode wins over the default', () => {
    expect(captionModeOf({ kind: 'character', base: 'sd15', captionMode: 'both' })).toBe('both');
    expect(captionModeOf({ kind: 'style', base: 'sd15' })).toBe('sentences');
    expect(tracksOf('both')).toEqual(['tags', 'sentences']);
  });
});

describe('composeForMode', () => {
  const tags = ['building', 'outdoors', 'mdvl_city'];
  const sentence = 'A photo of an old city street with stone houses.';

  it('tags: the triggers, then the tags (a trigger among them is not repeated)', () => {
    expect(composeForMode('tags', 'mdvl_city', null, tags, sentence)).toBe('mdvl_city, building, outdoors');
  });

  it('sentences: the triggers as a short phrase, then the sentence from a lower-case start without its full stop', () => {
    expect(composeForMode('sentences', 'mdvl_city', 'night', tags, sentence)).toBe('mdvl_city, night, a photo of an old city street with stone houses');
  });

  it('both: the sentence, then the tags', () => {
    expect(composeForMode('both', 'mdvl_city', null, tags, sentence)).toBe('mdvl_city, a photo of an old city street with stone houses, building, outdoors');
  });

  it('drops a trigger phrase the sentence already starts with, and keeps acronyms capitalised', () => {
    expect(composeForMode('sentences', 'mdvl_city', null, null, 'mdvl_city, NASA rockets on a pad.')).toBe('mdvl_city, NASA rockets on a pad');
    expect(stripLeadingTriggerPhrase('Mdvl Town, a street', ['mdvl_city'])).toBe('Mdvl Town, a street');
    expect(stripLeadingTriggerPhrase('MDVL City, mdvl_city, a street', ['mdvl_city'])).toBe('a street');
  });

  it('is null when the mode needs a caption the image does not have', () => {
    expect(composeForMode('sentences', 'x', null, tags, null)).toBeNull();
    expect(composeForMode('tags', 'x', null, null, sentence)).toBeNull();
    expect(composeForMode('both', 'x', null, null, sentence)).toBe('x, a photo of an old city street with stone houses');
  });
});

describe('replaceInSentence', () => {
  it('replaces whole words and phrases, ignoring case, keeping a capital at the start', () => {
    expect(replaceInSentence('A street with a streetlamp. Street food.', 'street', 'alley')).toEqual({
      text: 'A alley with a streetlamp. Alley food.',
      changed: true,
    });
    expect(replaceInSentence('Old stone houses by stone  walls', 'stone houses', 'timber houses').text).toBe('Old timber houses by stone walls');
  });

  it('removes a phrase when the replacement is empty, and tidies the spaces and commas left', () => {
    expect(replaceInSentence('A quiet, empty street , at dawn', 'empty', '').text).toBe('A quiet, street, at dawn');
  });

  it('changes nothing when the phrase is not there', () => {
    expect(replaceInSentence('A photo of a city.', 'town', 'village')).toEqual({ text: 'A photo of a city.', changed: false });
  });

  it('treats regular-expression characters as text', () => {
    expect(replaceInSentence('a (red) door', '(red)', 'blue').text).toBe('a blue door');
    expect(replaceInSentence('a red door', '.*', 'x').changed).toBe(false);
  });
});

describe('phraseFrequencies', () => {
  it('counts words and phrases once per sentence, without stop words at their ends', () => {
    const freq = phraseFrequencies([
      'A photo of an old city street with stone houses.',
      'The image shows an old city street at night.',
      'A market square with stone houses.',
    ]);
    const byPhrase = new Map(freq.map((f) => [f.phrase, f.count]));
    expect(byPhrase.get('old city street')).toBe(2);
    expect(byPhrase.get('stone houses')).toBe(2);
    // Said by the longer phrase with the same count:
    expect(byPhrase.has('city street')).toBe(false);
    expect(byPhrase.has('stone')).toBe(false);
    // Never a fragment starting or ending with a stop word:
    expect(freq.some((f) => /^(a|an|the|of|with) | (a|an|the|of|with)$/.test(f.phrase))).toBe(false);
    expect(freq[0]!.count).toBe(2);
  });

  it('keeps only phrases seen at least minCount times', () => {
    expect(phraseFrequencies(['red door', 'blue door'], 2).map((f) => f.phrase)).toEqual(['door']);
  });
});

describe('validateSentence', () => {
  it('refuses empty text, control characters and overlong sentences', () => {
    expect(() => validateSentence('  ')).toThrow(UserError);
    expect(() => validateSentence('a\u0007b')).toThrow(/control character \(U\+0007\)/);
    expect(() => validateSentence('a'.repeat(2001))).toThrow(/at most 2000/);
    expect(() => validateSentence('A fine\nsentence.')).not.toThrow();
  });
});
