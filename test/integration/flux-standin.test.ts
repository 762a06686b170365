/**
 * The sd-scripts stand-in's flux_train_network.py driven by the files buildKohyaFiles writes for
 * FLUX.1 and Chroma: it trains, refuses what the real script refuses, and writes FLUX metadata.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKohyaFiles, type KohyaFiles } from '../../src/core/kohya-config.ts';
import { planRun, type PlanConceptInput } from '../../src/core/plan.ts';
import { pickCompanions, resolveRecipe, type ResolvedRecipe, type RunOverrides } from '../../src/core/recipes.ts';
import { readSafetensorsHeader } from '../../src/core/safetensors.ts';
import { scanModelFiles } from '../../src/worker/worker-registry.ts';
import { chromaLayout, clipLLayout, fluxAeLayout, fluxLayout, sdxlLayout, t5xxlLayout, writeModelFile } from '../fixtures/model-layouts.ts';

const STANDIN_DIR = fileURLToPath(new URL('../fixtures/sd-scripts/', import.meta.url));
const OUTPUT_NAME = 'zkflux-v1';

let root: string;
let models: string;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runStandin(files: KohyaFiles, env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', [join(STANDIN_DIR, files.script), ...files.args], {
      // PYTHONPATH: empty packages named like the optimizers' (the stand-in imports the one a run uses).
      env: {
        ...process.env,
        PYTHONPATH: join(STANDIN_DIR, '../python-packages'),
        PYTHONUNBUFFERED: '1',
        PYTHONIOENCODING: 'utf-8',
        STANDIN_STRICT_CONFIG: '1',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }));
  });
}

function concepts(): PlanConceptInput[] {
  return [
    {
      name: 'main',
      isMain: true,
      images: Array.from({ length: 4 }, (_, i) => ({
        id: `m${i}`,
        width: 1024,
        height: i % 2 ? 1024 : 1536,
        captioned: true,
        caption: `zkflux, a woman with red hair, photo ${i}`,
      })),
    },
  ];
}

async function stage(
  name: string,
  base: 'flux1' | 'chroma',
  checkpoint: string,
  edit: (r: ResolvedRecipe) => ResolvedRecipe = (r) => r,
  overrides: RunOverrides = {},
) {
  const dir = join(root, name);
  const staging = join(dir, 'staging');
  const out = join(dir, 'out');
  const scan = await scanModelFiles(models);
  const resolved = resolveRecipe('character', base, { epochs: 2, ...overrides }, { vramMiB: 16_376 });
  const recipe = edit({ ...resolved, companions: pickCompanions(base, scan.companions, 'the test worker') });
  const plan = planRun({ base, trigger: 'zkflux', className: 'woman', recipe, concepts: concepts() });
  for (const c of plan.concepts) {
    await mkdir(join(staging, c.folder), { recursive: true });
    for (const image of c.images) {
      const png = await sharp({ create: { width: image.width, height: image.height, channels: 3, background: '#a05030' } })
        .png()
        .toBuffer();
      await writeFile(join(staging, c.folder, `${image.id}.png`), png);
      await writeFile(join(staging, c.folder, `${image.id}.txt`), `zkflux, a woman with red hair\n`);
    }
  }
  const files = buildKohyaFiles(plan, recipe, {
    runId: name,
    outputName: OUTPUT_NAME,
    outputDir: out,
    stagingDir: staging,
    baseModelPath: join(models, checkpoint),
    samplePrompts: [],
    seed: 42,
  });
  await writeFile(files.paths.datasetToml, files.datasetToml);
  await writeFile(files.paths.configToml, files.configToml);
  await writeFile(files.paths.samplePromptsTxt, files.samplePromptsTxt);
  return { dir, out, plan, files };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'flux-standin-'));
  models = join(root, 'models');
  await mkdir(models);
  await writeModelFile(join(models, 'flux1-dev.safetensors'), fluxLayout({ dtype: 'F8_E4M3' }));
  await writeModelFile(join(models, 'flux1-schnell.safetensors'), fluxLayout({ schnell: true }));
  await writeModelFile(join(models, 'Chroma.safetensors'), chromaLayout());
  await writeModelFile(join(models, 'clip_l.safetensors'), clipLLayout());
  await writeModelFile(join(models, 't5xxl_fp16.safetensors'), t5xxlLayout());
  await writeModelFile(join(models, 'ae.safetensors'), fluxAeLayout());
  await writeModelFile(join(models, 'noob-vpred.safetensors'), sdxlLayout({ vpred: true, ztsnr: true }));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('flux_train_network.py stand-in', () => {
  it('trains FLUX.1 dev with the planned steps and writes FLUX metadata, samples with --g', async () => {
    const s = await stage('flux1', 'flux1', 'flux1-dev.safetensors');
    expect(s.files.script).toBe('flux_train_network.py');
    const r = await runStandin(s.files);
    expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/Loaded Dev model/);
    expect(r.stdout + r.stderr).toMatch(/enable block swap: blocks_to_swap=8/);
    expect(r.stdout).toMatch(new RegExp(`total optimization steps / 学習ステップ数: ${s.plan.totalSteps}`));
    const h = await readSafetensorsHeader(join(s.out, `${OUTPUT_NAME}.safetensors`));
    expect(h.metadata).toMatchObject({
      ss_base_model_version: 'flux1',
      'modelspec.architecture': 'flux-1-dev/lora',
      'modelspec.implementation': 'https://github.com/black-forest-labs/flux',
      ss_model_type: 'flux',
      ss_guidance_scale: '1.0',
      ss_timestep_sampling: 'flux_shift',
      ss_model_prediction_type: 'raw',
      ss_network_module: 'networks.lora_flux',
    });
    expect(h.metadata).not.toHaveProperty('modelspec.prediction_type');
    expect((await readdir(join(s.out, 'sample'))).filter((f) => f.endsWith('.png')).length).toBeGreaterThanOrEqual(2);
  });

  it('names FLUX.1 schnell by its missing guidance embedder', async () => {
    const s = await stage('schnell', 'flux1', 'flux1-schnell.safetensors');
    const r = await runStandin(s.files);
    expect(r.code, r.stderr).toBe(0);
    const h = await readSafetensorsHeader(join(s.out, `${OUTPUT_NAME}.safetensors`));
    expect(h.metadata['modelspec.architecture']).toBe('flux-1-schnell/lora');
  });

  it('trains Chroma: model type, T5 attention mask, no CLIP-L, chroma metadata', async () => {
    const s = await stage('chroma', 'chroma', 'Chroma.safetensors');
    expect(s.files.config).not.toHaveProperty('clip_l');
    const r = await runStandin(s.files);
    expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
    const h = await readSafetensorsHeader(join(s.out, `${OUTPUT_NAME}.safetensors`));
    expect(h.metadata).toMatchObject({
      ss_base_model_version: 'chroma',
      'modelspec.architecture': 'chroma/lora',
      'modelspec.implementation': 'https://huggingface.co/lodestones/Chroma',
      ss_model_type: 'chroma',
      ss_apply_t5_attn_mask: 'True',
      ss_guidance_scale: '0.0',
      ss_timestep_sampling: 'sigmoid',
    });
  });

  it('refuses Chroma without the T5 attention mask, as assert_extra_args does', async () => {
    const s = await stage('chroma-no-mask', 'chroma', 'Chroma.safetensors');
    const config = (await import('node:fs/promises')).readFile;
    const text = (await config(s.files.paths.configToml, 'utf8')).replace('apply_t5_attn_mask = true\n', '');
    await writeFile(s.files.paths.configToml, text);
    const r = await runStandin(s.files);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/AssertionError: apply_t5_attn_mask must be True for Chroma/);
  });

  it('refuses cached text encoder outputs with shuffled captions', async () => {
    const s = await stage('shuffled', 'flux1', 'flux1-dev.safetensors');
    const fs = await import('node:fs/promises');
    await fs.writeFile(
      s.files.paths.datasetToml,
      (await fs.readFile(s.files.paths.datasetToml, 'utf8')).replace('shuffle_caption = false', 'shuffle_caption = true'),
    );
    const r = await runStandin(s.files);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/when caching Text Encoder output, either caption_dropout_rate, shuffle_caption/);
  });

  it('dies like the real script when the T5-XXL file is not there', async () => {
    const s = await stage('no-t5', 'flux1', 'flux1-dev.safetensors', (r) => ({
      ...r,
      companions: { clip_l: 'clip_l.safetensors', t5xxl: 'gone-t5.safetensors', ae: 'ae.safetensors' },
    }));
    const r = await runStandin(s.files);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/FileNotFoundError: No such file or directory: ".*gone-t5\.safetensors"/);
  });

  it('refuses Stable Diffusion-only keys in a strict config, and SD LoRA modules on a FLUX model', async () => {
    const s = await stage('sd-keys', 'flux1', 'flux1-dev.safetensors');
    const fs = await import('node:fs/promises');
    const original = await fs.readFile(s.files.paths.configToml, 'utf8');
    await fs.writeFile(s.files.paths.configToml, `${original}clip_skip = 2\n`);
    const strict = await runStandin(s.files);
    expect(strict.code).toBe(2);
    expect(strict.stderr).toMatch(/Stable Diffusion keys flux_train_network.py does not use: clip_skip/);
    await fs.writeFile(s.files.paths.configToml, original.replace('network_module = "networks.lora_flux"', 'network_module = "networks.lora"'));
    const sdModule = await runStandin(s.files);
    expect(sdModule.code).toBe(1);
    expect(sdModule.stderr).toMatch(/ValueError: optimizer got an empty parameter list/);
  });

  it('trains SDXL v-pred through sdxl_train_network.py with v-parameterization: prediction type v', async () => {
    const dir = join(root, 'vpred');
    const staging = join(dir, 'staging');
    const recipe = resolveRecipe('character', 'sdxl-vpred', { epochs: 1 });
    const plan = planRun({ base: 'sdxl-vpred', trigger: 'zkflux', className: 'woman', recipe, concepts: concepts() });
    for (const c of plan.concepts) {
      await mkdir(join(staging, c.folder), { recursive: true });
      for (const image of c.images) {
        await writeFile(
          join(staging, c.folder, `${image.id}.png`),
          await sharp({ create: { width: image.width, height: image.height, channels: 3, background: '#3050a0' } })
            .png()
            .toBuffer(),
        );
        await writeFile(join(staging, c.folder, `${image.id}.txt`), 'zkflux, 1girl, red hair\n');
      }
    }
    const files = buildKohyaFiles(plan, recipe, {
      runId: 'vpred',
      outputName: OUTPUT_NAME,
      outputDir: join(dir, 'out'),
      stagingDir: staging,
      baseModelPath: join(models, 'noob-vpred.safetensors'),
      samplePrompts: [],
      seed: 3,
    });
    await writeFile(files.paths.datasetToml, files.datasetToml);
    await writeFile(files.paths.configToml, files.configToml);
    await writeFile(files.paths.samplePromptsTxt, files.samplePromptsTxt);
    expect(files.script).toBe('sdxl_train_network.py');
    const r = await runStandin(files);
    expect(r.code, r.stderr).toBe(0);
    const h = await readSafetensorsHeader(join(dir, 'out', `${OUTPUT_NAME}.safetensors`));
    expect(h.metadata).toMatchObject({ ss_base_model_version: 'sdxl_base_v1-0', 'modelspec.prediction_type': 'v', ss_zero_terminal_snr: 'True' });
  });
});
