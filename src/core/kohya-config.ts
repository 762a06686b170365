/**
 * The files a training run hands to sd-scripts: the dataset TOML (one subset per concept folder),
 * the `--config_file` TOML (every key checked against the known argument list and its type), the
 * sample-prompts file, and the arguments after the script (reference/kohya-contract.md §1–3, §5).
 */
import { dirname, isAbsolute, join } from 'node:path';
import { stringify } from 'smol-toml';
import type { DatasetLevel, DatasetValueType, KohyaScript, KohyaValue, KohyaValueType } from './kohya-args.ts';
import { configValueProblem, DATASET_KEYS, datasetValueProblem, isKohyaArg, KOHYA_ARGS } from './kohya-args.ts';
import { FAMILY_INFO, isTransformerFamily } from './model-family.ts';
import type { Plan, PlannedConcept } from './plan.ts';
import type { ResolvedRecipe } from './recipes.ts';

export interface KohyaFilesOptions {
  runId: string;
  /** Base name of every output file; letters, digits, `.`, `_`, `-`. */
  outputName: string;
  /** Absolute. Checkpoints, states, `sample/` and `logs/` go here. */
  outputDir: string;
  /** Absolute. Holds one folder per concept, named as the plan says (`{repeats}_{name}`). The three files are written here too. */
  stagingDir: string;
  baseModelPath: string;
  /** Prompt texts (no `--` options); empty: made from the plan. At most 4 are used. */
  samplePrompts: string[];
  /** Continue after epoch `initialEpoch - 1` from its state folder. */
  resume?: { stateDir: string; initialEpoch: number };
  /** The run's seed: `recipe.seed` when the member chose one (anything else is refused), else one picked at run creation. */
  seed: number;
}

export interface KohyaFiles {
  script: KohyaScript;
  datasetToml: string;
  configToml: string;
  samplePromptsTxt: string;
  /** Where the caller must write the three files (the config refers to the other two by these paths). */
  paths: { datasetToml: string; configToml: string; samplePromptsTxt: string };
  /** The arguments after the script: `--config_file …` [`--resume … --initial_epoch …`]. */
  args: string[];
  /** The config as written, for logs and tests. */
  config: Record<string, KohyaValue>;
}

export const KOHYA_FILE_NAMES = {
  datasetToml: 'dataset.toml',
  configToml: 'config.toml',
  samplePromptsTxt: 'sample-prompts.txt',
} as const;

export const MAX_SAMPLE_PROMPTS = 4;

export function kohyaScriptFor(base: Plan['base']): KohyaScript {
  switch (base) {
    case 'sd15':
      return 'train_network.py';
    case 'sdxl':
    case 'sdxl-vpred':
      return 'sdxl_train_network.py';
    case 'flux1':
    case 'chroma':
      return 'flux_train_network.py';
  }
}

/** FLUX.1/Chroma's text encoders and autoencoder, beside the checkpoint in the worker's models folder. */
function companionConfig(recipe: ResolvedRecipe, baseModelPath: string): Record<string, string> {
  const needs = FAMILY_INFO[recipe.base].companions;
  if (needs.length === 0) return {};
  const files = recipe.companions;
  const out: Record<string, string> = {};
  const missing: string[] = [];
  for (const kind of needs) {
    const file = files?.[kind] ?? null;
    if (file === null) missing.push(kind);
    else out[kind] = join(dirname(baseModelPath), file);
  }
  if (missing.length > 0) throw new Error(`${recipe.base} needs ${missing.join(', ')}, and the run names none`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// TOML encoding with types checked

type TomlValue = string | number | bigint | boolean | TomlValue[] | { [key: string]: TomlValue };

function encodeTyped(type: KohyaValueType | DatasetValueType, value: unknown): TomlValue {
  switch (type) {
    case 'int':
      return BigInt(value as number);
    case 'number':
      return Number.isInteger(value) ? BigInt(value as number) : (value as number);
    case 'resolution':
      return Array.isArray(value) ? value.map((v) => BigInt(v as number)) : BigInt(value as number);
    case 'table':
      return value as { [key: string]: TomlValue };
    default:
      // strings, booleans, floats (written with a decimal point), arrays of strings or floats
      return (Array.isArray(value) ? [...(value as TomlValue[])] : value) as TomlValue;
  }
}

/** The `--config_file` TOML for `config`; throws listing every unknown or mistyped key. */
export function configToml(config: Readonly<Record<string, KohyaValue>>, script: KohyaScript): string {
  const problems: string[] = [];
  const out: Record<string, TomlValue> = {};
  for (const [key, value] of Object.entries(config)) {
    const problem = configValueProblem(key, value, script);
    if (problem) {
      problems.push(problem);
      continue;
    }
    if (isKohyaArg(key)) out[key] = encodeTyped(KOHYA_ARGS[key].type, value);
  }
  if (problems.length > 0) throw new Error(`refusing to write a kohya config: ${problems.join('; ')}`);
  return stringify(out, { numbersAsFloat: true });
}

export interface DatasetTomlInput {
  general: Record<string, unknown>;
  datasets: (Record<string, unknown> & { subsets: Record<string, unknown>[] })[];
}

function encodeLevel(level: DatasetLevel, record: Record<string, unknown>, where: string, problems: string[]): Record<string, TomlValue> {
  const out: Record<string, TomlValue> = {};
  const types: Record<string, DatasetValueType> = DATASET_KEYS[level];
  for (const [key, value] of Object.entries(record)) {
    if (level === 'dataset' && key === 'subsets') continue;
    const problem = datasetValueProblem(level, key, value);
    const type = types[key];
    if (problem || type === undefined) problems.push(`${where}: ${problem ?? key}`);
    else out[key] = encodeTyped(type, value);
  }
  return out;
}

/** The dataset TOML; throws listing every key the dataset schema would refuse. */
export function datasetToml(input: DatasetTomlInput): string {
  const problems: string[] = [];
  const general = encodeLevel('general', input.general, '[general]', problems);
  const datasets = input.datasets.map((dataset, i) => {
    const out = encodeLevel('dataset', dataset, `datasets[${i}]`, problems);
    if (dataset.subsets.length === 0) problems.push(`datasets[${i}] has no subsets`);
    out.subsets = dataset.subsets.map((subset, j) => {
      if (typeof subset.image_dir !== 'string') problems.push(`datasets[${i}].subsets[${j}] needs image_dir`);
      return encodeLevel('subset', subset, `datasets[${i}].subsets[${j}]`, problems);
    });
    return out;
  });
  if (problems.length > 0) throw new Error(`refusing to write a dataset TOML: ${problems.join('; ')}`);
  return stringify({ general, datasets }, { numbersAsFloat: true });
}

// ---------------------------------------------------------------------------------------------
// Sample prompts

/** One line of prompt text that can't smuggle options or comments into the prompts file. */
function cleanPromptText(text: string): string {
  let t = text.replace(/[\r\n\t]+/g, ' ');
  const option = t.indexOf(' --');
  if (option >= 0) t = t.slice(0, option);
  return t
    .replace(/\s+/g, ' ')
    .replace(/^[#\s]+/, '')
    .trim();
}

/** Prompt texts from a plan: per concept (main first) its triggers, the class and its top tags, then the trigger alone. */
export function defaultSamplePrompts(plan: Plan, tagsPerPrompt = 6): string[] {
  const ordered: PlannedConcept[] = [...plan.concepts].sort((a, b) => Number(b.isMain) - Number(a.isMain) || b.images.length - a.images.length);
  const lines: string[] = [];
  const add = (parts: string[]) => {
    const line = parts.filter((p) => p.length > 0).join(', ');
    if (line && !lines.includes(line)) lines.push(line);
  };
  for (const concept of ordered) {
    add([...concept.triggers, plan.className ?? '', ...concept.topTags.slice(0, tagsPerPrompt)]);
  }
  add([plan.trigger, plan.className ?? '']);
  return lines.slice(0, MAX_SAMPLE_PROMPTS);
}

/**
 * Lines of the sample-prompts file: each prompt with the recipe's negative prompt, size, steps,
 * CFG scale, FLUX's embedded guidance and a fixed seed (`--n --w --h --s --l [--g] --d`), so every
 * epoch samples the same noise.
 * Options in the given texts are dropped; at most 4 lines.
 */
export function buildSamplePrompts(prompts: readonly string[], recipe: ResolvedRecipe, seed: number): string[] {
  const negative = cleanPromptText(recipe.sample.negativePrompt);
  const lines: string[] = [];
  for (const prompt of prompts) {
    const text = cleanPromptText(prompt);
    if (!text) continue;
    const sampleSeed = (seed + lines.length) % 2 ** 32;
    const options = [
      ...(negative ? [`--n ${negative}`] : []),
      `--w ${recipe.sample.width}`,
      `--h ${recipe.sample.height}`,
      `--s ${recipe.sample.steps}`,
      `--l ${recipe.sample.cfgScale}`,
      ...(recipe.sample.guidance !== null ? [`--g ${recipe.sample.guidance}`] : []),
      `--d ${sampleSeed}`,
    ];
    lines.push(`${text} ${options.join(' ')}`);
    if (lines.length === MAX_SAMPLE_PROMPTS) break;
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------

const OUTPUT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

function checkOptions(plan: Plan, recipe: ResolvedRecipe, o: KohyaFilesOptions): void {
  const problems: string[] = [];
  if (recipe.name !== plan.recipe || recipe.base !== plan.base) problems.push('the recipe is not the one the plan was made with');
  if (!OUTPUT_NAME.test(o.outputName)) problems.push(`outputName ${JSON.stringify(o.outputName)} is not a safe file name`);
  // `name-000003` is how epoch checkpoints are told from the final file
  if (/-\d{6}$/.test(o.outputName)) problems.push('outputName must not end like an epoch number (-000003)');
  for (const [name, path] of [
    ['outputDir', o.outputDir],
    ['stagingDir', o.stagingDir],
  ] as const) {
    if (!isAbsolute(path)) problems.push(`${name} must be absolute`);
  }
  if (!o.baseModelPath) problems.push('baseModelPath is empty');
  if (!Number.isSafeInteger(o.seed) || o.seed < 0 || o.seed > 2 ** 32 - 1) problems.push('seed must be an integer from 0 to 2^32-1');
  if (recipe.seed !== null && recipe.seed !== o.seed) problems.push(`seed ${o.seed} is not the run's chosen seed ${recipe.seed}`);
  if (o.resume) {
    if (!isAbsolute(o.resume.stateDir)) problems.push('resume.stateDir must be absolute');
    const e = o.resume.initialEpoch;
    if (!Number.isSafeInteger(e) || e < 2 || e > plan.epochs) problems.push(`resume.initialEpoch must be from 2 to ${plan.epochs}`);
  }
  if (problems.length > 0) throw new Error(`buildKohyaFiles: ${problems.join('; ')}`);
}

/**
 * What each family adds to the config (reference/model-families.md §2, §6): v-prediction for
 * SDXL v-pred; for FLUX.1/Chroma the model type, text encoders and AE, the docs' timestep and
 * guidance settings, cached text encoder outputs, the memory preset, and transformer-only training.
 */
function familyConfig(recipe: ResolvedRecipe, baseModelPath: string): Record<string, KohyaValue> {
  const out: Record<string, KohyaValue> = {};
  if (recipe.vPrediction) {
    out.v_parameterization = true;
    if (recipe.vPrediction.zeroTerminalSnr) out.zero_terminal_snr = true;
  }
  const flux = recipe.flux;
  if (flux) {
    Object.assign(out, companionConfig(recipe, baseModelPath), {
      model_type: flux.modelType,
      guidance_scale: flux.guidanceScale,
      timestep_sampling: flux.timestepSampling,
      sigmoid_scale: flux.sigmoidScale,
      model_prediction_type: flux.modelPredictionType,
      discrete_flow_shift: flux.discreteFlowShift,
      ...(flux.applyT5AttnMask ? { apply_t5_attn_mask: true } : {}),
      network_train_unet_only: true,
    });
  }
  if (recipe.memory.cacheTextEncoderOutputs) out.cache_text_encoder_outputs = true;
  if (recipe.memory.fp8Base) out.fp8_base = true;
  if (recipe.memory.blocksToSwap !== null) out.blocks_to_swap = recipe.memory.blocksToSwap;
  return out;
}

/**
 * The dataset TOML of a plan: one subset per concept, its images in `<imageRoot>/<repeats>_<name>`
 * (the run's staging folder; or `img` in a dataset export, read from the folder it was unpacked in).
 */
export function buildDatasetToml(plan: Plan, recipe: ResolvedRecipe, imageRoot: string): string {
  const settings = plan.bucketSettings;
  const [resW, resH] = settings.resolution;
  const mainKeepTokens = plan.concepts.find((c) => c.isMain)?.keepTokens ?? 1;
  return datasetToml({
    general: {
      shuffle_caption: recipe.shuffleCaption,
      caption_extension: '.txt',
      keep_tokens: mainKeepTokens,
    },
    datasets: [
      {
        resolution: resW === resH ? resW : [resW, resH],
        batch_size: recipe.batchSize,
        enable_bucket: true,
        min_bucket_reso: settings.minBucketReso,
        max_bucket_reso: settings.maxBucketReso,
        bucket_reso_steps: settings.steps,
        bucket_no_upscale: settings.noUpscale,
        subsets: plan.concepts.map((c) => ({
          image_dir: join(imageRoot, c.folder),
          num_repeats: c.repeats,
          flip_aug: recipe.flipAug,
          class_tokens: c.classTokens,
          ...(c.keepTokens !== mainKeepTokens ? { keep_tokens: c.keepTokens } : {}),
          ...(recipe.captionTagDropoutRate > 0 ? { caption_tag_dropout_rate: recipe.captionTagDropoutRate } : {}),
        })),
      },
    ],
  });
}

export function buildKohyaFiles(plan: Plan, recipe: ResolvedRecipe, options: KohyaFilesOptions): KohyaFiles {
  checkOptions(plan, recipe, options);
  const script = kohyaScriptFor(plan.base);
  const paths = {
    datasetToml: join(options.stagingDir, KOHYA_FILE_NAMES.datasetToml),
    configToml: join(options.stagingDir, KOHYA_FILE_NAMES.configToml),
    samplePromptsTxt: join(options.stagingDir, KOHYA_FILE_NAMES.samplePromptsTxt),
  };
  const settings = plan.bucketSettings;
  const [resW, resH] = settings.resolution;
  const mainKeepTokens = plan.concepts.find((c) => c.isMain)?.keepTokens ?? 1;

  const dataset = buildDatasetToml(plan, recipe, options.stagingDir);

  const prompts = options.samplePrompts.some((p) => cleanPromptText(p).length > 0) ? options.samplePrompts : defaultSamplePrompts(plan);
  const promptLines = buildSamplePrompts(prompts, recipe, options.seed);

  const triggers = [plan.trigger, ...plan.concepts.flatMap((c) => (c.trigger ? [c.trigger] : []))];
  const transformer = isTransformerFamily(plan.base);
  const config: Record<string, KohyaValue> = {
    pretrained_model_name_or_path: options.baseModelPath,
    dataset_config: paths.datasetToml,
    output_dir: options.outputDir,
    output_name: options.outputName,
    save_model_as: 'safetensors',
    save_precision: recipe.savePrecision,
    save_every_n_epochs: 1,
    save_state: true,
    save_last_n_epochs_state: 2,
    max_train_epochs: recipe.epochs,
    train_batch_size: recipe.batchSize,
    gradient_accumulation_steps: recipe.gradientAccumulationSteps,
    seed: options.seed,
    mixed_precision: recipe.mixedPrecision,
    sdpa: true,
    cache_latents: true,
    max_data_loader_n_workers: 2,
    persistent_data_loader_workers: true,
    network_module: recipe.network.module,
    network_dim: recipe.network.dim,
    network_alpha: recipe.network.alpha,
    ...(recipe.network.args.length > 0 ? { network_args: recipe.network.args } : {}),
    optimizer_type: recipe.optimizer.type,
    learning_rate: recipe.optimizer.learningRate,
    ...(recipe.optimizer.args.length > 0 ? { optimizer_args: recipe.optimizer.args } : {}),
    lr_scheduler: recipe.scheduler.type,
    lr_warmup_steps: recipe.scheduler.warmup,
    lr_scheduler_num_cycles: recipe.scheduler.cycles,
    ...(recipe.clipSkip !== null && plan.base === 'sd15' ? { clip_skip: recipe.clipSkip } : {}),
    ...familyConfig(recipe, options.baseModelPath),
    ...(recipe.noise.noiseOffset !== null ? { noise_offset: recipe.noise.noiseOffset } : {}),
    ...(recipe.noise.ipNoiseGamma !== null ? { ip_noise_gamma: recipe.noise.ipNoiseGamma } : {}),
    ...(recipe.noise.minSnrGamma !== null ? { min_snr_gamma: recipe.noise.minSnrGamma } : {}),
    ...(recipe.scaleWeightNorms !== null ? { scale_weight_norms: recipe.scaleWeightNorms } : {}),
    resolution: `${resW},${resH}`,
    enable_bucket: true,
    caption_extension: '.txt',
    keep_tokens: mainKeepTokens,
    shuffle_caption: recipe.shuffleCaption,
    ...(promptLines.length > 0
      ? {
          sample_every_n_epochs: 1,
          sample_prompts: paths.samplePromptsTxt,
          // FLUX.1/Chroma sample with their own flow-matching Euler loop; sample_sampler is SD's.
          ...(transformer ? {} : { sample_sampler: recipe.sample.sampler }),
        }
      : {}),
    logging_dir: join(options.outputDir, 'logs'),
    log_prefix: `${options.outputName}-`,
    console_log_simple: true,
    training_comment: `LoRA Guild run ${options.runId}; triggers: ${triggers.join(', ')}`,
    metadata_title: options.outputName,
    // The dataset's trigger only: concepts' own triggers are added to it, not one phrase with it.
    metadata_trigger_phrase: plan.trigger,
    ...(plan.base === 'sdxl' || plan.base === 'sdxl-vpred' ? { no_half_vae: true } : {}),
    ...(recipe.memory.gradientCheckpointing ? { gradient_checkpointing: true } : {}),
  };

  const args = ['--config_file', paths.configToml];
  if (options.resume) args.push('--resume', options.resume.stateDir, '--initial_epoch', String(options.resume.initialEpoch));

  return {
    script,
    datasetToml: dataset,
    configToml: configToml(config, script),
    samplePromptsTxt: promptLines.length > 0 ? `${promptLines.join('\n')}\n` : '',
    paths,
    args,
    config,
  };
}
