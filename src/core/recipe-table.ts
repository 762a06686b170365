/**
 * The built-in training recipes (reference/recipes.md, from the seed guides) as data, with the
 * vocabulary they are written in (recipe names, optimizers, schedulers, samplers) and the schema
 * every recipe is checked against when the module loads. recipes.ts turns a recipe into a run's
 * settings.
 */
import { z } from 'zod';

export const RECIPE_NAMES = ['character', 'character-adamw', 'quick', 'photo', 'style', 'flexible-concept'] as const;
export type RecipeName = (typeof RECIPE_NAMES)[number];

/** Optimizers a run may use (sd-scripts `optimizer_type` names). */
export const OPTIMIZERS = ['Prodigy', 'AdamW', 'AdamW8bit', 'Adafactor', 'Lion', 'DAdaptAdam'] as const;
export type OptimizerType = (typeof OPTIMIZERS)[number];

/** Adaptive optimizers find their own step size: learning rate ≈ 1, and they need about half the steps. */
export type OptimizerFamily = 'adaptive' | 'fixed';

export const SCHEDULERS = ['constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts', 'polynomial'] as const;
export type SchedulerType = (typeof SCHEDULERS)[number];

export const SAMPLERS = ['ddim', 'euler', 'euler_a', 'dpmsolver++', 'heun', 'dpm_2', 'dpm_2_a', 'lms'] as const;

interface OptimizerInfo {
  family: OptimizerFamily;
  /** Learning-rate range accepted as an override. */
  lr: { min: number; max: number };
  /** What a run gets when it switches to this optimizer from another one. */
  defaults: { learningRate: number; args: string[]; scheduler: SchedulerType };
}

export const OPTIMIZER_INFO: Record<OptimizerType, OptimizerInfo> = {
  // 002: lr 1 with these args, annealed cosine.
  Prodigy: {
    family: 'adaptive',
    lr: { min: 0.1, max: 2 },
    defaults: {
      learningRate: 1,
      args: ['weight_decay=0.01', 'decouple=True', 'use_bias_correction=True', 'safeguard_warmup=True', 'd_coef=2'],
      scheduler: 'cosine',
    },
  },
  // 002: lr 1, constant scheduler, decouple=True.
  DAdaptAdam: {
    family: 'adaptive',
    lr: { min: 0.1, max: 2 },
    defaults: { learningRate: 1, args: ['decouple=True'], scheduler: 'constant' },
  },
  // 002: lr 1e-4 ("default"), cosine with restarts.
  AdamW: {
    family: 'fixed',
    lr: { min: 1e-6, max: 1e-2 },
    defaults: { learningRate: 1e-4, args: [], scheduler: 'cosine_with_restarts' },
  },
  AdamW8bit: {
    family: 'fixed',
    lr: { min: 1e-6, max: 1e-2 },
    defaults: { learningRate: 1e-4, args: [], scheduler: 'cosine' },
  },
  // 000: the args that make Adafactor use the given learning rate instead of its own schedule.
  Adafactor: {
    family: 'fixed',
    lr: { min: 1e-6, max: 1e-2 },
    defaults: {
      learningRate: 1e-4,
      args: ['scale_parameter=False', 'relative_step=False', 'warmup_init=False'],
      scheduler: 'constant',
    },
  },
  // Lion wants a learning rate several times lower than AdamW's.
  Lion: {
    family: 'fixed',
    lr: { min: 1e-7, max: 1e-3 },
    defaults: { learningRate: 3e-5, args: [], scheduler: 'cosine' },
  },
};

// ---------------------------------------------------------------------------------------------
// The shape of a recipe

/** sd-scripts `key=value` optimizer/network argument: one `=`, a Python identifier as the key. */
export const keyValueArg = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*=[^=\s]+$/, 'arguments are key=value');

export const RepeatsPolicySchema = z.discriminatedUnion('mode', [
  /** Repeats chosen per concept so images × repeats reaches the target (main concept / sub-concept). */
  z.strictObject({
    mode: z.literal('balance'),
    mainStepsPerEpoch: z.number().int().positive(),
    subStepsPerEpoch: z.number().int().positive(),
  }),
  /** The same repeats for every concept (many unique images, 1 repeat). */
  z.strictObject({ mode: z.literal('fixed'), repeats: z.number().int().min(1).max(1000) }),
]);
export type RepeatsPolicy = z.infer<typeof RepeatsPolicySchema>;

export const resolutionSchema = z.number().int().min(256).max(2048).multipleOf(64);
export const sampleSideSchema = z.number().int().min(64).max(2048).multipleOf(8);

const VariantSchema = z.strictObject({
  resolution: resolutionSchema,
  repeats: RepeatsPolicySchema,
  mixedPrecision: z.enum(['fp16', 'bf16']),
  savePrecision: z.enum(['fp16', 'bf16', 'float']),
  /** null: not passed (SDXL ignores clip_skip). */
  clipSkip: z.number().int().min(1).max(12).nullable(),
  sampleWidth: sampleSideSchema,
  sampleHeight: sampleSideSchema,
});

const NetworkSchema = z.strictObject({
  module: z.literal('networks.lora'),
  dim: z.number().int().min(1).max(256),
  alpha: z.number().min(0.1).max(256),
  /** Conv (LoCon-style) layers through `networks.lora`'s `conv_dim`/`conv_alpha`; null = off. */
  convDim: z.number().int().min(1).max(64).nullable(),
  convAlpha: z.number().min(0.1).max(64).nullable(),
});

export const OptimizerSchema = z.strictObject({
  type: z.enum(OPTIMIZERS),
  learningRate: z.number().positive(),
  args: z.array(keyValueArg),
});

export const SchedulerSchema = z.strictObject({
  type: z.enum(SCHEDULERS),
  /**
   * Steps (an integer), or a fraction of all steps below 1 (sd-scripts `lr_warmup_steps`: any
   * float is read as a fraction, so 1.5 would mean 150%).
   */
  warmup: z
    .number()
    .min(0)
    .refine((w) => Number.isInteger(w) || w < 1, 'warmup is whole steps or a fraction below 1'),
  /** `lr_scheduler_num_cycles` (cosine with restarts). */
  cycles: z.number().int().min(1).max(100),
});

export const NoiseSchema = z.strictObject({
  noiseOffset: z.number().min(0).max(1).nullable(),
  ipNoiseGamma: z.number().min(0).max(1).nullable(),
  minSnrGamma: z.number().min(1).max(20).nullable(),
});

export const SampleSchema = z.strictObject({
  negativePrompt: z.string().max(500),
  sampler: z.enum(SAMPLERS),
  steps: z.number().int().min(1).max(150),
  cfgScale: z.number().min(1).max(30),
});

export const RecipeSchema = z
  .strictObject({
    name: z.enum(RECIPE_NAMES),
    description: z.string().min(1).max(200),
    network: NetworkSchema,
    optimizer: OptimizerSchema,
    scheduler: SchedulerSchema,
    epochs: z.number().int().min(1).max(100),
    batchSize: z.number().int().min(1).max(16),
    gradientAccumulationSteps: z.number().int().min(1).max(16),
    /** keep_tokens = the number of leading triggers of a concept's captions. */
    keepTokens: z.literal('triggers'),
    shuffleCaption: z.boolean(),
    flipAug: z.boolean(),
    bucketNoUpscale: z.boolean(),
    noise: NoiseSchema,
    /** sd-scripts `scale_weight_norms`; never with Prodigy (002). */
    scaleWeightNorms: z.number().positive().nullable(),
    /** Drops tags after the kept ones (respects keep_tokens). */
    captionTagDropoutRate: z.number().min(0).max(0.5),
    /** Fewer images than this in a concept earns a warning. */
    minImages: z.strictObject({ main: z.number().int().min(1), sub: z.number().int().min(1) }),
    sample: SampleSchema,
    variants: z.strictObject({ sd15: VariantSchema, sdxl: VariantSchema }),
  })
  .superRefine((r, ctx) => {
    if (r.scheduler.type === 'constant' && r.scheduler.warmup > 0) {
      ctx.addIssue({ code: 'custom', message: 'constant scheduler with warmup makes sd-scripts fail', path: ['scheduler'] });
    }
    if (r.scaleWeightNorms !== null && r.optimizer.type === 'Prodigy') {
      ctx.addIssue({ code: 'custom', message: 'scale_weight_norms must not be used with Prodigy', path: ['scaleWeightNorms'] });
    }
  });
export type Recipe = z.infer<typeof RecipeSchema>;

// ---------------------------------------------------------------------------------------------
// The recipes

const ANIME_NEGATIVE =
  'lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, jpeg artifacts, signature, watermark, blurry';
const PHOTO_NEGATIVE = 'Anime, Cartoon, Drawing, Illustration, 3D render';

const noNoise = { noiseOffset: null, ipNoiseGamma: null, minSnrGamma: null };
const lora = (dim: number, alpha: number) => ({ module: 'networks.lora' as const, dim, alpha, convDim: null, convAlpha: null });
const balance = (mainStepsPerEpoch: number, subStepsPerEpoch: number) => ({
  mode: 'balance' as const,
  mainStepsPerEpoch,
  subStepsPerEpoch,
});

/** What most recipes share; each recipe below lists only what sets it apart. */
const COMMON = {
  epochs: 8,
  batchSize: 1,
  gradientAccumulationSteps: 1,
  keepTokens: 'triggers' as const,
  shuffleCaption: true,
  flipAug: false,
  bucketNoUpscale: false,
  noise: noNoise,
  scaleWeightNorms: null,
  captionTagDropoutRate: 0,
  minImages: { main: 6, sub: 8 },
  sample: { negativePrompt: ANIME_NEGATIVE, sampler: 'euler_a' as const, steps: 28, cfgScale: 7 },
};

/** SD 1.5 at 512 px (fp16, clip skip 2) and SDXL at 1024 px (bf16), with their sample sizes. */
function variants(sd15Repeats: RepeatsPolicy, sdxlRepeats: RepeatsPolicy, samples: { sd15: [number, number]; sdxl: [number, number] }) {
  return {
    sd15: {
      resolution: 512,
      repeats: sd15Repeats,
      mixedPrecision: 'fp16' as const,
      savePrecision: 'fp16' as const,
      clipSkip: 2,
      sampleWidth: samples.sd15[0],
      sampleHeight: samples.sd15[1],
    },
    sdxl: {
      resolution: 1024,
      repeats: sdxlRepeats,
      mixedPrecision: 'bf16' as const,
      savePrecision: 'fp16' as const,
      clipSkip: null,
      sampleWidth: samples.sdxl[0],
      sampleHeight: samples.sdxl[1],
    },
  };
}

/**
 * A recipe's optimizer and scheduler: the settings the optimizer brings to any run (OPTIMIZER_INFO,
 * from the same guides), with the recipe's own learning rate or warmup where it departs from them.
 */
function trainsWith(type: OptimizerType, own: { learningRate?: number; warmup?: number } = {}) {
  const { learningRate, args, scheduler } = OPTIMIZER_INFO[type].defaults;
  return {
    optimizer: { type, learningRate: own.learningRate ?? learningRate, args },
    scheduler: { type: scheduler, warmup: own.warmup ?? 0, cycles: 1 },
  };
}

const PORTRAIT_SAMPLES: { sd15: [number, number]; sdxl: [number, number] } = { sd15: [512, 768], sdxl: [832, 1216] };

const RECIPE_DATA: Recipe[] = [
  {
    ...COMMON,
    name: 'character',
    description: 'Character with Prodigy: 8 epochs, ~300 steps per epoch for the character and ~100 per outfit; half on SDXL.',
    network: lora(32, 16),
    ...trainsWith('Prodigy'),
    variants: variants(balance(300, 100), balance(150, 50), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'character-adamw',
    description: 'Character with AdamW 1e-4: 8 epochs, twice the Prodigy steps (~600 per epoch per character).',
    network: lora(32, 16),
    ...trainsWith('AdamW'),
    variants: variants(balance(600, 200), balance(300, 100), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'quick',
    description: 'Quick one-epoch LoRA: AdamW8bit 2.5e-4, cosine with 10% warmup, ~600 steps per concept.',
    network: lora(64, 16),
    ...trainsWith('AdamW8bit', { learningRate: 2.5e-4, warmup: 0.1 }),
    epochs: 1,
    variants: variants(balance(600, 600), balance(300, 300), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'photo',
    description: 'Photographs of a subject or place: Adafactor, 768 px, no upscaling of small images, captions kept in order.',
    network: lora(64, 56),
    ...trainsWith('Adafactor'),
    shuffleCaption: false,
    bucketNoUpscale: true,
    minImages: { main: 6, sub: 6 },
    sample: { negativePrompt: PHOTO_NEGATIVE, sampler: 'euler_a', steps: 35, cfgScale: 7 },
    variants: {
      sd15: { resolution: 768, repeats: balance(400, 400), mixedPrecision: 'bf16', savePrecision: 'bf16', clipSkip: 1, sampleWidth: 768, sampleHeight: 640 },
      sdxl: {
        resolution: 1024,
        repeats: balance(200, 200),
        mixedPrecision: 'bf16',
        savePrecision: 'bf16',
        clipSkip: null,
        sampleWidth: 1152,
        sampleHeight: 960,
      },
    },
  },
  {
    ...COMMON,
    name: 'style',
    description: "An artist's style from a big, varied dataset: AdamW at a low learning rate, tag dropout after the trigger.",
    network: lora(32, 16),
    ...trainsWith('AdamW', { learningRate: 5e-5 }),
    captionTagDropoutRate: 0.1,
    minImages: { main: 20, sub: 8 },
    variants: variants(balance(600, 200), balance(300, 100), { sd15: [512, 512], sdxl: [1024, 1024] }),
  },
  {
    ...COMMON,
    name: 'flexible-concept',
    description: 'A pose or concept kept style-neutral: dim 1, alpha 1, 8 epochs, one repeat over many unique images.',
    network: lora(1, 1),
    ...trainsWith('AdamW'),
    minImages: { main: 20, sub: 8 },
    variants: variants({ mode: 'fixed', repeats: 1 }, { mode: 'fixed', repeats: 1 }, PORTRAIT_SAMPLES),
  },
];

/** The built-in recipes, validated once when the module loads (a bad entry fails every test at import). */
export const RECIPES: ReadonlyMap<RecipeName, Recipe> = new Map(
  RECIPE_DATA.map((r) => {
    const parsed = RecipeSchema.parse(r);
    return [parsed.name, Object.freeze(parsed)] as const;
  }),
);
