import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { loadConfig } from '../../src/core/config.ts';
import { createLogger } from '../../src/core/logger.ts';
import { NoticeSender } from '../../src/queues/notices.ts';
import { CaptionStore, sentenceOf } from '../../src/store/caption-store.ts';
import { DatasetStore, newId } from '../../src/store/dataset-store.ts';
import { ModerationStore } from '../../src/store/moderation-store.ts';
import { TaggingService } from '../../src/worker/tagging.ts';
import { testCaptionFor, writeTestCaptioner } from '../fixtures/florence-model.ts';
import { imageFacts } from '../fixtures/image-facts.ts';
import { redisForFile } from '../harness/redis-per-file.ts';

const server = redisForFile();
let tmp: string;
let service: TaggingService;
let store: DatasetStore;
let sentences: CaptionStore;
let blobs: BlobStore;
let notices: NoticeSender;

beforeAll(async () => {
  const redis = server.redis;
  tmp = await mkdtemp(path.join(tmpdir(), 'describe-'));
  await writeTestCaptioner(path.join(tmp, 'florence'));
  const prefix = `t${newId(4)}`;
  const config = loadConfig({ DATA_DIR: tmp, REDIS_PREFIX: prefix, CAPTIONER_MODEL_DIR: path.join(tmp, 'florence'), CAPTIONER_BATCH: '2' });
  store = new DatasetStore(redis, prefix);
  sentences = new CaptionStore(redis, prefix, 'sentences');
  blobs = new BlobStore(tmp);
  await blobs.init();
  notices = new NoticeSender(redis, prefix);
  service = new TaggingService({
    config,
    logger: createLogger('silent'),
    store,
    captions: new CaptionStore(redis, prefix),
    sentences,
    blobs,
    notices,
    moderation: new ModerationStore(redis, prefix),
  });
});
afterAll(async () => {
  await service?.close();
  await notices?.close();
  await rm(tmp, { recursive: true, force: true });
});

async function master(r: number, g: number, b: number): Promise<string> {
  const png = await sharp({ create: { width: 80, height: 60, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();
  return (await blobs.putBuffer(png)).id;
}

describe('the worker describing images', () => {
  it('writes a sentence per image in batches, skips an unreadable one without losing the others, and never replaces a sentence that is there', async () => {
    const ds = await store.createDataset({
      guildId: 'g1',
      name: 'streets',
      trigger: 'mdvl_city',
      className: 'city',
      kind: 'style',
      base: 'sdxl',
      resolution: 1024,
      ownerId: 'u1',
      channelId: 'c1',
    });
    const masters = [
      await master(230, 20, 20),
      (await blobs.putBuffer(Buffer.from('not an image at all'))).id,
      await master(20, 40, 230),
      await master(20, 200, 40),
      await master(200, 10, 10),
    ];
    for (const [i, blob] of masters.entries()) await store.addImage(ds.id, { ...imageFacts(i + 1), masterBlob: blob, pixelSha256: `p${i}` });
    await sentences.set(ds.id, 5, ['A sentence a member wrote.'], { by: 'u1', source: 'upload' });

    expect(await service.tracksFor({ guildId: 'g1', datasetId: ds.id, imageNos: [1], retag: false, requestedBy: 'intake' })).toEqual(['sentences']);
    const result = await service.describeImages({ guildId: 'g1', datasetId: ds.id, imageNos: [1, 2, 3, 4, 5, 99], retag: false, requestedBy: 'intake' });
    expect(result).toEqual({ described: [1, 3, 4], skipped: [2, 5, 99] });
    const got = await sentences.getMany(ds.id, [1, 2, 3, 4, 5]);
    expect(sentenceOf(got.get(1)!)).toBe(testCaptionFor('red'));
    expect(got.get(1)).toMatchObject({ by: 'captioner', source: 'captioner', version: 1 });
    expect(got.has(2)).toBe(false);
    expect(sentenceOf(got.get(3)!)).toBe(testCaptionFor('blue'));
    expect(sentenceOf(got.get(4)!)).toBe(testCaptionFor('green'));
    expect(sentenceOf(got.get(5)!)).toBe('A sentence a member wrote.');

    // A job of another server changes nothing.
    expect(await service.describeImages({ guildId: 'g2', datasetId: ds.id, imageNos: [2], retag: false, requestedBy: 'x' })).toEqual({
      described: [],
      skipped: [2],
    });
    // `/tags retag` only tags, whatever the mode.
    expect(await service.tracksFor({ guildId: 'g1', datasetId: ds.id, imageNos: [1], retag: true, requestedBy: 'u1' })).toEqual(['tags']);
  });
});
