import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { decodeBmp, readBmpHeader } from '../../src/core/bmp.ts';
import { loadConfig } from '../../src/core/config.ts';
import { normalizeImage, normalizeOptionsFromConfig, sniffFormat, type NormalizeAccepted } from '../../src/core/media.ts';
import { hammingDistance, NEAR_DUPLICATE_DISTANCE } from '../../src/core/phash.ts';
import { bmpHeaderOnly, bmpOf, type BmpVariant } from '../fixtures/bmp.ts';
import { HEIC_HEIGHT, HEIC_WIDTH, heicPhoto, heicSourceRgb } from '../fixtures/heic.ts';
import { photoRgb } from '../fixtures/images.ts';

const opts = normalizeOptionsFromConfig(loadConfig({}));
const img = photoRgb(11, 301, 263); // odd width: every row of every bit depth needs padding

async function accepted(data: Buffer): Promise<NormalizeAccepted> {
  const result = await normalizeImage(data, opts);
  if (!result.ok) throw new Error(`expected the image to be accepted, got: ${result.reason}`);
  return result;
}

async function refusal(data: Buffer): Promise<string> {
  const result = await normalizeImage(data, opts);
  if (result.ok) throw new Error('expected a refusal');
  return result.reason;
}

describe('BMP decoding', () => {
  const variants: BmpVariant[] = [
    'rgb24',
    'rgb24-top-down',
    'rgb32',
    'rgb16-555',
    'bitfields16-565',
    'bitfields32-alpha-v5',
    'palette8',
    'palette4',
    'palette1',
    'core24',
  ];

  it.each(variants)('decodes %s to exactly the pixels written', (variant) => {
    const bmp = bmpOf(img, variant);
    const decoded = decodeBmp(bmp.data, 1e8);
    expect({ width: decoded.width, height: decoded.height, channels: decoded.channels }).toEqual({
      width: bmp.expected.width,
      height: bmp.expected.height,
      channels: bmp.expected.channels,
    });
    expect(decoded.data.equals(bmp.expected.data)).toBe(true);
  });

  it('accepts a BMP as a photo: the master has the same pixels as the same picture sent as PNG', async () => {
    const png = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
      .png()
      .toBuffer();
    const [fromBmp, fromPng] = await Promise.all([accepted(bmpOf(img, 'rgb24').data), accepted(png)]);
    expect(fromBmp.original.format).toBe('bmp');
    expect([fromBmp.width, fromBmp.height]).toEqual([301, 263]);
    expect(fromBmp.pixelSha256).toBe(fromPng.pixelSha256);
    expect(fromBmp.notes).toEqual([]);
    expect(sniffFormat(bmpOf(img, 'palette1').data)).toEqual({ ok: true, format: 'bmp' });
  });

  it('flattens a BMP with real alpha and says so; an all-zero alpha byte means opaque', async () => {
    const withAlpha = await accepted(bmpOf(img, 'bitfields32-alpha-v5').data);
    expect(withAlpha.notes).toEqual(['transparency flattened onto white']);
    const zeroAlpha = bmpOf(img, 'bitfields32-alpha-v5').data;
    const offset = zeroAlpha.readUInt32LE(10);
    for (let i = offset + 3; i < zeroAlpha.length; i += 4) zeroAlpha[i] = 0;
    const decoded = decodeBmp(zeroAlpha, 1e8);
    expect(decoded.data.filter((_, i) => i % 4 === 3).every((a) => a === 255)).toBe(true);
  });

  it('refuses an absurd size from the header alone, before allocating its pixels', async () => {
    const giant = bmpHeaderOnly(30_000, 30_000); // 900 MP claimed, 120 bytes sent
    expect(readBmpHeader(giant)).toMatchObject({ width: 30_000, height: 30_000 });
    expect(await refusal(giant)).toBe('30000×30000 is 900 megapixels; the limit is 100');
    expect(() => decodeBmp(giant, 1e8)).toThrow('the BMP is 30000×30000, larger than the limit');
  });

  it('refuses truncated, RLE-compressed and malformed BMPs with a reason', async () => {
    const whole = bmpOf(img, 'rgb24').data;
    expect(await refusal(whole.subarray(0, whole.length - 100))).toBe('truncated BMP: the file ends before its last row');
    const rle = Buffer.from(bmpOf(img, 'palette8').data);
    rle.writeUInt32LE(1, 30);
    expect(await refusal(rle)).toBe("compressed (RLE) BMP isn't supported: save it as PNG");
    const zeroWide = Buffer.from(whole);
    zeroWide.writeInt32LE(0, 18);
    expect(await refusal(zeroWide)).toBe('corrupt BMP: its size is zero or negative');
    const oddBits = Buffer.from(whole);
    oddBits.writeUInt16LE(7, 28);
    expect(await refusal(oddBits)).toBe('unsupported BMP bit depth (7): save it as PNG');
    const badPalette = Buffer.from(bmpOf(img, 'palette8').data);
    badPalette.writeUInt32LE(2, 46); // two colours declared, indices up to 15 used
    expect(await refusal(badPalette)).toBe('corrupt BMP: a pixel points past its palette');
  });
});

describe('HEIC decoding', () => {
  it('accepts an HEVC-coded HEIC photo: decoded, upright, close to the picture it was encoded from', async () => {
    const photo = heicPhoto();
    expect(sniffFormat(photo)).toEqual({ ok: true, format: 'heic' });
    const result = await accepted(photo);
    expect(result.original).toMatchObject({ format: 'heic', width: HEIC_WIDTH, height: HEIC_HEIGHT, bytes: photo.length });
    expect([result.width, result.height]).toEqual([HEIC_WIDTH, HEIC_HEIGHT]);
    const source = heicSourceRgb();
    const png = await sharp(source.data, { raw: { width: source.width, height: source.height, channels: 3 } })
      .png()
      .toBuffer();
    const reference = await accepted(png);
    expect(hammingDistance(result.phash, reference.phash)).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
    // Lossy, but every channel close on average: the colours were not swapped or shifted.
    const raw = await sharp(result.master).raw().toBuffer();
    let diff = 0;
    for (let i = 0; i < raw.length; i++) diff += Math.abs(raw[i]! - source.data[i]!);
    expect(diff / raw.length).toBeLessThan(6);
  });

  it('refuses a HEIC over the pixel limit, and a cut one as corrupt', async () => {
    const photo = heicPhoto();
    const small = await normalizeImage(photo, { ...opts, maxInputPixels: 50_000 });
    expect(small).toEqual({ ok: false, reason: `${HEIC_WIDTH}×${HEIC_HEIGHT} is 0.1 megapixels; the limit is 0.1` });
    expect(await refusal(photo.subarray(0, 800))).toMatch(/^corrupt/);
  });
});
