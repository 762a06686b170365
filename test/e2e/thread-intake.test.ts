import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatasetStore } from '../../src/store/dataset-store.ts';
import { normalJpeg, textAsPng } from '../fixtures/images.ts';
import { World } from './world.ts';

let world: World;

beforeAll(async () => {
  world = await World.start({ env: { DISCORD_MESSAGE_CONTENT: 'true', ATTESTATION_REQUIRED: 'true' } });
  await world.startBot();
});
afterAll(async () => {
  await world?.close();
});

describe('images posted in a dataset thread (Message Content intent)', () => {
  it('are contributed like /dataset add, with a report replying to the message (held for a first contributor’s confirmation)', async () => {
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
    // A first contributor is asked, in a short public message naming them (a plain message has no
    // private reply); their upload is held and taken in when they confirm, without posting again.
    const ask = await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${thread.id}/messages` && JSON.stringify(c.json).includes('I confirm'),
      30_000,
    );
    const question = ask.json as { content: string; allowed_mentions: unknown; components: { components: { custom_id: string }[] }[] };
    expect(question.content).toMatch(
      new RegExp(`^<@${author.id}>, before I add your images, please confirm once:\n> I have the right to share these images[^\n]*$`),
    );
    expect(question.allowed_mentions).toMatchObject({ users: [author.id] });
    const questionId = world.discord.channelMessages(thread.id).find((m) => m.content === question.content)!.id;
    const store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
    const ds = (await store.findDataset(world.discord.guildId, 'posted'))!;
    expect(await store.imageCount(ds.id)).toBe(0);
    const press = world.discord.sendButton({
      customId: question.components[0]!.components[0]!.custom_id,
      user: author,
      channelId: thread.id,
      message: questionId,
    });
    await press.waitForEdit(undefined, 60_000);
    expect(press.lastReply()!.content).toMatch(/^Thank you: recorded <t:\d+:f>\. Your images went in: the report is under your message\.$/);
    expect(press.lastReply()!.flags).toBe(64);
    // The answered question is gone from the thread.
    expect(world.discord.calls.some((c) => c.method === 'DELETE' && c.path === `/channels/${thread.id}/messages/${questionId}`)).toBe(true);
    expect(world.discord.channelMessages(thread.id).some((m) => m.id === questionId)).toBe(false);

    const post = await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${thread.id}/messages` && JSON.stringify(c.json).includes('1 added'),
      30_000,
    );
    expect(post.json).toMatchObject({ message_reference: { message_id: message.id } });
    expect(JSON.stringify(post.json)).toContain('not an image');
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
