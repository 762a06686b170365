import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { FONT_CHARACTERS, drawText, measureText, renderLabel, wrapText } from '../../src/core/bitmap-font.ts';
import { loadConfig } from '../../src/core/config.ts';
import { isUserError } from '../../src/core/errors.ts';
import { makeContactSheet } from '../../src/core/image-sheets.ts';
import {
  ImageRefused,
  fitWithin,
  imagePhash,
  normalizeImage,
  normalizeOptionsFromConfig,
  probeImage,
  sniffFormat,
  DAMAGED_FILE,
  type NormalizeAccepted,
  type NormalizeOptions,
} from '../../src/core/media.ts';
import { hammingDistance, NEAR_DUPLICATE_DISTANCE } from '../../src/core/phash.ts';
import {
  GIF_FRAME_MARKERS,
  MARKER_BLUE,
  MARKER_RED,
  animatedGif,
  cmykJpeg,
  exifRotatedJpeg,
  grey16Png,
  normalJpeg,
  pdfFile,
  photoJpeg,
  photoRgb,
  pngBomb,
  quirkyCameraJpeg,
  reencodedCopy,
  svgFile,
  textAsPng,
  tinyImage,
  transparentPng,
  truncatedJpeg,
  truncatedPng,
  uploadOfTen,
  webp,
} from '../fixtures/images.ts';

const opts: NormalizeOptions = normalizeOptionsFromConfig(loadConfig({}));

async function accept(data: Buffer | string, options = opts): Promise<NormalizeAccepted> {
  const result = await normalizeImage(data, options);
  if (!result.ok) throw new Error(`expected the image to be accepted, got: ${result.reason}`);
  return result;
}

async function refusal(data: Buffer | string, options = opts): Promise<string> {
  const result = await normalizeImage(data, options);
  if (result.ok) throw new Error('expected the image to be refused');
  return result.reason;
}

/** Decodes an encoded image to raw pixels with a pixel reader. */
async function decode(image: Buffer) {
  const { data, info } = await sharp(image).raw().toBuffer({ resolveWithObject: true });
  const at = (x: number, y: number) => {
    const i = (y * info.width + x) * info.channels;
    return [...data.subarray(i, i + info.channels)];
  };
  return { data, info, at };
}

const near = (actual: number[], expected: readonly number[], tolerance: number) =>
  actual.length === expected.length && actual.every((v, i) => Math.abs(v - expected[i]!) <= tolerance);

describe('normalizeImage: an ordinary JPEG', () => {
  it('yields a lossless 8-bit sRGB RGB PNG master without metadata, a small thumbnail and the facts', async () => {
    const file = await normalJpeg(1);
    const r = await accept(file.data);
    expect(r.masterFormat).toBe('png');
    expect([r.width, r.height]).toEqual([800, 600]);
    expect(r.original).toEqual({ format: 'jpeg', width: 800, height: 600, bytes: file.data.length });
    expect(r.notes).toEqual([]);

    const meta = await sharp(r.master).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 800, height: 600, channels: 3, depth: 'uchar', space: 'srgb', hasAlpha: false });
    expect(meta.exif).toBeUndefined();
    expect(meta.icc).toBeUndefined();
    expect(meta.xmp).toBeUndefined();

    // The master holds exactly the decoded JPEG's pixels (lossless), and the hash covers them.
    const master = await decode(r.master);
    const original = await sharp(file.data).raw().toBuffer();
    expect(master.data.equals(original)).toBe(true);
    const expectedSha = createHash('sha256').update('rgb8 800x600\n').update(master.data).digest('hex');
    expect(r.pixelSha256).toBe(expectedSha);
    expect(r.phash).toMatch(/^[0-9a-f]{16}$/);
    expect(await imagePhash(r.master)).toBe(r.phash);

    const thumb = await sharp(r.thumbnail).metadata();
    expect(thumb.format).toBe('webp');
    expect(Math.max(thumb.width, thumb.height)).toBe(256);
    expect(thumb.width / thumb.height).toBeCloseTo(800 / 600, 1);
  });

  it('reads a file path as well as a buffer, with the same result', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lg-media-'));
    try {
      const file = await normalJpeg(2);
      const path = join(dir, 'upload.jpg');
      await writeFile(path, file.data);
      const fromPath = await accept(path);
      const fromBuffer = await accept(file.data);
      expect(fromPath.pixelSha256).toBe(fromBuffer.pixelSha256);
      expect(fromPath.original.bytes).toBe(file.data.length);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('accepts a JPEG with the stray bytes some cameras write (failOn is not "warning")', async () => {
    const file = await quirkyCameraJpeg(3);
    await expect(sharp(file.data, { failOn: 'warning' }).raw().toBuffer()).rejects.toThrow(/extraneous bytes/);
    const r = await accept(file.data);
    expect([r.width, r.height]).toEqual([800, 600]);
  });

  it('accepts WebP, AVIF and TIFF as source formats', async () => {
    const r = await accept((await webp(4)).data);
    expect(r.original.format).toBe('webp');
    expect([r.width, r.height]).toEqual([640, 480]);
    const raw = { raw: { width: 400, height: 300, channels: 3 as const } };
    const pixels = photoRgb(4, 400, 300).data;
    const avif = await accept(await sharp(pixels, raw).avif({ quality: 60, effort: 0 }).toBuffer());
    expect(avif.original).toMatchObject({ format: 'avif', width: 400, height: 300 });
    const tiff = await accept(await sharp(pixels, raw).tiff({ compression: 'lzw' }).toBuffer());
    expect(tiff.original).toMatchObject({ format: 'tiff', width: 400, height: 300 });
    expect(tiff.pixelSha256).toBe((await accept(await sharp(pixels, raw).png().toBuffer())).pixelSha256);
  });
});

describe('normalizeImage: what the trainer would get wrong is fixed in the master', () => {
  it('bakes EXIF orientation 6 in: the master is portrait with the stored left edge on top', async () => {
    const r = await accept((await exifRotatedJpeg(5)).data);
    expect([r.width, r.height]).toEqual([600, 800]);
    expect(r.original).toMatchObject({ width: 600, height: 800 });
    expect(r.notes).toEqual(['turned upright']);
    const m = await decode(r.master);
    expect(m.info).toMatchObject({ width: 600, height: 800 });
    // The red bar on the stored left edge is now along the top, the blue one on the right.
    expect(near(m.at(300, 20), MARKER_RED, 40)).toBe(true);
    expect(near(m.at(580, 400), MARKER_BLUE, 40)).toBe(true);
    expect(near(m.at(300, 780), MARKER_RED, 40)).toBe(false);
    expect(near(m.at(20, 400), MARKER_BLUE, 40)).toBe(false);
    expect((await sharp(r.master).metadata()).orientation).toBeUndefined();
  });

  it('turns all eight EXIF orientations upright, mirrored ones included', async () => {
    const upright = photoRgb(19, 360, 480);
    const W0 = upright.width;
    // Where stored pixel (x, y) of a W×H stored image appears once displayed upright, per the EXIF spec.
    const display: Record<number, (x: number, y: number, W: number, H: number) => [number, number]> = {
      1: (x, y) => [x, y],
      2: (x, y, W) => [W - 1 - x, y],
      3: (x, y, W, H) => [W - 1 - x, H - 1 - y],
      4: (x, y, _W, H) => [x, H - 1 - y],
      5: (x, y) => [y, x],
      6: (x, y, _W, H) => [H - 1 - y, x],
      7: (x, y, W, H) => [H - 1 - y, W - 1 - x],
      8: (x, y, W) => [y, W - 1 - x],
    };
    for (let orientation = 1; orientation <= 8; orientation++) {
      const swapped = orientation >= 5;
      const W = swapped ? upright.height : upright.width;
      const H = swapped ? upright.width : upright.height;
      const stored = Buffer.alloc(W * H * 3);
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < W; x++) {
          const [ux, uy] = display[orientation]!(x, y, W, H);
          upright.data.copy(stored, (y * W + x) * 3, (uy * W0 + ux) * 3, (uy * W0 + ux) * 3 + 3);
        }
      }
      const jpeg = await sharp(stored, { raw: { width: W, height: H, channels: 3 } })
        .jpeg({ quality: 95 })
        .withMetadata({ orientation })
        .toBuffer();
      const r = await accept(jpeg);
      expect([r.width, r.height], `orientation ${orientation}`).toEqual([360, 480]);
      const m = await decode(r.master);
      let diff = 0;
      for (let i = 0; i < m.data.length; i++) diff += Math.abs(m.data[i]! - upright.data[i]!);
      expect(diff / m.data.length, `orientation ${orientation}`).toBeLessThan(4);
      const expectedNote = {
        1: [],
        2: ['turned upright, mirror image undone'],
        3: ['turned upright'],
        4: ['turned upright, mirror image undone'],
        5: ['turned upright, mirror image undone'],
        6: ['turned upright'],
        7: ['turned upright, mirror image undone'],
        8: ['turned upright'],
      }[orientation];
      expect(r.notes).toEqual(expectedNote);
    }
  });

  it('flattens transparency onto the background: hidden black becomes white', async () => {
    const file = await transparentPng(6);
    expect((await sharp(file.data).raw().toBuffer()).subarray(0, 4)).toEqual(Buffer.from([0, 0, 0, 0]));
    const r = await accept(file.data);
    expect(r.notes).toEqual(['transparency flattened onto white']);
    const m = await decode(r.master);
    expect(m.info.channels).toBe(3);
    for (const [x, y] of [
      [0, 0],
      [639, 0],
      [0, 479],
      [639, 479],
      [20, 240],
    ] as const)
      expect(m.at(x, y)).toEqual([255, 255, 255]);
    const source = photoRgb(6, 640, 480);
    const centre = (240 * 640 + 320) * 3;
    expect(m.at(320, 240)).toEqual([...source.data.subarray(centre, centre + 3)]);
  });

  it('flattens onto the configured background colour', async () => {
    const r = await accept((await transparentPng(6)).data, { ...opts, background: '#102030' });
    expect(r.notes).toEqual(['transparency flattened onto #102030']);
    expect((await decode(r.master)).at(0, 0)).toEqual([0x10, 0x20, 0x30]);
  });

  it('does not claim to flatten an alpha channel that is fully opaque', async () => {
    const rgba = await sharp(photoRgb(7, 400, 300).data, { raw: { width: 400, height: 300, channels: 3 } })
      .ensureAlpha(1)
      .png()
      .toBuffer();
    expect((await sharp(rgba).metadata()).hasAlpha).toBe(true);
    expect((await accept(rgba)).notes).toEqual([]);
  });

  it('converts CMYK to 3-channel sRGB with the colours of the picture', async () => {
    const file = await cmykJpeg(8);
    expect((await sharp(file.data).metadata()).space).toBe('cmyk');
    const r = await accept(file.data);
    expect(r.notes).toEqual(['converted from CMYK']);
    const m = await decode(r.master);
    expect(m.info.channels).toBe(3);
    const source = photoRgb(8, 800, 600);
    let diff = 0;
    for (let i = 0; i < m.data.length; i++) diff += Math.abs(m.data[i]! - source.data[i]!);
    // CMYK is a lossy, profile-dependent round trip; mean error stays small (inverted channels would be ~100).
    expect(diff / m.data.length).toBeLessThan(16);
  });

  it('converts a 16-bit greyscale PNG to 8-bit RGB', async () => {
    const file = grey16Png(9);
    expect((await sharp(file.data).metadata()).depth).toBe('ushort');
    const r = await accept(file.data);
    expect(r.notes).toEqual(['converted from 16-bit to 8-bit', 'greyscale, stored as RGB']);
    const meta = await sharp(r.master).metadata();
    expect(meta).toMatchObject({ depth: 'uchar', channels: 3, space: 'srgb' });
    const m = await decode(r.master);
    const [red, green, blue] = m.at(100, 100);
    expect(red).toBe(green);
    expect(green).toBe(blue);
  });

  it('converts a Display P3 photo to sRGB values and drops the profile', async () => {
    const raw = Buffer.alloc(400 * 300 * 3);
    for (let i = 0; i < raw.length; i += 3) raw.set([220, 60, 40], i);
    const p3 = await sharp(raw, { raw: { width: 400, height: 300, channels: 3 } })
      .withIccProfile('p3')
      .png()
      .toBuffer();
    const stored = await sharp(p3, { ignoreIcc: true }).raw().toBuffer();
    expect(near([...stored.subarray(0, 3)], [220, 60, 40], 5)).toBe(false);
    const r = await accept(p3);
    expect(near((await decode(r.master)).at(10, 10), [220, 60, 40], 2)).toBe(true);
    expect((await sharp(r.master).metadata()).hasProfile).toBe(false);
  });

  it('keeps the first frame of an animated GIF and says so', async () => {
    const r = await accept((await animatedGif(10)).data);
    expect([r.width, r.height]).toEqual([480, 320]);
    expect(r.notes).toEqual(['animated GIF: first of 3 frames kept']);
    expect(near((await decode(r.master)).at(140, 120), GIF_FRAME_MARKERS[0]!, 30)).toBe(true);
  });

  it('downscales a large photo to at most masterMaxPixels with lanczos, keeping the aspect ratio', async () => {
    const r = await accept((await photoJpeg(11, 3000, 2000)).data);
    expect(r.width * r.height).toBeLessThanOrEqual(opts.masterMaxPixels);
    expect(r.width * r.height).toBeGreaterThan(opts.masterMaxPixels * 0.99);
    expect(r.width / r.height).toBeCloseTo(1.5, 2);
    expect(r.notes).toEqual([]);
    expect(r.original).toMatchObject({ width: 3000, height: 2000 });
    const meta = await sharp(r.master).metadata();
    expect([meta.width, meta.height]).toEqual([r.width, r.height]);
  });

  it('fitWithin keeps sizes within the budget and the aspect ratio to the pixel', () => {
    expect(fitWithin(1000, 800, 4_194_304)).toEqual({ width: 1000, height: 800 });
    expect(fitWithin(6000, 4000, 4_194_304)).toEqual({ width: 2508, height: 1672 });
    for (const [w, h] of [
      [4000, 3000],
      [3001, 7919],
      [20000, 300],
      [4097, 4097],
    ] as const) {
      const fit = fitWithin(w, h, 4_194_304);
      expect(fit.width * fit.height).toBeLessThanOrEqual(4_194_304);
      expect(Math.abs(fit.width / fit.height - w / h) / (w / h)).toBeLessThan(0.01);
    }
  });
});

describe('normalizeImage: refusals the contributor can act on', () => {
  it('refuses a truncated JPEG instead of padding it with grey', async () => {
    const file = await truncatedJpeg(12);
    // Without failOn the decoder would hand back a full-size picture, half of it grey.
    expect((await sharp(file.data, { failOn: 'none' }).raw().toBuffer({ resolveWithObject: true })).info.height).toBe(600);
    expect(await normalizeImage(file.data, opts)).toEqual({
      ok: false,
      reason: 'the file is cut short or damaged — try saving or exporting it again',
      detail: 'premature end of JPEG image',
    });
  });

  it('refuses a JPEG cut inside its header', async () => {
    const { data } = await normalJpeg(12);
    expect(await normalizeImage(data.subarray(0, 120), opts)).toMatchObject({
      ok: false,
      reason: DAMAGED_FILE,
      detail: expect.stringMatching(/^header can't be read: .+/) as unknown,
    });
  });

  it('refuses a truncated PNG', async () => {
    expect(await normalizeImage((await truncatedPng(13)).data, opts)).toMatchObject({
      ok: false,
      reason: DAMAGED_FILE,
      detail: expect.stringMatching(/.+/) as unknown,
    });
  });

  it('refuses a text file named .png as not an image', async () => {
    expect(await refusal(textAsPng().data)).toBe('not an image (the file contains text)');
  });

  it('refuses SVG and PDF before any decoder sees them', async () => {
    expect(await refusal(svgFile().data)).toBe('SVG is a vector drawing: export it as PNG or JPEG');
    expect(await refusal(pdfFile().data)).toBe("PDF documents aren't accepted: export the page as PNG or JPEG");
    // sharp would happily rasterise the SVG; the sniffer refuses it from the bytes alone.
    expect((await sharp(svgFile().data).metadata()).format).toBe('svg');
    const disguised = Buffer.from(
      `\uFEFF  <!-- made in Inkscape -->\n${svgFile()
        .data.toString('utf8')
        .replace(/^<\?xml[^>]*>\n/, '')}`,
    );
    expect(sniffFormat(disguised)).toEqual({ ok: false, reason: 'SVG is a vector drawing: export it as PNG or JPEG' });
  });

  it('names the other formats it refuses', () => {
    const ftyp = (brand: string, ...compatible: string[]) => {
      const body = Buffer.from(`ftyp${brand}\0\0\0\0${compatible.join('')}`, 'latin1');
      const size = Buffer.alloc(4);
      size.writeUInt32BE(body.length + 4);
      return Buffer.concat([size, body, Buffer.alloc(64)]);
    };
    const reasonOf = (head: Buffer) => {
      const sniffed = sniffFormat(head);
      return sniffed.ok ? `accepted as ${sniffed.format}` : sniffed.reason;
    };
    expect(reasonOf(ftyp('heic', 'mif1', 'heic'))).toBe('accepted as heic');
    expect(sniffFormat(ftyp('mif1', 'mif1', 'avif'))).toEqual({ ok: true, format: 'avif' });
    expect(sniffFormat(ftyp('isom', 'isom', 'mp41'))).toEqual({ ok: false, reason: 'not an image (a video file)' });
    expect(sniffFormat(Buffer.alloc(0))).toEqual({ ok: false, reason: 'empty file (0 bytes)' });
    expect(sniffFormat(Buffer.from('PK\x03\x04rest', 'latin1'))).toEqual({ ok: false, reason: 'not an image (a zip archive)' });
    expect(reasonOf(Buffer.from([0x00, 0x01, 0x02, 0x03, 0xfe, 0xfd]))).toMatch(/^not an image \(unrecognised data\)/);
  });

  it('refuses a 400-megapixel PNG bomb from its header, without decoding it', async () => {
    const bomb = pngBomb();
    expect(bomb.data.length).toBeLessThan(100_000);
    const rssBefore = process.memoryUsage().rss;
    expect(await refusal(bomb.data)).toBe('20000×20000 is 400 megapixels; the limit is 100');
    // Decoding would need 400 MB at 8 bits per pixel.
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(100 * 1024 * 1024);
  });

  it('states the limit it was given', async () => {
    const reason = await refusal((await normalJpeg(14, 2000, 1500)).data, { ...opts, maxInputPixels: 2_500_000 });
    expect(reason).toBe('2000×1500 is 3 megapixels; the limit is 2.5');
  });

  it('refuses an image whose upright short side is too small', async () => {
    expect(await refusal(tinyImage(100, 100).data)).toBe('100×100 is too small: the short side must be at least 256 px');
    expect(await refusal(tinyImage(1200, 200).data)).toBe('1200×200 is too small: the short side must be at least 256 px');
  });
});

describe('pixel and perceptual hashes', () => {
  it('gives the same pixelSha256 to the same pixels in PNG and lossless WebP, and a different one to a changed pixel', async () => {
    const img = photoRgb(15, 512, 384);
    const raw = { raw: { width: 512, height: 384, channels: 3 as const } };
    const png = await sharp(img.data, raw).png().toBuffer();
    const lossless = await sharp(img.data, raw).webp({ lossless: true }).toBuffer();
    expect(png.equals(lossless)).toBe(false);
    const a = await accept(png);
    const b = await accept(lossless);
    expect(b.original.format).toBe('webp');
    expect(a.pixelSha256).toBe(b.pixelSha256);
    expect(a.phash).toBe(b.phash);

    const changed = Buffer.from(img.data);
    changed[0] = changed[0]! ^ 1;
    expect((await accept(await sharp(changed, raw).png().toBuffer())).pixelSha256).not.toBe(a.pixelSha256);
  });

  it('puts a re-encoded, slightly smaller copy within the near-duplicate distance', async () => {
    const original = await normalJpeg(16);
    const copy = await reencodedCopy(original.data);
    expect(copy.data.equals(original.data)).toBe(false);
    const a = await accept(original.data);
    const b = await accept(copy.data);
    expect(a.pixelSha256).not.toBe(b.pixelSha256);
    expect(hammingDistance(a.phash, b.phash)).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
  });
});

describe('the upload of ten (acceptance)', () => {
  it('accepts, fixes or refuses each file with the words the contributor sees', async () => {
    const existing = await normalJpeg(77);
    const files = await uploadOfTen(existing.data);
    const verdicts: [string, string][] = [];
    const accepted = new Map<string, NormalizeAccepted>();
    for (const file of files) {
      const r = await normalizeImage(file.data, opts);
      if (r.ok) accepted.set(file.name, r);
      verdicts.push([file.name, r.ok ? `accepted${r.notes.length > 0 ? `: ${r.notes.join('; ')}` : ''}` : `refused: ${r.reason}`]);
    }
    expect(verdicts).toEqual([
      ['IMG_0101.jpg', 'accepted'],
      ['IMG_0102_rotated.jpg', 'accepted: turned upright'],
      ['cutout.png', 'accepted: transparency flattened onto white'],
      ['print-cmyk.jpg', 'accepted: converted from CMYK'],
      ['broken.jpg', 'refused: the file is cut short or damaged — try saving or exporting it again'],
      ['notes.png', 'refused: not an image (the file contains text)'],
      ['IMG_copy.jpg', 'accepted'],
      ['huge.png', 'refused: 20000×20000 is 400 megapixels; the limit is 100'],
      ['dance.gif', 'accepted: animated GIF: first of 3 frames kept'],
      ['icon.png', 'refused: 100×100 is too small: the short side must be at least 256 px'],
    ]);
    // The copy is what the duplicate check will catch: near the existing image, far from the rest.
    const existingHash = (await accept(existing.data)).phash;
    for (const [name, r] of accepted) {
      const d = hammingDistance(existingHash, r.phash);
      if (name === 'IMG_copy.jpg') expect(d).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
      else expect(d).toBeGreaterThan(2 * NEAR_DUPLICATE_DISTANCE);
    }
  });

  it('normalizes many uploads at once with the same results as one by one', async () => {
    const files = await Promise.all([1, 2, 3, 4, 5, 6].map((s) => normalJpeg(200 + s)));
    const together = await Promise.all(files.map((f) => accept(f.data)));
    for (const [i, f] of files.entries()) expect(together[i]!.pixelSha256).toBe((await accept(f.data)).pixelSha256);
  });
});

describe('probeImage', () => {
  it('reads header facts without decoding, upright size included', async () => {
    const file = await exifRotatedJpeg(17);
    expect(await probeImage(file.data)).toEqual({
      format: 'jpeg',
      width: 600,
      height: 800,
      storedWidth: 800,
      storedHeight: 600,
      pages: 1,
      orientation: 6,
      hasAlpha: false,
      space: 'srgb',
      bitDepth: 8,
      bytes: file.data.length,
    });
    expect(await probeImage(pngBomb().data)).toMatchObject({ width: 20000, height: 20000, format: 'png' });
    expect(await probeImage((await animatedGif(18)).data)).toMatchObject({ format: 'gif', pages: 3, width: 480, height: 320 });
  });

  it('throws a UserError with the reason for what is not an image', async () => {
    const err: unknown = await probeImage(textAsPng().data).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageRefused);
    expect(isUserError(err)).toBe(true);
    expect((err as ImageRefused).reason).toBe('not an image (the file contains text)');
  });
});

describe('contact sheets', () => {
  const solid = (w: number, h: number, [r, g, b]: readonly number[]) =>
    sharp({ create: { width: w, height: h, channels: 3, background: { r: r!, g: g!, b: b! } } })
      .png()
      .toBuffer();
  const colours = [
    [200, 40, 40],
    [40, 180, 60],
    [50, 70, 210],
    [220, 200, 40],
    [120, 120, 120],
  ] as const;

  it('lays tiles out in order in a grid of the expected size, as a JPEG well under 10 MiB', async () => {
    const tiles = await Promise.all(colours.map(async (c, i) => ({ image: await solid(300 + i * 40, 200, c), label: `#${i + 1}` })));
    const sheet = await makeContactSheet(tiles, { columns: 3, tile: 128 });
    const meta = await sharp(sheet).metadata();
    // 3 columns and 2 rows of 128 px with a 2 px gap around each.
    expect(meta).toMatchObject({ format: 'jpeg', width: 3 * 128 + 4 * 2, height: 2 * 128 + 3 * 2, channels: 3 });
    expect(sheet.length).toBeLessThan(10 * 1024 * 1024);

    const m = await decode(sheet);
    // Each cell's centre shows its own picture, left to right, top to bottom; the sixth stays empty.
    colours.forEach((c, i) => {
      const x = 2 + (i % 3) * 130 + 64;
      const y = 2 + Math.floor(i / 3) * 130 + 80;
      expect(near(m.at(x, y), c, 8), `tile ${i + 1} at ${x},${y}: ${m.at(x, y).join(',')}`).toBe(true);
    });
    expect(near(m.at(2 + 2 * 130 + 64, 2 + 130 + 64), [0x1e, 0x1f, 0x22], 6)).toBe(true);

    // The first label box (30×26 px: "#1" at scale 2 plus padding) sits 2 px inside the tile at
    // (2, 2): white ink on a dark box.
    let ink = 0;
    let dark = 0;
    for (let y = 4; y < 4 + 26; y++) {
      for (let x = 4; x < 4 + 30; x++) {
        const [r, g, b] = m.at(x, y);
        if (r! > 200 && g! > 200 && b! > 200) ink++;
        if (r! < 80 && g! < 80 && b! < 80) dark++;
      }
    }
    expect(ink).toBeGreaterThan(60);
    expect(dark).toBeGreaterThan(300);
  });

  it('defaults to an about-square layout of 256 px tiles and labels big sets legibly', async () => {
    const image = await solid(64, 64, [90, 90, 90]);
    const sheet = await makeContactSheet(Array.from({ length: 10 }, (_, i) => ({ image, label: `#${i + 1}` })));
    const meta = await sharp(sheet).metadata();
    expect([meta.width, meta.height]).toEqual([4 * 256 + 5 * 4, 3 * 256 + 4 * 4]);
  });
});

describe('bitmap font labels', () => {
  it('draws glyphs pixel for pixel, without any system font', () => {
    const target = { data: Buffer.alloc(5 * 7 * 3), width: 5, height: 7, channels: 3 as const };
    drawText(target, '1', 0, 0, { colour: '#ffffff' });
    const rows = Array.from({ length: 7 }, (_, y) => Array.from({ length: 5 }, (_, x) => (target.data[(y * 5 + x) * 3] === 255 ? '#' : '.')).join(''));
    expect(rows).toEqual(['..#..', '.##..', '..#..', '..#..', '..#..', '..#..', '.###.']);
  });

  it('covers digits, letters, punctuation, × and #, and falls back for the rest', () => {
    for (const ch of '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#×.,:;!?()[]-_+=/\'"@%&*') {
      expect(FONT_CHARACTERS).toContain(ch);
      const label = renderLabel(ch, { background: '#00000000', padding: 0 });
      let inked = 0;
      for (let i = 3; i < label.data.length; i += 4) if (label.data[i] === 255) inked++;
      expect(inked, `glyph ${ch}`).toBeGreaterThan(0);
    }
    const accented = renderLabel('é', { background: '#00000000', padding: 0 });
    const plain = renderLabel('e', { background: '#00000000', padding: 0 });
    expect(accented.data.equals(plain.data)).toBe(true);
    const unknown = renderLabel('☃', { background: '#00000000', padding: 0 });
    expect(unknown.data.equals(renderLabel('?', { background: '#00000000', padding: 0 }).data)).toBe(true);
  });

  it('measures, scales and wraps text for sample-grid captions', () => {
    expect(measureText('#3')).toEqual({ width: 11, height: 9 });
    expect(measureText('#3', 2)).toEqual({ width: 22, height: 18 });
    expect(measureText('epoch 1\nepoch 10')).toEqual({ width: 47, height: 20 });
    const label = renderLabel('#3', { scale: 2, padding: 2 });
    expect([label.width, label.height, label.channels]).toEqual([22 + 8, 18 + 8, 4]);
    expect(wrapText('a photo of zxq_style, a red fox in the snow', 60)).toEqual(['a photo of', 'zxq_style,', 'a red fox', 'in the', 'snow']);
    expect(wrapText('a photo of zxq_style, a red fox in the snow', 60, 1, 2)).toEqual(['a photo of', 'zxq_style…']);
    const wrapped = renderLabel('masterpiece, best quality, 1girl, solo, looking at viewer', { maxWidth: 120, maxLines: 3 });
    expect(wrapped.width).toBeLessThanOrEqual(120);
    expect(wrapped.height).toBe(3 * 11 - 2 + 4);
  });
});
