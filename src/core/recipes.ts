/**
 * The per-run overrides a member may ask for, and `resolveRecipe`, which turns one of the built-in
 * recipes (recipe-table.ts), a base family and overrides into the concrete settings a plan and the
 * kohya files are made from.
 *
 * Steps per epoch are counted as the guides count them: images × repeats, before kohya divides by
 * the batch size.
 */
import { z } from 'zod';
import type { CaptionMode } from './caption-text.ts';
import { UserError } from './errors.ts';
import { BASE_FAMILIES, COMPANION_KINDS, FAMILY_INFO, familyLabel, isTransformerFamily, type BaseFamily, type CompanionKind } from './model-family.ts';
import {
  keyValueArg,
  NoiseSchema,
  OPTIMIZER_INFO,
  OPTIMIZERS,
  OptimizerSchema,
  RECIPE_NAMES,
  RECIPES,
  RepeatsPolicySchema,
  resolutionSchema,
  SampleSchema,
  SchedulerSchema,
  sampleSideSchema,
  type OptimizerFamily,
  type OptimizerType,
  type Recipe,
  type RecipeName,
  type RepeatsPolicy,
} from './recipe-table.ts';
import { LOHA_MAX_USEFUL_DIM, NETWORK_MODULES, NETWORK_TYPES, networkSettings } from './networks.ts';
import { FALLBACK_PRESET, presetForVram, VRAM_PRESET_INFO, VRAM_PRESETS, type VramPreset } from './vram-presets.ts';

export { BASE_FAMILIES };

/** What a dataset teaches (its `kind`). */
export type DatasetKindName = 'character' | 'style' | 'concept';

/**
 * The recipe a run gets when the member names none: the one made for what the dataset teaches.
 * A style dataset must never silently train with the character recipe (its many repeats and
 * shuffled captions would bake the artist's subjects into the trigger).
 */
export function defaultRecipeFor(kind: DatasetKindName): RecipeName {
  switch (kind) {
    case 'style':
      return 'style';
    case 'concept':
      return 'flexible-concept';
    default:
      return 'character';
  }
}

export function optimizerFamily(type: OptimizerType): OptimizerFamily {
  return OPTIMIZER_INFO[type].family;
}

/** The main-concept total (images × repeats × epochs) above which the guides say a character burns (002). */
export function maxMainConceptSteps(type: OptimizerType, base: BaseFamily): number {
  const adaptive = optimizerFamily(type) === 'adaptive';
  if (base !== 'sd15') return adaptive ? 2500 : 5000;
  return adaptive ? 3000 : 6000;
}

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
// FLUX.1 / Chroma training settings (docs/flux_train_network.md §4, §6.2; reference §2)

const FluxSettingsSchema = z.strictObject({
  modelType: z.enum(['flux', 'chroma']),
  guidanceScale: z.number().min(0).max(10),
  timestepSampling: z.enum(['sigma', 'uniform', 'sigmoid', 'shift', 'flux_shift']),
  modelPredictionType: z.enum(['raw', 'additive', 'sigma_scaled']),
  sigmoidScale: z.number().positive(),
  discreteFlowShift: z.number().positive(),
  applyT5AttnMask: z.boolean(),
});
export type FluxSettings = z.infer<typeof FluxSettingsSchema>;

/** FLUX.1 dev: guidance 1.0 "to disable guidance" for training, flux_shift sampling, raw prediction. */
const FLUX1_SETTINGS: FluxSettings = {
  modelType: 'flux',
  guidanceScale: 1.0,
  timestepSampling: 'flux_shift',
  modelPredictionType: 'raw',
  sigmoidScale: 1.0,
  discreteFlowShift: 3.0,
  applyT5AttnMask: false,
};

/** Chroma: guidance 0.0 (not distilled), sigmoid sampling, raw prediction, and the T5 attention mask it requires. */
const CHROMA_SETTINGS: FluxSettings = {
  modelType: 'chroma',
  guidanceScale: 0.0,
  timestepSampling: 'sigmoid',
  modelPredictionType: 'raw',
  sigmoidScale: 1.0,
  discreteFlowShift: 3.0,
  applyT5AttnMask: true,
};

/** The docs' Chroma sample prompt negative. */
const CHROMA_NEGATIVE = 'low quality, ugly, unfinished, out of focus, deformed, disfigure, blurry, smudged, restricted palette, flat colors';

/** Sample settings per transformer family: FLUX.1 embeds guidance (`--g`) and needs no CFG; Chroma needs a negative, `--g 0 --l 4`. */
const TRANSFORMER_SAMPLES: Record<'flux1' | 'chroma', { negativePrompt: string; steps: number; cfgScale: number; guidance: number }> = {
  flux1: { negativePrompt: '', steps: 20, cfgScale: 1, guidance: 3.5 },
  chroma: { negativePrompt: CHROMA_NEGATIVE, steps: 20, cfgScale: 4, guidance: 0 },
};

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
  alpha: z.number({ error: 'alpha must be a number' }).min(0.1, 'alpha must be from 0.1 to 256').max(256, 'alpha must be from 0.1 to 256').optional(),
  /** Checked against the optimizer's range in `resolveRecipe`. */
  learningRate: z
    .number({ error: 'learning rate must be a number' })
    .positive('learning rate must be above 0')
    .finite('learning rate must be a number')
    .optional(),
  optimizer: z.enum(OPTIMIZERS, { error: `optimizer must be one of ${OPTIMIZERS.join(', ')}` }).optional(),
  resolution: whole('resolution', 256, 2048).multipleOf(64, 'resolution must be a multiple of 64 from 256 to 2048').optional(),
  batchSize: whole('batch size', 1, 16).optional(),
  seed: whole('seed', 0, 2 ** 32 - 1).optional(),
  flip: z.boolean({ error: 'flip must be true or false' }).optional(),
  network: z.enum(NETWORK_TYPES, { error: `network must be one of ${NETWORK_TYPES.join(', ')}` }).optional(),
  /** FLUX.1 / Chroma memory preset; default: the largest the worker's GPU fits. */
  vram: z.enum(VRAM_PRESETS, { error: `memory preset must be one of ${VRAM_PRESETS.join(', ')}` }).optional(),
});
export type RunOverrides = z.infer<typeof RunOverridesSchema>;

// ---------------------------------------------------------------------------------------------
// Resolved recipe (what a plan and the kohya files are made from; JSON-safe, travels in jobs)

export const RECIPE_WARNING_CODES = [
  'alpha-above-dim',
  'optimizer-steps',
  'scale-weight-norms',
  'network-dim',
  'memory',
  'family-settings',
  'caption-mode',
] as const;
export const RecipeWarningSchema = z.strictObject({ code: z.enum(RECIPE_WARNING_CODES), message: z.string() });
export type RecipeWarning = z.infer<typeof RecipeWarningSchema>;

/** A plain file name in the worker's models folder. */
const modelFileName = z
  .string()
  .regex(/^[A-Za-z0-9][\w.+-]{0,199}$/, 'a model file is a plain file name')
  .refine((n) => /\.(safetensors|sft)$/i.test(n), 'a companion model is a .safetensors file');

const MemorySchema = z.strictObject({
  /** null: SD 1.5 / SDXL, which need no preset. */
  preset: z.enum(VRAM_PRESETS).nullable(),
  /** GPU memory the preset was chosen for (MiB); null when no worker said. */
  forMiB: z.number().int().positive().nullable(),
  fp8Base: z.boolean(),
  blocksToSwap: z.number().int().min(1).max(35).nullable(),
  gradientCheckpointing: z.boolean(),
  cacheTextEncoderOutputs: z.boolean(),
});

/**
 * A recipe resolved before memory settings existed (a run still queued across an upgrade) gets the
 * ones it was planned with: SDXL used gradient checkpointing, SD 1.5 did not.
 */
function withLegacyMemory(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || 'memory' in value) return value;
  const base = (value as { base?: unknown }).base;
  return {
    ...value,
    memory: { preset: null, forMiB: null, fp8Base: false, blocksToSwap: null, gradientCheckpointing: base !== 'sd15', cacheTextEncoderOutputs: false },
  };
}

const ResolvedRecipeObject = z
  .strictObject({
    name: z.enum(RECIPE_NAMES),
    base: z.enum(BASE_FAMILIES),
    description: z.string(),
    network: z.strictObject({
      // Defaults below let a run planned before these fields existed (still queued) parse.
      type: z.enum(NETWORK_TYPES).default('lora'),
      module: z.enum(NETWORK_MODULES),
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
    /** `guidance`: FLUX.1/Chroma's embedded guidance (`--g`); null for SD. */
    sample: SampleSchema.extend({ width: sampleSideSchema, height: sampleSideSchema, guidance: z.number().min(0).max(10).nullable().default(null) }),
    /** SDXL v-prediction: `--v_parameterization`, and `--zero_terminal_snr` when set. */
    vPrediction: z.strictObject({ zeroTerminalSnr: z.boolean() }).nullable().default(null),
    /** FLUX.1 / Chroma only. */
    flux: FluxSettingsSchema.nullable().default(null),
    memory: MemorySchema,
    /**
     * The text encoder and autoencoder files (in the worker's models folder) FLUX.1 and Chroma
     * train with; null until the plan picks them from what the workers advertise.
     */
    companions: z.strictObject({ clip_l: modelFileName.nullable(), t5xxl: modelFileName.nullable(), ae: modelFileName.nullable() }).nullable().default(null),
    /** null: the run picks one when it is created. */
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 32 - 1)
      .nullable(),
    warnings: z.array(RecipeWarningSchema),
  })
  .superRefine((r, ctx) => {
    const transformer = isTransformerFamily(r.base);
    if (transformer !== (r.flux !== null)) ctx.addIssue({ code: 'custom', message: 'FLUX settings belong to FLUX.1/Chroma runs only', path: ['flux'] });
    if ((r.base === 'sdxl-vpred') !== (r.vPrediction !== null))
      ctx.addIssue({ code: 'custom', message: 'v-prediction belongs to sdxl-vpred runs only', path: ['vPrediction'] });
    if (transformer && (r.shuffleCaption || r.captionTagDropoutRate > 0) && r.memory.cacheTextEncoderOutputs) {
      ctx.addIssue({ code: 'custom', message: 'cached text encoder outputs need fixed captions (no shuffling or tag dropout)', path: ['shuffleCaption'] });
    }
    if (r.flux?.modelType === 'chroma' && !r.flux.applyT5AttnMask) ctx.addIssue({ code: 'custom', message: 'Chroma needs apply_t5_attn_mask', path: ['flux'] });
  });
export const ResolvedRecipeSchema = z.preprocess(withLegacyMemory, ResolvedRecipeObject);
export type ResolvedRecipe = z.infer<typeof ResolvedRecipeSchema>;
export type CompanionFiles = NonNullable<ResolvedRecipe['companions']>;

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

/** What the plan knows about where the run will train. */
export interface ResolveContext {
  /** GPU memory (MiB) of the worker the run is planned for; null/undefined: unknown. */
  vramMiB?: number | null;
  /** Its name, for messages. */
  workerName?: string;
  /** What the captions are (caption-text.ts): sentences are never shuffled or cut at their commas. */
  captionMode?: CaptionMode;
}

function gib(mib: number): string {
  return `${Math.round(mib / 1024)} GB`;
}

/** Memory settings: SD families need none; FLUX.1/Chroma get the preset the worker's GPU fits (or the one asked for, if it fits). */
function memorySettings(base: BaseFamily, asked: VramPreset | undefined, context: ResolveContext, warnings: RecipeWarning[]): ResolvedRecipe['memory'] {
  if (!isTransformerFamily(base)) {
    return { preset: null, forMiB: null, fp8Base: false, blocksToSwap: null, gradientCheckpointing: base !== 'sd15', cacheTextEncoderOutputs: false };
  }
  const vram = context.vramMiB ?? null;
  const where = context.workerName ? `the worker \`${context.workerName}\`` : 'the training worker';
  let preset: VramPreset;
  if (vram === null) {
    preset = asked ?? FALLBACK_PRESET;
    warnings.push({ code: 'memory', message: `No worker said how much GPU memory it has: planned with the ${VRAM_PRESET_INFO[preset].label} memory preset.` });
  } else {
    const fits = presetForVram(vram);
    if (fits === null) {
      throw new UserError(`${familyLabel(base)} needs a GPU with at least 12 GB of memory; ${where} has ${gib(vram)}.`);
    }
    if (asked !== undefined && VRAM_PRESET_INFO[asked].minMiB > vram) {
      throw new UserError(
        `The ${VRAM_PRESET_INFO[asked].label} memory preset needs a GPU with ${VRAM_PRESET_INFO[asked].label} or more; ${where} has ${gib(vram)}. Leave \`vram\` out to use the ${VRAM_PRESET_INFO[fits].label} preset.`,
      );
    }
    preset = asked ?? fits;
  }
  const info = VRAM_PRESET_INFO[preset];
  return {
    preset,
    forMiB: vram,
    fp8Base: info.fp8Base,
    blocksToSwap: info.blocksToSwap,
    gradientCheckpointing: true,
    cacheTextEncoderOutputs: true,
  };
}

/**
 * The recipe `name` for `base` with `overrides` applied. Throws a UserError naming every bad
 * override. Rules beyond plain replacement:
 * - switching the optimizer brings that optimizer's own learning rate, arguments and scheduler
 *   (Prodigy's `d_coef` would crash AdamW), and moving between adaptive (Prodigy) and fixed-rate
 *   (AdamW) optimizers doubles or halves the steps-per-epoch targets, as the guides do;
 * - the learning rate is checked against the final optimizer's range;
 * - a new dim without a new alpha keeps the recipe's alpha/dim ratio;
 * - alpha above dim is allowed with a warning (it strengthens the LoRA beyond its usual scale);
 * - the network type must suit the family (LyCORIS types are SD 1.5/SDXL only);
 * - FLUX.1 and Chroma get the docs' settings, fixed captions (their text encoder outputs are
 *   cached) and a memory preset for the worker's GPU, which may set the batch size and 8-bit AdamW.
 */
export function resolveRecipe(name: string, base: BaseFamily, overrides: unknown = {}, context: ResolveContext = {}): ResolvedRecipe {
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
  const transformer = isTransformerFamily(base);
  // SDXL v-pred trains at SDXL's settings; FLUX.1 and Chroma start from them (1024 px, bf16).
  const variant = recipe.variants[base === 'sd15' ? 'sd15' : 'sdxl'];
  const warnings: RecipeWarning[] = [];
  if (!transformer && o.vram !== undefined) {
    throw new UserError(`Memory presets are for FLUX.1 and Chroma; ${familyLabel(base)} runs don't take one.`);
  }
  const memory = memorySettings(base, o.vram, context, warnings);
  const preset = memory.preset === null ? null : VRAM_PRESET_INFO[memory.preset];

  let optimizerType = o.optimizer ?? recipe.optimizer.type;
  if (preset?.eightBitAdam && optimizerType === 'AdamW') {
    optimizerType = 'AdamW8bit';
    warnings.push({ code: 'memory', message: 'AdamW became AdamW8bit: the 12 GB preset needs the 8-bit optimizer.' });
  } else if (preset?.eightBitAdam && optimizerType !== 'AdamW8bit' && optimizerType !== 'Adafactor') {
    warnings.push({
      code: 'memory',
      message: `${optimizerType} keeps more state than AdamW8bit and may run out of memory on a 12 GB GPU; the FLUX guide recommends AdamW8bit there.`,
    });
  }
  const switched = optimizerType !== recipe.optimizer.type;
  const info = OPTIMIZER_INFO[optimizerType];
  const sameRate = switched && optimizerFamily(optimizerType) === optimizerFamily(recipe.optimizer.type) && o.optimizer === undefined;
  const optimizer =
    switched && !sameRate
      ? { type: optimizerType, learningRate: info.defaults.learningRate, args: [...info.defaults.args] }
      : { ...recipe.optimizer, type: optimizerType, args: [...recipe.optimizer.args] };
  if (o.learningRate !== undefined) {
    if (o.learningRate < info.lr.min || o.learningRate > info.lr.max) {
      throw new UserError(
        `Some run settings are out of range: learning rate for ${optimizerType} must be from ${formatNumber(info.lr.min)} to ${formatNumber(info.lr.max)} (got ${formatNumber(o.learningRate)}).`,
      );
    }
    optimizer.learningRate = o.learningRate;
  }
  const scheduler = switched && !sameRate ? { type: info.defaults.scheduler, warmup: 0, cycles: 1 } : { ...recipe.scheduler };

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
  const networkType = o.network ?? 'lora';
  const network = networkSettings(networkType, base, dim, alpha, { dim: recipe.network.convDim, alpha: recipe.network.convAlpha });
  if (networkType === 'loha' && dim > LOHA_MAX_USEFUL_DIM) {
    warnings.push({ code: 'network-dim', message: `LoHa at dim ${dim}: above ${LOHA_MAX_USEFUL_DIM} it mostly grows the file; 8–32 is usual.` });
  }

  let scaleWeightNorms = recipe.scaleWeightNorms;
  if (scaleWeightNorms !== null && optimizerType === 'Prodigy') {
    scaleWeightNorms = null;
    warnings.push({ code: 'scale-weight-norms', message: 'scale_weight_norms is off: it does not work with Prodigy.' });
  }

  let batchSize = o.batchSize ?? recipe.batchSize;
  if (preset) {
    if (o.batchSize !== undefined && o.batchSize > preset.batchSize) {
      throw new UserError(
        `Batch size ${o.batchSize} needs more GPU memory than the ${preset.label} preset has; it trains with batch size ${preset.batchSize} at most.`,
      );
    }
    batchSize = o.batchSize ?? preset.batchSize;
  }

  const resolution = o.resolution ?? variant.resolution;
  if (transformer && memory.preset !== null && resolution > FAMILY_INFO[base].nativeResolution && VRAM_PRESET_INFO[memory.preset].minMiB < 22_000) {
    warnings.push({
      code: 'memory',
      message: `${resolution} px on the ${VRAM_PRESET_INFO[memory.preset].label} preset may run out of memory; 1024 px is the safe size there.`,
    });
  }

  // Cached text encoder outputs need the same caption every step (reference §2).
  let shuffleCaption = recipe.shuffleCaption;
  let captionTagDropoutRate = recipe.captionTagDropoutRate;
  if (transformer && (shuffleCaption || captionTagDropoutRate > 0)) {
    shuffleCaption = false;
    captionTagDropoutRate = 0;
    warnings.push({
      code: 'family-settings',
      message: `${familyLabel(base)} keeps captions as written (no shuffling or tag dropout): its text encoders run once, before training.`,
    });
  }

  // kohya shuffles and drops comma-separated pieces: that would cut sentences apart.
  if (context.captionMode !== undefined && context.captionMode !== 'tags' && (shuffleCaption || captionTagDropoutRate > 0)) {
    shuffleCaption = false;
    captionTagDropoutRate = 0;
    warnings.push({
      code: 'caption-mode',
      message: 'Sentence captions are kept as written (no shuffling or tag dropout), so they are never cut apart at their commas.',
    });
  }

  const transformerSample = base === 'flux1' || base === 'chroma' ? TRANSFORMER_SAMPLES[base] : null;
  const resolved: ResolvedRecipe = {
    name: recipe.name,
    base,
    description: recipe.description,
    network: { type: networkType, module: network.module, dim, alpha, args: network.args },
    optimizer,
    scheduler,
    epochs: o.epochs ?? recipe.epochs,
    batchSize,
    gradientAccumulationSteps: recipe.gradientAccumulationSteps,
    resolution,
    repeats,
    // FLUX.1 and Chroma train and save in bf16 (the docs' weights are bf16).
    mixedPrecision: transformer ? 'bf16' : variant.mixedPrecision,
    savePrecision: transformer ? 'bf16' : variant.savePrecision,
    keepTokens: recipe.keepTokens,
    shuffleCaption,
    flipAug: o.flip ?? recipe.flipAug,
    clipSkip: base === 'sd15' ? variant.clipSkip : null,
    bucketNoUpscale: recipe.bucketNoUpscale,
    // Noise offset and min-SNR weighting are SD epsilon-prediction tools; v-pred and flow models skip them.
    noise: base === 'sd15' || base === 'sdxl' ? { ...recipe.noise } : { noiseOffset: null, ipNoiseGamma: null, minSnrGamma: null },
    scaleWeightNorms,
    captionTagDropoutRate,
    minImages: { ...recipe.minImages },
    maxMainConceptSteps: maxMainConceptSteps(optimizerType, base),
    sample: transformerSample
      ? { ...recipe.sample, ...transformerSample, width: variant.sampleWidth, height: variant.sampleHeight }
      : { ...recipe.sample, width: variant.sampleWidth, height: variant.sampleHeight, guidance: null },
    vPrediction: base === 'sdxl-vpred' ? { zeroTerminalSnr: true } : null,
    flux: base === 'flux1' ? { ...FLUX1_SETTINGS } : base === 'chroma' ? { ...CHROMA_SETTINGS } : null,
    memory,
    companions: null,
    seed: o.seed ?? null,
    warnings,
  };
  return ResolvedRecipeSchema.parse(resolved);
}

/**
 * The text encoder and autoencoder files for a FLUX.1/Chroma run, picked from what a worker
 * advertises (`available`: file → kind). Throws a UserError naming what is missing.
 */
export function pickCompanions(
  base: BaseFamily,
  available: readonly { file: string; kind: CompanionKind; fp8?: boolean }[],
  where: string,
): CompanionFiles | null {
  const needs = FAMILY_INFO[base].companions;
  if (needs.length === 0) return null;
  const picked: CompanionFiles = { clip_l: null, t5xxl: null, ae: null };
  const missing: CompanionKind[] = [];
  for (const kind of COMPANION_KINDS) {
    if (!needs.includes(kind)) continue;
    // Prefer full-precision text encoders; fp8 T5-XXL files are for GPUs under 10 GB.
    const candidates = available.filter((c) => c.kind === kind).sort((a, b) => Number(a.fp8 ?? false) - Number(b.fp8 ?? false) || a.file.localeCompare(b.file));
    const file = candidates[0]?.file ?? null;
    if (file === null || !modelFileName.safeParse(file).success) missing.push(kind);
    else picked[kind] = file;
  }
  if (missing.length > 0) {
    const labels = missing.map((k) => `\`${k}\``);
    throw new UserError(
      `${familyLabel(base)} also needs ${labels.join(' and ')} (${missing.map((k) => COMPANION_LABELS_SHORT[k]).join(', ')}), and ${missing.length === 1 ? 'it is' : 'they are'} not in the models folder of ${where}.`,
    );
  }
  return picked;
}

const COMPANION_LABELS_SHORT: Record<CompanionKind, string> = {
  clip_l: 'the CLIP-L text encoder',
  t5xxl: 'the T5-XXL text encoder',
  ae: 'the FLUX autoencoder',
};

/**
 * Why a worker can't train `recipe` (null when it can): a FLUX.1/Chroma companion file it lacks,
 * or a memory preset larger than its GPU. For a worker to check a run before it starts; `hasFile`
 * tells whether a file is in its models folder.
 */
export function runFitProblem(recipe: ResolvedRecipe, gpuMiB: number | null, hasFile: (file: string) => boolean): string | null {
  for (const kind of FAMILY_INFO[recipe.base].companions) {
    const file = recipe.companions?.[kind] ?? null;
    if (file === null) return `the run names no file for ${COMPANION_LABELS_SHORT[kind]}`;
    if (!hasFile(file)) return `${COMPANION_LABELS_SHORT[kind]} ${file} is not in this worker's models folder`;
  }
  const preset = recipe.memory.preset;
  if (preset !== null && gpuMiB !== null && VRAM_PRESET_INFO[preset].minMiB > gpuMiB) {
    return `the ${VRAM_PRESET_INFO[preset].label} memory preset needs a larger GPU than this worker's ${Math.round(gpuMiB / 1024)} GB`;
  }
  return null;
}
