import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import { pruneButton } from '../../src/bot/commands/tags.ts';
import { keys } from '../../src/store/keys.ts';
import { editCaption, privateRefusal } from './steps.ts';
import { World } from './world.ts';

let world: World;
let modelDir: string;
const alice = { id: '200000000000000001', username: 'alice' };
const mallory = { id: '200000000000000002', username: 'mallory' };
const OTHER_GUILD = '666666666666666666';

beforeAll(async () => {
  modelDir = await mkdtemp(join(tmpdir(), 'lora-guild-tagger-'));
  await writeTestModel(modelDir, { tags: WORKSHOP_TAGS });
  world = await World.start({
    env: { TAGGER_MODEL_DIR: modelDir },
    discord: {
      guilds: [
        { name: 'Guild', channels: [{ name: 'lora' }] },
        { id: OTHER_GUILD, name: 'Elsewhere', channels: [{ name: 'general' }] },
      ],
    },
  });
  await world.startBot();
});
afterAll(async () => {
  await world?.close();
  await rm(modelDir, { recursive: true, force: true });
});

function command(subcommandOf: string, subcommand: string, options: Record<string, string | number>, user = alice, extra = {}): InteractionHandle {
  return world.discord.sendCommand({ name: subcommandOf, subcommand, user, options, ...extra });
}

async function done(h: InteractionHandle): Promise<string> {
  await h.waitForEdit(undefined, 30_000);
  return h.lastReply()?.content ?? '';
}

describe('tagging and the caption workshop', () => {
  let threadId: string;

  it('tags uploads in the background and says so in the dataset thread', async () => {
    await done(command('dataset', 'create', { name: 'aria', trigger: 'ohwx_aria', class: 'woman', kind: 'character', base: 'sd15' }));
    threadId = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · aria')!.id;
    const [red, blue, green] = [await tinted(1, '#ff2020'), await tinted(2, '#2040ff'), await tinted(3, '#20c020')];
    const add = command('dataset', 'add', {
      dataset: 'aria',
      image1: world.discord.addAttachment({ filename: red.name, data: red.data }) as never,
      image2: world.discord.addAttachment({ filename: blue.name, data: blue.data }) as never,
      image3: world.discord.addAttachment({ filename: green.name, data: green.data }) as never,
    });
    expect(await done(add)).toMatch(/3 added/);
    const notice = await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Tagged 3 images'),
      30_000,
    );
    expect(JSON.stringify(notice.json)).toContain('#1–#3');
  });

  it('counts tagged images in /dataset show', async () => {
    expect(await done(command('dataset', 'show', { dataset: 'aria' }))).toContain('Captions: 3/3');
  });

  it('shows the caption with the trigger first and the tagger’s tags after it', async () => {
    const shown = command('caption', 'show', { dataset: 'aria', image: 1 });
    const red = await done(shown);
    // The picture itself, large enough to judge the caption by (the master is 640×512).
    const picture = shown.lastReply()!.attachments.find((a) => a.filename === 'image-1.jpg');
    expect(await sharp(picture!.data).metadata()).toMatchObject({ format: 'jpeg', width: 640, height: 512 });
    expect(red).toContain('ohwx_aria, red theme, smile, long hair, tiara');
    expect(red).not.toContain('blue theme');
    expect(red).not.toContain('aria (game)'); // a character tag under its 0.85 threshold
    // Rating tags are left out of the caption; the rating has a line of its own.
    expect(red.replace(/^Rating: .*$/m, '')).not.toMatch(/general|sensitive/);
    expect(red).toMatch(/^Rating: \*\*general\*\* \(tagger: general\)$/m);
    const blue = await done(command('caption', 'show', { dataset: 'aria', image: 2 }));
    expect(blue).toContain('ohwx_aria, blue theme, smile, long hair, tiara');
  });

  it('ranks tags, most used first, one per line with a bar and a count, and offers to prune tags found in ≥ 90% of a concept', async () => {
    const h = command('tags', 'top', { dataset: 'aria' });
    const content = await done(h);
    const ranked = content.split('\n').filter((l) => /^`\s*\d+`/.test(l));
    // Three tags in every caption, then a colour in two of them.
    expect(ranked.map((l) => /\*\*(\d+)\*\*/.exec(l)?.[1])).toEqual(['3', '3', '3', '1', '1']);
    expect(ranked.map((l) => /^`(\d)`/.exec(l)?.[1])).toEqual(['1', '2', '3', '4', '5']);
    expect(content).toMatch(/^`\d` █{10} \*\*3\*\* · `smile`$/m);
    expect(content).toMatch(/^`\d` ███░{7} \*\*1\*\* · `red theme`$/m);
    // `smile` is in every image but changes between pictures: never offered for pruning.
    expect(content).toMatch(/In ≥ 90% of `main`: `long hair`, `tiara`\. These describe who the character is, so the trigger word should carry them/);
    // One page: no page buttons, only the prune button.
    expect(h.lastReply()!.components).toHaveLength(1);
    const row = h.lastReply()!.components[0] as { components: { custom_id: string; label: string }[] };
    expect(row.components[0]!.label).toBe('Prune these (2)');
  });

  it('pages a long tag list with Previous/Next buttons that edit the list in place', async () => {
    const many = Array.from({ length: 20 }, (_, i) => `extra ${String(i + 1).padStart(2, '0')}`);
    expect(await done(command('tags', 'add', { dataset: 'aria', tags: many.join(', ') }))).toMatch(/changed 3 captions/);
    const h = command('tags', 'top', { dataset: 'aria' });
    const first = await done(h);
    expect(first).toMatch(/25 different tags · page 1\/2/);
    const rows = h.lastReply()!.components as { components: { custom_id: string; label: string; disabled?: boolean }[] }[];
    expect(rows[0]!.components.map((b) => [b.label, b.disabled ?? false])).toEqual([
      ['◀ Previous', true],
      ['Next ▶', false],
    ]);
    const ranksOf = (text: string) =>
      text
        .split('\n')
        .flatMap((l) => /^`\s*(\d+)`/.exec(l)?.[1] ?? [])
        .map(Number);
    expect(ranksOf(first)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));

    const next = world.discord.sendButton({ customId: rows[0]!.components[1]!.custom_id, user: mallory, message: h.lastReply()!.id });
    expect((await next.callback()).json).toMatchObject({ type: 6 });
    await world.discord.waitForCall((c) => c.method === 'PATCH' && c.path.includes(next.token));
    const second = h.lastReply()!.content;
    expect(second).toMatch(/page 2\/2/);
    expect(ranksOf(second)).toEqual(Array.from({ length: 10 }, (_, i) => i + 16));
    // Every tag is on one of the two pages, once.
    const listed = `${first}\n${second}`.split('\n').flatMap((l) => /^`\s*\d+` .* · `([^`]+)`$/.exec(l)?.[1] ?? []);
    expect(listed).toHaveLength(25);
    expect(new Set(listed)).toEqual(new Set([...many, 'long hair', 'smile', 'tiara', 'blue theme', 'red theme']));
    expect(await done(command('caption', 'undo', { dataset: 'aria' }))).toMatch(/on 3 captions/);
  });

  it('removes a tag across the dataset, and undo brings it back', async () => {
    expect(await done(command('tags', 'remove', { dataset: 'aria', tags: 'tiara' }))).toMatch(/changed 3 captions/);
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 1 }))).not.toContain('tiara');
    expect(await done(command('caption', 'undo', { dataset: 'aria' }))).toMatch(/Undid “removed `tiara`” on 3 captions/);
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 2 }))).toContain('tiara');
  });

  it('prunes with one click on the suggestion', async () => {
    const top = command('tags', 'prune', { dataset: 'aria' });
    await done(top);
    const row = top.lastReply()!.components[0] as { components: { custom_id: string }[] };
    const click = world.discord.sendButton({ customId: row.components[0]!.custom_id, user: alice, message: top.lastReply()!.id });
    expect(await done(click)).toMatch(/Pruned `long hair`, `tiara`: changed 3 captions of .* \(all 3 images\)\. Undo/);
    const shown = await done(command('caption', 'show', { dataset: 'aria', image: 1 }));
    expect(shown).toContain('ohwx_aria, red theme, smile');
    expect(shown).not.toMatch(/long hair|tiara/);
    await done(command('caption', 'undo', { dataset: 'aria' }));
  });

  it('replaces a tag everywhere (tiara → circlet)', async () => {
    expect(await done(command('tags', 'replace', { dataset: 'aria', from: 'tiara', to: 'circlet' }))).toMatch(/replaced `tiara` with `circlet`/i);
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 2 }))).toContain('circlet');
  });

  it('edits one caption through the modal; undo restores the previous version', async () => {
    const reply = await editCaption(world, alice, 'aria', 1, 'Caption of #1 (aria)', { tags: 'ohwx_aria, red dress, standing, smile' });
    expect(reply).toContain('ohwx_aria, red dress, standing, smile');
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 1 }))).toContain('ohwx_aria, red dress, standing, smile\n');
    await done(command('caption', 'undo', { dataset: 'aria', image: 1 }));
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 1 }))).toContain('red theme');
  });

  it('offers a form that takes at most what the bot accepts, and gives a refused text back', async () => {
    const callback = await command('caption', 'edit', { dataset: 'aria', image: 2 }).callback();
    const data = (callback.json as { data: { custom_id: string; components: { components: { max_length: number }[] }[] } }).data;
    expect(data.components[0]!.components[0]!.max_length).toBe(2000);
    const customId = data.custom_id;
    // Discord's form itself stops a member at the limit.
    expect(() => world.discord.sendModalSubmit({ customId, fields: { tags: 'x'.repeat(2001) }, user: alice })).toThrow(/1–2000|0–2000/);

    // Refused for another reason: the reply says why and gives the text back.
    const control = world.discord.sendModalSubmit({ customId, fields: { tags: 'smile,\u0007bell' }, user: alice });
    const refused = (await control.waitForEdit()).json as { content: string };
    expect(refused.content).toMatch(/control character/);
    expect(refused.content).toContain('smile,\u0007bell');

    // A long text that does not fit beside the reason comes back as a file, byte for byte.
    const long = `smile, ${'a'.repeat(150)}, ${'long hair, '.repeat(160)}tiara`;
    expect(long.length).toBeLessThanOrEqual(2000);
    const big = world.discord.sendModalSubmit({ customId, fields: { tags: long }, user: alice });
    await big.waitForEdit();
    const reply = big.lastReply()!;
    expect(reply.content).toMatch(/at most 100[\s\S]*Nothing was saved/);
    expect(reply.attachments.find((a) => a.filename === 'your-caption.txt')?.data.toString('utf8')).toBe(long);
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 2 }))).toContain('circlet');
  });

  it('refuses workshop commands to the asker alone, with nothing public before the refusal', async () => {
    const stranger = { permissions: '0' };
    const refusals: [InteractionHandle, RegExp][] = [
      [command('tags', 'remove', { dataset: 'aria', tags: 'smile' }, mallory, stranger), /Only contributors/],
      [command('tags', 'remove', { dataset: 'aria', tags: 'smile' }, alice, { guildId: OTHER_GUILD }), /no dataset named `aria` in this server/],
      [command('tags', 'add', { dataset: 'aria', tags: 'smile,\u0007bell' }), /control character/],
      [command('tags', 'replace', { dataset: 'aria', from: 'smile', to: 'grin' }, mallory, stranger), /Only contributors/],
      [command('tags', 'top', { dataset: 'aria', concept: 'nope' }), /no concept `nope`/],
      [command('tags', 'prune', { dataset: 'nope' }), /no dataset named `nope`/],
      [command('tags', 'retag', { dataset: 'aria', images: '99' }), /has no image #99/],
      [command('tags', 'undesired', { dataset: 'aria', tags: 'smile' }, mallory, stranger), /Only contributors/],
      // Commands answered in public refuse privately too.
      [command('caption', 'show', { dataset: 'aria', image: 99 }), /has no image #99/],
      [command('caption', 'undo', { dataset: 'aria', image: 1 }, mallory, stranger), /Only contributors/],
      [command('concept', 'add', { dataset: 'aria', name: 'extra', trigger: 'extra' }, mallory, stranger), /Only contributors/],
      [command('concept', 'list', { dataset: 'nope' }), /no dataset named `nope`/],
      [command('dataset', 'show', { dataset: 'nope' }), /no dataset named `nope`/],
      [command('train', 'status', { run: 'nope' }), /no run `nope` in this server/],
    ];
    const publicBefore = world.discord.channelMessages().length;
    for (const [h, reason] of refusals) expect(await privateRefusal(h), JSON.stringify(h.payload.data)).toMatch(reason);

    // The Prune button: pressed by a member who may not edit, and once its suggestion is gone.
    const offer = command('tags', 'prune', { dataset: 'aria' });
    await done(offer);
    const customId = (offer.lastReply()!.components[0] as { components: { custom_id: string }[] }).components[0]!.custom_id;
    const offered = world.discord.channelMessages().length;
    expect(await privateRefusal(world.discord.sendButton({ customId, user: mallory, permissions: '0', message: offer.lastReply()!.id }))).toMatch(
      /Only contributors/,
    );
    expect(await world.redis.del(keys(world.env.REDIS_PREFIX!).pruneSuggestion(pruneButton.parse(customId)!.suggestionId))).toBe(1);
    expect(await privateRefusal(world.discord.sendButton({ customId, user: alice, message: offer.lastReply()!.id }))).toMatch(/This suggestion has expired/);

    // privateRefusal saw each acknowledged ephemerally; nor is anything left in the channel, and nothing changed.
    expect(offered).toBe(publicBefore + 1);
    expect(world.discord.channelMessages()).toHaveLength(offered);
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 1 }))).toContain('smile');
  });

  it('moves images between concepts', async () => {
    expect(await done(command('concept', 'add', { dataset: 'aria', name: 'outfit-blue', trigger: 'blue outfit' }))).toMatch(/Added concept `outfit-blue`/);
    expect(await done(command('concept', 'move', { dataset: 'aria', images: '2', concept: 'outfit-blue' }))).toMatch(/Moved #2/);
    const list = await done(command('concept', 'list', { dataset: 'aria' }));
    expect(list).toContain('`main` · 2 images');
    expect(list).toContain('`outfit-blue` · trigger `blue outfit` · 1 image');
    expect(await done(command('caption', 'show', { dataset: 'aria', image: 2 }))).toContain('ohwx_aria, blue outfit, blue theme');

    // A concept's own repeats, used by the plan, and back to the recipe's balance.
    expect(await done(command('concept', 'repeats', { dataset: 'aria', concept: 'outfit-blue', repeats: 3 }))).toBe(
      "`outfit-blue` of **aria** is shown 3 times per epoch (the plan's folder `3_outfit-blue`).",
    );
    expect(await done(command('concept', 'list', { dataset: 'aria' }))).toContain('`outfit-blue` · trigger `blue outfit` · 3 repeats · 1 image');
    expect(await done(command('train', 'plan', { dataset: 'aria', model: 'base-sd15.safetensors' }))).toContain('`3_outfit-blue`');
    expect(await privateRefusal(command('concept', 'repeats', { dataset: 'aria', concept: 'nope', repeats: 2 }))).toMatch(/has no concept `nope`/);
    expect(await privateRefusal(command('concept', 'repeats', { dataset: 'aria', concept: 'outfit-blue', repeats: 2 }, mallory, { permissions: '0' }))).toMatch(
      /Only contributors/,
    );
    expect(await done(command('concept', 'repeats', { dataset: 'aria', concept: 'outfit-blue', repeats: 0 }))).toBe(
      '`outfit-blue` of **aria** is balanced by the recipe again.',
    );
    expect(await done(command('concept', 'list', { dataset: 'aria' }))).toContain('`outfit-blue` · trigger `blue outfit` · 1 image');
  });

  it('autocompletes tags by frequency', async () => {
    const h = world.discord.sendAutocomplete({
      name: 'tags',
      subcommand: 'remove',
      options: { dataset: 'aria', tags: 'smile, lo' },
      focused: 'tags',
      user: alice,
    });
    const cb = await h.callback();
    expect(cb.json).toMatchObject({ type: 8, data: { choices: [{ value: 'smile, long hair' }] } });
  });
});

describe('images that arrive with a caption', () => {
  it('are tagged like the others: the tagger adds its tags after what arrived, which stays in the history', async () => {
    const { buildZip } = await import('../fixtures/zip.ts');
    await done(command('dataset', 'create', { name: 'kept', trigger: 'ohwx_kept', class: 'woman', kind: 'character', base: 'sd15' }));
    const threadId = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · kept')!.id;
    const [red, blue] = [await tinted(5, '#ff2020'), await tinted(6, '#2040ff')];
    const zip = buildZip([
      { name: 'a.jpg', data: red.data },
      { name: 'a.txt', data: 'ohwx_kept, red dress, smile\n' },
      { name: 'b.jpg', data: blue.data },
    ]);
    const file = world.discord.addAttachment({ filename: 'set.zip', data: zip, contentType: 'application/zip' });
    expect(await done(command('dataset', 'add', { dataset: 'kept', zip: file as never }))).toMatch(/2 added/);
    await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Tagged 2 images'),
      30_000,
    );
    const shown = await done(command('caption', 'show', { dataset: 'kept', image: 1 }));
    // What arrived first, in its order; the tagger's tags after it, without repeating `smile`.
    expect(shown).toContain('ohwx_kept, red dress, smile, red theme, long hair, tiara');
    expect(shown).toMatch(/Tags \(version 2 · tagger/);
    // Undo goes back to the caption as it arrived.
    await done(command('caption', 'undo', { dataset: 'kept', image: 1 }));
    const undone = await done(command('caption', 'show', { dataset: 'kept', image: 1 }));
    expect(undone).toMatch(/Tags \(version 1 · upload/);
    expect(undone).toContain('ohwx_kept, red dress, smile\n');
  });
});
