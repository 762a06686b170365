/**
 * The built-in training recipes (reference/recipes.md, from the seed guides) as validated data, the
 * per-run overrides a member may ask for, and `resolveRecipe`, which turns a recipe name, a base
 * family and overrides into the concrete settings a plan and the kohya files are made from.
 *
 * Steps per epoch are counted as the guides count them: images × repeats, before kohya divides by
 * the batch size.
 */
import { z } from 'zod';
import type { BaseFamily } from './buckets.ts';
import { UserError } from './errors.ts';

export const BASE_FAMILIES = ['sd15', 'sdxl'] as const satisfies readonly BaseFamily[];

export const RECIPE_NAMES = ['character', 'character-adamw', 'quick', 'photo', 'style', 'flexible-concept'] as const;
export type RecipeName = (typeof RECIPE_NAMES)[number];
export const DEFAULT_RECIPE: RecipeName = 'character';

/** Optimizers a run may use (sd-scripts `optimizer_type` names). */
export const OPTIMIZERS = ['Prodigy', 'AdamW', 'AdamW8bit', 'Adafactor', 'Lion', 'DAdaptAdam'] as const;
export type OptimizerType = (typeof OPTIMIZERS)[number];

/** Adaptive optimizers find their own step size: learning rate ≈ 1, and they need about half the steps. */
export type OptimizerFamily = 'adaptive' | 'fixed';

export const SCHEDULERS = [
  'constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts', 'polynomial',
] as const;
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

export function optimizerFamily(type: OptimizerType): OptimizerFamily {
  return OPTIMIZER_INFO[type].family;
}

/** The main-concept total (images × repeats × epochs) above which the guides say a character burns (002). */
export function maxMainConceptSteps(type: OptimizerType, base: BaseFamily): number {
  const adaptive = optimizerFamily(type) === 'adaptive';
  if (base === 'sdxl') return adaptive ? 2500 : 5000;
  return adaptive ? 3000 : 6000;
}

// ---------------------------------------------------------------------------------------------
// Recipe data

/** sd-scripts `key=value` optimizer/network argument: one `=`, a Python identifier as the key. */
const keyValueArg = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*=[^=\s]+$/, 'arguments are key=value');

const RepeatsPolicySchema = z.discriminatedUnion('mode', [
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

const resolutionSchema = z.number().int().min(256).max(2048).multipleOf(64);
const sampleSideSchema = z.number().int().min(64).max(2048).multipleOf(8);

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

const OptimizerSchema = z.strictObject({
  type: z.enum(OPTIMIZERS),
  learningRate: z.number().positive(),
  args: z.array(keyValueArg),
});

const SchedulerSchema = z.strictObject({
  type: z.enum(SCHEDULERS),
  /**
   * Steps (an integer), or a fraction of all steps below 1 (sd-scripts `lr_warmup_steps`: any
   * float is read as a fraction, so 1.5 would mean 150%).
   */
  warmup: z.number().min(0).refine((w) => Number.isInteger(w) || w < 1, 'warmup is whole steps or a fraction below 1'),
  /** `lr_scheduler_num_cycles` (cosine with restarts). */
  cycles: z.number().int().min(1).max(100),
});

const NoiseSchema = z.strictObject({
  noiseOffset: z.number().min(0).max(1).nullable(),
  ipNoiseGamma: z.number().min(0).max(1).nullable(),
  minSnrGamma: z.number().min(1).max(20).nullable(),
});

const SampleSchema = z.strictObject({
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
    sd15: { resolution: 512, repeats: sd15Repeats, mixedPrecision: 'fp16' as const, savePrecision: 'fp16' as const, clipSkip: 2, sampleWidth: samples.sd15[0], sampleHeight: samples.sd15[1] },
    sdxl: { resolution: 1024, repeats: sdxlRepeats, mixedPrecision: 'bf16' as const, savePrecision: 'fp16' as const, clipSkip: null, sampleWidth: samples.sdxl[0], sampleHeight: samples.sdxl[1] },
  };
}
const PORTRAIT_SAMPLES: { sd15: [number, number]; sdxl: [number, number] } = { sd15: [512, 768], sdxl: [832, 1216] };

const RECIPE_DATA: Recipe[] = [
  {
    ...COMMON,
    name: 'character',
    description:
      'Character with Prodigy: 8 epochs, ~300 steps per epoch for the character and ~100 per outfit; half on SDXL.',
    network: lora(32, 16),
    optimizer: { type: 'Prodigy', learningRate: 1, args: OPTIMIZER_INFO.Prodigy.defaults.args },
    scheduler: { type: 'cosine', warmup: 0, cycles: 1 },
    variants: variants(balance(300, 100), balance(150, 50), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'character-adamw',
    description: 'Character with AdamW 1e-4: 8 epochs, twice the Prodigy steps (~600 per epoch per character).',
    network: lora(32, 16),
    optimizer: { type: 'AdamW', learningRate: 1e-4, args: [] },
    scheduler: { type: 'cosine_with_restarts', warmup: 0, cycles: 1 },
    variants: variants(balance(600, 200), balance(300, 100), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'quick',
    description: 'Quick one-epoch LoRA: AdamW8bit 2.5e-4, cosine with 10% warmup, ~600 steps per concept.',
    network: lora(64, 16),
    optimizer: { type: 'AdamW8bit', learningRate: 2.5e-4, args: [] },
    scheduler: { type: 'cosine', warmup: 0.1, cycles: 1 },
    epochs: 1,
    variants: variants(balance(600, 600), balance(300, 300), PORTRAIT_SAMPLES),
  },
  {
    ...COMMON,
    name: 'photo',
    description: 'Photographs of a subject or place: Adafactor, 768 px, no upscaling of small images, captions kept in order.',
    network: lora(64, 56),
    optimizer: { type: 'Adafactor', learningRate: 1e-4, args: OPTIMIZER_INFO.Adafactor.defaults.args },
    scheduler: { type: 'constant', warmup: 0, cycles: 1 },
    shuffleCaption: false,
    bucketNoUpscale: true,
    minImages: { main: 6, sub: 6 },
    sample: { negativePrompt: PHOTO_NEGATIVE, sampler: 'euler_a', steps: 35, cfgScale: 7 },
    variants: {
      sd15: { resolution: 768, repeats: balance(400, 400), mixedPrecision: 'bf16', savePrecision: 'bf16', clipSkip: 1, sampleWidth: 768, sampleHeight: 640 },
      sdxl: { resolution: 1024, repeats: balance(200, 200), mixedPrecision: 'bf16', savePrecision: 'bf16', clipSkip: null, sampleWidth: 1152, sampleHeight: 960 },
    },
  },
  {
    ...COMMON,
    name: 'style',
    description: "An artist's style from a big, varied dataset: AdamW at a low learning rate, tag dropout after the trigger.",
    network: lora(32, 16),
    optimizer: { type: 'AdamW', learningRate: 5e-5, args: [] },
    scheduler: { type: 'cosine_with_restarts', warmup: 0, cycles: 1 },
    captionTagDropoutRate: 0.1,
    minImages: { main: 20, sub: 8 },
    variants: variants(balance(600, 200), balance(300, 100), { sd15: [512, 512], sdxl: [1024, 1024] }),
  },
  {
    ...COMMON,
    name: 'flexible-concept',
    description: 'A pose or concept kept style-neutral: dim 1, alpha 1, 8 epochs, one repeat over many unique images.',
    network: lora(1, 1),
    optimizer: { type: 'AdamW', learningRate: 1e-4, args: [] },
    scheduler: { type: 'cosine_with_restarts', warmup: 0, cycles: 1 },
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

export function isRecipeName(name: string): name is RecipeName {
  return (RECIPE_NAMES as readonly string[]).includes(name);
}

export function getRecipe(name: string): Recipe {
  const recipe = isRecipeName(name) ? RECIPES.get(name) : undefined;
  if (!recipe) throw new UserError(`There is no recipe called "${name}". Recipes: ${RECIPE_NAMES.join(', ')}.`);
  return recipe;
}

export function listRecipes(): { name: RecipeName; description: string }[] {
  return RECIPE_NAMES.map((name) => ({ name, description: getRecipe(name).description }));
}

// ---------------------------------------------------------------------------------------------
// Overrides

const whole = (label: string, min: number, max: number) =>
  z
    .number({ error: `${label} must be a number` })
    .int(`${label} must be a whole number`)
    .min(min, `${label} must be from ${min} to ${max}`)
    .max(max, `${label} must be from ${min} to ${max}`);

/** What a member may change for one run. Every field is optional; unknown fields are refused. */
export const RunOverridesSchema = z.strictObject({
  epochs: whole('epochs', 1, 100).optional(),
  dim: whole('dim', 1, 256).optional(),
  alpha: z
    .number({ error: 'alpha must be a number' })
    .min(0.1, 'alpha must be from 0.1 to 256')
    .max(256, 'alpha must be from 0.1 to 256')
    .optional(),
  /** Checked against the optimizer's range in `resolveRecipe`. */
  learningRate: z
    .number({ error: 'learning rate must be a number' })
    .positive('learning rate must be above 0')
    .finite('learning rate must be a number')
    .optional(),
  optimizer: z.enum(OPTIMIZERS, { error: `optimizer must be one of ${OPTIMIZERS.join(', ')}` }).optional(),
  resolution: whole('resolution', 256, 2048)
    .multipleOf(64, 'resolution must be a multiple of 64 from 256 to 2048')
    .optional(),
  batchSize: whole('batch size', 1, 16).optional(),
  seed: whole('seed', 0, 2 ** 32 - 1).optional(),
  flip: z.boolean({ error: 'flip must be true or false' }).optional(),
});
export type RunOverrides = z.infer<typeof RunOverridesSchema>;

// ---------------------------------------------------------------------------------------------
// Resolved recipe (what a plan and the kohya files are made from; JSON-safe, travels in jobs)

export const RECIPE_WARNING_CODES = ['alpha-above-dim', 'optimizer-steps', 'scale-weight-norms'] as const;
export const RecipeWarningSchema = z.strictObject({ code: z.enum(RECIPE_WARNING_CODES), message: z.string() });
export type RecipeWarning = z.infer<typeof RecipeWarningSchema>;

export const ResolvedRecipeSchema = z.strictObject({
  name: z.enum(RECIPE_NAMES),
  base: z.enum(BASE_FAMILIES),
  description: z.string(),
  network: z.strictObject({
    module: z.literal('networks.lora'),
    dim: z.number().int().min(1).max(256),
    alpha: z.number().min(0.1).max(256),
    /** `network_args` as sd-scripts takes them (`conv_dim=8`). */
    args: z.array(keyValueArg),
  }),
  optimizer: OptimizerSchema,
  scheduler: SchedulerSchema,
  epochs: z.number().int().min(1).max(100),
  batchSize: z.number().int().min(1).max(16),
  gradientAccumulationSteps: z.number().int().min(1).max(16),
  resolution: resolutionSchema,
  repeats: RepeatsPolicySchema,
  mixedPrecision: z.enum(['fp16', 'bf16']),
  savePrecision: z.enum(['fp16', 'bf16', 'float']),
  keepTokens: z.literal('triggers'),
  shuffleCaption: z.boolean(),
  flipAug: z.boolean(),
  clipSkip: z.number().int().min(1).max(12).nullable(),
  bucketNoUpscale: z.boolean(),
  noise: NoiseSchema,
  scaleWeightNorms: z.number().positive().nullable(),
  captionTagDropoutRate: z.number().min(0).max(0.5),
  minImages: z.strictObject({ main: z.number().int().min(1), sub: z.number().int().min(1) }),
  /** Main-concept total (images × repeats × epochs) above which the plan warns. */
  maxMainConceptSteps: z.number().int().positive(),
  sample: SampleSchema.extend({ width: sampleSideSchema, height: sampleSideSchema }),
  /** null: the run picks one when it is created. */
  seed: z.number().int().min(0).max(2 ** 32 - 1).nullable(),
  warnings: z.array(RecipeWarningSchema),
});
export type ResolvedRecipe = z.infer<typeof ResolvedRecipeSchema>;

function scaleRepeats(policy: RepeatsPolicy, factor: number): RepeatsPolicy {
  if (policy.mode === 'fixed' || factor === 1) return policy;
  return {
    mode: 'balance',
    mainStepsPerEpoch: Math.max(1, Math.floor(policy.mainStepsPerEpoch * factor)),
    subStepsPerEpoch: Math.max(1, Math.floor(policy.subStepsPerEpoch * factor)),
  };
}

function formatNumber(n: number): string {
  return Number.isInteger(n) || Math.abs(n) >= 0.01 ? String(n) : n.toExponential();
}

function describeInput(input: unknown, path: readonly PropertyKey[]): string {
  let v: unknown = input;
  for (const key of path) {
    if (typeof v !== 'object' || v === null) return '';
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  if (v === undefined) return '';
  return typeof v === 'number' ? ` (got ${formatNumber(v)})` : ` (got ${JSON.stringify(v)})`;
}

/**
 * The recipe `name` for `base` with `overrides` applied. Throws a UserError naming every bad
 * override. Rules beyond plain replacement:
 * - switching the optimizer brings that optimizer's own learning rate, arguments and scheduler
 *   (Prodigy's `d_coef` would crash AdamW), and moving between adaptive (Prodigy) and fixed-rate
 *   (AdamW) optimizers doubles or halves the steps-per-epoch targets, as the guides do;
 * - the learning rate is checked against the final optimizer's range;
 * - a new dim without a new alpha keeps the recipe's alpha/dim ratio;
 * - alpha above dim is allowed with a warning (it strengthens the LoRA beyond its usual scale).
 */
export function resolveRecipe(name: string, base: BaseFamily, overrides: unknown = {}): ResolvedRecipe {
  const recipe = getRecipe(name);
  const parsed = RunOverridesSchema.safeParse(overrides ?? {});
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      if (issue.code === 'unrecognized_keys') return `unknown setting${issue.keys.length > 1 ? 's' : ''}: ${issue.keys.join(', ')}`;
      return issue.message + describeInput(overrides, issue.path);
    });
    throw new UserError(`Some run settings are out of range: ${problems.join('; ')}.`);
  }
  const o = parsed.data;
  const variant = recipe.variants[base];
  const warnings: RecipeWarning[] = [];

  const optimizerType = o.optimizer ?? recipe.optimizer.type;
  const switched = optimizerType !== recipe.optimizer.type;
  const info = OPTIMIZER_INFO[optimizerType];
  const optimizer = switched
    ? { type: optimizerType, learningRate: info.defaults.learningRate, args: [...info.defaults.args] }
    : { ...recipe.optimizer, args: [...recipe.optimizer.args] };
  if (o.learningRate !== undefined) {
    if (o.learningRate < info.lr.min || o.learningRate > info.lr.max) {
      throw new UserError(
        `Some run settings are out of range: learning rate for ${optimizerType} must be from ${formatNumber(info.lr.min)} to ${formatNumber(info.lr.max)} (got ${formatNumber(o.learningRate)}).`,
      );
    }
    optimizer.learningRate = o.learningRate;
  }
  const scheduler = switched ? { type: info.defaults.scheduler, warmup: 0, cycles: 1 } : { ...recipe.scheduler };

  let repeats = variant.repeats;
  const fromFamily = optimizerFamily(recipe.optimizer.type);
  if (info.family !== fromFamily) {
    repeats = scaleRepeats(repeats, info.family === 'adaptive' ? 0.5 : 2);
    warnings.push({
      code: 'optimizer-steps',
      message: `${optimizerType} ${info.family === 'adaptive' ? 'needs about half' : 'needs about twice'} the steps of ${recipe.optimizer.type}; the step targets were ${info.family === 'adaptive' ? 'halved' : 'doubled'}.`,
    });
  }

  const dim = o.dim ?? recipe.network.dim;
  let alpha = o.alpha ?? recipe.network.alpha;
  if (o.dim !== undefined && o.alpha === undefined) {
    alpha = Math.max(0.1, (recipe.network.alpha / recipe.network.dim) * dim);
  }
  if (alpha > dim) {
    warnings.push({
      code: 'alpha-above-dim',
      message: `alpha ${formatNumber(alpha)} is above dim ${dim}: the LoRA will be stronger than usual and may burn; alpha is usually half of dim or less.`,
    });
  }

  let scaleWeightNorms = recipe.scaleWeightNorms;
  if (scaleWeightNorms !== null && optimizerType === 'Prodigy') {
    scaleWeightNorms = null;
    warnings.push({ code: 'scale-weight-norms', message: 'scale_weight_norms is off: it does not work with Prodigy.' });
  }

  const networkArgs: string[] = [];
  if (recipe.network.convDim !== null) {
    networkArgs.push(`conv_dim=${recipe.network.convDim}`, `conv_alpha=${recipe.network.convAlpha ?? 1}`);
  }

  const resolved: ResolvedRecipe = {
    name: recipe.name,
    base,
    description: recipe.description,
    network: { module: recipe.network.module, dim, alpha, args: networkArgs },
    optimizer,
    scheduler,
    epochs: o.epochs ?? recipe.epochs,
    batchSize: o.batchSize ?? recipe.batchSize,
    gradientAccumulationSteps: recipe.gradientAccumulationSteps,
    resolution: o.resolution ?? variant.resolution,
    repeats,
    mixedPrecision: variant.mixedPrecision,
    savePrecision: variant.savePrecision,
    keepTokens: recipe.keepTokens,
    shuffleCaption: recipe.shuffleCaption,
    flipAug: o.flip ?? recipe.flipAug,
    clipSkip: base === 'sdxl' ? null : variant.clipSkip,
    bucketNoUpscale: recipe.bucketNoUpscale,
    noise: { ...recipe.noise },
    scaleWeightNorms,
    captionTagDropoutRate: recipe.captionTagDropoutRate,
    minImages: { ...recipe.minImages },
    maxMainConceptSteps: maxMainConceptSteps(optimizerType, base),
    sample: { ...recipe.sample, width: variant.sampleWidth, height: variant.sampleHeight },
    seed: o.seed ?? null,
    warnings,
  };
  return ResolvedRecipeSchema.parse(resolved);
}
