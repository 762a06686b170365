import { parse } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { companionsOf, modelFits, modelsFor } from '../../src/bot/training.ts';
import { UserError } from '../../src/core/errors.ts';
import type { WorkerInfo } from '../../src/queues/contract.ts';
import { configValueProblem, isKohyaArg, KOHYA_ARGS, scriptKnows, type KohyaArgName } from '../../src/core/kohya-args.ts';
import { buildKohyaFiles, kohyaScriptFor } from '../../src/core/kohya-config.ts';
import { BASE_FAMILIES, isTransformerFamily, type BaseFamily } from '../../src/core/model-family.ts';
import { measuredSecondsPerStep, planRun, type PlanConceptInput } from '../../src/core/plan.ts';
import {
  defaultRecipeFor,
  pickCompanions,
  resolveRecipe,
  ResolvedRecipeSchema,
  runFitProblem,
  type ResolvedRecipe,
  type RunOverrides,
} from '../../src/core/recipes.ts';
import { NETWORK_TYPES, networkProblem } from '../../src/core/networks.ts';
import { presetForVram } from '../../src/core/vram-presets.ts';
import { RECIPE_NAMES } from '../../src/core/recipe-table.ts';

/**
 * What `flux_train_network.py`'s argparse has beyond `train_network.py`'s, read from sd-scripts
 * 48d368fa: `train_util.add_dit_training_arguments`, `flux_train_utils.add_flux_train_arguments`
 * and its own `setup_parser` (reference/model-families.md §2).
 */
const FLUX_ARGPARSE_EXTRA = [
  'cache_text_encoder_outputs',
  'cache_text_encoder_outputs_to_disk',
  'text_encoder_batch_size',
  'disable_mmap_load_safetensors',
  'weighting_scheme',
  'logit_mean',
  'logit_std',
  'mode_scale',
  'blocks_to_swap',
  'clip_l',
  't5xxl',
  'ae',
  'controlnet_model_name_or_path',
  't5xxl_max_token_length',
  'apply_t5_attn_mask',
  'guidance_scale',
  'timestep_sampling',
  'sigmoid_scale',
  'model_prediction_type',
  'discrete_flow_shift',
  'model_type',
  'split_mode',
];
const SDXL_ARGPARSE_EXTRA = ['disable_mmap_load_safetensors', 'cache_text_encoder_outputs', 'cache_text_encoder_outputs_to_disk'];

const COMPANIONS = [
  { file: 'clip_l.safetensors', kind: 'clip_l' as const },
  { file: 't5xxl_fp16.safetensors', kind: 't5xxl' as const },
  { file: 't5xxl_fp8_e4m3fn.safetensors', kind: 't5xxl' as const, fp8: true },
  { file: 'ae.safetensors', kind: 'ae' as const },
];

function concepts(size: number): PlanConceptInput[] {
  const caption = (i: number) => `zkchar, red eyes, ${['smile', 'sitting', 'from side'][i % 3]}`;
  return [
    {
      name: 'main',
      isMain: true,
      images: Array.from({ length: 12 }, (_, i) => ({ id: `m${i}`, width: size, height: size, captioned: true, caption: caption(i) })),
    },
    {
      name: 'coat',
      trigger: 'zkcoat',
      isMain: false,
      images: Array.from({ length: 8 }, (_, i) => ({
        id: `c${i}`,
        width: size,
        height: size * 1.5,
        captioned: true,
        caption: `zkchar, zkcoat, ${caption(i)}`,
      })),
    },
  ];
}

function withCompanions(recipe: ResolvedRecipe): ResolvedRecipe {
  return { ...recipe, companions: pickCompanions(recipe.base, COMPANIONS, 'the worker') };
}

function build(name: string, base: BaseFamily, overrides: RunOverrides = {}, vramMiB: number | null = 24_564) {
  const recipe = withCompanions(resolveRecipe(name, base, overrides, { vramMiB }));
  const plan = planRun({ base, trigger: 'zkchar', className: '1girl', recipe, concepts: concepts(recipe.resolution) });
  const files = buildKohyaFiles(plan, recipe, {
    runId: 'run-1',
    outputName: 'zkchar-v1',
    outputDir: '/srv/runs/run-1/output',
    stagingDir: '/srv/runs/run-1/dataset',
    baseModelPath: '/srv/models/base.safetensors',
    samplePrompts: [],
    seed: 7,
  });
  return { recipe, plan, files, config: parse(files.configToml), dataset: parse(files.datasetToml) };
}

function userError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof UserError) return err.message;
    throw err;
  }
  throw new Error('expected a UserError');
}

describe('argument lists per script', () => {
  it('FLUX knows train_network.py’s arguments plus exactly what its argparse adds', () => {
    const names = Object.keys(KOHYA_ARGS) as KohyaArgName[];
    const base = names.filter((n) => scriptKnows(n, 'train_network.py'));
    // 193 for train_network.py; sdxl_train_network.py adds 3 (the 196 of reference/kohya-contract.md).
    expect(base).toHaveLength(193);
    expect(names.filter((n) => scriptKnows(n, 'sdxl_train_network.py'))).toHaveLength(196);
    expect(names.filter((n) => scriptKnows(n, 'flux_train_network.py') && !scriptKnows(n, 'train_network.py')).sort()).toEqual([...FLUX_ARGPARSE_EXTRA].sort());
    expect(names.filter((n) => scriptKnows(n, 'sdxl_train_network.py') && !scriptKnows(n, 'train_network.py')).sort()).toEqual([...SDXL_ARGPARSE_EXTRA].sort());
    expect(names.filter((n) => scriptKnows(n, 'flux_train_network.py'))).toHaveLength(193 + FLUX_ARGPARSE_EXTRA.length);
  });

  it('refuses FLUX keys for the SD scripts and the SD-only ones for FLUX', () => {
    expect(configValueProblem('guidance_scale', 1.0, 'sdxl_train_network.py')).toMatch(/not a sdxl_train_network.py argument/);
    expect(configValueProblem('blocks_to_swap', 8, 'train_network.py')).toMatch(/not a train_network.py argument/);
    expect(configValueProblem('clip_skip', 2, 'flux_train_network.py')).toMatch(/Stable Diffusion argument/);
    expect(configValueProblem('v_parameterization', true, 'flux_train_network.py')).toMatch(/Stable Diffusion argument/);
    expect(configValueProblem('timestep_sampling', 'logit', 'flux_train_network.py')).toMatch(/must be one of/);
    expect(configValueProblem('model_type', 'chroma', 'flux_train_network.py')).toBeNull();
  });
});

describe('every recipe × family', () => {
  for (const name of RECIPE_NAMES) {
    for (const base of BASE_FAMILIES) {
      it(`${name} on ${base}: a config and dataset the script's argparse and schema accept`, () => {
        const { recipe, files, config, dataset } = build(name, base);
        const script = kohyaScriptFor(base);
        expect(files.script).toBe(script);
        for (const [key, value] of Object.entries(files.config)) {
          expect(isKohyaArg(key), key).toBe(true);
          expect(configValueProblem(key, value, script), key).toBeNull();
        }
        expect(ResolvedRecipeSchema.parse(JSON.parse(JSON.stringify(recipe)))).toEqual(recipe);
        if (isTransformerFamily(base)) {
          expect(config).toMatchObject({
            network_module: 'networks.lora_flux',
            mixed_precision: 'bf16',
            save_precision: 'bf16',
            cache_text_encoder_outputs: true,
            cache_latents: true,
            gradient_checkpointing: true,
            network_train_unet_only: true,
            t5xxl: '/srv/models/t5xxl_fp16.safetensors',
            ae: '/srv/models/ae.safetensors',
            model_prediction_type: 'raw',
          });
          // Cached text encoder outputs need captions that never change.
          expect(config.shuffle_caption).toBe(false);
          expect(files.datasetToml).not.toMatch(/caption_tag_dropout_rate|shuffle_caption = true/);
          for (const key of ['clip_skip', 'v_parameterization', 'v2', 'max_token_length', 'no_half_vae', 'sample_sampler'])
            expect(config, key).not.toHaveProperty(key);
        } else {
          expect(config).not.toHaveProperty('guidance_scale');
          expect(config.network_module).toBe('networks.lora');
        }
        expect(dataset).toHaveProperty('datasets');
      });
    }
  }

  it('FLUX.1: the docs’ guidance 1.0, flux_shift, CLIP-L, and samples with --g 3.5 and no CFG', () => {
    const { config, files } = build('character', 'flux1');
    expect(config).toMatchObject({ model_type: 'flux', guidance_scale: 1.0, timestep_sampling: 'flux_shift', clip_l: '/srv/models/clip_l.safetensors' });
    expect(config).not.toHaveProperty('apply_t5_attn_mask');
    const line = files.samplePromptsTxt.split('\n')[0] ?? '';
    expect(line).toMatch(/ --l 1 --g 3.5 --d 7$/);
    expect(line).not.toMatch(/--n /);
  });

  it('Chroma: guidance 0.0, sigmoid sampling, the T5 attention mask, no CLIP-L, and negative prompt with --g 0 --l 4', () => {
    const { config, files } = build('style', 'chroma');
    expect(config).toMatchObject({ model_type: 'chroma', guidance_scale: 0.0, timestep_sampling: 'sigmoid', apply_t5_attn_mask: true });
    expect(config).not.toHaveProperty('clip_l');
    const line = files.samplePromptsTxt.split('\n')[0] ?? '';
    expect(line).toMatch(/--n low quality, ugly, .* --l 4 --g 0 --d 7$/);
  });

  it('SDXL v-pred: sdxl_train_network.py with v-parameterization and zero terminal SNR, no noise offset', () => {
    const { config, recipe } = build('character', 'sdxl-vpred');
    expect(config).toMatchObject({ v_parameterization: true, zero_terminal_snr: true, no_half_vae: true });
    expect(config).not.toHaveProperty('noise_offset');
    expect(recipe.resolution).toBe(1024);
  });
});

describe('networks', () => {
  it.each([
    ['dora', 'lycoris.kohya', ['algo=lora', 'dora_wd=True']],
    ['locon', 'lycoris.kohya', ['algo=locon', 'conv_dim=16', 'conv_alpha=16']],
    ['loha', 'lycoris.kohya', ['algo=loha', 'conv_dim=16', 'conv_alpha=16']],
    ['lokr', 'lycoris.kohya', ['algo=lokr', 'factor=-1']],
    ['lora', 'networks.lora', []],
  ] as const)('%s on SD 1.5 and SDXL: %s with its network_args', (network, module, args) => {
    for (const base of ['sd15', 'sdxl', 'sdxl-vpred'] as const) {
      const { config } = build('character', base, { network });
      expect(config.network_module).toBe(module);
      if (args.length > 0) expect(config.network_args).toEqual([...args]);
      else expect(config).not.toHaveProperty('network_args');
    }
  });

  it('refuses every LyCORIS type and DoRA on FLUX.1 and Chroma at resolve time, naming the way out', () => {
    for (const base of ['flux1', 'chroma'] as const) {
      for (const network of NETWORK_TYPES.filter((n) => n !== 'lora')) {
        expect(networkProblem(network, base)).not.toBeNull();
        expect(userError(() => resolveRecipe('character', base, { network }, { vramMiB: 24_564 }))).toMatch(/can't be trained on .*network: lora/);
      }
    }
    expect(userError(() => resolveRecipe('character', 'flux1', { network: 'loha' }))).toBe(
      "LoHa can't be trained on FLUX.1 here: FLUX.1 runs use plain LoRA (networks.lora_flux). Pick `network: lora`, or an SD 1.5/SDXL dataset for LoHa.",
    );
  });

  it('warns about a LoHa dim that only grows the file', () => {
    expect(resolveRecipe('character', 'sdxl', { network: 'loha', dim: 64 }).warnings.map((w) => w.code)).toContain('network-dim');
  });
});

describe('memory presets', () => {
  it('picks the largest preset the GPU fits', () => {
    expect(presetForVram(8_192)).toBeNull();
    expect(presetForVram(12_288)).toBe('12gb');
    expect(presetForVram(16_376)).toBe('16gb');
    expect(presetForVram(24_564)).toBe('24gb');
    expect(presetForVram(81_559)).toBe('48gb');
  });

  it('16 GB: fp8, 8 swapped blocks, batch 1; 24 GB: fp8, no swapping, batch 2 (docs §6.1)', () => {
    const sixteen = build('character', 'flux1', {}, 16_376);
    expect(sixteen.recipe.memory).toMatchObject({ preset: '16gb', fp8Base: true, blocksToSwap: 8 });
    expect(sixteen.config).toMatchObject({ fp8_base: true, blocks_to_swap: 8, train_batch_size: 1 });
    const twentyFour = build('character', 'flux1', {}, 24_564);
    expect(twentyFour.recipe.memory).toMatchObject({ preset: '24gb', fp8Base: true, blocksToSwap: null });
    expect(twentyFour.config).toMatchObject({ fp8_base: true, train_batch_size: 2 });
    expect(twentyFour.config).not.toHaveProperty('blocks_to_swap');
    // Batch 2 halves the steps per epoch; swapping makes each step slower.
    expect(twentyFour.plan.stepsPerEpoch).toBeLessThan(sixteen.plan.stepsPerEpoch);
  });

  it('12 GB: 16 swapped blocks and 8-bit AdamW, as the docs advise', () => {
    const { recipe, config } = build('character-adamw', 'chroma', {}, 12_288);
    expect(recipe.memory).toMatchObject({ preset: '12gb', blocksToSwap: 16 });
    expect(config).toMatchObject({ optimizer_type: 'AdamW8bit', learning_rate: 1e-4, blocks_to_swap: 16 });
    expect(recipe.warnings.map((w) => w.message).join(' ')).toMatch(/AdamW became AdamW8bit/);
  });

  it('refuses a preset larger than the worker’s GPU, a GPU under 12 GB, and a batch above the preset’s', () => {
    expect(userError(() => resolveRecipe('character', 'flux1', { vram: '24gb' }, { vramMiB: 12_288, workerName: 'small-box' }))).toBe(
      'The 24 GB memory preset needs a GPU with 24 GB or more; the worker `small-box` has 12 GB. Leave `vram` out to use the 12 GB preset.',
    );
    expect(userError(() => resolveRecipe('character', 'chroma', {}, { vramMiB: 8_192 }))).toMatch(/Chroma needs a GPU with at least 12 GB/);
    expect(userError(() => resolveRecipe('character', 'flux1', { batchSize: 2 }, { vramMiB: 16_376 }))).toMatch(
      /Batch size 2 needs more GPU memory than the 16 GB preset/,
    );
    expect(userError(() => resolveRecipe('character', 'sdxl', { vram: '16gb' }))).toMatch(/Memory presets are for FLUX.1 and Chroma/);
  });

  it('plans with a stated fallback when no worker says its memory', () => {
    const r = resolveRecipe('character', 'flux1', {}, { vramMiB: null });
    expect(r.memory.preset).toBe('16gb');
    expect(r.warnings.map((w) => w.code)).toContain('memory');
  });

  it('estimates FLUX.1 slower than SDXL, and slower with more swapped blocks', () => {
    const sdxl = build('character', 'sdxl').plan;
    const twelve = build('character', 'flux1', {}, 12_288).plan;
    const sixteen = build('character', 'flux1', {}, 16_376).plan;
    expect(sixteen.totalSteps).toBe(twelve.totalSteps);
    expect(twelve.estimateSeconds).toBeGreaterThan(sixteen.estimateSeconds);
    expect(sixteen.estimateSeconds).toBeGreaterThan(sdxl.estimateSeconds);
  });
});

describe('measured speed', () => {
  it('scales each run’s assumed seconds per step by how long it really took, median of the latest five', () => {
    expect(measuredSecondsPerStep([])).toBeNull();
    expect(measuredSecondsPerStep([{ secondsPerStep: 3, estimateSeconds: 1000, actualSeconds: 500 }])).toBe(1.5);
    const samples = [
      { secondsPerStep: 3, estimateSeconds: 100, actualSeconds: 200 },
      { secondsPerStep: 3, estimateSeconds: 100, actualSeconds: 100 },
      { secondsPerStep: 0, estimateSeconds: 100, actualSeconds: 100 }, // from before the figure was kept
      { secondsPerStep: 3, estimateSeconds: 100, actualSeconds: 50 },
    ];
    expect(measuredSecondsPerStep(samples)).toBe(3);
  });

  it('a plan with a measured figure says so and scales its estimate', () => {
    const recipe = withCompanions(resolveRecipe('character', 'flux1', {}, { vramMiB: 24_564 }));
    const table = planRun({ base: 'flux1', trigger: 'zkchar', recipe, concepts: concepts(1024) });
    const measured = planRun({ base: 'flux1', trigger: 'zkchar', recipe, concepts: concepts(1024), secondsPerStep: 1.5 });
    expect(table).toMatchObject({ timing: 'table', secondsPerStep: 3 });
    expect(measured).toMatchObject({ timing: 'measured', secondsPerStep: 1.5 });
    expect(measured.estimateSeconds).toBeLessThan(table.estimateSeconds);
  });
});

describe('companions', () => {
  it('picks full-precision text encoders first, and names what is missing', () => {
    expect(pickCompanions('flux1', COMPANIONS, 'w')).toEqual({ clip_l: 'clip_l.safetensors', t5xxl: 't5xxl_fp16.safetensors', ae: 'ae.safetensors' });
    expect(pickCompanions('chroma', COMPANIONS, 'w')).toEqual({ clip_l: null, t5xxl: 't5xxl_fp16.safetensors', ae: 'ae.safetensors' });
    expect(pickCompanions('sdxl', [], 'w')).toBeNull();
    expect(
      userError(() =>
        pickCompanions(
          'flux1',
          COMPANIONS.filter((c) => c.kind !== 't5xxl'),
          'any worker offering `flux1-dev.safetensors`',
        ),
      ),
    ).toBe('FLUX.1 also needs `t5xxl` (the T5-XXL text encoder), and it is not in the models folder of any worker offering `flux1-dev.safetensors`.');
    expect(userError(() => pickCompanions('chroma', [], 'w'))).toMatch(/`t5xxl` and `ae`/);
  });

  it('a FLUX config can’t be built without its companion files', () => {
    const recipe = resolveRecipe('character', 'flux1', {}, { vramMiB: 24_564 });
    const plan = planRun({ base: 'flux1', trigger: 'zkchar', recipe, concepts: concepts(1024) });
    expect(() =>
      buildKohyaFiles(plan, recipe, {
        runId: 'r',
        outputName: 'o',
        outputDir: '/o',
        stagingDir: '/s',
        baseModelPath: '/m/f.safetensors',
        samplePrompts: [],
        seed: 1,
      }),
    ).toThrow(/flux1 needs clip_l, t5xxl, ae/);
  });
});

describe('what workers offer', () => {
  const worker = (models: WorkerInfo['models'], companions?: unknown): WorkerInfo =>
    ({ id: 'w', host: 'h', gpu: null, models, busyWith: null, startedAt: 0, at: 0, ...(companions !== undefined ? { companions } : {}) }) as WorkerInfo;

  it('offers a checkpoint only to the families its header allows', () => {
    const w = worker([
      { file: 'anime-xl.safetensors', base: 'sdxl' },
      { file: 'noob-vpred.safetensors', base: 'sdxl-vpred' },
      { file: 'flux1-dev.safetensors', base: 'flux1', variant: 'dev' },
      { file: 'old.ckpt', base: null },
    ]);
    expect(modelsFor([w], 'sdxl')).toEqual(['anime-xl.safetensors', 'old.ckpt']);
    // v-pred can't be seen in most SDXL files: plain SDXL checkpoints may train a v-pred dataset, after the marked ones.
    expect(modelsFor([w], 'sdxl-vpred')).toEqual(['noob-vpred.safetensors', 'anime-xl.safetensors', 'old.ckpt']);
    expect(modelsFor([w], 'flux1')).toEqual(['flux1-dev.safetensors']);
    expect(modelsFor([w], 'chroma')).toEqual([]);
    expect(modelFits(null, 'flux1')).toBe(false);
    expect(modelFits('sdxl-vpred', 'sdxl')).toBe(false);
  });

  it('keeps only well-formed companion entries from a heartbeat', () => {
    expect(companionsOf(worker([]))).toEqual([]);
    expect(companionsOf(worker([], 'not a list'))).toEqual([]);
    expect(companionsOf(worker([], [{ file: 'ae.safetensors', kind: 'ae' }, { file: 3, kind: 'ae' }, { file: 'x.safetensors', kind: 'vae' }, null]))).toEqual([
      { file: 'ae.safetensors', kind: 'ae' },
    ]);
  });
});

describe('a worker checking a run before it starts', () => {
  it('names a missing companion file or a preset larger than its GPU', () => {
    const recipe = withCompanions(resolveRecipe('character', 'flux1', {}, { vramMiB: 24_564 }));
    const all = () => true;
    expect(runFitProblem(recipe, 24_564, all)).toBeNull();
    expect(runFitProblem(recipe, null, all)).toBeNull();
    expect(runFitProblem(recipe, 12_288, all)).toBe("the 24 GB memory preset needs a larger GPU than this worker's 12 GB");
    expect(runFitProblem(recipe, 24_564, (f) => f !== 't5xxl_fp16.safetensors')).toBe(
      "the T5-XXL text encoder t5xxl_fp16.safetensors is not in this worker's models folder",
    );
    expect(runFitProblem({ ...recipe, companions: null }, 24_564, all)).toBe('the run names no file for the CLIP-L text encoder');
    expect(runFitProblem(resolveRecipe('character', 'sdxl'), 8_000, () => false)).toBeNull();
  });
});

describe('a run planned before the families', () => {
  it('still parses: LoRA, no FLUX or v-pred settings, and the memory settings it was planned with', () => {
    for (const base of ['sd15', 'sdxl'] as const) {
      const current = resolveRecipe('character', base) as Record<string, unknown>;
      const { vPrediction: _v, flux: _f, memory: _m, companions: _c, ...old } = current;
      const network = { ...(current.network as Record<string, unknown>) };
      delete network.type;
      const sample = { ...(current.sample as Record<string, unknown>) };
      delete sample.guidance;
      const parsed = ResolvedRecipeSchema.parse({ ...old, network, sample });
      expect(parsed).toEqual(current);
    }
  });
});

describe('default recipe', () => {
  it('follows what the dataset teaches', () => {
    expect(defaultRecipeFor('character')).toBe('character');
    expect(defaultRecipeFor('style')).toBe('style');
    expect(defaultRecipeFor('concept')).toBe('flexible-concept');
  });
});
