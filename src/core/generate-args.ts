/**
 * Image generation with a trained LoRA through sd-scripts' own script: `gen_img.py` for SD 1.5
 * and SDXL (one image per call: `--prompt` with the negative prompt as its ` --n` option, `--seed`,
 * `--W`/`--H`, and the LoRA as `--network_module networks.lora --network_weights F --network_mul
 * W`). The script writes `im_{YYYYmmddHHMMSS}_000_{seed}.png` into `--outdir`.
 *
 * Also what members may ask for: the prompt, negative prompt, weight, seed and size checks.
 */
import { UserError } from './errors.ts';
import type { BaseFamily } from './model-family.ts';

export const GENERATE_SCRIPT = 'gen_img.py';

/** Families `gen_img.py` can draw; FLUX.1 and Chroma need another script. */
export function canGenerate(base: BaseFamily): boolean {
  return base === 'sd15' || base === 'sdxl' || base === 'sdxl-vpred';
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
  /** Sampling steps (default 24). */
  steps?: number;
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

/** The arguments after the script path, for `TRAINER_CMD <SD_SCRIPTS_DIR>/gen_img.py …`. */
export function generateArgs(inv: GenerateInvocation): string[] {
  if (!canGenerate(inv.base)) throw new Error(`gen_img.py does not draw ${inv.base}`);
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

/** The file gen_img.py wrote for one image at `seed`, among the names in its output folder. */
export function generatedFile(names: readonly string[], seed: number): string | null {
  const re = new RegExp(`^im_\\d{14}_\\d{3}_${seed}\\.png$`);
  return (
    names
      .filter((n) => re.test(n))
      .sort()
      .at(-1) ?? null
  );
}
