import { parse } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import type { KohyaFilesOptions } from '../../src/core/kohya-config.ts';
import { buildKohyaFiles, buildSamplePrompts, configToml, datasetToml, defaultSamplePrompts } from '../../src/core/kohya-config.ts';
import type { DatasetValueType, KohyaValueType } from '../../src/core/kohya-args.ts';
import { DATASET_KEYS, KOHYA_ARGS } from '../../src/core/kohya-args.ts';
import type { PlanConceptInput } from '../../src/core/plan.ts';
import { planRun } from '../../src/core/plan.ts';
import type { RecipeName } from '../../src/core/recipe-table.ts';
import { resolveRecipe } from '../../src/core/recipes.ts';

const STAGING = '/srv/lora-guild/staging/run-1';
const OUT = '/srv/lora-guild/runs/run-1';

function concepts(size: number): PlanConceptInput[] {
  const caption = (i: number, extra: string) => `zkchar, ${extra}, ${['smile', 'sitting', 'from side'][i % 3]}, ${i % 2 ? 'hat' : 'outdoors'}`;
  return [
    {
      name: 'main',
      isMain: true,
      images: Array.from({ length: 10 }, (_, i) => ({ id: `m${i}`, width: size, height: size, captioned: true, caption: caption(i, 'red eyes') })),
    },
    {
      name: 'school uniform',
      trigger: 'zkuniform',
      isMain: false,
      images: Array.from({ length: 8 }, (_, i) => ({ id: `u${i}`, width: size, height: (size * 3) / 2, captioned: true, caption: caption(i, 'zkuniform') })),
    },
  ];
}

function build(name: RecipeName = 'character', base: 'sd15' | 'sdxl' = 'sd15', extra: Partial<KohyaFilesOptions> = {}) {
  const recipe = resolveRecipe(name, base);
  const plan = planRun({ base, trigger: 'zkchar', className: '1girl', recipe, concepts: concepts(base === 'sdxl' ? 1024 : 512) });
  const options: KohyaFilesOptions = {
    runId: 'run-1',
    outputName: 'zkchar-v1',
    outputDir: OUT,
    stagingDir: STAGING,
    baseModelPath: '/models/base.safetensors',
    samplePrompts: [],
    seed: 1234,
    ...extra,
  };
  return { recipe, plan, files: buildKohyaFiles(plan, recipe, options) };
}

/** Is a value parsed with integersAsBigInt the TOML type sd-scripts expects? */
function hasTomlType(type: KohyaValueType | DatasetValueType, v: unknown): boolean {
  switch (type) {
    case 'string':
      return typeof v === 'string';
    case 'bool':
      return typeof v === 'boolean';
    case 'int':
      return typeof v === 'bigint';
    case 'float':
      return typeof v === 'number';
    case 'number':
      return typeof v === 'bigint' || typeof v === 'number';
    case 'string[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'float[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'number');
    case 'resolution':
      return typeof v === 'bigint' || (Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === 'bigint'));
    case 'float-pair':
      return Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === 'number');
    case 'table':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
  }
}

describe('config TOML', () => {
  it('parses, and every key is a known train_network.py argument of the right TOML type', () => {
    const { files } = build();
    const config = parse(files.configToml, { integersAsBigInt: true });
    expect(Object.keys(config).length).toBeGreaterThan(30);
    for (const [key, value] of Object.entries(config)) {
      expect(Object.hasOwn(KOHYA_ARGS, key), key).toBe(true);
      const spec = KOHYA_ARGS[key as keyof typeof KOHYA_ARGS];
      expect(hasTomlType(spec.type, value), `${key} should be ${spec.type}`).toBe(true);
    }
  });

  it('holds the recipe and the run settings sd-scripts needs', () => {
    const { files, recipe, plan } = build();
    const c = parse(files.configToml, { integersAsBigInt: true });
    expect(c).toMatchObject({
      pretrained_model_name_or_path: '/models/base.safetensors',
      dataset_config: `${STAGING}/dataset.toml`,
      output_dir: OUT,
      output_name: 'zkchar-v1',
      save_model_as: 'safetensors',
      save_precision: 'fp16',
      save_every_n_epochs: 1n,
      save_state: true,
      max_train_epochs: 8n,
      seed: 1234n,
      mixed_precision: 'fp16',
      sdpa: true,
      network_module: 'networks.lora',
      network_dim: 32n,
      network_alpha: 16,
      optimizer_type: 'Prodigy',
      learning_rate: 1,
      optimizer_args: recipe.optimizer.args,
      lr_scheduler: 'cosine',
      lr_scheduler_num_cycles: 1n,
      clip_skip: 2n,
      resolution: '512,512',
      enable_bucket: true,
      caption_extension: '.txt',
      keep_tokens: 1n,
      shuffle_caption: true,
      sample_every_n_epochs: 1n,
      sample_prompts: `${STAGING}/sample-prompts.txt`,
      sample_sampler: 'euler_a',
      logging_dir: `${OUT}/logs`,
      console_log_simple: true,
      metadata_trigger_phrase: 'zkchar',
    });
    expect(c).not.toHaveProperty('network_args');
    expect(files.config.max_train_epochs).toBe(plan.epochs);
    // floats are written as floats even when integral
    expect(files.configToml).toMatch(/^network_alpha = 16\.0$/m);
    expect(files.configToml).toMatch(/^learning_rate = 1\.0$/m);
  });

  it('writes the quick recipe’s 10% warmup as a float fraction and no empty optimizer_args', () => {
    const c = parse(build('quick').files.configToml, { integersAsBigInt: true });
    expect(c.lr_warmup_steps).toBe(0.1);
    expect(c.learning_rate).toBe(0.00025);
    expect(c.optimizer_type).toBe('AdamW8bit');
    expect(c).not.toHaveProperty('optimizer_args');
  });

  it('uses sdxl_train_network.py for SDXL, without clip_skip, with no_half_vae', () => {
    const { files } = build('character', 'sdxl');
    expect(files.script).toBe('sdxl_train_network.py');
    const c = parse(files.configToml, { integersAsBigInt: true });
    expect(c).toMatchObject({ resolution: '1024,1024', mixed_precision: 'bf16', no_half_vae: true, gradient_checkpointing: true });
    expect(c).not.toHaveProperty('clip_skip');
    expect(build().files.script).toBe('train_network.py');
  });

  it('passes the config file, and --resume with --initial_epoch when resuming', () => {
    expect(build().files.args).toEqual(['--config_file', `${STAGING}/config.toml`]);
    const resumed = build('character', 'sd15', { resume: { stateDir: `${OUT}/zkchar-v1-000004-state`, initialEpoch: 5 } });
    expect(resumed.files.args).toEqual(['--config_file', `${STAGING}/config.toml`, '--resume', `${OUT}/zkchar-v1-000004-state`, '--initial_epoch', '5']);
    expect(() => build('character', 'sd15', { resume: { stateDir: `${OUT}/x`, initialEpoch: 9 } })).toThrow(/initialEpoch/);
    expect(() => build('character', 'sd15', { resume: { stateDir: `${OUT}/x`, initialEpoch: 1 } })).toThrow(/initialEpoch/);
  });

  it('refuses unsafe names and relative paths', () => {
    expect(() => build('character', 'sd15', { outputName: '../x' })).toThrow(/outputName/);
    expect(() => build('character', 'sd15', { outputName: 'run-000001' })).toThrow(/epoch number/);
    expect(() => build('character', 'sd15', { stagingDir: 'staging' })).toThrow(/stagingDir/);
    expect(() => build('character', 'sd15', { seed: -1 })).toThrow(/seed/);
  });

  it('refuses a seed other than the one the member chose', () => {
    const recipe = resolveRecipe('character', 'sd15', { seed: 99 });
    const plan = planRun({ base: 'sd15', trigger: 'zkchar', recipe, concepts: concepts(512) });
    const options = { runId: 'r', outputName: 'o', outputDir: OUT, stagingDir: STAGING, baseModelPath: '/m.safetensors', samplePrompts: [] };
    expect(() => buildKohyaFiles(plan, recipe, { ...options, seed: 1 })).toThrow(/chosen seed 99/);
    expect(parse(buildKohyaFiles(plan, recipe, { ...options, seed: 99 }).configToml).seed).toBe(99);
  });

  it.each([
    [{ resolution: 512 }, /resolution must be string/],
    [{ network_args: 'conv_dim=4' }, /network_args must be string\[\]/],
    [{ network_dim: 32.5 }, /network_dim must be int/],
    [{ sample_sampler: 'euler-a' }, /sample_sampler must be one of/],
    [{ netwrok_dim: 32 }, /netwrok_dim is not a train_network.py argument/],
    [{ cache_text_encoder_outputs: true }, /cache_text_encoder_outputs is not a train_network.py argument/],
    [{ config_file: '/x.toml' }, /command line/],
  ])('refuses %j', (config, message) => {
    expect(() => configToml(config, 'train_network.py')).toThrow(message);
  });

  it('accepts an SDXL-only key for the SDXL script', () => {
    expect(configToml({ cache_text_encoder_outputs: true }, 'sdxl_train_network.py')).toBe('cache_text_encoder_outputs = true\n');
  });
});

describe('dataset TOML', () => {
  it('parses with every key known at its level and typed as the schema wants', () => {
    const { files } = build();
    const d = parse(files.datasetToml, { integersAsBigInt: true });
    expect(Object.keys(d).sort()).toEqual(['datasets', 'general']);
    const check = (level: keyof typeof DATASET_KEYS, table: Record<string, unknown>) => {
      for (const [key, value] of Object.entries(table)) {
        if (level === 'dataset' && key === 'subsets') continue;
        const types: Record<string, DatasetValueType> = DATASET_KEYS[level];
        const type = types[key];
        expect(type, `${level}.${key}`).toBeDefined();
        if (type) expect(hasTomlType(type, value), `${level}.${key}`).toBe(true);
      }
    };
    check('general', d.general as Record<string, unknown>);
    for (const dataset of d.datasets as Record<string, unknown>[]) {
      check('dataset', dataset);
      for (const subset of dataset.subsets as Record<string, unknown>[]) check('subset', subset);
    }
  });

  it('has one subset per concept folder with its repeats, class tokens and keep_tokens', () => {
    const { files, plan } = build();
    const d = parse(files.datasetToml, { integersAsBigInt: true }) as {
      general: Record<string, unknown>;
      datasets: (Record<string, unknown> & { subsets: Record<string, unknown>[] })[];
    };
    expect(d.general).toEqual({ shuffle_caption: true, caption_extension: '.txt', keep_tokens: 1n });
    expect(d.datasets).toHaveLength(1);
    const [dataset] = d.datasets;
    expect(dataset).toMatchObject({
      resolution: 512n,
      batch_size: 1n,
      enable_bucket: true,
      min_bucket_reso: 256n,
      max_bucket_reso: 1024n,
      bucket_reso_steps: 64n,
      bucket_no_upscale: false,
    });
    expect(dataset?.subsets).toEqual([
      { image_dir: `${STAGING}/${plan.concepts[0]?.folder}`, num_repeats: 30n, flip_aug: false, class_tokens: 'zkchar, 1girl' },
      { image_dir: `${STAGING}/12_school uniform`, num_repeats: 12n, flip_aug: false, class_tokens: 'zkchar, zkuniform, 1girl', keep_tokens: 2n },
    ]);
  });

  it('matches the plan’s bucket settings (photo: no upscaling at 768)', () => {
    const { files, plan } = build('photo');
    const d = parse(files.datasetToml, { integersAsBigInt: true }) as { datasets: Record<string, unknown>[] };
    expect(d.datasets[0]).toMatchObject({ resolution: 768n, max_bucket_reso: BigInt(plan.bucketSettings.maxBucketReso), bucket_no_upscale: true });
    expect(plan.bucketSettings.noUpscale).toBe(true);
  });

  it('adds tag dropout to every subset for the style recipe', () => {
    const d = parse(build('style').files.datasetToml) as { datasets: { subsets: Record<string, unknown>[] }[] };
    for (const subset of d.datasets[0]?.subsets ?? []) expect(subset.caption_tag_dropout_rate).toBe(0.1);
  });

  it.each([
    [{ general: { shufle_caption: true }, datasets: [{ subsets: [{ image_dir: '/x' }] }] }, /shufle_caption is not allowed/],
    [{ general: {}, datasets: [{ batch_size: 1.5, subsets: [{ image_dir: '/x' }] }] }, /batch_size must be int/],
    [{ general: {}, datasets: [{ network_multiplier: 'x', subsets: [{ image_dir: '/x' }] }] }, /network_multiplier must be float/],
    [{ general: {}, datasets: [{ resolution: '512,512', subsets: [{ image_dir: '/x' }] }] }, /resolution must be resolution/],
    [{ general: { image_dir: '/x' }, datasets: [{ subsets: [{ image_dir: '/x' }] }] }, /image_dir is not allowed/],
    [{ general: {}, datasets: [{ subsets: [{ num_repeats: 2 }] }] }, /needs image_dir/],
    [{ general: {}, datasets: [{ subsets: [] }] }, /no subsets/],
  ])('refuses %j', (input, message) => {
    expect(() => datasetToml(input)).toThrow(message);
  });
});

describe('sample prompts', () => {
  it('defaults to the trigger(s), the class and each concept’s top tags, main concept first, then the trigger alone', () => {
    const { plan } = build();
    const prompts = defaultSamplePrompts(plan);
    expect(prompts).toHaveLength(3);
    expect(prompts[0]?.startsWith('zkchar, 1girl, ')).toBe(true);
    expect(prompts[1]?.startsWith('zkchar, zkuniform, 1girl, ')).toBe(true);
    expect(prompts[2]).toBe('zkchar, 1girl');
  });

  it('writes --n --w --h --s --l --d with a fixed seed per line, at most four lines', () => {
    const { files, recipe } = build();
    const lines = files.samplePromptsTxt.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    lines.forEach((line, i) => {
      expect(line).toMatch(
        new RegExp(
          ` --n lowres, bad anatomy[^-]* --w ${recipe.sample.width} --h ${recipe.sample.height} --s ${recipe.sample.steps} --l ${recipe.sample.cfgScale} --d ${1234 + i}$`,
        ),
      );
    });
    const many = buildSamplePrompts(['a', 'b', 'c', 'd', 'e', 'f'], recipe, 7);
    expect(many).toHaveLength(4);
    // the same inputs give the same file: every epoch samples the same noise
    expect(buildSamplePrompts(['a'], recipe, 7)).toEqual(buildSamplePrompts(['a'], recipe, 7));
  });

  it('keeps given prompts from smuggling options, comments or extra lines in', () => {
    const { recipe } = build();
    const [line] = buildSamplePrompts(['# zkchar, smile --w 4096 --d 1\nbeach --n nothing'], recipe, 5);
    expect(line).toBe(`zkchar, smile --n ${recipe.sample.negativePrompt} --w 512 --h 768 --s 28 --l 7 --d 5`);
    expect(buildSamplePrompts(['   ', ' -- '], recipe, 5)).toEqual([]);
    const custom = build('character', 'sd15', { samplePrompts: ['zkchar, on a beach'] });
    expect(custom.files.samplePromptsTxt.split('\n')[0]?.startsWith('zkchar, on a beach --n ')).toBe(true);
  });
});
