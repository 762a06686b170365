/**
 * Aspect-ratio bucketing exactly as kohya-ss/sd-scripts does it (reference/kohya-contract.md §4),
 * so what we show before training is what the trainer will do. All maths is IEEE double, as in
 * Python, and integer divisions are floored as Python's `//` on non-negative numbers.
 */

export type Size = readonly [width: number, height: number];

export interface BucketSettings {
  /** Training resolution (W, H); buckets hold about W*H pixels. */
  resolution: Size;
  minBucketReso: number;
  maxBucketReso: number;
  steps: number;
  noUpscale: boolean;
}

export interface BucketAssignment {
  bucket: Size;
  /** Size the image is resized to before the centre crop. */
  resized: Size;
  /** Pixels cut off in total, horizontally and vertically. */
  cropped: Size;
  /** True when the trainer enlarges the image to reach its bucket. */
  upscaled: boolean;
  /** bucket aspect ratio − image aspect ratio. */
  arError: number;
}

import type { BaseFamily } from './model-family.ts';

export type { BaseFamily };

/** The bucket settings our recipes use for a base family and square resolution. */
export function bucketSettingsFor(_base: BaseFamily, resolution: number, noUpscale = false): BucketSettings {
  // Every family uses the same rules (64 px steps also satisfy FLUX's multiple-of-32 check); the
  // family only changes the default resolution.
  return {
    resolution: [resolution, resolution],
    minBucketReso: 256,
    maxBucketReso: resolution * 2,
    steps: 64,
    noUpscale,
  };
}

const floorTo = (x: number, m: number) => Math.floor(x / m) * m;
const ceilTo = (x: number, m: number) => Math.ceil(x / m) * m;

/** `model_util.make_bucket_resolutions`: the predefined bucket list, sorted by (w, h). */
export function makeBucketResolutions(maxReso: Size, minSize: number, maxSize: number, divisible: number): Size[] {
  const [W, H] = maxReso;
  const area = W * H;
  const seen = new Set<string>();
  const out: Size[] = [];
  const add = (w: number, h: number) => {
    const key = `${w}x${h}`;
    if (!seen.has(key)) {
      seen.add(key);
      out.push([w, h]);
    }
  };
  const s = floorTo(Math.sqrt(area), divisible);
  add(s, s);
  for (let w = minSize; w <= maxSize; w += divisible) {
    const h = Math.min(maxSize, floorTo(Math.floor(area / w), divisible));
    if (h >= minSize) {
      add(w, h);
      add(h, w);
    }
  }
  out.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return out;
}

/** The bucket list for settings, after kohya's rounding and sanity checks. */
export function bucketsFor(settings: BucketSettings): Size[] {
  const { resolution, steps } = settings;
  const minReso = floorTo(settings.minBucketReso, steps);
  const maxReso = ceilTo(settings.maxBucketReso, steps);
  if (Math.min(...resolution) < minReso) throw new RangeError('resolution is below the minimum bucket size');
  if (Math.max(...resolution) > maxReso) throw new RangeError('resolution is above the maximum bucket size');
  return makeBucketResolutions(resolution, minReso, maxReso, steps);
}

const bucketCache = new Map<string, Size[]>();

function cachedBuckets(settings: BucketSettings): Size[] {
  const key = `${settings.resolution.join('x')}/${settings.minBucketReso}/${settings.maxBucketReso}/${settings.steps}`;
  let list = bucketCache.get(key);
  if (!list) {
    list = bucketsFor(settings);
    bucketCache.set(key, list);
  }
  return list;
}

function coverResize(w: number, h: number, bucket: Size): Size {
  const ar = w / h;
  const [bw, bh] = bucket;
  const scale = ar > bw / bh ? bh / h : bw / w;
  return [Math.floor(w * scale + 0.5), Math.floor(h * scale + 0.5)];
}

/** `BucketManager.select_bucket` (or the no-upscale rule) for an image of w×h pixels. */
export function selectBucket(w: number, h: number, settings: BucketSettings): BucketAssignment {
  if (!(w > 0 && h > 0)) throw new RangeError('image size must be positive');
  const ar = w / h;
  let bucket: Size;
  let resized: Size;
  if (settings.noUpscale) {
    const maxArea = settings.resolution[0] * settings.resolution[1];
    const { steps } = settings;
    if (w * h > maxArea) {
      const rw = Math.sqrt(maxArea * ar);
      const rh = maxArea / rw;
      const r = (x: number) => {
        const i = Math.trunc(x + 0.5);
        return i - (i % steps);
      };
      const bw1 = r(rw);
      const bh1 = r(bw1 / ar);
      const e1 = Math.abs(bw1 / bh1 - ar);
      const bh2 = r(rh);
      const bw2 = r(bh2 * ar);
      const e2 = Math.abs(bw2 / bh2 - ar);
      resized = e1 < e2 ? [bw1, Math.trunc(bw1 / ar + 0.5)] : [Math.trunc(bh2 * ar + 0.5), bh2];
    } else {
      resized = [w, h];
    }
    bucket = [resized[0] - (resized[0] % steps), resized[1] - (resized[1] % steps)];
    if (bucket[0] === 0 || bucket[1] === 0) throw new RangeError(`a side is under ${steps} px`);
  } else {
    const buckets = cachedBuckets(settings);
    const exact = buckets.find(([bw, bh]) => bw === w && bh === h);
    if (exact) {
      bucket = exact;
    } else {
      let best = 0;
      let bestErr = Infinity;
      for (let i = 0; i < buckets.length; i++) {
        const b = buckets[i]!;
        const err = Math.abs(b[0] / b[1] - ar);
        if (err < bestErr) {
          bestErr = err;
          best = i;
        }
      }
      bucket = buckets[best]!;
    }
    resized = exact ? [w, h] : coverResize(w, h, bucket);
  }
  return {
    bucket,
    resized,
    cropped: [Math.max(0, resized[0] - bucket[0]), Math.max(0, resized[1] - bucket[1])],
    upscaled: resized[0] > w || resized[1] > h,
    arError: bucket[0] / bucket[1] - ar,
  };
}

export function bucketLabel(size: Size): string {
  return `${size[0]}×${size[1]}`;
}
