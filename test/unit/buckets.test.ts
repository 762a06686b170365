import { describe, expect, it } from 'vitest';
import { bucketSettingsFor, bucketsFor, makeBucketResolutions, selectBucket } from '../../src/core/buckets.ts';

describe('kohya bucket list', () => {
  it('has the 17 buckets of the contract at 512² (256/1024/64)', () => {
    expect(makeBucketResolutions([512, 512], 256, 1024, 64)).toEqual([
      [256, 832],
      [256, 896],
      [256, 960],
      [256, 1024],
      [320, 704],
      [320, 768],
      [384, 640],
      [448, 576],
      [512, 512],
      [576, 448],
      [640, 384],
      [704, 320],
      [768, 320],
      [832, 256],
      [896, 256],
      [960, 256],
      [1024, 256],
    ]);
  });

  it('has 41 buckets at 1024² (256/2048/64), symmetric and within the area', () => {
    const list = bucketsFor(bucketSettingsFor('sdxl', 1024));
    expect(list).toHaveLength(41);
    for (const [w, h] of list) {
      expect(w * h).toBeLessThanOrEqual(1024 * 1024);
      expect(list).toContainEqual([h, w]);
      expect(w % 64).toBe(0);
      expect(h % 64).toBe(0);
    }
    expect(list).toContainEqual([1024, 1024]);
  });

  it('refuses a resolution outside the bucket range', () => {
    expect(() => bucketsFor({ resolution: [128, 128], minBucketReso: 256, maxBucketReso: 1024, steps: 64, noUpscale: false })).toThrow();
  });
});

describe('kohya bucket assignment at 512²', () => {
  const s = bucketSettingsFor('sd15', 512);
  it.each([
    [1200, 800, [640, 384], [640, 427], false],
    [4000, 3000, [576, 448], [597, 448], false],
    [1920, 1080, [640, 384], [683, 384], false],
    [300, 200, [640, 384], [640, 427], true],
    [512, 512, [512, 512], [512, 512], false],
  ] as const)('%i×%i → bucket %j resized %j', (w, h, bucket, resized, upscaled) => {
    const a = selectBucket(w, h, s);
    expect(a.bucket).toEqual(bucket);
    expect(a.resized).toEqual(resized);
    expect(a.upscaled).toBe(upscaled);
    expect(a.cropped).toEqual([resized[0] - bucket[0], resized[1] - bucket[1]]);
  });

  it('crops 43 px of height from 1200×800 (21 at the top, the rest at the bottom)', () => {
    expect(selectBucket(1200, 800, s).cropped).toEqual([0, 43]);
  });

  it('breaks aspect-ratio ties towards the first bucket in sorted order', () => {
    // 1:1 is exactly a bucket; a near-square 1000×999 goes to 512×512.
    expect(selectBucket(1000, 999, s).bucket).toEqual([512, 512]);
  });
});

describe('kohya bucket assignment at 1024²', () => {
  const s = bucketSettingsFor('sdxl', 1024);
  it.each([
    [1024, 1024, [1024, 1024], false],
    [4000, 3000, [1152, 896], false],
    [1920, 1080, [1344, 768], false],
    [832, 1216, [832, 1216], false],
    [600, 400, [1216, 832], true],
  ] as const)('%i×%i → bucket %j', (w, h, bucket, upscaled) => {
    const a = selectBucket(w, h, s);
    expect(a.bucket).toEqual(bucket);
    expect(a.upscaled).toBe(upscaled);
    expect(a.resized[0]).toBeGreaterThanOrEqual(bucket[0]);
    expect(a.resized[1]).toBeGreaterThanOrEqual(bucket[1]);
  });
});

describe('bucket_no_upscale', () => {
  const s = bucketSettingsFor('sd15', 512, true);
  it('matches the contract examples', () => {
    const big = selectBucket(1200, 800, s);
    expect(big.resized).toEqual([576, 384]);
    expect(big.bucket).toEqual([576, 384]);
    const small = selectBucket(300, 200, s);
    expect(small.resized).toEqual([300, 200]);
    expect(small.bucket).toEqual([256, 192]);
    expect(small.upscaled).toBe(false);
  });
});
