/**
 * What kohya-ss/sd-scripts accepts, as data: every argument of `train_network.py` /
 * `sdxl_train_network.py` / `flux_train_network.py` (reference/model-families.md §2) with the TOML value type a `--config_file` must hold, and the keys of the
 * dataset TOML per level with the types its schema checks (reference/kohya-contract.md §1–3).
 *
 * Read from sd-scripts `main` @ 48d368fa (`setup_parser` of train_network.py and the `add_*_arguments`
 * helpers it calls; `library/config_util.py` `ConfigSanitizer`). Values in a `--config_file` bypass
 * argparse, so the type here is what the Python code expects to find, not what argparse would
 * convert: `resolution` is a string ("512,512"), list arguments are arrays of strings, `choices` are
 * not checked by sd-scripts (a bad `sample_sampler` silently becomes DDIM), so we check them.
 */

/**
 * `int`: a TOML integer. `float`: a TOML float. `number`: either (sd-scripts' `int_or_float`, e.g.
 * `lr_warmup_steps`: an integer is steps, and any float is a fraction of all steps — so integral
 * values must be written as integers). `string[]`/`float[]`: arrays.
 */
export type KohyaValueType = 'string' | 'int' | 'float' | 'number' | 'bool' | 'string[]' | 'float[]';

export interface KohyaArgSpec {
  readonly type: KohyaValueType;
  /** Values the script's argparse `choices` allow (not enforced by sd-scripts for TOML values). */
  readonly choices?: readonly (string | number)[];
  /** Only these scripts know it, not `train_network.py` (SDXL's and FLUX's own arguments). */
  readonly scripts?: readonly ('sdxl' | 'flux')[];
  /**
   * A Stable Diffusion argument `flux_train_network.py` accepts but does not use
   * (docs/flux_train_network.md "Incompatible/Deprecated Arguments"): never written for FLUX.
   */
  readonly sdOnly?: true;
  /** Meaningful on the command line only; never inside a config file. */
  readonly cliOnly?: true;
}

export const KOHYA_ARGS = {
  // logging (library/utils.py)
  console_log_level: { type: 'string', choices: ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'] },
  console_log_file: { type: 'string' },
  console_log_simple: { type: 'bool' },
  // models
  v2: { type: 'bool', sdOnly: true },
  v_parameterization: { type: 'bool', sdOnly: true },
  pretrained_model_name_or_path: { type: 'string' },
  tokenizer_cache_dir: { type: 'string' },
  // optimizer
  optimizer_type: { type: 'string' },
  use_8bit_adam: { type: 'bool' },
  use_lion_optimizer: { type: 'bool' },
  learning_rate: { type: 'float' },
  max_grad_norm: { type: 'float' },
  optimizer_args: { type: 'string[]' },
  lr_scheduler_type: { type: 'string' },
  lr_scheduler_args: { type: 'string[]' },
  lr_scheduler: {
    type: 'string',
    choices: [
      'linear',
      'cosine',
      'cosine_with_restarts',
      'polynomial',
      'constant',
      'constant_with_warmup',
      'inverse_sqrt',
      'cosine_with_min_lr',
      'warmup_stable_decay',
      'piecewise_constant',
      'adafactor',
    ],
  },
  lr_warmup_steps: { type: 'number' },
  lr_decay_steps: { type: 'number' },
  lr_scheduler_num_cycles: { type: 'int' },
  lr_scheduler_power: { type: 'float' },
  fused_backward_pass: { type: 'bool' },
  lr_scheduler_timescale: { type: 'int' },
  lr_scheduler_min_lr_ratio: { type: 'float' },
  // training
  output_dir: { type: 'string' },
  output_name: { type: 'string' },
  huggingface_repo_id: { type: 'string' },
  huggingface_repo_type: { type: 'string' },
  huggingface_path_in_repo: { type: 'string' },
  huggingface_token: { type: 'string' },
  huggingface_repo_visibility: { type: 'string' },
  save_state_to_huggingface: { type: 'bool' },
  resume_from_huggingface: { type: 'bool' },
  async_upload: { type: 'bool' },
  save_precision: { type: 'string', choices: ['float', 'fp16', 'bf16'] },
  save_every_n_epochs: { type: 'int' },
  save_every_n_steps: { type: 'int' },
  save_n_epoch_ratio: { type: 'int' },
  save_last_n_epochs: { type: 'int' },
  save_last_n_epochs_state: { type: 'int' },
  save_last_n_steps: { type: 'int' },
  save_last_n_steps_state: { type: 'int' },
  save_state: { type: 'bool' },
  save_state_on_train_end: { type: 'bool' },
  resume: { type: 'string' },
  train_batch_size: { type: 'int' },
  max_token_length: { type: 'int', choices: [150, 225], sdOnly: true },
  mem_eff_attn: { type: 'bool' },
  torch_compile: { type: 'bool' },
  dynamo_backend: {
    type: 'string',
    choices: ['eager', 'aot_eager', 'inductor', 'aot_ts_nvfuser', 'nvprims_nvfuser', 'cudagraphs', 'ofi', 'fx2trt', 'onnxrt', 'tensort', 'ipex', 'tvm'],
  },
  xformers: { type: 'bool' },
  sdpa: { type: 'bool' },
  vae: { type: 'string' },
  max_train_steps: { type: 'int' },
  max_train_epochs: { type: 'int' },
  max_data_loader_n_workers: { type: 'int' },
  persistent_data_loader_workers: { type: 'bool' },
  seed: { type: 'int' },
  gradient_checkpointing: { type: 'bool' },
  gradient_accumulation_steps: { type: 'int' },
  mixed_precision: { type: 'string', choices: ['no', 'fp16', 'bf16'] },
  full_fp16: { type: 'bool' },
  full_bf16: { type: 'bool' },
  fp8_base: { type: 'bool' },
  ddp_timeout: { type: 'int' },
  ddp_gradient_as_bucket_view: { type: 'bool' },
  ddp_static_graph: { type: 'bool' },
  clip_skip: { type: 'int', sdOnly: true },
  logging_dir: { type: 'string' },
  log_with: { type: 'string', choices: ['tensorboard', 'wandb', 'all'] },
  log_prefix: { type: 'string' },
  log_tracker_name: { type: 'string' },
  wandb_run_name: { type: 'string' },
  log_tracker_config: { type: 'string' },
  wandb_api_key: { type: 'string' },
  log_config: { type: 'bool' },
  noise_offset: { type: 'float' },
  noise_offset_random_strength: { type: 'bool' },
  multires_noise_iterations: { type: 'int' },
  ip_noise_gamma: { type: 'float' },
  ip_noise_gamma_random_strength: { type: 'bool' },
  multires_noise_discount: { type: 'float' },
  adaptive_noise_scale: { type: 'float' },
  zero_terminal_snr: { type: 'bool' },
  min_timestep: { type: 'int' },
  max_timestep: { type: 'int' },
  loss_type: { type: 'string', choices: ['l1', 'l2', 'huber', 'smooth_l1'] },
  huber_schedule: { type: 'string', choices: ['constant', 'exponential', 'snr'] },
  huber_c: { type: 'float' },
  huber_scale: { type: 'float' },
  lowram: { type: 'bool' },
  highvram: { type: 'bool' },
  sample_every_n_steps: { type: 'int' },
  sample_at_first: { type: 'bool' },
  sample_every_n_epochs: { type: 'int' },
  sample_prompts: { type: 'string' },
  sample_sampler: {
    type: 'string',
    choices: [
      'ddim',
      'pndm',
      'lms',
      'euler',
      'euler_a',
      'heun',
      'dpm_2',
      'dpm_2_a',
      'dpmsolver',
      'dpmsolver++',
      'dpmsingle',
      'k_lms',
      'k_euler',
      'k_euler_a',
      'k_dpm_2',
      'k_dpm_2_a',
    ],
  },
  config_file: { type: 'string', cliOnly: true },
  output_config: { type: 'bool', cliOnly: true },
  prior_loss_weight: { type: 'float' },
  // masked loss
  conditioning_data_dir: { type: 'string' },
  masked_loss: { type: 'bool' },
  // dataset fallbacks (the dataset TOML wins over these)
  train_data_dir: { type: 'string' },
  cache_info: { type: 'bool' },
  shuffle_caption: { type: 'bool' },
  caption_separator: { type: 'string' },
  caption_extension: { type: 'string' },
  caption_extention: { type: 'string' },
  keep_tokens: { type: 'int' },
  keep_tokens_separator: { type: 'string' },
  secondary_separator: { type: 'string' },
  enable_wildcard: { type: 'bool' },
  caption_prefix: { type: 'string' },
  caption_suffix: { type: 'string' },
  color_aug: { type: 'bool' },
  flip_aug: { type: 'bool' },
  face_crop_aug_range: { type: 'string' },
  random_crop: { type: 'bool' },
  debug_dataset: { type: 'bool' },
  resolution: { type: 'string' },
  cache_latents: { type: 'bool' },
  vae_batch_size: { type: 'int' },
  cache_latents_to_disk: { type: 'bool' },
  skip_cache_check: { type: 'bool' },
  enable_bucket: { type: 'bool' },
  min_bucket_reso: { type: 'int' },
  max_bucket_reso: { type: 'int' },
  bucket_reso_steps: { type: 'int' },
  bucket_no_upscale: { type: 'bool' },
  resize_interpolation: { type: 'string', choices: ['lanczos', 'nearest', 'bilinear', 'linear', 'bicubic', 'cubic', 'area'] },
  token_warmup_min: { type: 'int' },
  token_warmup_step: { type: 'float' },
  alpha_mask: { type: 'bool' },
  dataset_class: { type: 'string' },
  caption_dropout_rate: { type: 'float' },
  caption_dropout_every_n_epochs: { type: 'int' },
  caption_tag_dropout_rate: { type: 'float' },
  reg_data_dir: { type: 'string' },
  in_json: { type: 'string' },
  dataset_repeats: { type: 'int' },
  // model spec metadata (library/sai_model_spec.py)
  metadata_title: { type: 'string' },
  metadata_author: { type: 'string' },
  metadata_description: { type: 'string' },
  metadata_license: { type: 'string' },
  metadata_tags: { type: 'string' },
  metadata_usage_hint: { type: 'string' },
  metadata_thumbnail: { type: 'string' },
  metadata_merged_from: { type: 'string' },
  metadata_trigger_phrase: { type: 'string' },
  metadata_preprocessor: { type: 'string' },
  metadata_is_negative_embedding: { type: 'string' },
  // deepspeed
  deepspeed: { type: 'bool' },
  zero_stage: { type: 'int', choices: [0, 1, 2, 3] },
  offload_optimizer_device: { type: 'string', choices: ['cpu', 'nvme'] },
  offload_optimizer_nvme_path: { type: 'string' },
  offload_param_device: { type: 'string', choices: ['cpu', 'nvme'] },
  offload_param_nvme_path: { type: 'string' },
  zero3_init_flag: { type: 'bool' },
  zero3_save_16bit_model: { type: 'bool' },
  fp16_master_weights_and_gradients: { type: 'bool' },
  // dataset config file
  dataset_config: { type: 'string' },
  // custom train functions
  min_snr_gamma: { type: 'float' },
  scale_v_pred_loss_like_noise_pred: { type: 'bool' },
  v_pred_like_loss: { type: 'float' },
  debiased_estimation_loss: { type: 'bool' },
  weighted_captions: { type: 'bool' },
  // train_network.py's own
  cpu_offload_checkpointing: { type: 'bool' },
  no_metadata: { type: 'bool' },
  save_model_as: { type: 'string', choices: ['ckpt', 'pt', 'safetensors'] },
  unet_lr: { type: 'float' },
  text_encoder_lr: { type: 'float[]' },
  fp8_base_unet: { type: 'bool' },
  network_weights: { type: 'string' },
  network_module: { type: 'string' },
  network_dim: { type: 'int' },
  network_alpha: { type: 'float' },
  network_dropout: { type: 'float' },
  network_args: { type: 'string[]' },
  network_train_unet_only: { type: 'bool' },
  network_train_text_encoder_only: { type: 'bool' },
  training_comment: { type: 'string' },
  dim_from_weights: { type: 'bool' },
  scale_weight_norms: { type: 'float' },
  base_weights: { type: 'string[]' },
  base_weights_multiplier: { type: 'float[]' },
  no_half_vae: { type: 'bool' },
  skip_until_initial_step: { type: 'bool' },
  initial_epoch: { type: 'int' },
  initial_step: { type: 'int' },
  validation_seed: { type: 'int' },
  validation_split: { type: 'float' },
  validate_every_n_steps: { type: 'int' },
  validate_every_n_epochs: { type: 'int' },
  max_validation_steps: { type: 'int' },
  // sdxl_train_network.py adds (library/sdxl_train_util.py); flux_train_network.py has them too
  // (train_util.add_dit_training_arguments)
  disable_mmap_load_safetensors: { type: 'bool', scripts: ['sdxl', 'flux'] },
  cache_text_encoder_outputs: { type: 'bool', scripts: ['sdxl', 'flux'] },
  cache_text_encoder_outputs_to_disk: { type: 'bool', scripts: ['sdxl', 'flux'] },
  // flux_train_network.py: train_util.add_dit_training_arguments
  text_encoder_batch_size: { type: 'int', scripts: ['flux'] },
  weighting_scheme: { type: 'string', choices: ['sigma_sqrt', 'logit_normal', 'mode', 'cosmap', 'none', 'uniform'], scripts: ['flux'] },
  logit_mean: { type: 'float', scripts: ['flux'] },
  logit_std: { type: 'float', scripts: ['flux'] },
  mode_scale: { type: 'float', scripts: ['flux'] },
  blocks_to_swap: { type: 'int', scripts: ['flux'] },
  // flux_train_utils.add_flux_train_arguments
  clip_l: { type: 'string', scripts: ['flux'] },
  t5xxl: { type: 'string', scripts: ['flux'] },
  ae: { type: 'string', scripts: ['flux'] },
  controlnet_model_name_or_path: { type: 'string', scripts: ['flux'] },
  t5xxl_max_token_length: { type: 'int', scripts: ['flux'] },
  apply_t5_attn_mask: { type: 'bool', scripts: ['flux'] },
  guidance_scale: { type: 'float', scripts: ['flux'] },
  timestep_sampling: { type: 'string', choices: ['sigma', 'uniform', 'sigmoid', 'shift', 'flux_shift'], scripts: ['flux'] },
  sigmoid_scale: { type: 'float', scripts: ['flux'] },
  model_prediction_type: { type: 'string', choices: ['raw', 'additive', 'sigma_scaled'], scripts: ['flux'] },
  discrete_flow_shift: { type: 'float', scripts: ['flux'] },
  model_type: { type: 'string', choices: ['flux', 'chroma'], scripts: ['flux'] },
  // flux_train_network.py's own (deprecated: use blocks_to_swap)
  split_mode: { type: 'bool', scripts: ['flux'] },
} as const satisfies Record<string, KohyaArgSpec>;

export type KohyaArgName = keyof typeof KOHYA_ARGS;
export type KohyaScript = 'train_network.py' | 'sdxl_train_network.py' | 'flux_train_network.py';

const SCRIPT_KEY: Record<KohyaScript, 'sd' | 'sdxl' | 'flux'> = {
  'train_network.py': 'sd',
  'sdxl_train_network.py': 'sdxl',
  'flux_train_network.py': 'flux',
};

/** Whether `script`'s argparse has `name` (and, for FLUX, whether it is more than an unused SD leftover). */
export function scriptKnows(name: KohyaArgName, script: KohyaScript): boolean {
  const spec: KohyaArgSpec = KOHYA_ARGS[name];
  const key = SCRIPT_KEY[script];
  if (spec.scripts && (key === 'sd' || !spec.scripts.includes(key))) return false;
  return true;
}

export function isKohyaArg(name: string): name is KohyaArgName {
  return Object.hasOwn(KOHYA_ARGS, name);
}

/** A value for a config-file key, before it is written as TOML. */
export type KohyaValue = string | number | boolean | readonly string[] | readonly number[];

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'string' ? `the string ${JSON.stringify(v)}` : `${typeof v} ${String(v)}`;
}

/**
 * Why `value` can't be the config-file value of `name` for `script`, or null when it can. Integral
 * numbers pass as floats (they are written as `16.0`).
 */
export function configValueProblem(name: string, value: unknown, script: KohyaScript = 'train_network.py'): string | null {
  if (!isKohyaArg(name)) return `${name} is not a ${script} argument`;
  const spec: KohyaArgSpec = KOHYA_ARGS[name];
  if (spec.cliOnly) return `${name} belongs on the command line, not in a config file`;
  if (!scriptKnows(name, script)) return `${name} is not a ${script} argument`;
  if (spec.sdOnly && script === 'flux_train_network.py') return `${name} is a Stable Diffusion argument that ${script} does not use`;
  const ok = valueHasType(spec.type, value);
  if (!ok) return `${name} must be ${spec.type}, not ${describe(value)}`;
  if (spec.choices && !spec.choices.includes(value as string | number)) {
    return `${name} must be one of ${spec.choices.join(', ')}, not ${String(value)}`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Dataset TOML (library/config_util.py, DreamBooth-style subsets as used by train_network.py)

/**
 * `int`: an integer (voluptuous `int`). `float`: a float — voluptuous checks `isinstance(v, float)`,
 * so an integer is refused. `number`: either. `resolution`: an int or [int, int].
 * `float-pair`: [float, float]. `table`: an inline table (`custom_attributes`).
 */
export type DatasetValueType = 'string' | 'int' | 'float' | 'number' | 'bool' | 'resolution' | 'float-pair' | 'table';

/** Keys a subset may hold that may also sit on its dataset or in [general] and be inherited. */
const SUBSET_ASCENDABLE = {
  color_aug: 'bool',
  face_crop_aug_range: 'float-pair',
  flip_aug: 'bool',
  num_repeats: 'int',
  random_crop: 'bool',
  shuffle_caption: 'bool',
  keep_tokens: 'int',
  keep_tokens_separator: 'string',
  secondary_separator: 'string',
  caption_separator: 'string',
  enable_wildcard: 'bool',
  token_warmup_min: 'int',
  token_warmup_step: 'number',
  caption_prefix: 'string',
  caption_suffix: 'string',
  custom_attributes: 'table',
  resize_interpolation: 'string',
  // DreamBooth-style
  caption_extension: 'string',
  class_tokens: 'string',
  cache_info: 'bool',
  // caption dropout (train_network.py enables it)
  caption_dropout_every_n_epochs: 'int',
  caption_dropout_rate: 'number',
  caption_tag_dropout_rate: 'number',
} as const satisfies Record<string, DatasetValueType>;

const DATASET_ASCENDABLE = {
  batch_size: 'int',
  bucket_no_upscale: 'bool',
  bucket_reso_steps: 'int',
  enable_bucket: 'bool',
  max_bucket_reso: 'int',
  min_bucket_reso: 'int',
  validation_seed: 'int',
  validation_split: 'float',
  resolution: 'resolution',
  network_multiplier: 'float',
  resize_interpolation: 'string',
} as const satisfies Record<string, DatasetValueType>;

export const DATASET_KEYS = {
  general: { ...DATASET_ASCENDABLE, ...SUBSET_ASCENDABLE },
  /** Besides these a dataset holds `subsets`, an array of tables. */
  dataset: { ...DATASET_ASCENDABLE, ...SUBSET_ASCENDABLE },
  subset: { ...SUBSET_ASCENDABLE, image_dir: 'string', is_reg: 'bool', alpha_mask: 'bool' },
} as const satisfies Record<'general' | 'dataset' | 'subset', Record<string, DatasetValueType>>;

export type DatasetLevel = keyof typeof DATASET_KEYS;

export const RESIZE_INTERPOLATIONS = ['lanczos', 'nearest', 'bilinear', 'linear', 'bicubic', 'cubic', 'area', 'box'] as const;

/** Whether `value` is what sd-scripts takes for a value of `type` (a config-file or dataset TOML value). */
function valueHasType(type: KohyaValueType | DatasetValueType, value: unknown): boolean {
  switch (type) {
    case 'string':
      return typeof value === 'string';
    case 'bool':
      return typeof value === 'boolean';
    case 'int':
      return isInt(value);
    case 'float':
    case 'number':
      return isFiniteNumber(value);
    case 'string[]':
      return Array.isArray(value) && value.every((x) => typeof x === 'string');
    case 'float[]':
      return Array.isArray(value) && value.every(isFiniteNumber);
    case 'resolution':
      return (isInt(value) && value > 0) || (Array.isArray(value) && value.length === 2 && value.every((x) => isInt(x) && x > 0));
    case 'float-pair':
      return Array.isArray(value) && value.length === 2 && value.every(isFiniteNumber);
    case 'table':
      return typeof value === 'object' && value !== null && !Array.isArray(value);
  }
}

/** Why `value` can't be the value of `key` at `level` of a dataset TOML, or null when it can. */
export function datasetValueProblem(level: DatasetLevel, key: string, value: unknown): string | null {
  const keys: Record<string, DatasetValueType> = DATASET_KEYS[level];
  if (!Object.hasOwn(keys, key)) return `${key} is not allowed in a dataset TOML ${level === 'general' ? '[general]' : level}`;
  const type = keys[key];
  const ok = type !== undefined && valueHasType(type, value);
  if (!ok) return `${key} must be ${type ?? 'known'}, not ${describe(value)}`;
  if (key === 'resize_interpolation' && !(RESIZE_INTERPOLATIONS as readonly unknown[]).includes(value)) {
    return `resize_interpolation must be one of ${RESIZE_INTERPOLATIONS.join(', ')}`;
  }
  return null;
}
