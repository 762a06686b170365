/**
 * The tagger's preprocessing against kohya's (contract §8): alpha on white, pad to a square with
 * 255 (`pad//2` left/top, odd pixel right/bottom), resize, RGB→BGR, float32 0–255 HWC.
 *
 * Without resizing, the tensor is pinned value by value (worked out by hand from PIL's compositing
 * rule; the same numbers come out of Pillow 9.4). Resized cases are compared with reference
 * implementations of kohya's two filters written below, checked against OpenCV 4.6 and Pillow 9.4
 * (INTER_AREA to within 1 level, from float32 vs float64 sums; LANCZOS exactly). Enlarging (PIL
 * LANCZOS, done in JS by the tagger) must match exactly; shrinking uses sharp's cubic kernel, as
 * sharp has no INTER_AREA, and must stay close.
 */
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { preprocessForTagger } from '../../src/core/tagger-preprocess.ts';
import { photoRgb } from '../fixtures/images.ts';

type Channels = 1 | 2 | 3 | 4;

function png(width: number, height: number, channels: Channels, pixels: number[]): Promise<Buffer> {
  expect(pixels).toHaveLength(width * height * channels);
  return sharp(Buffer.from(pixels), { raw: { width, height, channels } }).png().toBuffer();
}

const W = [255, 255, 255];

describe('tagger preprocessing without resizing (exact)', () => {
  it('composites alpha on white with PIL rounding, pads the odd row at the bottom and swaps to BGR', async () => {
    // 3×2 RGBA → square of 3: pad_y = 1 → 0 rows on top, 1 at the bottom.
    const input = await png(3, 2, 4, [255, 0, 0, 255, /**/ 0, 0, 255, 128, /**/ 10, 20, 30, 0, 0, 255, 0, 255, /**/ 200, 100, 50, 128, /**/ 0, 0, 0, 255]);
    // Half-transparent blue (0,0,255,a=128) on white: round((0·128 + 255·127)/255) = 127 for R and G,
    // 255 for B. (200,100,50,128): R = round(57985/255 = 227.4) = 227, G = round(45185/255 = 177.2) = 177,
    // B = round(38785/255 = 152.1) = 152. Fully transparent → white whatever its colour.
    const expected = [[0, 0, 255], [255, 127, 127], W, [0, 255, 0], [152, 177, 227], [0, 0, 0], W, W, W].flat();
    expect(Array.from(await preprocessForTagger(input, 3))).toEqual(expected);
  });

  it('pads a portrait image on the left and right, the odd column going right', async () => {
    // 2×3 grey+alpha → square of 3: pad_x = 1 → 0 columns left, 1 right.
    const input = await png(2, 3, 2, [100, 128, /**/ 0, 0, 255, 255, /**/ 30, 200, 7, 255, /**/ 250, 1]);
    // (100, a=128) → round((12800 + 32385)/255 = 177.2) = 177; (30, a=200) → round(20025/255 = 78.5) = 79;
    // (250, a=1) → round(65020/255 = 254.98) = 255.
    const g = (v: number) => [v, v, v];
    const expected = [g(177), W, W, W, g(79), W, g(7), W, W].flat();
    expect(Array.from(await preprocessForTagger(input, 3))).toEqual(expected);
  });

  it('centres even padding: a 4×2 image gets one white row above and one below', async () => {
    const input = await png(4, 2, 3, [1, 2, 3, /**/ 4, 5, 6, /**/ 7, 8, 9, /**/ 10, 11, 12, 13, 14, 15, /**/ 16, 17, 18, /**/ 19, 20, 21, /**/ 22, 23, 24]);
    const expected = [W, W, W, W, [3, 2, 1], [6, 5, 4], [9, 8, 7], [12, 11, 10], [15, 14, 13], [18, 17, 16], [21, 20, 19], [24, 23, 22], W, W, W, W].flat();
    expect(Array.from(await preprocessForTagger(input, 4))).toEqual(expected);
  });

  it('pads opaque images the same way: odd row at the bottom, odd column on the right', async () => {
    const landscape = await png(3, 2, 3, [1, 2, 3, /**/ 4, 5, 6, /**/ 7, 8, 9, 10, 11, 12, /**/ 13, 14, 15, /**/ 16, 17, 18]);
    expect(Array.from(await preprocessForTagger(landscape, 3))).toEqual(
      [[3, 2, 1], [6, 5, 4], [9, 8, 7], [12, 11, 10], [15, 14, 13], [18, 17, 16], W, W, W].flat(),
    );
    const portrait = await png(2, 3, 3, [1, 2, 3, /**/ 4, 5, 6, 7, 8, 9, /**/ 10, 11, 12, 13, 14, 15, /**/ 16, 17, 18]);
    expect(Array.from(await preprocessForTagger(portrait, 3))).toEqual(
      [[3, 2, 1], [6, 5, 4], W, [9, 8, 7], [12, 11, 10], W, [15, 14, 13], [18, 17, 16], W].flat(),
    );
  });

  it('turns a grey image into three equal channels', async () => {
    const input = await png(2, 2, 1, [0, 80, 160, 240]);
    expect(Array.from(await preprocessForTagger(input, 2))).toEqual([0, 0, 0, 80, 80, 80, 160, 160, 160, 240, 240, 240]);
  });

  it('does not apply EXIF orientation (a landscape stored with orientation 6 stays landscape)', async () => {
    // 16×8 stored, left half red, right half blue; orientation 6 would make it 8×16 upright.
    const pixels: number[] = [];
    for (let y = 0; y < 8; y++) for (let x = 0; x < 16; x++) pixels.push(...(x < 8 ? [255, 0, 0] : [0, 0, 255]));
    const jpeg = await sharp(Buffer.from(pixels), { raw: { width: 16, height: 8, channels: 3 } })
      .jpeg({ quality: 100, chromaSubsampling: '4:4:4' })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    expect((await sharp(jpeg).metadata()).orientation).toBe(6);
    const t = await preprocessForTagger(jpeg, 16);
    const px = (x: number, y: number) => Array.from(t.subarray((y * 16 + x) * 3, (y * 16 + x) * 3 + 3));
    expect(px(8, 0)).toEqual(W); // stored landscape: white rows on top
    expect(px(8, 15)).toEqual(W);
    const left = px(0, 8);
    const right = px(15, 8);
    expect(left[2]).toBeGreaterThan(200); // red (BGR: R last) on the left, as stored
    expect(left[0]).toBeLessThan(40);
    expect(right[0]).toBeGreaterThan(200); // blue on the right
    expect(right[2]).toBeLessThan(40);
  });
});

// ---------------------------------------------------------------------------------------------
// Reference filters (interleaved 8-bit pixels).

/** cv2.resize(..., INTER_AREA) for shrinking: integer factors average boxes, others weigh overlaps. */
function cv2InterArea(src: Uint8Array, sw: number, sh: number, dw: number, dh: number, cn: number): Uint8Array {
  const roundHalfEven = (v: number) => {
    const f = Math.floor(v);
    const d = v - f;
    return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
  };
  const table = (ss: number, ds: number): [number, number][][] => {
    const scale = ss / ds;
    return Array.from({ length: ds }, (_, dx) => {
      const f1 = dx * scale;
      const f2 = f1 + scale;
      const s1 = Math.ceil(f1);
      const s2 = Math.floor(f2);
      const cell = Math.min(scale, ss - f1);
      const taps: [number, number][] = [];
      if (s1 - f1 > 1e-3) taps.push([s1 - 1, (s1 - f1) / cell]);
      for (let s = s1; s < s2; s++) taps.push([s, 1 / cell]);
      if (f2 - s2 > 1e-3) taps.push([s2, Math.min(f2 - s2, 1, cell) / cell]);
      return taps;
    });
  };
  const tx = table(sw, dw);
  const ty = table(sh, dh);
  const out = new Uint8Array(dw * dh * cn);
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      for (let c = 0; c < cn; c++) {
        let sum = 0;
        for (const [sy, wy] of ty[y]!) for (const [sx, wx] of tx[x]!) sum += src[(sy * sw + sx) * cn + c]! * wx * wy;
        out[(y * dw + x) * cn + c] = Math.min(255, roundHalfEven(sum));
      }
    }
  }
  return out;
}

/** PIL `Image.resize(..., LANCZOS)`: separable, horizontal pass first, 8-bit fixed-point coefficients. */
function pilLanczos(src: Uint8Array, sw: number, sh: number, dw: number, dh: number, cn: number): Uint8Array {
  const sinc = (x: number) => (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x));
  const lanczos = (x: number) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0);
  const PRECISION = 22;
  const coeffs = (inSize: number, outSize: number) => {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1);
    const support = 3 * filterScale;
    return Array.from({ length: outSize }, (_, xx) => {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(0, Math.trunc(center - support + 0.5));
      const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
      const k = Array.from({ length: xmax }, (_, x) => lanczos((x + xmin - center + 0.5) / filterScale));
      const total = k.reduce((a, b) => a + b, 0);
      const fixed = k.map((w) => {
        const v = (total !== 0 ? w / total : w) * 2 ** PRECISION;
        return v < 0 ? Math.trunc(v - 0.5) : Math.trunc(v + 0.5);
      });
      return { xmin, fixed };
    });
  };
  const clip8 = (v: number) => Math.min(255, Math.max(0, Math.floor(v / 2 ** PRECISION)));
  const cx = coeffs(sw, dw);
  const cy = coeffs(sh, dh);
  const tmp = new Uint8Array(dw * sh * cn);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < dw; x++) {
      const { xmin, fixed } = cx[x]!;
      for (let c = 0; c < cn; c++) {
        let sum = 2 ** (PRECISION - 1);
        fixed.forEach((k, i) => (sum += src[(y * sw + xmin + i) * cn + c]! * k));
        tmp[(y * dw + x) * cn + c] = clip8(sum);
      }
    }
  }
  const out = new Uint8Array(dw * dh * cn);
  for (let y = 0; y < dh; y++) {
    const { xmin, fixed } = cy[y]!;
    for (let x = 0; x < dw; x++) {
      for (let c = 0; c < cn; c++) {
        let sum = 2 ** (PRECISION - 1);
        fixed.forEach((k, i) => (sum += tmp[((xmin + i) * dw + x) * cn + c]! * k));
        out[(y * dw + x) * cn + c] = clip8(sum);
      }
    }
  }
  return out;
}

/** kohya's preprocessing of an opaque RGB image with the reference filters, as BGR floats. */
function kohyaReference(rgb: Uint8Array, width: number, height: number, size: number): Float32Array {
  const side = Math.max(width, height);
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const padded = new Uint8Array(side * side * 3).fill(255);
  for (let y = 0; y < height; y++) padded.set(rgb.subarray(y * width * 3, (y + 1) * width * 3), ((top + y) * side + left) * 3);
  const resized = side > size ? cv2InterArea(padded, side, side, size, size, 3) : pilLanczos(padded, side, side, size, size, 3);
  const out = new Float32Array(size * size * 3);
  for (let i = 0; i < out.length; i += 3) {
    out[i] = resized[i + 2]!;
    out[i + 1] = resized[i + 1]!;
    out[i + 2] = resized[i]!;
  }
  return out;
}

function differences(a: Float32Array, b: Float32Array): { max: number; mean: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

/** How far our preprocessing of made-up photo `seed` (as a PNG, to 448) is from kohya's reference. */
async function photoAgainstKohya(seed: number, width: number, height: number): Promise<{ max: number; mean: number }> {
  const img = photoRgb(seed, width, height);
  const input = await sharp(img.data, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
  return differences(await preprocessForTagger(input, 448), kohyaReference(img.data, width, height, 448));
}

describe('tagger preprocessing with resizing', () => {
  it('reference filters reproduce the hand-worked cases', () => {
    // 2× box averages (cv2 INTER_AREA's integer path) and a value checked against Pillow.
    expect(Array.from(cv2InterArea(Uint8Array.from([0, 10, 255, 7, 1, 2, 3, 4, 100, 101, 33, 66, 5, 250, 17, 200]), 4, 4, 2, 2, 1))).toEqual([3, 67, 114, 79]);
    const five = Uint8Array.from([10, 200, 30, 90, 250, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 50, 60, 70, 80, 90, 100, 0, 100, 0, 100]);
    expect(Array.from(pilLanczos(five, 5, 5, 7, 7, 1).subarray(0, 7))).toEqual([6, 148, 202, 39, 46, 195, 255]);
  });

  it('an integer-factor shrink is near the box average of cv2 INTER_AREA, though not equal to it', async () => {
    // 4×2 → padded 4×4 (a white row above and below) → 2×2: each output pixel averages a 2×2 box.
    const input = await png(
      4,
      2,
      3,
      [3, 3, 3, /**/ 7, 7, 7, /**/ 101, 151, 201, /**/ 104, 154, 204, 11, 11, 11, /**/ 15, 15, 15, /**/ 121, 171, 221, /**/ 124, 174, 224],
    );
    // Box averages (BGR), e.g. top left (255 + 255 + 3 + 7) / 4 = 130, top right R (255 + 255 + 101 + 104) / 4 = 178.75.
    const box = [
      [130, 130, 130],
      [229, 204, 179],
      [134, 134, 134],
      [239, 214, 189],
    ].flat();
    const got = Array.from(await preprocessForTagger(input, 2));
    // sharp's cubic kernel reaches past the 2×2 box (today: 126,124,122, 221,196,171, 129,128,126, 228,202,176).
    got.forEach((v, i) => expect(Math.abs(v - box[i]!)).toBeLessThanOrEqual(16));
  });

  it('shrinking a 1000×749 photo stays within a level of cv2 INTER_AREA on average', async () => {
    // pad_y = 251: 125 white rows above, 126 below.
    const { max, mean } = await photoAgainstKohya(41, 1000, 749);
    // Today: mean 0.44, max 18 (at stripes and shape edges).
    expect(mean).toBeLessThan(1);
    expect(max).toBeLessThanOrEqual(32);
  });

  it('enlarging a 300×199 photo matches PIL LANCZOS exactly', async () => {
    expect(await photoAgainstKohya(42, 300, 199)).toEqual({ max: 0, mean: 0 });
  });

  it('enlarging a transparent portrait matches PIL LANCZOS after compositing exactly', async () => {
    const img = photoRgb(43, 30, 50);
    const rgba = Buffer.alloc(30 * 50 * 4);
    const flat = new Uint8Array(30 * 50 * 3);
    for (let i = 0; i < 30 * 50; i++) {
      const a = (i * 37) % 256;
      rgba[i * 4 + 3] = a;
      for (let c = 0; c < 3; c++) {
        const v = img.data[i * 3 + c]!;
        rgba[i * 4 + c] = v;
        flat[i * 3 + c] = Math.round((v * a + 255 * (255 - a)) / 255);
      }
    }
    const input = await sharp(rgba, { raw: { width: 30, height: 50, channels: 4 } })
      .png()
      .toBuffer();
    const got = await preprocessForTagger(input, 64);
    expect(differences(got, kohyaReference(flat, 30, 50, 64))).toEqual({ max: 0, mean: 0 });
  });
});
