import { describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import type { PlanConceptInput, PlanImageInput } from '../../src/core/plan.ts';
import { planRun, repeatsForTarget, stepsPerEpochFor } from '../../src/core/plan.ts';
import { isCommonWord } from '../../src/core/trigger-words.ts';
import type { ResolvedRecipe } from '../../src/core/recipes.ts';
import { resolveRecipe } from '../../src/core/recipes.ts';

const TRIGGER = 'zkchar';

/** n images; captions vary (`trigger, pose0..2`) unless one is given. */
function images(prefix: string, n: number, size: [number, number] = [512, 512], caption?: string): PlanImageInput[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `${prefix}${i}`,
    width: size[0],
    height: size[1],
    captioned: true,
    caption: caption ?? `${TRIGGER}, pose${i % 3}`,
  }));
}

function concept(name: string, isMain: boolean, imgs: PlanImageInput[], trigger?: string): PlanConceptInput {
  return trigger === undefined ? { name, isMain, images: imgs } : { name, isMain, images: imgs, trigger };
}

function withRepeats(recipe: ResolvedRecipe, repeats: ResolvedRecipe['repeats'], extra: Partial<ResolvedRecipe> = {}): ResolvedRecipe {
  return { ...recipe, repeats, ...extra };
}

function codes(plan: ReturnType<typeof planRun>): string[] {
  return plan.warnings.map((w) => w.code);
}

describe('repeats balancing', () => {
  it("reproduces the guide's 3_outfit1 ×100 / 6_outfit2 ×50 / 30_outfit3 ×10 → 300 each", () => {
    expect(repeatsForTarget(100, 300)).toBe(3);
    expect(repeatsForTarget(50, 300)).toBe(6);
    expect(repeatsForTarget(10, 300)).toBe(30);
  });

  it('rounds down as the guide says and never goes below one repeat', () => {
    expect(repeatsForTarget(7, 300)).toBe(42);
    expect(repeatsForTarget(500, 300)).toBe(1);
  });

  it('plans the guide example into N_name folders with 300 image-steps each', () => {
    const recipe = withRepeats(resolveRecipe('character', 'sd15'), { mode: 'balance', mainStepsPerEpoch: 300, subStepsPerEpoch: 300 });
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe,
      concepts: [concept('outfit1', true, images('a', 100)), concept('outfit2', false, images('b', 50)), concept('outfit3', false, images('c', 10))],
    });
    expect(plan.concepts.map((c) => [c.folder, c.repeats, c.stepsPerEpoch])).toEqual([
      ['3_outfit1', 3, 300],
      ['6_outfit2', 6, 300],
      ['30_outfit3', 30, 300],
    ]);
    // all square: one bucket of 900 at batch 1
    expect(plan.buckets).toEqual([{ size: [512, 512], count: 900, batches: 900 }]);
    expect(plan.stepsPerEpoch).toBe(900);
    expect(plan.totalSteps).toBe(900 * 8);
    // the guide: "this results in the character being trained 900 steps" per epoch
    expect(plan.mainConceptSteps).toBe(900 * 8);
    expect(codes(plan)).toContain('too-many-steps');
  });

  it("trains a concept's own repeats (from an imported N_name folder) instead of balancing it", () => {
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe: resolveRecipe('character', 'sd15'),
      concepts: [concept('main', true, images('m', 10)), { ...concept('outfit', false, images('o', 8)), repeats: 7 }],
    });
    expect(plan.concepts.map((c) => [c.folder, c.stepsPerEpoch])).toEqual([
      ['30_main', 300],
      ['7_outfit', 56],
    ]);
  });

  it('gives the main concept ~300 and outfits ~100 image-steps with the character recipe', () => {
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe: resolveRecipe('character', 'sd15'),
      concepts: [concept('main', true, images('m', 10)), concept('outfit', false, images('o', 8), 'zkoutfit')],
    });
    expect(plan.concepts.map((c) => [c.folder, c.stepsPerEpoch])).toEqual([
      ['30_main', 300],
      ['12_outfit', 96],
    ]);
    expect(plan.concepts[1]).toMatchObject({ trigger: 'zkoutfit', triggers: [TRIGGER, 'zkoutfit'], keepTokens: 2, classTokens: `${TRIGGER}, zkoutfit` });
    expect(plan.concepts[0]).toMatchObject({ trigger: null, keepTokens: 1, classTokens: TRIGGER });
  });

  it('halves the steps on SDXL and uses one repeat for flexible-concept', () => {
    const sdxl = planRun({
      base: 'sdxl',
      trigger: TRIGGER,
      recipe: resolveRecipe('character', 'sdxl'),
      concepts: [concept('main', true, images('m', 10, [1024, 1024]))],
    });
    expect(sdxl.concepts[0]?.repeats).toBe(15);
    const flex = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe: resolveRecipe('flexible-concept', 'sd15'),
      concepts: [concept('pose', true, images('p', 40))],
    });
    expect(flex.concepts[0]?.repeats).toBe(1);
    expect(flex.stepsPerEpoch).toBe(40);
  });
});

describe('steps per epoch, exactly as sd-scripts', () => {
  it('sums ceil(count / batch) over buckets, then divides by gradient accumulation', () => {
    expect(stepsPerEpochFor([9, 3, 3], 2)).toBe(5 + 2 + 2);
    expect(stepsPerEpochFor([9, 3, 3], 2, 2)).toBe(5);
    expect(stepsPerEpochFor([900], 1)).toBe(900);
  });

  it('batch 2 with odd bucket counts: 9 + 3 + 3 image-steps make 9 batches, not ceil(15 / 2) = 8', () => {
    const recipe = withRepeats(resolveRecipe('character', 'sd15', { batchSize: 2 }), { mode: 'fixed', repeats: 3 });
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe,
      concepts: [
        concept('main', true, [
          ...images('sq', 3, [512, 512]),
          ...images('land', 1, [1200, 800]), // → 640×384
          ...images('port', 1, [800, 1200]), // → 384×640
        ]),
      ],
    });
    expect(plan.buckets).toEqual([
      { size: [384, 640], count: 3, batches: 2 },
      { size: [512, 512], count: 9, batches: 5 },
      { size: [640, 384], count: 3, batches: 2 },
    ]);
    expect(plan.stepsPerEpoch).toBe(9);
    expect(plan.totalSteps).toBe(72);
    expect(plan.concepts[0]?.stepsPerEpoch).toBe(15);
  });

  it('applies gradient accumulation after the batches', () => {
    const recipe = withRepeats(resolveRecipe('character', 'sd15', { batchSize: 2 }), { mode: 'fixed', repeats: 3 }, { gradientAccumulationSteps: 2 });
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe,
      concepts: [concept('main', true, [...images('sq', 3), ...images('land', 1, [1200, 800])])],
    });
    expect(plan.stepsPerEpoch).toBe(Math.ceil((5 + 2) / 2));
  });

  it('records each image bucket at the run resolution', () => {
    const plan = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe: resolveRecipe('character', 'sd15'),
      concepts: [concept('main', true, [...images('a', 5), { id: 'wide', width: 1920, height: 1080, captioned: true, caption: TRIGGER }])],
    });
    expect(plan.concepts[0]?.images.find((i) => i.id === 'wide')).toMatchObject({ bucket: [640, 384], resized: [683, 384], upscaled: false });
  });
});

describe('plan warnings', () => {
  const recipe = resolveRecipe('character', 'sd15');

  it('warns about too few images: under 6 for the character, under 8 per outfit', () => {
    const few = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe,
      concepts: [concept('main', true, images('m', 5)), concept('outfit', false, images('o', 7), 'zkoutfit')],
    });
    expect(few.warnings.filter((w) => w.code === 'too-few-images').map((w) => w.message)).toEqual([
      'Concept "main" has 5 images; the character recipe wants at least 6 for the main concept.',
      'Concept "outfit" has 7 images; the character recipe wants at least 8 per sub-concept (outfit).',
    ]);
    const enough = planRun({
      base: 'sd15',
      trigger: TRIGGER,
      recipe,
      concepts: [concept('main', true, images('m', 6)), concept('outfit', false, images('o', 8), 'zkoutfit')],
    });
    expect(codes(enough)).not.toContain('too-few-images');
  });

  it('warns when the main trigger gets more than 3000 steps with Prodigy, counting outfits that carry it', () => {
    const one = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 10))] });
    expect(one.mainConceptSteps).toBe(2400);
    expect(codes(one)).not.toContain('too-many-steps');
    const outfits = [1, 2, 3].map((i) => concept(`outfit${i}`, false, images(`o${i}`, 10, [512, 512], `${TRIGGER}, outfit${i}`), `outfit${i}`));
    const many = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 10)), ...outfits] });
    expect(many.mainConceptSteps).toBe(8 * (300 + 3 * 100));
    expect(codes(many)).toContain('too-many-steps');
    // outfit images without the character trigger don't train it
    const mannequins = [1, 2, 3].map((i) => concept(`outfit${i}`, false, images(`o${i}`, 10, [512, 512], `outfit${i}, mannequin`), `outfit${i}`));
    const apart = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 10)), ...mannequins] });
    expect(apart.mainConceptSteps).toBe(2400);
    expect(codes(apart)).not.toContain('too-many-steps');
  });

  it('lists images the trainer will upscale, and none when the recipe never upscales', () => {
    const small = [...images('ok', 6), { id: 'tiny', width: 300, height: 200, captioned: true, caption: TRIGGER }];
    const plan = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, small)] });
    const warning = plan.warnings.find((w) => w.code === 'upscaled-images');
    expect(warning?.imageIds).toEqual(['tiny']);
    expect(warning?.message).toContain('1 image is smaller than 512×512');
    const photo = planRun({ base: 'sd15', trigger: TRIGGER, recipe: resolveRecipe('photo', 'sd15'), concepts: [concept('main', true, small)] });
    expect(codes(photo)).not.toContain('upscaled-images');
    expect(photo.concepts[0]?.images.find((i) => i.id === 'tiny')?.bucket).toEqual([256, 192]);
  });

  it('flags tags in ≥ 90% of a concept’s captions that are not triggers or the class', () => {
    const caps = ['blue eyes', 'blue_eyes', 'Blue Eyes', 'blue eyes', 'blue eyes', 'blue eyes', 'blue eyes', 'blue eyes', 'blue eyes', 'sitting'];
    const imgs = caps.map((c, i) => ({
      id: `i${i}`,
      width: 512,
      height: 512,
      captioned: true,
      caption: `${TRIGGER}, 1girl, ${c}, smile${i % 2 ? ', hat' : ''}`,
    }));
    const plan = planRun({ base: 'sd15', trigger: TRIGGER, className: '1girl', recipe, concepts: [concept('main', true, imgs)] });
    const unpruned = plan.warnings.filter((w) => w.code === 'unpruned-tags');
    expect(unpruned).toHaveLength(1);
    expect(unpruned[0]?.message).toContain('"main": smile, blue eyes are in 90% or more');
    expect(unpruned[0]?.message).not.toContain('1girl');
    expect(unpruned[0]?.message).not.toContain(TRIGGER);
    expect(plan.concepts[0]?.topTags.slice(0, 3)).toEqual(['smile', 'blue eyes', 'hat']);
    // too few captions to judge
    const three = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, imgs.slice(0, 3))] });
    expect(codes(three)).not.toContain('unpruned-tags');
  });

  it('lists untagged images (no caption, or an empty one)', () => {
    const imgs: PlanImageInput[] = [
      ...images('t', 6),
      { id: 'raw', width: 512, height: 512, captioned: false },
      { id: 'blank', width: 512, height: 512, captioned: true, caption: '  ' },
    ];
    const plan = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, imgs)] });
    expect(plan.warnings.find((w) => w.code === 'untagged-images')?.imageIds).toEqual(['raw', 'blank']);
  });

  it('warns about triggers the base model already knows', () => {
    expect(isCommonWord('Girl')).toBe(true);
    expect(isCommonWord('long_hair')).toBe(true);
    expect(isCommonWord('zkchar')).toBe(false);
    const plan = planRun({
      base: 'sd15',
      trigger: 'girl',
      recipe,
      concepts: [concept('main', true, images('m', 6, [512, 512], 'girl')), concept('o', false, images('o', 8), 'red')],
    });
    expect(plan.warnings.filter((w) => w.code === 'common-trigger').map((w) => w.message)).toEqual([
      expect.stringContaining('"girl"'),
      expect.stringContaining('"red"'),
    ]);
    const fine = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 6))] });
    expect(fine.warnings).toEqual([]);
  });

  it('carries the recipe warnings into the plan', () => {
    const hot = resolveRecipe('character', 'sd15', { dim: 4, alpha: 8 });
    const plan = planRun({ base: 'sd15', trigger: TRIGGER, recipe: hot, concepts: [concept('main', true, images('m', 6))] });
    expect(codes(plan)).toContain('alpha-above-dim');
  });
});

describe('plan refusals', () => {
  const recipe = resolveRecipe('character', 'sd15');

  it('refuses an empty dataset with a UserError', () => {
    expect(() => planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [] })).toThrow(UserError);
    expect(() => planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, [])] })).toThrow(/no images/);
  });

  it('leaves out an empty concept with a warning', () => {
    const plan = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 6)), concept('later', false, [])] });
    expect(plan.concepts.map((c) => c.name)).toEqual(['main']);
    expect(codes(plan)).toEqual(['empty-concept']);
  });

  it.each([['../etc'], ['a/b'], [''], ['.hidden'], ['x'.repeat(65)]])('refuses the concept name %j', (name) => {
    expect(() => planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept(name, true, images('m', 6))] })).toThrow(UserError);
  });

  it('refuses duplicate concept names and bad triggers', () => {
    expect(() =>
      planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts: [concept('A', true, images('a', 6)), concept('a', false, images('b', 8))] }),
    ).toThrow(/Two concepts/);
    expect(() => planRun({ base: 'sd15', trigger: 'a, b', recipe, concepts: [concept('main', true, images('m', 6))] })).toThrow(/commas/);
    expect(() => planRun({ base: 'sd15', trigger: '  ', recipe, concepts: [concept('main', true, images('m', 6))] })).toThrow(UserError);
  });

  it('refuses an image too small to bucket without upscaling, naming it', () => {
    const photo = resolveRecipe('photo', 'sd15');
    expect(() =>
      planRun({
        base: 'sd15',
        trigger: TRIGGER,
        recipe: photo,
        concepts: [concept('main', true, [...images('m', 6), { id: 'sliver', width: 40, height: 300, captioned: true, caption: TRIGGER }])],
      }),
    ).toThrow(/sliver/);
  });

  it('refuses a recipe resolved for another base', () => {
    expect(() => planRun({ base: 'sdxl', trigger: TRIGGER, recipe, concepts: [concept('main', true, images('m', 6))] })).toThrow();
  });
});

describe('time estimate', () => {
  const recipe = resolveRecipe('character', 'sd15');
  const concepts = [concept('main', true, images('m', 10))];

  it('grows with the GPU’s seconds per step and covers at least the steps', () => {
    const slow = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts, secondsPerStep: 2 });
    const fast = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts, secondsPerStep: 0.25 });
    expect(slow.estimateSeconds).toBeGreaterThan(fast.estimateSeconds);
    expect(slow.estimateSeconds).toBeGreaterThanOrEqual(slow.totalSteps * 2);
    const fallback = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts });
    expect(fallback.estimateSeconds).toBeGreaterThan(fast.estimateSeconds);
    expect(fallback.estimateSeconds).toBeLessThan(slow.estimateSeconds);
  });

  it('scales with batch size and resolution', () => {
    const base = planRun({ base: 'sd15', trigger: TRIGGER, recipe, concepts, secondsPerStep: 1 });
    const big = planRun({ base: 'sd15', trigger: TRIGGER, recipe: resolveRecipe('character', 'sd15', { resolution: 1024 }), concepts, secondsPerStep: 1 });
    expect(big.totalSteps).toBe(base.totalSteps);
    expect(big.estimateSeconds).toBeGreaterThan(base.estimateSeconds * 3);
  });
});
