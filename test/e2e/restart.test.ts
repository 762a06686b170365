import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { DatasetStore } from '../../src/store/dataset-store.ts';
import { normalJpeg } from '../fixtures/images.ts';
import { World } from './world.ts';

let world: World;
let store: DatasetStore;
let blobs: BlobStore;

beforeAll(async () => {
  world = await World.start();
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
});
afterAll(async () => {
  await world?.close();
});

async function attachments(seeds: number[]) {
  const files = await Promise.all(seeds.map((s) => normalJpeg(s, 1600, 1200)));
  return Object.fromEntries(
    files.map((f, i) => [`image${i + 1}`, world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType })]),
  );
}

/** Every record points at blobs that exist, every index agrees with the records. */
async function expectConsistent(datasetId: string) {
  const nos = await store.imageNumbers(datasetId);
  const images = await store.listImages(datasetId);
  expect(images.map((i) => i.no)).toEqual(nos);
  const phashes = await store.phashes(datasetId);
  expect([...phashes.keys()].sort((a, b) => a - b)).toEqual(nos);
  for (const img of images) {
    for (const blob of [img.originalBlob, img.masterBlob, img.thumbBlob]) {
      expect(await blobs.has(blob)).toBe(true);
      expect(await store.blobRefCount(blob)).toBeGreaterThan(0);
    }
    expect(await store.pixelOwner(datasetId, img.pixelSha256)).toBe(img.no);
  }
  return images;
}

describe('a restarted bot', () => {
  it('still has every dataset and image after a clean restart and after SIGKILL', async () => {
    await world.spawnBot();
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'durable', trigger: 'ohwx_durable', class: 'man', kind: 'character', base: 'sdxl' },
    });
    await create.waitForEdit();
    const add = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'durable', ...(await attachments([1, 2, 3])) } });
    await add.waitForEdit(undefined, 60_000);
    expect(add.lastReply()?.content).toMatch(/3 added/);

    await world.killChild('SIGTERM');
    await world.spawnBot();
    const ds = await store.findDataset(world.discord.guildId, 'durable');
    expect(ds?.resolution).toBe(1024);
    expect(await expectConsistent(ds!.id)).toHaveLength(3);

    await world.killChild('SIGKILL');
    await world.spawnBot();
    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'durable' } });
    await show.waitForEdit();
    expect(show.lastReply()?.content).toMatch(/\*\*3\*\* images/);
    expect(await expectConsistent(ds!.id)).toHaveLength(3);
  });

  it('is consistent after being killed in the middle of an upload, and the upload can be repeated', async () => {
    if (!world.child) await world.spawnBot();
    const ds = (await store.findDataset(world.discord.guildId, 'durable'))!;
    const files = await attachments([11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    const add = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'durable', ...files } });
    await add.callback();
    // Kill once the first of the ten is recorded, while the others are still on their way.
    const deadline = Date.now() + 30_000;
    while ((await store.imageCount(ds.id)) < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await world.killChild('SIGKILL');
    const landed = await store.imageCount(ds.id);
    expect(landed).toBeGreaterThanOrEqual(4);

    await world.spawnBot();
    await expectConsistent(ds.id);
    // Re-sending the same ten: what landed is refused as a duplicate, the rest is added.
    const again = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'durable', ...files } });
    await again.waitForEdit(undefined, 60_000);
    const content = again.lastReply()?.content ?? '';
    const refused = (content.match(/^❌/gm) ?? []).length;
    expect(refused).toBe(landed - 3);
    expect((content.match(/same picture as|near duplicate of/g) ?? []).length).toBe(refused);
    expect(await expectConsistent(ds.id)).toHaveLength(13);
  });
});
