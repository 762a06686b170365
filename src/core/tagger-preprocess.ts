/**
 * The WD14 tagger's input, prepared as kohya prepares it (`finetune/tag_images_by_wd14_tagger.py`):
 * alpha composited on white (PIL's rounding), padded to a square with 255 (`pad//2` left/top, the
 * odd pixel right/bottom), resized to the model's size, RGB→BGR, no normalisation, no EXIF rotation
 * (masters are already upright).
 *
 * Resizing: enlarging (images whose long side is under the model size) is PIL's LANCZOS
 * reimplemented here, bit for bit. Shrinking — the common case — cannot be exact: sharp (libvips)
 * has no cv2 INTER_AREA, so it uses libvips' Catmull-Rom `cubic` reduce, the closest of sharp's
 * kernels (on photo-like images a mean difference of about 0.5 level out of 255, up to ~20 at
 * sharp edges; an integer-factor shrink is not an exact box average — the kernel reaches past
 * the box). Images with an embedded ICC profile are converted to sRGB by sharp, where PIL
 * would take the raw values.
 */
import type { OutputInfo, Sharp } from 'sharp';
import { decodeForModel, fromRaw } from './sharp.ts';

/**
 * The model input for one image: `size × size × 3` float32, BGR, 0–255, row-major (HWC), as
 * kohya prepares it (see the file comment for the resizing difference).
 */
export async function preprocessForTagger(input: Buffer | string, size: number): Promise<Float32Array> {
  return new Float32Array(await taggerBgr(input, size));
}

const WHITE = { r: 255, g: 255, b: 255 };
/** RGB → BGR, as a colour matrix (exact for integer pixels). */
const SWAP_RB: [[number, number, number], [number, number, number], [number, number, number]] = [
  [0, 0, 1],
  [0, 1, 0],
  [1, 0, 0],
];

/**
 * Decoded, flattened on white, padded to a square, resized and turned BGR: `size × size × 3` bytes.
 *
 * After a header read, a square opaque image that is shrunk takes one sharp pipeline (decode,
 * resize, swap); other opaque images take two (decode and pad; resize and swap), because within
 * one pipeline sharp always resizes before it pads. Images with alpha are composited in JS with
 * PIL's rounding (sharp's flatten rounds differently). Enlarging is PIL's LANCZOS in JS, bit for
 * bit: libvips ignores the kernel when upsizing, and the input is small by definition.
 */
export async function taggerBgr(input: Buffer | string, size: number): Promise<Buffer> {
  // `pipelineColourspace('srgb')` makes grey images three channels from the start, and keeps sharp
  // from shrinking JPEGs while decoding them (kohya decodes at full size).
  const decode = () => decodeForModel(input).pipelineColourspace('srgb');
  const meta = await decodeForModel(input).metadata();
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (!(width > 0 && height > 0)) throw new Error('the image has no dimensions');
  const side = Math.max(width, height);
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const pad = { top, bottom: side - height - top, left, right: side - width - left, background: WHITE };
  const shrinkAndSwap = (pipeline: Sharp): Promise<Buffer> =>
    (side === size ? pipeline : pipeline.resize(size, size, { fit: 'fill', kernel: 'cubic' }))
      .recomb(SWAP_RB)
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer()
      .then((bgr) => {
        if (bgr.length !== size * size * 3) throw new Error(`preprocessing produced ${bgr.length} bytes, not ${size}×${size}×3`);
        return bgr;
      });

  let padded: Uint8Array;
  if (meta.hasAlpha) {
    const { data, info } = await decode().ensureAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    expectRaw(info, width, height, 4);
    padded = compositeAndPad(data, width, height, side);
  } else if (side >= size && (width === height || side === size)) {
    return shrinkAndSwap(width === height ? decode() : decode().extend(pad));
  } else {
    const { data, info } = await decode().extend(pad).toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    expectRaw(info, side, side, 3);
    padded = data;
  }
  if (side < size) return lanczosEnlargeBgr(padded, side, size);
  return shrinkAndSwap(fromRaw(padded, side, side, 3));
}

function expectRaw(info: OutputInfo, width: number, height: number, channels: number): void {
  if (info.width !== width || info.height !== height || info.channels !== channels) {
    throw new Error(`decoding gave ${info.width}×${info.height}×${info.channels}, expected ${width}×${height}×${channels}`);
  }
}

/** PIL's `paste(mask=alpha)` onto white: round((c·a + 255·(255 − a)) / 255), via PIL's DIV255. */
function onWhite(c: number, a: number): number {
  const t = c * a + 255 * (255 - a) + 128;
  return ((t >> 8) + t) >> 8;
}

/**
 * RGBA → RGB composited on white, padded to `side × side` with white (kohya: `pad_l = pad_x // 2`,
 * `pad_t = pad_y // 2`, the odd pixel to the right/bottom).
 */
function compositeAndPad(rgba: Uint8Array, width: number, height: number, side: number): Buffer {
  const left = (side - width) >> 1;
  const top = (side - height) >> 1;
  const out = Buffer.alloc(side * side * 3, 255);
  for (let y = 0; y < height; y++) {
    let s = y * width * 4;
    let d = ((top + y) * side + left) * 3;
    for (let x = 0; x < width; x++, s += 4, d += 3) {
      const a = rgba[s + 3]!;
      if (a === 255) {
        out[d] = rgba[s]!;
        out[d + 1] = rgba[s + 1]!;
        out[d + 2] = rgba[s + 2]!;
      } else if (a !== 0) {
        out[d] = onWhite(rgba[s]!, a);
        out[d + 1] = onWhite(rgba[s + 1]!, a);
        out[d + 2] = onWhite(rgba[s + 2]!, a);
      }
    }
  }
  return out;
}

/** PIL's 8-bit fixed-point resampling precision (`PRECISION_BITS = 32 - 8 - 2`). */
const PRECISION_BITS = 22;

interface Taps {
  first: Int32Array;
  count: Int32Array;
  /** `maxTaps` fixed-point weights per output pixel. */
  weights: Int32Array;
  maxTaps: number;
}

const tapCache = new Map<string, Taps>();

/** PIL `precompute_coeffs` + `normalize_coeffs_8bpc` for LANCZOS (a = 3) from `inSize` to `outSize`. */
function lanczosTaps(inSize: number, outSize: number): Taps {
  const key = `${inSize}>${outSize}`;
  const cached = tapCache.get(key);
  if (cached) return cached;
  const sinc = (x: number) => (x === 0 ? 1 : Math.sin(x * Math.PI) / (x * Math.PI));
  const lanczos = (x: number) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0);
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const maxTaps = Math.ceil(support) * 2 + 1;
  const taps: Taps = { first: new Int32Array(outSize), count: new Int32Array(outSize), weights: new Int32Array(outSize * maxTaps), maxTaps };
  const k = new Float64Array(maxTaps);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const n = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < n; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) / filterScale);
      total += k[x]!;
    }
    for (let x = 0; x < n; x++) {
      const w = (total !== 0 ? k[x]! / total : k[x]!) * (1 << PRECISION_BITS);
      taps.weights[xx * maxTaps + x] = w < 0 ? Math.trunc(w - 0.5) : Math.trunc(w + 0.5);
    }
    taps.first[xx] = xmin;
    taps.count[xx] = n;
  }
  tapCache.set(key, taps);
  return taps;
}

/** Rounds PIL's way: the sum started at half a unit, shifted down, clipped to 0–255. */
function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** PIL `resize(LANCZOS)` of a square RGB image (horizontal pass first, 8-bit in between), out as BGR. */
function lanczosEnlargeBgr(rgb: Uint8Array, side: number, size: number): Buffer {
  const taps = lanczosTaps(side, size);
  const { first, count, weights, maxTaps } = taps;
  const half = 1 << (PRECISION_BITS - 1);
  const tmp = new Uint8Array(side * size * 3);
  for (let y = 0; y < side; y++) {
    const row = y * side * 3;
    for (let x = 0; x < size; x++) {
      const n = count[x]!;
      const w0 = x * maxTaps;
      let s = row + first[x]! * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let i = 0; i < n; i++, s += 3) {
        const w = weights[w0 + i]!;
        r += rgb[s]! * w;
        g += rgb[s + 1]! * w;
        b += rgb[s + 2]! * w;
      }
      const d = (y * size + x) * 3;
      tmp[d] = clip8(r);
      tmp[d + 1] = clip8(g);
      tmp[d + 2] = clip8(b);
    }
  }
  const out = Buffer.allocUnsafe(size * size * 3);
  const stride = size * 3;
  for (let y = 0; y < size; y++) {
    const n = count[y]!;
    const w0 = y * maxTaps;
    const top = first[y]! * stride;
    for (let x = 0; x < size; x++) {
      let s = top + x * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let i = 0; i < n; i++, s += stride) {
        const w = weights[w0 + i]!;
        r += tmp[s]! * w;
        g += tmp[s + 1]! * w;
        b += tmp[s + 2]! * w;
      }
      const d = (y * size + x) * 3;
      out[d] = clip8(b);
      out[d + 1] = clip8(g);
      out[d + 2] = clip8(r);
    }
  }
  return out;
}
