import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatasetStore } from '../../src/store/dataset-store.ts';
import { normalJpeg, textAsPng } from '../fixtures/images.ts';
import { World } from './world.ts';

let world: World;

beforeAll(async () => {
  world = await World.start({ env: { DISCORD_MESSAGE_CONTENT: 'true' } });
  await world.startBot();
});
afterAll(async () => {
  await world?.close();
});

describe('images posted in a dataset thread (Message Content intent)', () => {
  it('are contributed like /dataset add, with a report replying to the message', async () => {
    expect(world.discord.identifiedIntents! & (1 << 15)).not.toBe(0);
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'posted', trigger: 'ohwx_posted', class: 'cat', kind: 'concept', base: 'sd15' },
    });
    await create.waitForEdit();
    const thread = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · posted')!;
    const author = { id: '100000000000000009', username: 'dora' };
    const photo = await normalJpeg(77);
    const junk = textAsPng();
    const message = world.discord.postUserMessage({
      channelId: thread.id,
      author,
      content: 'two for the set',
      attachments: [
        world.discord.addAttachment({ filename: photo.name, data: photo.data, contentType: photo.contentType, channelId: thread.id }),
        world.discord.addAttachment({ filename: junk.name, data: junk.data, contentType: junk.contentType, channelId: thread.id }),
      ],
    });
    const post = await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${thread.id}/messages` && JSON.stringify(c.json).includes('1 added'),
      30_000,
    );
    expect(post.json).toMatchObject({ message_reference: { message_id: message.id } });
    expect(JSON.stringify(post.json)).toContain('not an image');

    const store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
    const ds = (await store.findDataset(world.discord.guildId, 'posted'))!;
    const images = await store.listImages(ds.id);
    expect(images.map((i) => [i.contributorId, i.sourceMessageId])).toEqual([[author.id, message.id]]);
  });

  it('are ignored outside dataset threads', async () => {
    const photo = await normalJpeg(78);
    const before = world.discord.calls.length;
    world.discord.postUserMessage({
      channelId: world.discord.channelId,
      attachments: [world.discord.addAttachment({ filename: photo.name, data: photo.data })],
    });
    // A later interaction is answered, so the message was seen and passed over.
    const ping = world.discord.sendCommand({ name: 'dataset', subcommand: 'list' });
    await ping.waitForEdit();
    expect(world.discord.calls.slice(before).filter((c) => c.method === 'POST' && c.path.startsWith('/channels/'))).toHaveLength(0);
  });
});
