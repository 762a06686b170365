import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeContactSheet } from '../../src/core/image-sheets.ts';
import { DatasetStore } from '../../src/store/dataset-store.ts';
import { normalJpeg, photoRgb, type ImageFile } from '../fixtures/images.ts';
import { writeRaterModel } from '../fixtures/rater-model.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import { World } from './world.ts';

/**
 * The photo classifier is a generated model (see rater-model.ts) that calls an image nsfw when it
 * is mostly red: the test decides which images are rated explicit.
 */
let world: World;
let store: DatasetStore;
let tmp: string;
const NSFW_CHANNEL = '700000000000000001';
const alice = { id: '100000000000000001', username: 'alice' };
const bob = { id: '100000000000000002', username: 'bob' };
const MANAGE_GUILD = String(1n << 5n);

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'ratings-'));
  const raterDir = await writeRaterModel(join(tmp, 'rater'));
  world = await World.start({
    discord: { guilds: [{ name: 'Guild', channels: [{ name: 'lora' }, { id: NSFW_CHANNEL, name: 'after-dark', nsfw: true }] }] },
    env: { RATER_MODEL_DIR: raterDir, ATTESTATION_REQUIRED: 'true' },
  });
  await world.startBot();
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
});
afterAll(async () => {
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

/** A photo-like picture pushed towards red: the generated classifier rates it nsfw. */
async function redJpeg(seed: number, name = `red-${seed}.jpg`): Promise<ImageFile> {
  const img = photoRgb(seed, 640, 480);
  for (let i = 0; i < img.data.length; i += 3) {
    img.data[i] = 150 + Math.round((img.data[i]! * 105) / 255);
    img.data[i + 1] = Math.round((img.data[i + 1]! * 60) / 255);
    img.data[i + 2] = Math.round((img.data[i + 2]! * 60) / 255);
  }
  const data = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
  return { name, data, contentType: 'image/jpeg' };
}

async function run(h: InteractionHandle): Promise<string> {
  await h.waitForEdit(undefined, 60_000);
  return h.lastReply()?.content ?? '';
}

function createDataset(name: string, channelId?: string) {
  return run(
    world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      user: alice,
      ...(channelId ? { channelId } : {}),
      options: { name, trigger: `ohwx_${name}`, class: 'woman', kind: 'character', base: 'sd15' },
    }),
  );
}

function addImages(dataset: string, files: ImageFile[], channelId?: string, user = alice): InteractionHandle {
  const options: Record<string, unknown> = { dataset };
  files.forEach((f, i) => {
    options[`image${i + 1}`] = world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType });
  });
  return world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user, ...(channelId ? { channelId } : {}), options: options as never });
}

function sheetOf(h: InteractionHandle): Buffer | undefined {
  return h.lastReply()!.attachments.find((a) => a.filename.startsWith('contact-sheet'))?.data;
}

/** The sheet's size is that of a sheet of `n` tiles (columns and rows follow the count). */
async function expectTiles(sheet: Buffer | undefined, n: number) {
  expect(sheet).toBeDefined();
  const blank = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#808080' } })
    .png()
    .toBuffer();
  const expected = await sharp(await makeContactSheet(Array.from({ length: n }, (_, i) => ({ image: blank, label: `#${i + 1}` })))).metadata();
  const got = await sharp(sheet).metadata();
  expect([got.width, got.height]).toEqual([expected.width, expected.height]);
}

/** Share of strongly red pixels: one red tile of two makes it about 0.35; the photos alone stay under 0.1. */
async function redShare(sheet: Buffer): Promise<number> {
  const { data, info } = await sharp(sheet).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  let red = 0;
  for (let i = 0; i < data.length; i += info.channels) if (data[i]! > 140 && data[i + 1]! < 80 && data[i + 2]! < 80) red++;
  return red / (info.width * info.height);
}

async function captionShow(dataset: string, image: number, channelId?: string) {
  return run(world.discord.sendCommand({ name: 'caption', subcommand: 'show', user: alice, ...(channelId ? { channelId } : {}), options: { dataset, image } }));
}

describe('attestation', () => {
  it('asks a first contributor once, to them alone, holds their upload and takes it in when they confirm', async () => {
    await createDataset('aria');
    await createDataset('consent');
    const first = addImages('consent', [await normalJpeg(31), await normalJpeg(32)]);
    // The question is alice's alone: an ephemeral reply, with nothing public before it.
    const asked = (await first.callback(60_000)).json as { type: number; data: unknown };
    expect(asked.type).toBe(4);
    const question = asked.data as { content: string; flags: number; components: { components: { custom_id: string; label: string }[] }[] };
    expect(question.flags & 64).toBe(64);
    expect(question.content).toMatch(
      /please confirm once:\n> I have the right to share these images, every real person pictured agreed to it, and nothing in them is illegal\.\nPress the button and your upload goes in \(it waits 15 minutes\)\./,
    );
    expect(first.followups()).toHaveLength(0);
    const held = (await store.findDataset(world.discord.guildId, 'consent'))!;
    expect(await store.imageCount(held.id)).toBe(0);
    const button = question.components[0]!.components[0]!;
    expect(button.label).toBe('I confirm');
    // The upload is held (its files' details only), for a while.
    const heldKey = `${world.env.REDIS_PREFIX}:guild:${world.discord.guildId}:held-upload:${alice.id}`;
    expect(await world.redis.ttl(heldKey)).toBeGreaterThan(14 * 60);

    // Someone else cannot confirm for alice.
    const other = world.discord.sendButton({ customId: button.custom_id, user: bob });
    expect(await run(other)).toMatch(/asked of someone else/);
    const key = `${world.env.REDIS_PREFIX}:guild:${world.discord.guildId}:attestations`;
    expect(await world.redis.hkeys(key)).toEqual([]);

    // Confirming takes in the upload that asked, without sending it again.
    const before = Date.now();
    const press = world.discord.sendButton({ customId: button.custom_id, user: alice });
    expect(await run(press)).toMatch(/^Thank you: recorded <t:\d+:f>\. Your upload went in:\n.*2 added, 0 refused/);
    expect(press.lastReply()!.attachments.map((a) => a.filename)).toContain('contact-sheet.jpg');
    expect(await store.imageCount(held.id)).toBe(2);
    expect(await world.redis.exists(heldKey)).toBe(0);
    // A second press finds nothing held and adds nothing twice.
    expect(await run(world.discord.sendButton({ customId: button.custom_id, user: alice }))).toMatch(/Now send your images again/);
    expect(await store.imageCount(held.id)).toBe(2);
    const record = JSON.parse((await world.redis.hget(key, alice.id))!) as { userId: string; name: string; at: number; statement: string };
    expect([record.userId, record.name]).toEqual([alice.id, 'alice']);
    expect(record.statement).toMatch(/right to share/);
    expect(record.at).toBeGreaterThanOrEqual(before);

    // Asked once: alice's next upload goes in; bob is still asked.
    expect(await run(addImages('aria', [await normalJpeg(9)]))).toMatch(/1 added, 0 refused/);
    const bobAsked = (await addImages('aria', [await normalJpeg(10)], undefined, bob).callback()).json as { data: { content: string; flags: number } };
    expect(bobAsked.data).toMatchObject({ content: expect.stringMatching(/please confirm once/) as string, flags: 64 });
    const ds = (await store.findDataset(world.discord.guildId, 'aria'))!;
    expect((await store.listImages(ds.id)).map((i) => i.contributorName)).toEqual(['alice']);
  });
});

describe('ratings and channel-aware posting', () => {
  it('refuses an explicit upload to a normal channel’s dataset with its reason and keeps the rest', async () => {
    const h = addImages('aria', [await normalJpeg(1), await redJpeg(2), await normalJpeg(3)]);
    const content = await run(h);
    expect(content).toMatch(/2 added, 1 refused/);
    expect(content).toMatch(/❌ `red-2.jpg` — rated explicit: a dataset outside age-restricted channels takes images up to sensitive/);
    const ds = (await store.findDataset(world.discord.guildId, 'aria'))!;
    const images = await store.listImages(ds.id);
    expect(images.map((i) => [i.no, i.sourceName, i.ratings])).toEqual([
      [1, 'IMG_0009.jpg', { classifier: 'general' }],
      [2, 'IMG_0001.jpg', { classifier: 'general' }],
      [3, 'IMG_0003.jpg', { classifier: 'general' }],
    ]);
    await expectTiles(sheetOf(h), 2);
    expect(await captionShow('aria', 3)).toMatch(/Rating: \*\*general\*\* \(photo classifier: general\)/);
  });

  it('takes the same image into a dataset bound to an age-restricted channel, and shows it there', async () => {
    await createDataset('noir', NSFW_CHANNEL);
    const h = addImages('noir', [await redJpeg(2), await normalJpeg(4)], NSFW_CHANNEL);
    expect(await run(h)).toMatch(/2 added, 0 refused/);
    await expectTiles(sheetOf(h), 2);
    expect(await redShare(sheetOf(h)!)).toBeGreaterThan(0.3);
    const shown = world.discord.sendCommand({
      name: 'caption',
      subcommand: 'show',
      user: alice,
      channelId: NSFW_CHANNEL,
      options: { dataset: 'noir', image: 1 },
    });
    expect(await run(shown)).toMatch(/Rating: \*\*explicit\*\* \(photo classifier: explicit\)/);
    expect(shown.lastReply()!.attachments.map((a) => a.filename)).toEqual(['image-1.jpg']);
    // Outside the age-restricted channel the same image gets no preview.
    const elsewhere = world.discord.sendCommand({ name: 'caption', subcommand: 'show', user: alice, options: { dataset: 'noir', image: 1 } });
    expect(await run(elsewhere)).toMatch(/🙈 No preview here: rated above sensitive/);
    expect(elsewhere.lastReply()!.attachments).toEqual([]);
  });

  it('never puts a tile above the policy on a contact sheet in a normal channel, and says how many it left out', async () => {
    // Seen from a normal channel, the age-restricted dataset's explicit image stays off the sheet.
    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', user: alice, options: { dataset: 'noir' } });
    const content = await run(show);
    expect(content).toMatch(/🙈 1 image is not on the contact sheet \(#1\): rated above general/);
    await expectTiles(sheetOf(show), 1);
    expect(await redShare(sheetOf(show)!)).toBeLessThan(0.2);

    // A server that takes explicit images everywhere still does not show them in a normal channel.
    const set = world.discord.sendCommand({
      name: 'settings',
      subcommand: 'moderation',
      user: alice,
      permissions: MANAGE_GUILD,
      options: { accepted: 'explicit', spoilered: 'questionable' },
    });
    expect(await run(set)).toMatch(/up to general shown, up to questionable behind a spoiler, above explicit refused/);
    const h = addImages('aria', [await redJpeg(5), await normalJpeg(6), await redJpeg(7), await normalJpeg(8)]);
    const added = await run(h);
    expect(added).toMatch(/4 added, 0 refused/);
    expect(added).toMatch(/🙈 2 added images are not on the contact sheet \(#4, #6\): rated above general/);
    await expectTiles(sheetOf(h), 2);
    expect(await redShare(sheetOf(h)!)).toBeLessThan(0.2);
  });

  it('refuses a policy out of order', async () => {
    const set = world.discord.sendCommand({
      name: 'settings',
      subcommand: 'moderation',
      user: alice,
      permissions: MANAGE_GUILD,
      options: { shown: 'sensitive', spoilered: 'general' },
    });
    await set.waitForEdit();
    expect(set.lastReply()?.content).toMatch(/spoilered rating cannot be below the shown one/);
  });
});
