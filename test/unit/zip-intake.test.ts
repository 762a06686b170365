import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import { MAX_CAPTION_BYTES, extractZip, normalizeCaption, sanitizeDisplayName, type ZipLimits } from '../../src/core/zip-intake.ts';
import { rejectionOf } from '../fixtures/rejection.ts';
import { buildZip, fakeImage, type ZipEntrySpec } from '../fixtures/zip.ts';

const MiB = 1024 * 1024;
const limits: ZipLimits = { maxEntries: 50, maxTotalUncompressed: 8 * MiB, maxEntryBytes: 2 * MiB };

let root: string;
let dest: string;
let zipCount = 0;

beforeEach(async () => {
  // dest sits two levels down, so an escape by ../../ would land inside root where we can see it.
  root = await mkdtemp(join(tmpdir(), 'lg-zip-'));
  dest = join(root, 'work', 'out');
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function zipOf(entries: ZipEntrySpec[], options?: Parameters<typeof buildZip>[1]): Promise<string> {
  const path = join(root, `upload-${++zipCount}.zip`);
  await writeFile(path, buildZip(entries, options));
  return path;
}

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name).slice(dir.length + 1));
  }
  return out.sort();
}

async function refusal(promise: Promise<unknown>): Promise<UserError> {
  const err = await rejectionOf(promise, 'the zip to be refused');
  expect(err).toBeInstanceOf(UserError);
  return err as UserError;
}

describe('extractZip', () => {
  it('extracts images from nested folders to numbered files, with the captions beside them', async () => {
    const a = fakeImage('a');
    const b = fakeImage('b', 5000);
    const c = fakeImage('c');
    const zip = await zipOf([
      { name: 'set/' },
      { name: 'set/a.png', data: a },
      { name: 'set/a.txt', data: 'mychar, 1girl\nred hair\r\n\r\n  smiling  \n' },
      { name: 'set/deeper/b.JPEG', data: b, method: 'store' },
      { name: 'set/deeper/b.txt', data: '\uFEFFsolo' },
      { name: 'c.webp', data: c },
      { name: 'c.txt', data: '   \n\n' },
    ]);
    const got = await extractZip(zip, dest, limits);

    expect(got.skipped).toEqual([]);
    expect(got.images).toEqual([
      { name: 'set/a.png', path: join(dest, '00001.png'), caption: 'mychar, 1girl, red hair, smiling', folders: ['set'] },
      { name: 'set/deeper/b.JPEG', path: join(dest, '00002.jpeg'), caption: 'solo', folders: ['set', 'deeper'] },
      { name: 'c.webp', path: join(dest, '00003.webp'), folders: [] },
    ]);
    expect(await readFile(join(dest, '00001.png'))).toEqual(a);
    expect(await readFile(join(dest, '00002.jpeg'))).toEqual(b);
    expect(await readFile(join(dest, '00003.webp'))).toEqual(c);
    expect(await listTree(dest)).toEqual(['00001.png', '00002.jpeg', '00003.webp']);
  });

  it('accepts every image extension in any case and skips the rest as "not an image"', async () => {
    const names = ['a.png', 'b.JPG', 'c.jpeg', 'd.WebP', 'e.gif', 'f.avif', 'g.tif', 'h.TIFF', 'i.bmp'];
    const zip = await zipOf([
      ...names.map((name) => ({ name, data: fakeImage(name) })),
      { name: 'notes.md', data: '# hi' },
      { name: 'model.safetensors', data: 'x' },
      { name: 'inner.zip', data: 'PK' },
      { name: 'README', data: 'x' },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(names);
    expect(got.skipped).toEqual([
      { name: 'notes.md', reason: 'not an image' },
      { name: 'model.safetensors', reason: 'not an image' },
      { name: 'inner.zip', reason: 'not an image' },
      { name: 'README', reason: 'not an image' },
    ]);
  });

  it('ignores folders, __MACOSX, dotfiles and dot-folders without a note', async () => {
    const zip = await zipOf([
      { name: 'pics/' },
      { name: 'pics/one.png', data: fakeImage('one') },
      { name: '__MACOSX/' },
      { name: '__MACOSX/pics/._one.png', data: 'resource fork' },
      { name: 'pics/.DS_Store', data: 'junk' },
      { name: '.hidden/two.png', data: fakeImage('two') },
      { name: 'pics/.three.png', data: fakeImage('three') },
      { name: 'pics/Thumbs.db', data: 'junk' },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(['pics/one.png']);
    expect(got.skipped).toEqual([]);
    expect(await listTree(dest)).toEqual(['00001.png']);
  });

  it('pairs a caption only with the image of the same folder and stem, and ignores lone captions', async () => {
    const zip = await zipOf([
      { name: 'x/cat.png', data: fakeImage('cat') },
      { name: 'y/cat.txt', data: 'wrong folder' },
      { name: 'x/cat.png.txt', data: 'wrong stem' },
      { name: 'x/Cat.txt', data: 'wrong case' },
      { name: 'x/dog.txt', data: 'no image' },
      { name: 'x/v1.2.png', data: fakeImage('dots') },
      { name: 'x/v1.2.TXT', data: 'dotted stem' },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images).toEqual([
      { name: 'x/cat.png', path: join(dest, '00001.png'), folders: ['x'] },
      { name: 'x/v1.2.png', path: join(dest, '00002.png'), caption: 'dotted stem', folders: ['x'] },
    ]);
    expect(got.skipped).toEqual([]);
  });

  it('reads `.caption` files too, preferring a `.txt` beside the same image; settings TOMLs are ignored quietly', async () => {
    const zip = await zipOf([
      { name: 'img/5_a/one.png', data: fakeImage('one') },
      { name: 'img/5_a/one.caption', data: 'from caption' },
      { name: 'img/5_a/two.png', data: fakeImage('two') },
      { name: 'img/5_a/two.caption', data: 'not this one' },
      { name: 'img/5_a/two.txt', data: 'from txt' },
      { name: 'dataset.toml', data: '[general]' },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => [i.name, i.caption, i.folders])).toEqual([
      ['img/5_a/one.png', 'from caption', ['img', '5_a']],
      ['img/5_a/two.png', 'from txt', ['img', '5_a']],
    ]);
    expect(got.skipped).toEqual([]);
  });

  it('keeps the image but notes a caption that is too long or not UTF-8', async () => {
    const zip = await zipOf([
      { name: 'long.png', data: fakeImage('long') },
      { name: 'long.txt', data: 'tag, '.repeat(MAX_CAPTION_BYTES) },
      { name: 'latin1.png', data: fakeImage('latin1') },
      { name: 'latin1.txt', data: Buffer.from([0x63, 0x61, 0x66, 0xe9]) }, // "café" in Latin-1
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images).toEqual([
      { name: 'long.png', path: join(dest, '00001.png'), folders: [] },
      { name: 'latin1.png', path: join(dest, '00002.png'), folders: [] },
    ]);
    expect(got.skipped).toEqual([
      { name: 'long.txt', reason: 'caption not used: larger than 8 KB' },
      { name: 'latin1.txt', reason: 'caption not used: not valid UTF-8' },
    ]);
  });

  it('never writes outside destDir: unsafe names are skipped, files are named by number', async () => {
    const zip = await zipOf([
      { name: '../../evil.png', data: fakeImage('evil') },
      { name: '/etc/evil.png', data: fakeImage('abs') },
      { name: '..\\..\\win.png', data: fakeImage('win') },
      { name: 'C:/evil.png', data: fakeImage('drive') },
      { name: 'ok/../../evil2.png', data: fakeImage('evil2') },
      { name: 'fine.png', data: fakeImage('fine') },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images).toEqual([{ name: 'fine.png', path: join(dest, '00001.png'), folders: [] }]);
    expect(got.skipped).toEqual([
      { name: '../../evil.png', reason: 'unsafe file name' },
      { name: '/etc/evil.png', reason: 'unsafe file name' },
      { name: '../../win.png', reason: 'unsafe file name' },
      { name: 'C:/evil.png', reason: 'unsafe file name' },
      { name: 'ok/../../evil2.png', reason: 'unsafe file name' },
    ]);
    // Nothing appeared anywhere in root except the zips and the one image.
    const tree = await listTree(root);
    expect(tree.filter((p) => !p.endsWith('.zip'))).toEqual([join('work', 'out', '00001.png')]);
  });

  it('cleans entry names for display', async () => {
    const zip = await zipOf([{ name: 'a\u202Egnp.exe\u0007\nb.png', data: fakeImage('x') }]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images[0]?.name).toBe('agnp.exe b.png');
    expect(basename(got.images[0]?.path ?? '')).toBe('00001.png');
  });

  it('refuses a zip with more entries than the limit before extracting anything', async () => {
    const entries = Array.from({ length: 51 }, (_, i) => ({ name: `img${i}.png`, data: fakeImage(String(i)) }));
    const err = await refusal(extractZip(await zipOf(entries), dest, limits));
    expect(err.message).toBe('the zip holds 51 entries; the limit is 50');
    expect(await listTree(root).then((t) => t.filter((p) => !p.endsWith('.zip')))).toEqual([]);
  });

  it('skips an entry whose declared size is over the per-entry limit without inflating it', async () => {
    // Not deflate data at all: had it been inflated, the entry would be reported damaged instead.
    const huge = Buffer.alloc(32 * 1024, 0xff);
    const zip = await zipOf([
      { name: 'huge.png', rawData: huge, uncompressedSize: 32 * MiB },
      { name: 'small.png', data: fakeImage('small') },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(['small.png']);
    expect(got.skipped).toEqual([{ name: 'huge.png', reason: 'larger than 2 MB, the limit for one file' }]);
  });

  it('stops a bomb that declares a small size but inflates huge, without filling the disk', async () => {
    const bomb = deflateRawSync(Buffer.alloc(64 * MiB)); // inflates 1000:1
    const zip = await zipOf([
      { name: 'bomb.png', rawData: bomb, uncompressedSize: 1000 },
      { name: 'after.png', data: fakeImage('after') },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(['after.png']);
    expect(got.skipped).toEqual([{ name: 'bomb.png', reason: 'damaged (its data does not match the zip)' }]);
    // Numbers are not reused; the bomb's partial file is gone.
    expect(await listTree(dest)).toEqual(['00002.png']);
  });

  it('refuses a zip whose entries add up to more than the total limit, leaving nothing behind', async () => {
    const two = randomBytes(2 * MiB - 1);
    const entries = Array.from({ length: 5 }, (_, i) => ({ name: `big${i}.png`, data: two, method: 'store' as const }));
    const err = await refusal(extractZip(await zipOf(entries), dest, limits));
    expect(err.message).toBe('the zip unpacks to more than 8 MB; the limit is 8 MB');
    expect(await listTree(root).then((t) => t.filter((p) => !p.endsWith('.zip')))).toEqual([]);
  });

  it('refuses when the running total passes the limit although every entry is within its own', async () => {
    const small = { ...limits, maxTotalUncompressed: 3 * MiB };
    const one = randomBytes(MiB);
    const entries = Array.from({ length: 3 }, (_, i) => ({ name: `p${i}.png`, data: one }));
    entries.push({ name: 'p3.png', data: Buffer.alloc(10) });
    const err = await refusal(extractZip(await zipOf(entries), dest, small));
    expect(err.message).toMatch(/^the zip unpacks to more than 3 MB/);
    expect(await listTree(dest).catch(() => [])).toEqual([]);
  });

  it('on a local I/O failure midway, removes what it extracted and rethrows the system error', async () => {
    await mkdir(dest, { recursive: true });
    await writeFile(join(dest, '00002.png'), 'not ours');
    const zip = await zipOf([
      { name: 'a.png', data: fakeImage('a') },
      { name: 'b.png', data: fakeImage('b') },
      { name: 'c.png', data: fakeImage('c') },
    ]);
    const err = await extractZip(zip, dest, limits).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(UserError);
    expect(err).toMatchObject({ code: 'EEXIST' });
    expect(await listTree(dest)).toEqual(['00002.png']);
    expect(await readFile(join(dest, '00002.png'), 'utf8')).toBe('not ours');
  });

  it('skips encrypted entries', async () => {
    const zip = await zipOf([
      { name: 'secret.png', data: fakeImage('secret'), method: 'store', encrypted: true },
      { name: 'secret2.png', data: fakeImage('secret2'), encrypted: true },
      { name: 'open.png', data: fakeImage('open') },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(['open.png']);
    expect(got.skipped).toEqual([
      { name: 'secret.png', reason: 'encrypted' },
      { name: 'secret2.png', reason: 'encrypted' },
    ]);
  });

  it('skips an entry whose compressed data is garbage', async () => {
    const zip = await zipOf([
      { name: 'broken.png', rawData: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00, 0x13]), uncompressedSize: 500 },
      { name: 'good.png', data: fakeImage('good') },
    ]);
    const got = await extractZip(zip, dest, limits);
    expect(got.images.map((i) => i.name)).toEqual(['good.png']);
    expect(got.skipped).toEqual([{ name: 'broken.png', reason: 'damaged (its data does not match the zip)' }]);
  });

  it('refuses something that is not a zip, a truncated zip and an empty file as "not a valid zip file"', async () => {
    const junk = join(root, 'junk.zip');
    await writeFile(junk, randomBytes(4096));
    expect((await refusal(extractZip(junk, dest, limits))).message).toBe('not a valid zip file');

    const whole = buildZip([{ name: 'a.png', data: randomBytes(10_000) }]);
    const truncated = join(root, 'truncated.zip');
    await writeFile(truncated, whole.subarray(0, whole.length - 40));
    expect((await refusal(extractZip(truncated, dest, limits))).message).toBe('not a valid zip file');

    const empty = join(root, 'empty.zip');
    await writeFile(empty, Buffer.alloc(0));
    expect((await refusal(extractZip(empty, dest, limits))).message).toBe('not a valid zip file');
  });

  it('refuses a zip whose directory lies about a stored entry, or about its entry count', async () => {
    const lying = await zipOf([{ name: 'a.png', data: fakeImage('a'), method: 'store', uncompressedSize: 10 }]);
    expect((await refusal(extractZip(lying, dest, limits))).message).toBe('not a valid zip file');

    const miscounted = await zipOf([{ name: 'a.png', data: fakeImage('a') }], { entryCount: 3 });
    expect((await refusal(extractZip(miscounted, dest, limits))).message).toBe('not a valid zip file');
  });

  it('returns nothing for an empty zip', async () => {
    expect(await extractZip(await zipOf([]), dest, limits)).toEqual({ images: [], skipped: [] });
  });

  it('passes a missing zip file through as a system error, not a user error', async () => {
    const err = await extractZip(join(root, 'nope.zip'), dest, limits).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(UserError);
    expect(err).toMatchObject({ code: 'ENOENT' });
  });

  it('writes into an existing destDir without touching what is there', async () => {
    await mkdir(dest, { recursive: true });
    await writeFile(join(dirname(dest), 'keep.txt'), 'x');
    const got = await extractZip(await zipOf([{ name: 'a.png', data: fakeImage('a') }]), dest, limits);
    expect(got.images).toHaveLength(1);
    expect(await readFile(join(dirname(dest), 'keep.txt'), 'utf8')).toBe('x');
  });
});

describe('caption and name helpers', () => {
  it('normalises caption text to one comma-separated line', () => {
    expect(normalizeCaption('\uFEFF a, b \r\nc\rd\n\n\te\u0000f ')).toBe('a, b, c, d, ef');
    expect(normalizeCaption('\n \n')).toBe('');
  });

  it('shortens very long display names, keeping the start and the extension', () => {
    const name = `${'folder/'.repeat(40)}picture.png`;
    const shown = sanitizeDisplayName(name);
    expect([...shown].length).toBe(120);
    expect(shown.startsWith('folder/folder/')).toBe(true);
    expect(shown.endsWith('picture.png')).toBe(true);
    expect(shown).toContain('…');
    expect(sanitizeDisplayName('\u200B\u0000')).toBe('(unnamed)');
  });
});
