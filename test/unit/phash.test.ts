import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/core/config.ts';
import { normalizeImage, normalizeOptionsFromConfig } from '../../src/core/media.ts';
import { NEAR_DUPLICATE_DISTANCE, hammingDistance, nearestDuplicate, phashFromGrey32 } from '../../src/core/phash.ts';
import {
  animatedGif,
  cmykJpeg,
  exifRotatedJpeg,
  grey16Png,
  normalJpeg,
  photoRgb,
  reencodedCopy,
  seededRandom,
  transparentPng,
  webp,
} from '../fixtures/images.ts';

const opts = normalizeOptionsFromConfig(loadConfig({}));

async function phashOf(image: Buffer): Promise<string> {
  const r = await normalizeImage(image, opts);
  if (!r.ok) throw new Error(r.reason);
  return r.phash;
}

/** 32×32 grey pixels of a photo-like picture (box-averaged from 256×256). */
function grey32(seed: number): Uint8Array {
  const img = photoRgb(seed, 256, 256);
  const out = new Uint8Array(32 * 32);
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      let sum = 0;
      for (let dy = 0; dy < 8; dy++) {
        for (let dx = 0; dx < 8; dx++) {
          const i = ((y * 8 + dy) * 256 + x * 8 + dx) * 3;
          sum += 0.299 * img.data[i]! + 0.587 * img.data[i + 1]! + 0.114 * img.data[i + 2]!;
        }
      }
      out[y * 32 + x] = Math.round(sum / 64);
    }
  }
  return out;
}

const ones = (hex: string) => [...hex].reduce((n, c) => n + hammingDistance(`${'0'.repeat(15)}${c}`, '0000000000000000'), 0);

describe('phashFromGrey32', () => {
  it('gives 16 hex characters, half of the 64 bits set (a median split), the same every time', () => {
    const pixels = grey32(1);
    const hash = phashFromGrey32(pixels);
    expect(hash).toMatch(/^[0-9a-f]{16}$/);
    expect(ones(hash)).toBe(32);
    expect(phashFromGrey32(Uint8Array.from(pixels))).toBe(hash);
  });

  it('ignores a uniform brightness change and flips every bit for the negative', () => {
    const pixels = grey32(2);
    const lo = Math.min(...pixels);
    const hi = Math.max(...pixels);
    const darker = pixels.map((v) => v - lo);
    const brighter = pixels.map((v) => v + (255 - hi));
    const negative = pixels.map((v) => 255 - v);
    const hash = phashFromGrey32(pixels);
    expect(phashFromGrey32(darker)).toBe(hash);
    expect(phashFromGrey32(brighter)).toBe(hash);
    expect(hammingDistance(phashFromGrey32(negative), hash)).toBe(64);
  });

  it('barely moves under small noise, and differs by about half the bits between pictures', () => {
    const rnd = seededRandom(3);
    const pixels = grey32(3);
    const noisy = pixels.map((v) => Math.max(0, Math.min(255, v + Math.round((rnd() - 0.5) * 6))));
    expect(hammingDistance(phashFromGrey32(noisy), phashFromGrey32(pixels))).toBeLessThanOrEqual(4);
    expect(hammingDistance(phashFromGrey32(grey32(4)), phashFromGrey32(pixels))).toBeGreaterThan(16);
  });

  it('refuses input that is not 32×32 grey', () => {
    expect(() => phashFromGrey32(new Uint8Array(32 * 32 * 3))).toThrow(/32×32/);
  });
});

describe('hammingDistance', () => {
  it('counts differing bits across all 64', () => {
    expect(hammingDistance('0000000000000000', '0000000000000000')).toBe(0);
    expect(hammingDistance('0000000000000000', 'ffffffffffffffff')).toBe(64);
    expect(hammingDistance('8000000000000001', '0000000000000000')).toBe(2);
    expect(hammingDistance('00000000ffffffff', 'ffffffff00000000')).toBe(64);
    expect(hammingDistance('0123456789abcdef', '0123456789ABCDEF')).toBe(0);
    expect(hammingDistance('f0f0f0f0f0f0f0f0', '0f0f0f0f0f0f0f0f')).toBe(hammingDistance('0f0f0f0f0f0f0f0f', 'f0f0f0f0f0f0f0f0'));
  });

  it('refuses what is not a 16-hex-character hash', () => {
    expect(() => hammingDistance('abc', '0000000000000000')).toThrow(RangeError);
    expect(() => hammingDistance('000000000000000g', '0000000000000000')).toThrow(RangeError);
  });

  it('finds the closest known hash within the distance, the first of equally close ones', () => {
    const known = new Map([
      [1, '000000000000007f'], // 7 bits away
      [2, '000000000000003f'], // 6
      [3, '0000000000000007'], // 3
      [4, '0000000000000070'], // 3
    ]);
    expect(nearestDuplicate('0000000000000000', known, 6)).toBe(3);
    expect(nearestDuplicate('0000000000000000', new Map([...known].slice(0, 2)), 6)).toBe(2);
    expect(nearestDuplicate('0000000000000000', new Map([...known].slice(0, 1)), 6)).toBeNull();
    expect(nearestDuplicate('0000000000000000', new Map([...known].slice(0, 1)), 7)).toBe(1);
    expect(nearestDuplicate('0000000000000000', new Map(), 64)).toBeNull();
  });

  it('is the distance intake is configured with by default', () => {
    expect(loadConfig({}).NEAR_DUPLICATE_DISTANCE).toBe(NEAR_DUPLICATE_DISTANCE);
  });
});

describe('calibration on normalized images', () => {
  it('keeps re-saved copies (JPEG q60, PNG → JPEG, 90% resize) within the near-duplicate distance', async () => {
    const worst: number[] = [];
    for (let seed = 300; seed < 310; seed++) {
      const raw = { raw: { width: 800, height: 600, channels: 3 as const } };
      const pixels = photoRgb(seed, 800, 600).data;
      const png = await sharp(pixels, raw).png().toBuffer();
      const jpeg = (await normalJpeg(seed)).data;
      const base = await phashOf(png);
      const copies = [
        await sharp(png).jpeg({ quality: 60 }).toBuffer(),
        await sharp(png).resize(720).jpeg({ quality: 80 }).toBuffer(),
        jpeg,
        (await reencodedCopy(jpeg)).data,
      ];
      const distances = await Promise.all(copies.map(async (c) => hammingDistance(base, await phashOf(c))));
      worst.push(Math.max(...distances));
    }
    expect(Math.max(...worst)).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
  });

  it('keeps distinct pictures of the corpus far beyond it', async () => {
    const images = [
      ...(await Promise.all(Array.from({ length: 16 }, (_, i) => normalJpeg(400 + i)))),
      await exifRotatedJpeg(420),
      await transparentPng(421),
      await cmykJpeg(422),
      await animatedGif(423),
      grey16Png(424),
      await webp(425),
    ];
    const hashes = await Promise.all(images.map((f) => phashOf(f.data)));
    let closest = 64;
    for (let i = 0; i < hashes.length; i++) {
      for (let j = i + 1; j < hashes.length; j++) closest = Math.min(closest, hammingDistance(hashes[i]!, hashes[j]!));
    }
    expect(closest).toBeGreaterThan(2 * NEAR_DUPLICATE_DISTANCE);
  });
});
