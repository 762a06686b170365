/**
 * Image generation with a trained LoRA through sd-scripts' own scripts, one image per call:
 * - `gen_img.py` for SD 1.5 and SDXL: `--prompt` with the negative prompt as its ` --n` option,
 *   `--seed`, `--W`/`--H`, and the LoRA as `--network_module networks.lora --network_weights F
 *   --network_mul W`. It writes `im_{YYYYmmddHHMMSS}_000_{seed}.png` into `--outdir`.
 * - `flux_minimal_inference.py` for FLUX.1 and Chroma: `--ckpt_path` with `--model_type flux|chroma`,
 *   the text encoders and autoencoder (`--clip_l`, not for Chroma; `--t5xxl`, `--ae`), `--prompt`,
 *   `--seed`, `--width`/`--height`, and the LoRA as `--lora_weights "F;W"`. It writes
 *   `{YYYYmmdd_HHMMSS}.png` into `--output_dir` (no seed in the name: one folder per image).
 *
 * Also what members may ask for: the prompt, negative prompt, weight, seed and size checks.
 */
import { UserError } from './errors.ts';
import { familyLabel, isTransformerFamily, type BaseFamily } from './model-family.ts';

export const GENERATE_SCRIPT = 'gen_img.py';
export const FLUX_GENERATE_SCRIPT = 'flux_minimal_inference.py';

/** sd-scripts' script that draws `base` with a LoRA. */
export function generateScript(base: BaseFamily): string {
  return isTransformerFamily(base) ? FLUX_GENERATE_SCRIPT : GENERATE_SCRIPT;
}

/**
 * The negative prompt a family draws with. FLUX.1 is guidance-distilled: the inference script
 * ignores a negative prompt unless classifier-free guidance doubles the work, so it is refused.
 */
export function checkNegativeFor(base: BaseFamily, negative: string): string {
  if (base === 'flux1' && negative !== '') throw new UserError(`${familyLabel(base)} draws without a negative prompt; leave \`negative\` out.`);
  return negative;
}

export const WEIGHT_MIN = -2;
export const WEIGHT_MAX = 2;
export const WEIGHT_STEP = 0.1;
export const PROMPT_MAX = 400;
/** Seeds gen_img.py takes (it draws random ones up to 2^32 - 1). */
export const SEED_MAX = 2 ** 32 - 1;

export interface GenerateSettings {
  prompt: string;
  negative: string;
  seed: number;
  width: number;
  height: number;
}

export interface GenerateInvocation {
  modelPath: string;
  base: BaseFamily;
  loraPath: string;
  weight: number;
  outDir: string;
  settings: GenerateSettings;
  /** Sampling steps (default 24 for gen_img.py; the FLUX script's own: 4 for schnell, 50 for dev). */
  steps?: number;
  /** FLUX.1/Chroma only: the files beside the checkpoint and how the run was trained. */
  flux?: FluxGenerateFiles;
}

export interface FluxGenerateFiles {
  /** Paths of the CLIP-L text encoder (null for Chroma), T5-XXL and the autoencoder. */
  clipL: string | null;
  t5xxl: string;
  ae: string;
  /** The run masked T5's padding (Chroma always does). */
  applyT5AttnMask: boolean;
  /** The run's base was loaded in fp8 (GPUs under 24 GB): draw the transformer in fp8 too. */
  fp8: boolean;
}

/** A weight rounded to two decimals, as members see and buttons step it. */
export function roundWeight(w: number): number {
  return Math.round(w * 100) / 100;
}

/** Prompt text as gen_img.py reads it: ` --` starts an option there, so it may not appear in member text. */
export function checkPromptText(text: string, what: 'prompt' | 'negative prompt'): string {
  const clean = text
    .replace(/[\r\n\t]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (what === 'prompt' && clean.length === 0) throw new UserError('The prompt is empty.');
  if (clean.length > PROMPT_MAX) throw new UserError(`The ${what} is ${clean.length} characters long; at most ${PROMPT_MAX}.`);
  if (/--/.test(clean)) throw new UserError(`The ${what} may not contain \`--\`.`);
  return clean;
}

export function checkWeight(weight: number): number {
  if (!Number.isFinite(weight) || weight < WEIGHT_MIN || weight > WEIGHT_MAX) throw new UserError(`A LoRA weight is between ${WEIGHT_MIN} and ${WEIGHT_MAX}.`);
  return roundWeight(weight);
}

/** `512`, `768x512`, `1024x1024`: sides 256–1536, multiples of 64. Default: the base's native square. */
export function parseSize(raw: string | null, native: number): { width: number; height: number } {
  if (raw === null || raw.trim() === '') return { width: native, height: native };
  const m = /^\s*(\d{2,4})\s*(?:[x×*]\s*(\d{2,4}))?\s*$/i.exec(raw);
  if (!m) throw new UserError('`size` is a side like `512` or width×height like `768x512`.');
  const width = Number(m[1]);
  const height = Number(m[2] ?? m[1]);
  for (const side of [width, height]) {
    if (side < 256 || side > 1536 || side % 64 !== 0) throw new UserError('Each side of `size` is a multiple of 64 between 256 and 1536.');
  }
  return { width, height };
}

/** Comma-separated weights, e.g. `0.5, 0.75, 1`: at most `max`, each checked, in the order given. */
export function parseWeights(raw: string, max: number): number[] {
  const parts = raw.split(/[,\s]+/).filter((p) => p.length > 0);
  if (parts.length === 0) throw new UserError('Name at least one weight, e.g. `0.5, 0.75, 1`.');
  if (parts.length > max) throw new UserError(`At most ${max} weights.`);
  const weights = parts.map((p) => {
    if (!/^-?\d+(\.\d+)?$/.test(p)) throw new UserError(`\`${p.slice(0, 12)}\` is not a weight.`);
    return checkWeight(Number(p));
  });
  if (new Set(weights).size !== weights.length) throw new UserError('A weight is named twice.');
  return weights;
}

/** The arguments after the script path, for `TRAINER_CMD <SD_SCRIPTS_DIR>/<generateScript(base)> …`. */
export function generateArgs(inv: GenerateInvocation): string[] {
  return isTransformerFamily(inv.base) ? fluxArgs(inv) : genImgArgs(inv);
}

/** Chroma is not guidance-distilled: with a negative prompt it draws with real classifier-free guidance. */
const CHROMA_CFG = 4;
/** FLUX.1 dev's distilled guidance (the script's default); Chroma takes none, as it trains. */
const FLUX_GUIDANCE = 3.5;

function fluxArgs(inv: GenerateInvocation): string[] {
  const { settings, flux } = inv;
  if (!flux) throw new Error(`${inv.base} needs its text encoders and autoencoder`);
  const chroma = inv.base === 'chroma';
  if (!chroma && flux.clipL === null) throw new Error('FLUX.1 needs the CLIP-L text encoder');
  // `--lora_weights` splits "path;multiplier" on the semicolon.
  if (inv.loraPath.includes(';')) throw new Error('a LoRA path may not contain `;`');
  const args = ['--ckpt_path', inv.modelPath, '--model_type', chroma ? 'chroma' : 'flux'];
  if (!chroma) args.push('--clip_l', flux.clipL!);
  args.push('--t5xxl', flux.t5xxl, '--ae', flux.ae);
  if (chroma || flux.applyT5AttnMask) args.push('--apply_t5_attn_mask');
  args.push(
    '--prompt',
    settings.prompt,
    '--output_dir',
    inv.outDir,
    '--seed',
    String(settings.seed),
    '--width',
    String(settings.width),
    '--height',
    String(settings.height),
    '--guidance',
    String(chroma ? 0 : FLUX_GUIDANCE),
  );
  if (inv.steps !== undefined) args.push('--steps', String(inv.steps));
  if (chroma && settings.negative !== '') args.push('--negative_prompt', settings.negative, '--cfg_scale', String(CHROMA_CFG));
  if (flux.fp8) args.push('--flux_dtype', 'fp8');
  // Text encoders, transformer and autoencoder take the GPU in turn.
  args.push('--offload', '--lora_weights', `${inv.loraPath};${inv.weight}`);
  return args;
}

function genImgArgs(inv: GenerateInvocation): string[] {
  const { settings } = inv;
  const prompt = settings.negative ? `${settings.prompt} --n ${settings.negative}` : settings.prompt;
  const args = ['--ckpt', inv.modelPath];
  if (inv.base === 'sdxl' || inv.base === 'sdxl-vpred') args.push('--sdxl');
  if (inv.base === 'sdxl-vpred') args.push('--v_parameterization', '--zero_terminal_snr');
  args.push(
    '--outdir',
    inv.outDir,
    '--prompt',
    prompt,
    '--images_per_prompt',
    '1',
    '--seed',
    String(settings.seed),
    '--W',
    String(settings.width),
    '--H',
    String(settings.height),
    '--steps',
    String(inv.steps ?? 24),
    '--sampler',
    'euler_a',
    '--scale',
    '7',
    '--fp16',
    '--sdpa',
    '--network_module',
    'networks.lora',
    '--network_weights',
    inv.loraPath,
    '--network_mul',
    String(inv.weight),
  );
  return args;
}

/** The file the script for `base` wrote for one image at `seed`, among the names in its output folder. */
export function generatedFile(base: BaseFamily, names: readonly string[], seed: number): string | null {
  const re = isTransformerFamily(base) ? /^\d{8}_\d{6}\.png$/ : new RegExp(`^im_\\d{14}_\\d{3}_${seed}\\.png$`);
  return (
    names
      .filter((n) => re.test(n))
      .sort()
      .at(-1) ?? null
  );
}
