import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadRater, RaterUnavailableError, ratingOfLabel, type ImageRater } from '../../src/core/image-rater.ts';
import { writeRaterModel } from '../fixtures/rater-model.ts';

let tmp: string;
let rater: ImageRater;

const solid = (r: number, g: number, b: number, alpha?: number) =>
  sharp({ create: { width: 40, height: 30, channels: alpha === undefined ? 3 : 4, background: { r, g, b, alpha: alpha ?? 1 } } })
    .png()
    .toBuffer();

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rater-'));
  rater = await loadRater(await writeRaterModel(join(tmp, 'red-is-nsfw')));
});
afterAll(async () => {
  await rater?.close();
  await rm(tmp, { recursive: true, force: true });
});

describe('the photo rater', () => {
  it('rates each image by the label the model puts first, read from its config', async () => {
    const ratings = await rater.rate([await solid(230, 20, 20), await solid(255, 255, 255), await solid(20, 200, 40), await solid(200, 30, 30)]);
    expect(ratings).toEqual(['explicit', 'general', 'general', 'explicit']);
  });

  it('flattens transparency on white before rating (a see-through red image is white)', async () => {
    expect(await rater.rate([await solid(230, 20, 20, 0)])).toEqual(['general']);
  });

  it('gives null for an image it cannot read and rates the others', async () => {
    expect(await rater.rate([Buffer.from('not an image'), await solid(230, 20, 20)])).toEqual([null, 'explicit']);
  });

  it('maps the label vocabularies of NSFW detectors to ratings', () => {
    expect(['sfw', 'Normal', 'drawings', 'sexy', 'NSFW', 'porn', 'hentai', 'questionable', 'unknown'].map(ratingOfLabel)).toEqual([
      'general',
      'general',
      'general',
      'sensitive',
      'explicit',
      'explicit',
      'explicit',
      'questionable',
      null,
    ]);
  });

  it('refuses a model whose labels it cannot map, or a folder without the model', async () => {
    const dir = await writeRaterModel(join(tmp, 'odd'), [{ name: 'cat' }, { name: 'dog' }]);
    await expect(loadRater(dir)).rejects.toThrow(RaterUnavailableError);
    await expect(loadRater(dir)).rejects.toThrow(/label 0 = "cat"/);
    const empty = join(tmp, 'empty');
    await writeRaterModel(empty);
    await writeFile(join(empty, 'config.json'), '{"id2label": {"0": "sfw", "2": "nsfw"}}');
    await expect(loadRater(empty)).rejects.toThrow(/numbered/);
    await expect(loadRater(join(tmp, 'nowhere'))).rejects.toThrow(/missing/);
  });
});
