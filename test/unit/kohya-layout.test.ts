import { describe, expect, it } from 'vitest';
import { conceptNameFromFolder, conceptTriggersFromToml, readKohyaLayout } from '../../src/core/kohya-layout.ts';

describe('readKohyaLayout', () => {
  it('is null for a zip without N_name folders: its images go where the upload said', () => {
    expect(readKohyaLayout([[], ['holiday'], ['a', 'b']])).toBeNull();
  });

  it('reads each N_name folder as a concept with its repeats, under any parent folder', () => {
    const reading = readKohyaLayout([['img', '10_aria'], ['img', '10_aria'], ['4_Red Dress'], ['loose']])!;
    expect(reading.recognised).toEqual([
      { path: 'img/10_aria', concept: 'aria', repeats: 10 },
      { path: '4_Red Dress', concept: 'red-dress', repeats: 4 },
    ]);
    expect(reading.folders.map((f) => f?.concept ?? null)).toEqual(['aria', 'aria', 'red-dress', null]);
    expect(reading.problems).toEqual([]);
  });

  it('says why a folder that looks like one cannot be used, and leaves regularisation images out', () => {
    const reading = readKohyaLayout([
      ['img', '0_zero'],
      ['img', '2023_trip'],
      ['img', '3_über!'],
      ['reg', '1_woman'],
      ['img', '5_ok'],
    ])!;
    expect(reading.folders.map((f) => f?.concept ?? null)).toEqual([null, null, null, null, 'ok']);
    expect(reading.regularisation).toEqual([false, false, false, true, false]);
    expect(reading.problems).toEqual([
      'folder `img/0_zero`: 0 repeats is not between 1 and 1000',
      'folder `img/2023_trip`: 2023 repeats is not between 1 and 1000',
      "folder `img/3_über!`: `über!` can't be a concept name (letters, digits, `-` and `_`, up to 32)",
    ]);
  });

  it('turns a folder name into a concept name the way members would type it', () => {
    expect(conceptNameFromFolder('ohwx woman')).toBe('ohwx-woman');
    expect(conceptNameFromFolder(' Main ')).toBe('main');
    expect(conceptNameFromFolder('x'.repeat(33))).toBeNull();
  });
});

describe('conceptTriggersFromToml', () => {
  it("reads a subset's own trigger from the tags it keeps in front, per folder", () => {
    const toml = [
      '[general]',
      'keep_tokens = 1',
      '[[datasets]]',
      '[[datasets.subsets]]',
      'image_dir = "/data/img/10_aria"',
      'class_tokens = "ohwx, woman"',
      '[[datasets.subsets]]',
      'image_dir = "img/4_outfit"',
      'keep_tokens = 3',
      'class_tokens = "ohwx, red dress, hat, woman"',
      '[[datasets.subsets]]',
      'image_dir = "img/2_odd"',
      'keep_tokens = 2',
      'class_tokens = "ohwx, a`b, woman"',
      '[[datasets.subsets]]',
      'image_dir = "img/not-a-concept"',
      'keep_tokens = 2',
      'class_tokens = "ohwx, cape, woman"',
    ].join('\n');
    // aria keeps only the dataset's trigger; odd's is not a trigger we take; a folder not `N_name` is no concept.
    expect(conceptTriggersFromToml(toml)).toEqual(new Map([['4_outfit', 'red dress']]));
  });

  it('takes nothing from settings that do not parse or are of another shape', () => {
    expect(conceptTriggersFromToml('[[datasets]\nnot toml')).toEqual(new Map());
    expect(conceptTriggersFromToml('datasets = "no"')).toEqual(new Map());
    expect(conceptTriggersFromToml('[[datasets]]\n[[datasets.subsets]]\nimage_dir = 3\nkeep_tokens = 2\nclass_tokens = "a, b"')).toEqual(new Map());
  });
});
