/**
 * Bringing a dataset in as the guides lay it out for sd-scripts (BMP and HEIC photos included),
 * and giving it back the same way: `/dataset add` with a zip of `img/N_name` folders, and
 * `/dataset export`'s signed link.
 */
import { parse as parseToml } from 'smol-toml';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { CaptionStore } from '../../src/store/caption-store.ts';
import { DatasetStore, type Dataset } from '../../src/store/dataset-store.ts';
import { bmpOf } from '../fixtures/bmp.ts';
import { heicPhoto } from '../fixtures/heic.ts';
import { normalJpeg, photoRgb, type ImageFile } from '../fixtures/images.ts';
import { buildZip, readZip, type ZipEntrySpec } from '../fixtures/zip.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import { createDataset, done, freePort, imageOptions } from './steps.ts';
import { World } from './world.ts';

let world: World;
let store: DatasetStore;
let captions: CaptionStore;
let blobs: BlobStore;

const alice = { id: '100000000000000001', username: 'alice' };
const bob = { id: '100000000000000002', username: 'bob' };

beforeAll(async () => {
  const port = await freePort();
  world = await World.start({
    env: { HTTP_PORT: String(port), PUBLIC_URL: `http://127.0.0.1:${port}`, DOWNLOAD_SECRET: 'an-export-secret-that-is-long-enough-0123456789' },
  });
  await world.startBot();
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
  captions = new CaptionStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
});
afterAll(async () => {
  await world?.close();
});

async function dataset(name: string): Promise<Dataset> {
  const ds = await store.findDataset(world.discord.guildId, name);
  if (!ds) throw new Error(`no dataset ${name}`);
  return ds;
}

/** alice's character dataset for SD 1.5, trigger `ohwx_<name>` unless `extra` says otherwise. */
async function newDataset(name: string, extra: Record<string, string> = {}): Promise<void> {
  await createDataset(world, alice, { name, trigger: `ohwx_${name}`, class: 'woman', kind: 'character', base: 'sd15', ...extra });
}

async function addZip(name: string, zip: Buffer, user = alice): Promise<string> {
  const file = world.discord.addAttachment({ filename: 'dataset.zip', data: zip, contentType: 'application/zip' });
  return done(world, world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user, options: { dataset: name, zip: file } }), 90_000);
}

async function png(seed: number): Promise<Buffer> {
  const img = photoRgb(seed, 512, 512);
  return sharp(img.data, { raw: { width: 512, height: 512, channels: 3 } })
    .png()
    .toBuffer();
}

/** Each concept with its own repeats and trigger, and the tag lists of its images (sorted), as stored. */
async function conceptsAndCaptions(name: string) {
  const ds = await dataset(name);
  const [concepts, images] = await Promise.all([store.getConcepts(ds.id), store.listImages(ds.id)]);
  const tags = await captions.getMany(
    ds.id,
    images.map((i) => i.no),
  );
  return Object.fromEntries(
    concepts.map((c) => [
      c.name,
      {
        repeats: c.repeats ?? null,
        trigger: c.trigger,
        captions: images
          .filter((i) => i.concept === c.name)
          .map((i) => (tags.get(i.no)?.tags ?? []).join(', '))
          .sort(),
      },
    ]),
  );
}

function exportLink(reply: string): string {
  const url = /\[Download the zip\]\(<([^>]+)>\)/.exec(reply)?.[1];
  if (!url) throw new Error(`no link in: ${reply}`);
  return url;
}

describe('photos from phones and Windows', () => {
  it('accepts a BMP and a HEIC photo like any other, by their bytes whatever their names say', async () => {
    await newDataset('phones');
    const files: ImageFile[] = [
      { name: 'scan.bmp', data: bmpOf(photoRgb(5, 640, 480), 'rgb24').data, contentType: 'image/bmp' },
      { name: 'IMG_0001.HEIC', data: heicPhoto(), contentType: 'image/heic' },
      // Named like a JPEG, but a bottom-up 8-bit palette BMP inside.
      { name: 'paint.jpg', data: bmpOf(photoRgb(6, 400, 300), 'palette8').data, contentType: 'image/jpeg' },
    ];
    const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user: alice, options: { dataset: 'phones', ...imageOptions(world, files) } });
    const reply = await done(world, h);
    expect(reply).toMatch(/3 added, 0 refused/);
    expect(reply).toContain('✅ **#1** `scan.bmp` · 640×480');
    expect(reply).toContain('⚠️ **#2** `IMG_0001.HEIC` · 320×288 · small for training');
    const images = await store.listImages((await dataset('phones')).id);
    expect(images.map((i) => [i.originalFormat, i.width, i.height])).toEqual([
      ['bmp', 640, 480],
      ['heic', 320, 288],
      ['bmp', 400, 300],
    ]);
    // The master is an ordinary PNG of the picture, like any other photo's.
    const master = await sharp(await blobs.read(images[1]!.masterBlob)).metadata();
    expect([master.format, master.width, master.height, master.channels]).toEqual(['png', 320, 288, 3]);
  });
});

describe('a dataset in kohya layout', () => {
  let zip: Buffer;

  beforeAll(async () => {
    const entries: ZipEntrySpec[] = [
      // The settings sd-scripts read with it: red-dress keeps two tags in front, its own trigger second.
      {
        name: 'project/dataset.toml',
        data: [
          '[general]',
          'caption_extension = ".txt"',
          'keep_tokens = 1',
          '[[datasets]]',
          '[[datasets.subsets]]',
          'image_dir = "img/10_aria"',
          'class_tokens = "ohwx_kohya woman"',
          '[[datasets.subsets]]',
          'image_dir = "img/4_Red Dress"',
          'keep_tokens = 2',
          'class_tokens = "ohwx_kohya, red dress, woman"',
          '',
        ].join('\n'),
      },
      { name: 'project/img/10_aria/a.png', data: await png(21) },
      { name: 'project/img/10_aria/a.txt', data: 'ohwx_kohya, smiling, red hair\n' },
      { name: 'project/img/10_aria/b.jpg', data: (await normalJpeg(22, 640, 640)).data },
      { name: 'project/img/10_aria/b.caption', data: 'ohwx_kohya, looking back, red hair' },
      { name: 'project/img/4_Red Dress/c.png', data: await png(23) },
      { name: 'project/img/4_Red Dress/c.txt', data: 'ohwx_kohya, red dress, standing' },
      { name: 'project/img/2023_trip/d.png', data: await png(24) },
      { name: 'project/img/2023_trip/d.txt', data: 'ohwx_kohya, beach' },
      { name: 'project/reg/1_woman/r1.png', data: await png(25) },
      { name: 'project/reg/1_woman/r2.png', data: await png(26) },
    ];
    zip = buildZip(entries);
    await newDataset('kohya');
  });

  it('makes concepts of its N_name folders, with their repeats and captions, and says what it read', async () => {
    const reply = await addZip('kohya', zip);
    expect(reply).toMatch(/4 added, 0 refused/);
    expect(reply).toContain('📁 Folders read as concepts:');
    expect(reply).toContain('· `project/img/10_aria` → concept `aria` (new), 10 repeats');
    expect(reply).toContain('· `project/img/4_Red Dress` → concept `red-dress` (new), 4 repeats, trigger `red dress`');
    expect(reply).toContain('· folder `project/img/2023_trip`: 2023 repeats is not between 1 and 1000; its images go to `main`');
    expect(reply).toContain('Skipped in the zip: 2 × regularisation image (not used here)');
    expect(reply).not.toContain('dataset.toml');
    expect(await conceptsAndCaptions('kohya')).toEqual({
      main: { repeats: null, trigger: null, captions: ['beach'] },
      aria: { repeats: 10, trigger: null, captions: ['looking back, red hair', 'smiling, red hair'] },
      // Its trigger leads its captions (as the dataset's does), so it is not one of their tags.
      'red-dress': { repeats: 4, trigger: 'red dress', captions: ['standing'] },
    });

    const list = await done(world, world.discord.sendCommand({ name: 'concept', subcommand: 'list', user: alice, options: { dataset: 'kohya' } }));
    expect(list).toContain('`aria` · 10 repeats · 2 images');
    // The plan trains the folders' repeats, not the recipe's.
    const plan = await world.bot!.ctx.exporter.contents(await dataset('kohya'));
    expect(plan.plan.concepts.map((c) => c.folder)).toEqual([expect.stringMatching(/^\d+_main$/), '10_aria', '4_red-dress']);
  });

  it('keeps a concept’s repeats when a later zip names other ones, and says so', async () => {
    const later = buildZip([{ name: 'img/3_aria/e.png', data: await png(27) }]);
    const reply = await addZip('kohya', later);
    expect(reply).toContain('· `img/3_aria` → concept `aria`, which keeps its 10 repeats');
    expect(reply).toContain('✅ **#5** `e.png` · 512×512 · concept `aria`');
    expect((await conceptsAndCaptions('kohya')).aria?.repeats).toBe(10);
    await done(world, world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user: alice, options: { dataset: 'kohya', images: '5' } }));
  });

  describe('/dataset export', () => {
    let link: string;

    it('refuses members who gave the dataset nothing, privately', async () => {
      const h: InteractionHandle = world.discord.sendCommand({ name: 'dataset', subcommand: 'export', user: bob, options: { dataset: 'kohya' } });
      await h.waitForEdit();
      expect(h.lastReply()).toMatchObject({ content: '⚠️ Only contributors to **kohya**, its owner and moderators can export it.', flags: 64 });
    });

    it('gives a contributor a private link to the zip: layout, captions and dataset TOML as a run has them', async () => {
      const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'export', user: alice, options: { dataset: 'kohya' } });
      const reply = await done(world, h);
      expect(h.lastReply()?.flags).toBe(64);
      expect(reply).toMatch(/^\*\*kohya\*\* for sd-scripts: 4 images in `img\/\d+_main` \(1\), `img\/10_aria` \(2\), `img\/4_red-dress` \(1\)/);
      link = exportLink(reply);
      expect(link).toMatch(/\/export\/[a-z0-9]+\/kohya-dataset\.zip\?exp=\d+&sig=/);

      const res = await fetch(link);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('application/zip');
      const body = Buffer.from(await res.arrayBuffer());
      expect(Number(res.headers.get('content-length'))).toBe(body.length);
      const files = await readZip(body);
      const ds = await dataset('kohya');
      const images = await store.listImages(ds.id);
      const main = [...files.keys()].find((k) => /^img\/\d+_main\/4\.png$/.test(k))!.split('/')[1]!;
      expect([...files.keys()].sort()).toEqual(
        [
          'dataset.toml',
          'img/10_aria/1.png',
          'img/10_aria/1.txt',
          'img/10_aria/2.png',
          'img/10_aria/2.txt',
          'img/4_red-dress/3.png',
          'img/4_red-dress/3.txt',
          `img/${main}/4.png`,
          `img/${main}/4.txt`,
        ].sort(),
      );
      expect(files.get('img/10_aria/1.txt')?.toString()).toBe('ohwx_kohya, smiling, red hair\n');
      expect(files.get(`img/${main}/4.txt`)?.toString()).toBe('ohwx_kohya, beach\n');
      // The masters themselves, byte for byte.
      expect(files.get('img/4_red-dress/3.png')?.equals(await blobs.read(images.find((i) => i.no === 3)!.masterBlob))).toBe(true);

      const toml = parseToml(files.get('dataset.toml')!.toString()) as {
        general: Record<string, unknown>;
        datasets: { resolution: number; subsets: Record<string, unknown>[] }[];
      };
      expect(toml.general).toMatchObject({ caption_extension: '.txt', keep_tokens: 1 });
      expect(toml.datasets[0]!.resolution).toBe(512);
      // red-dress's own trigger follows the dataset's in its captions and class tokens, kept in front.
      expect(files.get('img/4_red-dress/3.txt')?.toString()).toBe('ohwx_kohya, red dress, standing\n');
      expect(toml.datasets[0]!.subsets.map((s) => [s.image_dir, s.num_repeats, s.class_tokens, s.keep_tokens])).toEqual([
        [`img/${main}`, Number(main.split('_')[0]), 'ohwx_kohya, woman', undefined],
        ['img/10_aria', 10, 'ohwx_kohya, woman', undefined],
        ['img/4_red-dress', 4, 'ohwx_kohya, red dress, woman', 2],
      ]);
    });

    it('leaves out an image withdrawn after the link was made; a changed link is refused', async () => {
      const tampered = link.replace(/sig=./, (m) => (m.endsWith('A') ? 'sig=B' : 'sig=A'));
      expect((await fetch(tampered)).status).toBe(403);
      expect((await fetch(link.replace('/kohya-dataset.zip', '/other.zip'))).status).toBe(403);

      const add = world.discord.addAttachment({ filename: 'f.png', data: await png(28), contentType: 'image/png' });
      await done(
        world,
        world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user: bob, options: { dataset: 'kohya', concept: 'aria', image1: add } }),
      );
      const withBob = await readZip(Buffer.from(await (await fetch(link)).arrayBuffer()));
      expect(withBob.has('img/10_aria/6.png')).toBe(true);
      await done(world, world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user: bob, options: { dataset: 'kohya', images: 'mine' } }));
      const without = await readZip(Buffer.from(await (await fetch(link)).arrayBuffer()));
      expect([...without.keys()].some((k) => k.includes('/6.'))).toBe(false);
      expect(without.size).toBe(9);
    });

    it('round trip: the export imported into a new dataset gives the same concepts, repeats, triggers and captions', async () => {
      const exported = Buffer.from(await (await fetch(link)).arrayBuffer());
      await newDataset('again', { trigger: 'ohwx_kohya' });
      const reply = await addZip('again', exported);
      expect(reply).toMatch(/4 added, 0 refused/);
      expect(reply).not.toContain('Skipped');
      const before = await conceptsAndCaptions('kohya');
      const after = await conceptsAndCaptions('again');
      const [original, copy] = await Promise.all([dataset('kohya'), dataset('again')].map(async (d) => world.bot!.ctx.exporter.contents(await d)));
      // main had no repeats of its own: the export wrote the plan's, which the copy now keeps.
      expect(copy!.plan.concepts.map((c) => [c.folder, c.images.length])).toEqual(original!.plan.concepts.map((c) => [c.folder, c.images.length]));
      expect({ ...after, main: { ...after.main, repeats: null } }).toEqual(before);
      const captionsOf = (c: NonNullable<typeof copy>) =>
        c.entries.filter((e) => e.path.endsWith('.txt')).map((e) => ('text' in e.source ? e.source.text : ''));
      expect(captionsOf(copy!).sort()).toEqual(captionsOf(original!).sort());
    });
  });
});
