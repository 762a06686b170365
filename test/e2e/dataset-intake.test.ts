import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { DatasetStore, type ImageRecord } from '../../src/store/dataset-store.ts';
import { normalJpeg, photoJpeg, uploadOfTen, type ImageFile } from '../fixtures/images.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { TEST_TOKEN, World } from './world.ts';

let world: World;
let store: DatasetStore;
let blobs: BlobStore;

const alice = { id: '100000000000000001', username: 'alice' };
const bob = { id: '100000000000000002', username: 'bob' };
const carol = { id: '100000000000000003', username: 'carol' };
const OTHER_GUILD = '555555555555555555';

beforeAll(async () => {
  world = await World.start({
    discord: {
      guilds: [
        { name: 'Guild', channels: [{ name: 'lora' }] },
        { id: OTHER_GUILD, name: 'Elsewhere', channels: [{ name: 'general' }] },
      ],
    },
  });
  await world.startBot();
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
});
afterAll(async () => {
  await world?.close();
});

async function createDataset(name: string, user = alice, extra: Record<string, string | number> = {}) {
  const h = world.discord.sendCommand({
    name: 'dataset',
    subcommand: 'create',
    user,
    options: { name, trigger: `ohwx_${name}`, class: 'woman', kind: 'character', base: 'sd15', ...extra },
  });
  await h.waitForEdit();
  return h;
}

function attach(files: ImageFile[]) {
  const options: Record<string, ReturnType<typeof world.discord.addAttachment>> = {};
  files.forEach((f, i) => {
    options[`image${i + 1}`] = world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType });
  });
  return options;
}

async function addImages(dataset: string, files: ImageFile[], user = alice): Promise<InteractionHandle> {
  const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user, options: { dataset, ...attach(files) } });
  await h.waitForEdit(undefined, 60_000);
  return h;
}

/** `/dataset remove` of `images` from `dataset` as `user` with `permissions`. */
function removeImages(dataset: string, images: string, user: { id: string; username: string }, permissions: string): InteractionHandle {
  return world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user, permissions, options: { dataset, images } });
}

function reply(h: InteractionHandle): string {
  return h.lastReply()?.content ?? '';
}

function lineFor(content: string, fileName: string): string {
  const line = content.split('\n').find((l) => l.includes(`\`${fileName}\``));
  if (!line) throw new Error(`no line for ${fileName} in:\n${content}`);
  return line;
}

async function imagesOf(name: string): Promise<ImageRecord[]> {
  const ds = await store.findDataset(world.discord.guildId, name);
  if (!ds) throw new Error(`no dataset ${name}`);
  return store.listImages(ds.id);
}

describe('/dataset create', () => {
  it('creates a dataset with a thread and refuses a second one of the same name', async () => {
    const h = await createDataset('aria');
    expect(h.payload.type).toBe(2);
    expect((await h.callback()).json).toMatchObject({ type: 5 });
    expect(reply(h)).toMatch(/Created dataset \*\*aria\*\*.*512 px/);
    const thread = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · aria');
    expect(thread).toBeDefined();
    expect(world.discord.channelMessages(thread!.id).some((m) => m.content.includes('/dataset add'))).toBe(true);

    const again = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      user: bob,
      options: { name: 'Aria', trigger: 'ohwx', class: 'woman', kind: 'style', base: 'sdxl' },
    });
    expect(await steps.privateRefusal(again)).toContain('already exists');
  });

  it('validates names, triggers and resolution with specific messages', async () => {
    const bad = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'no spaces!', trigger: 'ohwx', class: 'woman', kind: 'character', base: 'sd15' },
    });
    expect(await steps.privateRefusal(bad)).toContain('dataset name is 2–32 characters');
    const res = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'odd', trigger: 'ohwx', class: 'woman', kind: 'character', base: 'sd15', resolution: 500 },
    });
    expect(await steps.privateRefusal(res)).toContain('multiple of 64');
    expect(await store.findDataset(world.discord.guildId, 'odd')).toBeNull();
  });
});

describe('/dataset add', () => {
  it('accepts exactly the right files of a mixed upload of ten, each refusal with its reason', async () => {
    await createDataset('mixed');
    const existing = await normalJpeg(1);
    const first = await addImages('mixed', [existing]);
    expect(reply(first)).toMatch(/1 added, 0 refused/);

    const ten = await uploadOfTen(existing.data);
    const h = await addImages('mixed', ten, bob);
    const content = reply(h);
    expect(content).toMatch(/5 added, 5 refused/);

    // Accepted: number, name and size, and only what happened to the picture, in plain words.
    expect(lineFor(content, 'IMG_0101.jpg')).toBe('✅ **#2** `IMG_0101.jpg` · 800×600');
    expect(lineFor(content, 'IMG_0102_rotated.jpg')).toBe('✅ **#3** `IMG_0102_rotated.jpg` · 600×800 · turned upright');
    // Trainer facts (buckets) are for /dataset show and the plan, not for contributors' replies.
    expect(content).not.toMatch(/bucket|EXIF|downscaled/i);
    expect(lineFor(content, 'cutout.png')).toMatch(/#4\*\* .*transparency flattened onto white/);
    expect(lineFor(content, 'print-cmyk.jpg')).toMatch(/#5\*\* .*CMYK/);
    expect(lineFor(content, 'dance.gif')).toMatch(/#6\*\* .*first of \d+ frames/);
    // Refused, each with its own reason.
    // A cut-short file in plain words; the decoder's own words go to the log.
    expect(lineFor(content, 'broken.jpg')).toMatch(/^❌ .*the file is cut short or damaged — try saving or exporting it again$/);
    expect(content).not.toMatch(/corrupt|premature|JPEG image/);
    expect(world.log.lines.find((l) => l.msg === 'image refused by the decoder' && l.file === 'broken.jpg')).toMatchObject({
      detail: 'premature end of JPEG image',
    });
    expect(lineFor(content, 'notes.png')).toMatch(/^❌ .*not an image/);
    expect(lineFor(content, 'IMG_copy.jpg')).toMatch(/^❌ .*near duplicate of #1 \(added by alice\)/);
    expect(lineFor(content, 'huge.png')).toMatch(/^❌ .*20000×20000.*megapixels/);
    expect(lineFor(content, 'icon.png')).toMatch(/^❌ .*100×100 is too small/);

    // A contact sheet of the accepted images comes with the report.
    const sheet = h.lastReply()!.attachments.find((a) => a.filename === 'contact-sheet.jpg');
    expect(sheet).toBeDefined();
    expect((await sharp(sheet!.data).metadata()).format).toBe('jpeg');
    // The uploader's own receipt has no Report button: that is for members looking at others' images (/dataset show).
    expect(JSON.stringify(h.lastReply()!.components ?? [])).not.toContain('modreport');

    // What was stored is what the report says, and the masters are normalised.
    const images = await imagesOf('mixed');
    expect(images.map((i) => [i.no, i.sourceName, i.contributorName])).toEqual([
      [1, 'IMG_0001.jpg', 'alice'],
      [2, 'IMG_0101.jpg', 'bob'],
      [3, 'IMG_0102_rotated.jpg', 'bob'],
      [4, 'cutout.png', 'bob'],
      [5, 'print-cmyk.jpg', 'bob'],
      [6, 'dance.gif', 'bob'],
    ]);
    for (const img of images) {
      const meta = await sharp(blobs.path(img.masterBlob)).metadata();
      expect(meta.channels).toBe(3);
      expect(meta.depth).toBe('uchar');
      expect(meta.space).toBe('srgb');
      expect(meta.hasAlpha).toBe(false);
      expect(meta.orientation ?? 1).toBe(1);
      expect(await blobs.has(img.originalBlob)).toBe(true);
      expect(await blobs.has(img.thumbBlob)).toBe(true);
    }
    const rotated = images[2]!;
    expect(rotated.height).toBeGreaterThan(rotated.width);
    const cutout = await sharp(blobs.path(images[3]!.masterBlob)).raw().toBuffer({ resolveWithObject: true });
    expect([...cutout.data.subarray(0, 3)]).toEqual([255, 255, 255]);
  });

  it('calls a byte-for-byte copy the same picture, not a near duplicate, and names who added it', async () => {
    await createDataset('copies');
    const photo = await normalJpeg(41);
    await addImages('copies', [photo], alice);
    const h = await addImages('copies', [{ ...photo, name: 'c08.jpeg' }], bob);
    expect(reply(h)).toMatch(/0 added, 1 refused/);
    expect(lineFor(reply(h), 'c08.jpeg')).toMatch(/^❌ .*the same picture as #1 \(added by alice\)/);
    expect(reply(h)).not.toMatch(/near duplicate/);
  });

  it('answers within Discord’s 3 s by deferring first', async () => {
    await createDataset('quick');
    const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'quick', ...attach([await normalJpeg(7)]) } });
    await h.callback();
    expect(h.ackLatencyMs()).toBeLessThan(3000);
    expect((await h.callback()).json).toMatchObject({ type: 5 });
    await h.waitForEdit();
  });

  it('downloads only from the configured CDN hosts', async () => {
    await createDataset('hosts');
    const good = world.discord.addAttachment({ filename: 'ok.jpg', data: (await normalJpeg(8)).data, contentType: 'image/jpeg' });
    const evil = { ...good, id: '999', filename: 'evil.jpg', url: 'http://127.0.0.2:9/evil.jpg', proxy_url: 'http://127.0.0.2:9/evil.jpg' };
    const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'hosts', image1: good, image2: evil } });
    await h.waitForEdit();
    expect(lineFor(reply(h), 'ok.jpg')).toMatch(/^✅/);
    expect(lineFor(reply(h), 'evil.jpg')).toMatch(/^❌ .*only allowed from/);
  });

  it('takes a zip: captions beside images kept, __MACOSX and dotfiles skipped', async () => {
    const { buildZip } = await import('../fixtures/zip.ts');
    await createDataset('zipped');
    const a = await normalJpeg(21);
    const b = await normalJpeg(22);
    const zip = buildZip([
      { name: 'set/a.jpg', data: a.data },
      { name: 'set/a.txt', data: Buffer.from('ohwx_zipped, red dress, smiling\n') },
      { name: 'set/b.jpg', data: b.data },
      { name: '__MACOSX/set/._a.jpg', data: Buffer.from('junk') },
      { name: 'set/.DS_Store', data: Buffer.from('junk') },
    ]);
    const file = world.discord.addAttachment({ filename: 'photos.zip', data: zip, contentType: 'application/zip' });
    const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', options: { dataset: 'zipped', zip: file } });
    await h.waitForEdit();
    expect(reply(h)).toMatch(/2 added, 0 refused/);
    expect(lineFor(reply(h), 'a.jpg')).toMatch(/caption kept/);
    const images = await imagesOf('zipped');
    expect(images.map((i) => i.initialCaption)).toEqual(['ohwx_zipped, red dress, smiling', null]);
  });
});

describe('contributors', () => {
  it('withdraw their own images with `mine`; others cannot remove what is not theirs', async () => {
    await createDataset('shared', carol);
    await addImages('shared', [await normalJpeg(31), await normalJpeg(32)], alice);
    await addImages('shared', [await normalJpeg(33)], bob);
    const before = await imagesOf('shared');
    expect(before.map((i) => i.contributorName)).toEqual(['alice', 'alice', 'bob']);

    // Bob (no Manage Messages, not the owner) cannot remove Alice's #1.
    const denied = removeImages('shared', '1', bob, '0');
    expect((await denied.callback()).json).toMatchObject({ type: 5, data: { flags: 64 } });
    expect((await denied.waitForEdit()).json).toMatchObject({ content: expect.stringContaining('only your own images') as string });
    expect(await imagesOf('shared')).toHaveLength(3);

    // Alice withdraws all of hers; Bob's stays, and her files are gone from disk.
    const mine = world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user: alice, options: { dataset: 'shared', images: 'mine' } });
    await mine.waitForEdit();
    expect(reply(mine)).toMatch(/Removed 2 images .*#1, #2/);
    const after = await imagesOf('shared');
    expect(after.map((i) => [i.no, i.contributorName])).toEqual([[3, 'bob']]);
    for (const img of before.slice(0, 2)) expect(await blobs.has(img.masterBlob)).toBe(false);
    expect(await blobs.has(after[0]!.masterBlob)).toBe(true);

    // The owner may remove anyone's image.
    const owner = removeImages('shared', '3', carol, '0');
    await owner.waitForEdit();
    expect(await imagesOf('shared')).toHaveLength(0);
  });

  it('a member with Manage Messages may remove anyone’s image', async () => {
    await createDataset('modded', carol);
    await addImages('modded', [await normalJpeg(41)], alice);
    const h = removeImages('modded', '1', bob, String(1n << 13n));
    await h.waitForEdit();
    expect(reply(h)).toMatch(/Removed 1 image/);
  });
});

describe('/dataset show and list', () => {
  it('show counts, contributors, buckets and a contact sheet; list names every dataset', async () => {
    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'mixed' } });
    await show.waitForEdit();
    const content = reply(show);
    expect(content).toMatch(/\*\*6\*\* images from \*\*2\*\* contributors/);
    expect(content).toMatch(/Buckets at 512²: .*576×448 ×\d/);
    expect(content).toMatch(/448×576 ×\d/);
    expect(show.lastReply()!.attachments.map((a) => a.filename)).toEqual(['contact-sheet-1.jpg']);

    const list = world.discord.sendCommand({ name: 'dataset', subcommand: 'list' });
    await list.waitForEdit();
    expect(reply(list)).toMatch(/\*\*mixed\*\* · character · SD 1.5 512 px · 6 images/);
  });

  it('tells a contributor nothing of a downscale on upload; /dataset show lists it with the sizes', async () => {
    await createDataset('large');
    const photo = await photoJpeg(61, 2600, 1800);
    const added = reply(await addImages('large', [photo]));
    const [stored] = await imagesOf('large');
    expect(stored!.width * stored!.height).toBeLessThan(2600 * 1800);
    expect(lineFor(added, photo.name)).toBe(`✅ **#1** \`${photo.name}\` · ${stored!.width}×${stored!.height}`);

    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'large' } });
    await show.waitForEdit();
    expect(reply(show)).toContain(`Downscaled when added: 1 image (#1 2600×1800 → ${stored!.width}×${stored!.height})`);
    expect(reply(show)).toMatch(new RegExp(`Buckets at 512²: ${stored!.bucket[0]}×${stored!.bucket[1]} ×1`));
  });

  it('pages the contact sheet of a large dataset with Previous/Next buttons', async () => {
    await createDataset('big');
    for (let batch = 0; batch < 5; batch++) {
      const count = batch < 4 ? 10 : 1;
      const files = await Promise.all(Array.from({ length: count }, (_, i) => normalJpeg(500 + batch * 10 + i, 384, 320)));
      expect(reply(await addImages('big', files))).toMatch(new RegExp(`${count} added, 0 refused`));
    }
    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'big' } });
    await show.waitForEdit();
    expect(reply(show)).toMatch(/\*\*41\*\* images[\s\S]*Contact sheet #1–#40 · page 1\/2/);
    const buttons = (show.lastReply()!.components[0] as { components: { custom_id: string; disabled?: boolean; label: string }[] }).components;
    expect(buttons.map((b) => [b.label, b.disabled ?? false])).toEqual([
      ['◀ Previous', true],
      ['Next ▶', false],
      ['Report', false],
    ]);
    const next = world.discord.sendButton({ customId: buttons[1]!.custom_id, message: show.lastReply()!.id });
    await next.callback();
    const edit = await world.discord.waitForCall((c) => c.method === 'PATCH' && c.path.includes(next.token) && c.files.length === 1);
    expect((edit.json as { content: string }).content).toMatch(/Contact sheet #41–#41 · page 2\/2/);
    expect(edit.files[0]!.filename).toBe('contact-sheet-2.jpg');
  });

  it('answers a button no handler reads, once and only to the presser, as out of date', async () => {
    for (const customId of ['dsshow:big', 'dsshow:big:1:2', 'retired-family:abc']) {
      const press = world.discord.sendButton({ customId });
      expect((await press.callback()).json, customId).toMatchObject({
        type: 4,
        data: { content: '⚠️ That button is out of date.', flags: 64, allowed_mentions: { parse: [] } },
      });
      expect(press.calls(), customId).toHaveLength(1);
    }
    expect(world.log.errors()).toEqual([]);
  });

  it('refuses datasets of another server', async () => {
    const other = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', guildId: OTHER_GUILD, options: { dataset: 'mixed' } });
    // Only the asker sees why, and nothing public came before it.
    expect(await steps.privateRefusal(other)).toContain('There is no dataset named `mixed` in this server');
  });
});

/** Makes the bot's dataset lookups take `ms` longer (its checks then outlast Discord's window); returns the undo. */
function slowDatasetLookups(ms: number): () => void {
  const store = world.bot!.ctx.store;
  const lookup = Object.getOwnPropertyDescriptor(store, 'findDataset');
  const find = store.findDataset.bind(store);
  store.findDataset = async (...args) => {
    await new Promise((r) => setTimeout(r, ms));
    return find(...args);
  };
  return () => {
    // The instance had no lookup of its own: the class's is used again.
    if (lookup) Object.defineProperty(store, 'findDataset', lookup);
    else delete (store as Partial<typeof store>).findDataset;
  };
}

describe('slow answers', () => {
  it('still acknowledges within 3 s when checks wait on a slow Redis: a public answer defers in public, and a refusal then replaces it privately', async () => {
    onTestFinished(slowDatasetLookups(2500));
    const refused = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'nope' } });
    expect((await refused.callback()).json).toEqual({ type: 5, data: { flags: 0 } });
    expect(refused.ackLatencyMs()).toBeLessThan(3000);
    const followup = (await refused.waitForFollowup(undefined, 10_000)).json as { content: string; flags: number };
    expect(followup).toMatchObject({ content: expect.stringContaining('There is no dataset named `nope`') as string, flags: 64 });
    // The public placeholder went once the refusal was known.
    await steps.until('the placeholder to be deleted', () => refused.lastReply()?.deleted);
  });

  it('checks that outlast the window are answered privately from the start (a refusal that may come late)', async () => {
    onTestFinished(slowDatasetLookups(2500));
    const h = world.discord.sendCommand({ name: 'tags', subcommand: 'remove', options: { dataset: 'nope', tags: 'smile' } });
    expect((await h.callback()).json).toMatchObject({ type: 5, data: { flags: 64 } });
    expect(h.ackLatencyMs()).toBeLessThan(3000);
    expect(await steps.privateRefusal(h)).toMatch(/There is no dataset named `nope`/);
  });
});

describe('/settings', () => {
  const MANAGE_GUILD = String(1n << 5n);
  async function settings(subcommand: string, options: Record<string, number | boolean | string> = {}, permissions = MANAGE_GUILD) {
    const h = world.discord.sendCommand({ name: 'settings', subcommand, user: carol, permissions, options });
    expect((await h.callback()).json).toMatchObject({ type: 5, data: { flags: 64 } });
    await h.waitForEdit();
    return reply(h);
  }

  it('shows and changes the queue limits, refusing a member limit above the server limit', async () => {
    expect(await settings('show')).toBe(
      'Trainer role: none (Manage Server only) · runs waiting or running at once: 2 per member, 5 per server · ' +
        'new datasets are captioned with sentences or tags by their kind and base · images waiting at once: 3 per member · GPUs may be lent (`/worker add`) by Manage Server only · ' +
        'outside age-restricted channels: up to general shown, up to sensitive behind a spoiler, above sensitive refused',
    );
    expect(await settings('limits', { 'images-per-member': 5 })).toMatch(/images waiting at once: 5 per member · /);
    expect(await settings('limits', { 'per-member': 3, 'per-server': 4 })).toMatch(/3 per member, 4 per server · /);
    expect(await settings('limits', { 'per-member': 5 })).toBe('⚠️ The per-member limit cannot be above the per-server limit.');
    expect(await settings('show')).toMatch(/3 per member, 4 per server · /);
  });

  it('says who may lend a GPU: Manage Server only by default, or any member', async () => {
    expect(await settings('workers', { 'members-may-lend': true })).toMatch(/by any member · /);
    expect(await settings('show')).toMatch(/by any member · /);
    expect(await settings('workers', { 'members-may-lend': false })).toMatch(/by Manage Server only · /);
  });

  it('sets what new datasets are captioned with; a dataset made then starts with it', async () => {
    expect(await settings('captions', { mode: 'both' })).toMatch(/new datasets are captioned with a sentence, then tags · /);
    await world.discord
      .sendCommand({
        name: 'dataset',
        subcommand: 'create',
        user: carol,
        options: { name: 'bothds', trigger: 'ohwx_b', class: 'woman', kind: 'character', base: 'sd15' },
      })
      .waitForEdit();
    const mode = world.discord.sendCommand({ name: 'caption', subcommand: 'mode', user: carol, options: { dataset: 'bothds' } });
    await mode.waitForEdit();
    expect(reply(mode)).toMatch(/^\*\*bothds\*\* is captioned with a sentence, then tags\. /);
    expect(await settings('captions', { mode: 'auto' })).toMatch(/captioned with sentences or tags by their kind and base · /);
  });

  it('needs Manage Server', async () => {
    expect(await settings('limits', { 'per-member': 1 }, '0')).toBe('⚠️ Settings need Manage Server.');
    expect(await settings('workers', { 'members-may-lend': true }, '0')).toBe('⚠️ Settings need Manage Server.');
    expect(await settings('show')).toMatch(/3 per member, 4 per server · .*by Manage Server only · /);
  });
});

describe('logs', () => {
  it('never contain the bot token', () => {
    expect(world.log.raw.join('\n')).not.toContain(TEST_TOKEN);
  });
});
