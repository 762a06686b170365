/**
 * The WD14 tagger end to end on generated models (test/fixtures/onnx-model.ts): every output's
 * logit is `bias + b·B̄ + g·Ḡ + r·R̄` over the image's mean colour, so the tags of a solid-colour
 * image are known in advance.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaggerUnavailableError } from '../../src/core/tagger-model.ts';
import { loadTagger, TaggerImageError, type Tagger, type TagResult } from '../../src/core/wd14-tagger.ts';
import { logitOf, makeSelectedTagsCsv, writeTestModel, type TestModelSpec, type TestTag } from '../fixtures/onnx-model.ts';

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** In CSV order: the ratings, the general tags, then the characters. */
const TAGS: TestTag[] = [
  { name: 'general', category: 9, bias: 1 },
  { name: 'sensitive', category: 9, bias: 0 },
  { name: 'questionable', category: 9, bias: -1 },
  { name: 'explicit', category: 9, bias: -3, r: 10, g: -5, b: -5 },
  { name: 'blue_sky', category: 0, bias: -3, b: 12, g: -6, r: -6 },
  { name: 'red_theme', category: 0, bias: -3, r: 12, g: -6, b: -6 },
  { name: 'simple_background', category: 0, bias: 0 }, // p = 0.5 exactly, always
  { name: '^_^', category: 0, bias: 5 },
  { name: 'a_b', category: 0, bias: 5 },
  { name: 'faint_tag', category: 0, bias: logitOf(0.3) },
  { name: 'hatsune_miku', category: 4, bias: 0 }, // p = 0.5 exactly, always
  { name: 'blue_knight_(series)', category: 4, bias: -5, b: 20 },
];

let root: string;
let modelDir: string;
let tagger: Tagger;

function solid(width: number, height: number, rgb: [number, number, number]): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } })
    .png()
    .toBuffer();
}

const BLUE: [number, number, number] = [0, 0, 255];
const RED: [number, number, number] = [255, 0, 0];

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'lg-wd14-'));
  modelDir = path.join(root, 'model');
  await writeTestModel(modelDir, { tags: TAGS, size: 32 });
  tagger = await loadTagger(modelDir);
});

afterAll(async () => {
  await tagger.close();
  await rm(root, { recursive: true, force: true });
});

describe('WD14 tagger: known inputs give known tags', () => {
  it('tags a pure-blue image with the blue tags, so the channels reach the model as BGR', async () => {
    const [result] = await tagger.tag([await solid(40, 40, BLUE)]);
    expect(result?.tags).toEqual(['blue sky', 'simple background', '^_^', 'a_b', 'blue knight (series)']);
    expect(result?.scores['blue sky']).toBeCloseTo(sigmoid(12 - 3), 5);
    expect(result?.scores['simple background']).toBe(0.5);
    expect(result?.scores['blue knight (series)']).toBeCloseTo(sigmoid(20 - 5), 5);
    expect(result?.rating).toBeUndefined();
  });

  it('tags a pure-red image with the red tag and no blue ones', async () => {
    const [result] = await tagger.tag([await solid(40, 40, RED)]);
    expect(result?.tags).toEqual(['red theme', 'simple background', '^_^', 'a_b']);
  });

  it('reads files by path as well as buffers', async () => {
    const file = path.join(root, 'blue.png');
    await writeFile(file, await solid(64, 64, BLUE));
    const [result] = await tagger.tag([file]);
    expect(result?.tags).toContain('blue sky');
  });

  it('pads with white before the model sees the image (a blue strip is mostly white)', async () => {
    // 64×4 blue → 64×64 with 60 white rows: mean G = R ≈ 0.94, so blue_sky's logit is about -8.
    const [result] = await tagger.tag([await solid(64, 4, BLUE)]);
    expect(result?.tags).not.toContain('blue sky');
    expect(result?.tags).toContain('simple background');
  });
});

describe('WD14 tagger: thresholds, ratings and tag names', () => {
  it('applies the general and character thresholds separately (0.35 and 0.85 by default)', async () => {
    const image = await solid(32, 32, RED);
    const [byDefault] = await tagger.tag([image]);
    expect(byDefault?.tags).toContain('simple background'); // general at 0.5 ≥ 0.35
    expect(byDefault?.tags).not.toContain('hatsune miku'); // character at 0.5 < 0.85
    expect(byDefault?.tags).not.toContain('faint tag'); // general at 0.3 < 0.35

    const [lowered] = await tagger.tag([image], { characterThreshold: 0.5, generalThreshold: 0.25 });
    expect(lowered?.tags).toEqual(['red theme', 'simple background', '^_^', 'a_b', 'faint tag', 'hatsune miku']);
    expect(lowered?.scores['faint tag']).toBeCloseTo(0.3, 6);
  });

  it('keeps a tag whose probability equals the threshold (p >= threshold)', async () => {
    const image = await solid(32, 32, RED);
    const [at] = await tagger.tag([image], { generalThreshold: 0.5 });
    expect(at?.tags).toContain('simple background');
    const [above] = await tagger.tag([image], { generalThreshold: 0.5000001 });
    expect(above?.tags).not.toContain('simple background');
  });

  it('leaves the rating out unless asked, and never puts it among the tags', async () => {
    const [blue, red] = await tagger.tag([await solid(32, 32, BLUE), await solid(32, 32, RED)], { includeRating: true });
    expect(blue?.rating).toBe('general');
    expect(blue?.scores['general']).toBeCloseTo(sigmoid(1), 5);
    expect(red?.rating).toBe('explicit'); // -3 + 10 = 7 beats general's 1
    for (const r of [blue, red]) {
      expect(r?.tags).not.toContain('general');
      expect(r?.tags).not.toContain('explicit');
    }
    const [plain] = await tagger.tag([await solid(32, 32, RED)]);
    expect(plain).not.toHaveProperty('rating');
    expect(plain?.scores).not.toHaveProperty('explicit');
  });

  it('turns underscores into spaces only in tags longer than 3 characters', async () => {
    const [result] = await tagger.tag([await solid(32, 32, BLUE)]);
    expect(result?.tags).toEqual(expect.arrayContaining(['^_^', 'a_b', 'simple background', 'blue knight (series)']));
    expect(Object.keys(result?.scores ?? {})).toEqual(result?.tags);
  });

  it('removes undesired tags, compared after underscore removal', async () => {
    const [result] = await tagger.tag([await solid(32, 32, BLUE)], { undesired: ['simple_background', ' blue sky ', 'a_b', 'not a tag'] });
    expect(result?.tags).toEqual(['^_^', 'blue knight (series)']);
    expect(result?.scores).not.toHaveProperty('blue sky');
  });
});

describe('WD14 tagger: batches', () => {
  it('gives a batch of 8 the same tags and scores (within 1e-6) as 8 single runs', async () => {
    const colours: [number, number, number][] = [BLUE, RED, [30, 200, 90], [250, 250, 250], [0, 0, 0], [90, 90, 200], [200, 40, 200], [12, 34, 56]];
    const images = await Promise.all(colours.map((c, i) => solid(20 + i * 7, 30 + ((i * 13) % 25), c)));
    const opts = { characterThreshold: 0.4, generalThreshold: 0.2, includeRating: true };
    const batched = await tagger.tag(images, { ...opts, batchSize: 8 });
    const singles: TagResult[] = [];
    for (const image of images) singles.push(...(await tagger.tag([image], { ...opts, batchSize: 1 })));
    expect(batched).toHaveLength(8);
    batched.forEach((b, i) => {
      const s = singles[i];
      expect(b.tags).toEqual(s?.tags);
      expect(b.rating).toBe(s?.rating);
      for (const tag of b.tags) expect(Math.abs(b.scores[tag]! - s!.scores[tag]!)).toBeLessThanOrEqual(1e-6);
    });
    // An uneven last batch (8 = 3 + 3 + 2) changes nothing either.
    const uneven = await tagger.tag(images, { ...opts, batchSize: 3 });
    expect(uneven.map((r) => r.tags)).toEqual(batched.map((r) => r.tags));
  });

  it('returns results in input order across many batches', async () => {
    const images = await Promise.all(Array.from({ length: 21 }, (_, i) => solid(16, 16, i % 3 === 0 ? BLUE : RED)));
    const results = await tagger.tag(images, { batchSize: 4 });
    expect(results.map((r) => r.tags.includes('blue sky'))).toEqual(images.map((_, i) => i % 3 === 0));
  });

  it('counts inference time and batches', async () => {
    const before = tagger.stats();
    await tagger.tag(await Promise.all([1, 2, 3].map(() => solid(16, 16, RED))), { batchSize: 2 });
    const after = tagger.stats();
    expect(after.batches - before.batches).toBe(2);
    expect(after.images - before.images).toBe(3);
    expect(after.inferenceMs).toBeGreaterThan(before.inferenceMs);
  });

  it('rejects an unreadable image with its position', async () => {
    const images = [await solid(16, 16, RED), Buffer.from('not an image'), await solid(16, 16, BLUE)];
    const err: unknown = await tagger.tag(images).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaggerImageError);
    expect((err as TaggerImageError).index).toBe(1);
    expect((err as Error).message).toMatch(/^Image 2 \(12-byte buffer\) could not be read/);
  });
});

describe('WD14 tagger: what it reads from the model', () => {
  /** Writes a test model with `spec` into its own folder, loads it for `use`, and closes it. */
  async function withModel(name: string, spec: Omit<TestModelSpec, 'tags'>, use: (t: Tagger) => Promise<void>): Promise<void> {
    const dir = path.join(root, name);
    await writeTestModel(dir, { tags: TAGS, ...spec });
    const t = await loadTagger(dir);
    try {
      await use(t);
    } finally {
      await t.close();
    }
  }

  it('uses the input and output names and the input size the model declares', async () => {
    await withModel('renamed', { size: 24, inputName: 'input_1:0', outputName: 'predictions_sigmoid' }, async (t) => {
      expect(t.info).toMatchObject({ inputName: 'input_1:0', outputName: 'predictions_sigmoid', size: 24, fixedBatch: undefined, tagCount: TAGS.length });
      const [result] = await t.tag([await solid(50, 50, BLUE)]);
      expect(result?.tags).toContain('blue sky');
    });
  });

  it('honours a fixed batch dimension, filling the last batch', async () => {
    await withModel('fixed', { size: 16, batch: 2 }, async (t) => {
      expect(t.info.fixedBatch).toBe(2);
      const images = await Promise.all([BLUE, RED, BLUE, RED, BLUE].map((c) => solid(16, 16, c)));
      const results = await t.tag(images, { batchSize: 8 });
      expect(results.map((r) => r.tags.includes('blue sky'))).toEqual([true, false, true, false, true]);
      expect(t.stats().batches).toBe(3);
    });
  });

  it('takes 448 when the model leaves the input size open', async () => {
    expect(tagger.info.size).toBe(32);
    await withModel('open-size', { size: 'dynamic' }, async (t) => {
      expect(t.info.size).toBe(448);
      const [result] = await t.tag([await solid(100, 100, BLUE)]);
      expect(result?.tags).toContain('blue sky');
    });
  });

  it('refuses to tag after close', async () => {
    const dir = path.join(root, 'closing');
    await writeTestModel(dir, { tags: TAGS, size: 8 });
    const t = await loadTagger(dir);
    await t.close();
    await expect(t.tag([await solid(8, 8, RED)])).rejects.toThrow(/closed/);
  });
});

describe('WD14 tagger: unusable model files', () => {
  async function loadError(dir: string): Promise<TaggerUnavailableError> {
    const err: unknown = await loadTagger(dir).then(
      async (t) => {
        await t.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TaggerUnavailableError);
    return err as TaggerUnavailableError;
  }

  it('names a missing model.onnx', async () => {
    const dir = path.join(root, 'no-model');
    const { modelPath } = await writeTestModel(dir, { tags: TAGS, size: 8 });
    await rm(modelPath);
    expect((await loadError(dir)).message).toBe(
      `The tagger model file ${modelPath} is missing. The folder must hold model.onnx and selected_tags.csv of a WD14 tagger.`,
    );
  });

  it('names a missing selected_tags.csv', async () => {
    const dir = path.join(root, 'no-tags');
    const { tagsPath } = await writeTestModel(dir, { tags: TAGS, size: 8 });
    await rm(tagsPath);
    expect((await loadError(dir)).message).toContain(`${tagsPath} is missing`);
  });

  it('reports a corrupt or truncated model as unloadable', async () => {
    const dir = path.join(root, 'corrupt');
    const { modelPath } = await writeTestModel(dir, { tags: TAGS, size: 8 });
    await writeFile(modelPath, Buffer.from('this is not an ONNX model at all'));
    expect((await loadError(dir)).message).toMatch(
      new RegExp(`^ONNX Runtime could not load the tagger model ${modelPath.replaceAll(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(a damaged or incomplete download`),
    );

    const truncatedDir = path.join(root, 'truncated');
    const written = await writeTestModel(truncatedDir, { tags: TAGS, size: 8, heavy: { width: 4, layers: 1 } });
    const bytes = await readFile(written.modelPath);
    await writeFile(written.modelPath, bytes.subarray(0, Math.floor(bytes.length / 2)));
    expect((await loadError(truncatedDir)).message).toContain('could not load the tagger model');
  });

  it('refuses a CSV without the expected columns', async () => {
    const dir = path.join(root, 'bad-csv');
    const { tagsPath } = await writeTestModel(dir, { tags: TAGS, size: 8 });
    await writeFile(tagsPath, 'id,tag,kind\n1,general,9\n');
    expect((await loadError(dir)).message).toBe(
      `${tagsPath} is not a WD14 selected_tags.csv: its first line must name the columns tag_id,name,category,count (found "id,tag,kind").`,
    );
  });

  it('refuses a CSV whose tag count differs from the model outputs', async () => {
    const dir = path.join(root, 'mismatch');
    const { tagsPath, modelPath } = await writeTestModel(dir, { tags: TAGS, size: 8 });
    await writeFile(tagsPath, makeSelectedTagsCsv(TAGS.slice(0, 6)));
    expect((await loadError(dir)).message).toBe(
      `The tagger model ${modelPath} gives ${TAGS.length} scores per image but selected_tags.csv lists 6 tags: ` +
        'the two files come from different taggers. Put the matching pair in the folder.',
    );
  });
});
