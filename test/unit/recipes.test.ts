import { describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import { RECIPE_NAMES } from '../../src/core/recipe-table.ts';
import { getRecipe, listRecipes, resolveRecipe, ResolvedRecipeSchema } from '../../src/core/recipes.ts';

const PRODIGY_ARGS = ['weight_decay=0.01', 'decouple=True', 'use_bias_correction=True', 'safeguard_warmup=True', 'd_coef=2'];

function userErrorOf(fn: () => unknown): UserError {
  try {
    fn();
  } catch (err) {
    if (err instanceof UserError) return err;
    throw err;
  }
  throw new Error('expected a UserError');
}

describe('built-in recipes match reference/recipes.md', () => {
  it('has the six recipes, character first', () => {
    expect(RECIPE_NAMES).toEqual(['character', 'character-adamw', 'quick', 'photo', 'style', 'flexible-concept']);
    expect(listRecipes().map((r) => r.name)).toEqual([...RECIPE_NAMES]);
    for (const r of listRecipes()) expect(r.description.length).toBeGreaterThan(10);
  });

  it.each([
    // name, dim, alpha, optimizer, lr, args, scheduler, cycles, warmup, epochs
    ['character', 32, 16, 'Prodigy', 1, PRODIGY_ARGS, 'cosine', 1, 0, 8],
    ['character-adamw', 32, 16, 'AdamW', 1e-4, [], 'cosine_with_restarts', 1, 0, 8],
    ['quick', 64, 16, 'AdamW8bit', 2.5e-4, [], 'cosine', 1, 0.1, 1],
    ['photo', 64, 56, 'Adafactor', 1e-4, ['scale_parameter=False', 'relative_step=False', 'warmup_init=False'], 'constant', 1, 0, 8],
    ['style', 32, 16, 'AdamW', 5e-5, [], 'cosine_with_restarts', 1, 0, 8],
    ['flexible-concept', 1, 1, 'AdamW', 1e-4, [], 'cosine_with_restarts', 1, 0, 8],
  ] as const)('%s: dim %i alpha %i, %s lr %d, args, scheduler %s', (name, dim, alpha, optimizer, lr, args, scheduler, cycles, warmup, epochs) => {
    const r = getRecipe(name);
    expect(r.network).toEqual({ module: 'networks.lora', dim, alpha, convDim: null, convAlpha: null });
    expect(r.optimizer).toEqual({ type: optimizer, learningRate: lr, args: [...args] });
    expect(r.scheduler).toEqual({ type: scheduler, warmup, cycles });
    expect(r.epochs).toBe(epochs);
  });

  it('photo alpha is slightly below dim, style LR lies in 1e-5…9e-5', () => {
    const photo = getRecipe('photo');
    expect(photo.network.alpha).toBeLessThan(photo.network.dim);
    expect(photo.network.alpha).toBeGreaterThanOrEqual(photo.network.dim * 0.75);
    const style = getRecipe('style').optimizer.learningRate;
    expect(style).toBeGreaterThanOrEqual(1e-5);
    expect(style).toBeLessThanOrEqual(9e-5);
  });

  it('character: ~300 steps per epoch per main concept, ~100 per outfit, 512 px, fp16 save, batch 1, shuffled, keep_tokens = triggers', () => {
    const r = resolveRecipe('character', 'sd15');
    expect(r.repeats).toEqual({ mode: 'balance', mainStepsPerEpoch: 300, subStepsPerEpoch: 100 });
    expect(r).toMatchObject({ resolution: 512, savePrecision: 'fp16', batchSize: 1, shuffleCaption: true, keepTokens: 'triggers', flipAug: false });
    expect(r.maxMainConceptSteps).toBe(3000);
  });

  it('character-adamw uses twice the Prodigy steps and a 6000-step ceiling', () => {
    const r = resolveRecipe('character-adamw', 'sd15');
    expect(r.repeats).toEqual({ mode: 'balance', mainStepsPerEpoch: 600, subStepsPerEpoch: 200 });
    expect(r.maxMainConceptSteps).toBe(6000);
  });

  it('quick aims at 500–750 steps per concept in one epoch', () => {
    const r = resolveRecipe('quick', 'sd15');
    if (r.repeats.mode !== 'balance') throw new Error('quick balances repeats');
    for (const target of [r.repeats.mainStepsPerEpoch, r.repeats.subStepsPerEpoch]) {
      expect(target).toBeGreaterThanOrEqual(500);
      expect(target).toBeLessThanOrEqual(750);
    }
    expect(r.epochs).toBe(1);
  });

  it('photo: 768 px, bf16, captions not shuffled, no upscaling, 768×640 samples with the photo negative prompt', () => {
    const r = resolveRecipe('photo', 'sd15');
    expect(r).toMatchObject({ resolution: 768, mixedPrecision: 'bf16', savePrecision: 'bf16', shuffleCaption: false, bucketNoUpscale: true });
    expect(r.sample).toMatchObject({ width: 768, height: 640, negativePrompt: 'Anime, Cartoon, Drawing, Illustration, 3D render' });
  });

  it('keeps sentence captions as written: no shuffling or tag dropout unless the captions are tags', () => {
    const tags = resolveRecipe('character', 'sd15', {}, { captionMode: 'tags' });
    expect(tags).toMatchObject({ shuffleCaption: true });
    expect(tags.warnings.map((w) => w.code)).not.toContain('caption-mode');
    for (const captionMode of ['sentences', 'both'] as const) {
      const r = resolveRecipe('character', 'sd15', {}, { captionMode });
      expect(r).toMatchObject({ shuffleCaption: false, captionTagDropoutRate: 0 });
      expect(r.warnings.find((w) => w.code === 'caption-mode')?.message).toMatch(/never cut apart at their commas/);
    }
    expect(resolveRecipe('style', 'sdxl', {}, { captionMode: 'sentences' }).captionTagDropoutRate).toBe(0);
  });

  it('style drops tags after the kept trigger; flexible-concept uses one repeat', () => {
    expect(resolveRecipe('style', 'sd15').captionTagDropoutRate).toBeGreaterThan(0);
    expect(resolveRecipe('flexible-concept', 'sd15').repeats).toEqual({ mode: 'fixed', repeats: 1 });
  });

  it('SDXL variants train at 1024 px with about half the steps and no clip skip', () => {
    for (const name of RECIPE_NAMES) {
      const sd15 = resolveRecipe(name, 'sd15');
      const sdxl = resolveRecipe(name, 'sdxl');
      expect(sdxl.resolution).toBe(1024);
      expect(sdxl.clipSkip).toBeNull();
      if (sd15.repeats.mode === 'balance' && sdxl.repeats.mode === 'balance') {
        expect(sdxl.repeats.mainStepsPerEpoch).toBe(sd15.repeats.mainStepsPerEpoch / 2);
        expect(sdxl.repeats.subStepsPerEpoch).toBe(sd15.repeats.subStepsPerEpoch / 2);
      }
    }
    expect(resolveRecipe('character', 'sdxl').maxMainConceptSteps).toBe(2500);
  });

  it('every recipe resolves for both bases into JSON that validates again', () => {
    for (const name of RECIPE_NAMES) {
      for (const base of ['sd15', 'sdxl'] as const) {
        const r = resolveRecipe(name, base);
        expect(ResolvedRecipeSchema.parse(JSON.parse(JSON.stringify(r)))).toEqual(r);
        expect(r.sample.width % 8).toBe(0);
        expect(r.sample.height % 8).toBe(0);
      }
    }
  });

  it('refuses an unknown recipe with a UserError listing the recipes', () => {
    const err = userErrorOf(() => resolveRecipe('anime', 'sd15'));
    expect(err.message).toContain('anime');
    expect(err.message).toContain('character');
  });
});

describe('run overrides', () => {
  it('applies in-range overrides', () => {
    const r = resolveRecipe('character', 'sd15', { epochs: 10, dim: 64, alpha: 32, resolution: 768, batchSize: 2, seed: 123, flip: true, learningRate: 0.8 });
    expect(r).toMatchObject({ epochs: 10, resolution: 768, batchSize: 2, seed: 123, flipAug: true });
    expect(r.network).toMatchObject({ dim: 64, alpha: 32 });
    expect(r.optimizer.learningRate).toBe(0.8);
    expect(r.warnings).toEqual([]);
  });

  it.each([
    [{ epochs: 0 }, 'epochs must be from 1 to 100 (got 0)'],
    [{ epochs: 101 }, 'epochs must be from 1 to 100 (got 101)'],
    [{ epochs: 2.5 }, 'epochs must be a whole number (got 2.5)'],
    [{ dim: 0 }, 'dim must be from 1 to 256 (got 0)'],
    [{ dim: 512 }, 'dim must be from 1 to 256 (got 512)'],
    [{ alpha: 0.05 }, 'alpha must be from 0.1 to 256 (got 0.05)'],
    [{ alpha: 300 }, 'alpha must be from 0.1 to 256 (got 300)'],
    [{ resolution: 500 }, 'resolution must be a multiple of 64 from 256 to 2048 (got 500)'],
    [{ resolution: 4096 }, 'resolution must be from 256 to 2048 (got 4096)'],
    [{ resolution: 192 }, 'resolution must be from 256 to 2048 (got 192)'],
    [{ batchSize: 0 }, 'batch size must be from 1 to 16 (got 0)'],
    [{ batchSize: 17 }, 'batch size must be from 1 to 16 (got 17)'],
    [{ seed: -1 }, 'seed must be from 0 to 4294967295 (got -1)'],
    [{ seed: 2 ** 32 }, 'seed must be from 0 to 4294967295 (got 4294967296)'],
    [{ optimizer: 'SGD' }, 'optimizer must be one of Prodigy, AdamW, AdamW8bit, Adafactor, Lion, DAdaptAdam (got "SGD")'],
    [{ flip: 'yes' }, 'flip must be true or false (got "yes")'],
    [{ learningRate: 0 }, 'learning rate must be above 0 (got 0)'],
    [{ steps: 5 }, 'unknown setting: steps'],
  ])('refuses %j', (overrides, message) => {
    const err = userErrorOf(() => resolveRecipe('character', 'sd15', overrides));
    expect(err.message).toContain(message);
  });

  it('names every bad override in one message', () => {
    const err = userErrorOf(() => resolveRecipe('character', 'sd15', { epochs: 0, dim: 999, batchSize: 99 }));
    expect(err.message).toContain('epochs');
    expect(err.message).toContain('dim');
    expect(err.message).toContain('batch size');
  });

  it('checks the learning rate against the optimizer family', () => {
    expect(userErrorOf(() => resolveRecipe('character', 'sd15', { learningRate: 5 })).message).toContain(
      'learning rate for Prodigy must be from 0.1 to 2 (got 5)',
    );
    expect(userErrorOf(() => resolveRecipe('character-adamw', 'sd15', { learningRate: 0.5 })).message).toContain(
      'learning rate for AdamW must be from 1e-6 to 0.01 (got 0.5)',
    );
    expect(userErrorOf(() => resolveRecipe('character', 'sd15', { optimizer: 'AdamW', learningRate: 1 })).message).toContain('learning rate for AdamW');
    for (const lr of [0.1, 2]) expect(resolveRecipe('character', 'sd15', { learningRate: lr }).optimizer.learningRate).toBe(lr);
    for (const lr of [1e-6, 1e-2]) expect(resolveRecipe('character-adamw', 'sd15', { learningRate: lr }).optimizer.learningRate).toBe(lr);
  });

  it("switching optimizer brings that optimizer's defaults and rescales the step targets", () => {
    const r = resolveRecipe('character', 'sd15', { optimizer: 'AdamW' });
    expect(r.optimizer).toEqual({ type: 'AdamW', learningRate: 1e-4, args: [] });
    expect(r.scheduler.type).toBe('cosine_with_restarts');
    expect(r.repeats).toEqual({ mode: 'balance', mainStepsPerEpoch: 600, subStepsPerEpoch: 200 });
    expect(r.maxMainConceptSteps).toBe(6000);
    expect(r.warnings.map((w) => w.code)).toEqual(['optimizer-steps']);

    const back = resolveRecipe('character-adamw', 'sd15', { optimizer: 'Prodigy', learningRate: 0.5 });
    expect(back.optimizer).toEqual({ type: 'Prodigy', learningRate: 0.5, args: PRODIGY_ARGS });
    expect(back.repeats).toEqual({ mode: 'balance', mainStepsPerEpoch: 300, subStepsPerEpoch: 100 });

    const same = resolveRecipe('character-adamw', 'sd15', { optimizer: 'AdamW8bit' });
    expect(same.repeats).toEqual({ mode: 'balance', mainStepsPerEpoch: 600, subStepsPerEpoch: 200 });
    expect(same.warnings).toEqual([]);
  });

  it('a new dim alone keeps the alpha/dim ratio; alpha above dim is allowed with a warning', () => {
    expect(resolveRecipe('character', 'sd15', { dim: 8 }).network).toMatchObject({ dim: 8, alpha: 4 });
    const hot = resolveRecipe('character', 'sd15', { dim: 8, alpha: 16 });
    expect(hot.network).toMatchObject({ dim: 8, alpha: 16 });
    expect(hot.warnings.map((w) => w.code)).toEqual(['alpha-above-dim']);
  });

  it('treats missing overrides as none', () => {
    expect(resolveRecipe('character', 'sd15', undefined)).toEqual(resolveRecipe('character', 'sd15', {}));
    expect(resolveRecipe('character', 'sd15').seed).toBeNull();
  });
});
