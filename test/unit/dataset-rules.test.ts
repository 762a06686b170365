import { describe, expect, it } from 'vitest';
import {
  parseImageSelection,
  validateClassWord,
  validateConceptName,
  validateDatasetName,
  validateResolution,
  validateTrigger,
} from '../../src/core/dataset-rules.ts';
import { UserError } from '../../src/core/errors.ts';

describe('dataset names', () => {
  it('accepts short slugs and lower-cases them', () => {
    expect(validateDatasetName(' Aria-v2 ')).toBe('aria-v2');
    expect(validateDatasetName('a_1')).toBe('a_1');
  });
  it.each(['a', '-aria', 'aria!', 'ari a', 'x'.repeat(33), '../etc', 'ñame'])('refuses %j with a UserError', (name) => {
    expect(() => validateDatasetName(name)).toThrow(UserError);
  });
});

describe('trigger and class words', () => {
  it('accepts words with inner spaces, underscores and other scripts', () => {
    expect(validateTrigger('ohwx_aria')).toBe('ohwx_aria');
    expect(validateTrigger('aria character')).toBe('aria character');
    expect(validateClassWord('1girl')).toBe('1girl');
    expect(validateClassWord('少女')).toBe('少女');
  });
  it.each(['a,b', 'x', ' ', 'two  spaces', 'tab\there', 'new\nline', '<@123>', 'x'.repeat(41)])('refuses trigger %j', (t) => {
    expect(() => validateTrigger(t)).toThrow(UserError);
  });
});

describe('concept names', () => {
  it('accepts and refuses', () => {
    expect(validateConceptName('Outfit-Red')).toBe('outfit-red');
    expect(() => validateConceptName('red outfit')).toThrow(UserError);
  });
});

describe('resolution', () => {
  it('defaults per base family and checks multiples of 64', () => {
    expect(validateResolution(null, 'sd15')).toBe(512);
    expect(validateResolution(null, 'sdxl')).toBe(1024);
    expect(validateResolution(768, 'sd15')).toBe(768);
    expect(() => validateResolution(500, 'sd15')).toThrow(/multiple of 64/);
    expect(() => validateResolution(4096, 'sdxl')).toThrow(UserError);
  });
});

describe('image selections', () => {
  it('parses numbers, lists, ranges and mine', () => {
    expect(parseImageSelection('mine')).toEqual({ mine: true });
    expect(parseImageSelection('3')).toEqual({ mine: false, nos: [3] });
    expect(parseImageSelection('#7, 3 5-6')).toEqual({ mine: false, nos: [3, 5, 6, 7] });
  });
  it.each(['', 'abc', '0', '5-2', '1-100000', 'mine please'])('refuses %j', (s) => {
    expect(() => parseImageSelection(s)).toThrow(UserError);
  });
});
