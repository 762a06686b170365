/**
 * The training core against the sd-scripts stand-in (test/fixtures/sd-scripts): the files
 * buildKohyaFiles writes are accepted by sd-scripts' rules, the stand-in trains what the plan
 * predicted, and kohya-progress reads its console output into the right events.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, deflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KohyaFiles, KohyaFilesOptions } from '../../src/core/kohya-config.ts';
import { buildKohyaFiles } from '../../src/core/kohya-config.ts';
import type { KohyaEvent } from '../../src/core/kohya-progress.ts';
import { KohyaProgressParser } from '../../src/core/kohya-progress.ts';
import type { Plan, PlanConceptInput } from '../../src/core/plan.ts';
import { planRun } from '../../src/core/plan.ts';
import type { ResolvedRecipe } from '../../src/core/recipes.ts';
import { resolveRecipe } from '../../src/core/recipes.ts';
import { dataSectionSha256, readSafetensorsHeader, writeSafetensors } from '../../src/core/safetensors.ts';
import { TrainerErrors } from '../../src/worker/trainer-failure.ts';

const STANDIN_DIR = fileURLToPath(new URL('../fixtures/sd-scripts/', import.meta.url));
/** Empty packages named like the optimizers' (the stand-in imports the one a run uses). */
const PYTHON_PACKAGES = fileURLToPath(new URL('../fixtures/python-packages/', import.meta.url));
const OUTPUT_NAME = 'zkchar-v1';

// --- a tiny PNG encoder (RGB, one solid colour) -------------------------------------------------
function chunk(type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), 8 + data.length);
  return out;
}
function png(width: number, height: number, rgb: [number, number, number]): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => rgb).flat())]);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
function pngSize(bytes: Buffer): [number, number] {
  expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
}

// --- running the stand-in --------------------------------------------------------------------------
interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  events: KohyaEvent[];
  tail: string[];
}

/** `launcher`: run the script under the `accelerate launch` stand-in, as the worker does. */
function runStandin(script: string, args: string[], env: Record<string, string> = {}, launcher = false): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const command = [
      ...(launcher ? [join(STANDIN_DIR, 'accelerate_launch.py'), '--num_cpu_threads_per_process', '1'] : []),
      join(STANDIN_DIR, script),
      ...args,
    ];
    const child = spawn('python3', command, {
      env: { ...process.env, PYTHONPATH: PYTHON_PACKAGES, PYTHONUNBUFFERED: '1', PYTHONIOENCODING: 'utf-8', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const parser = new KohyaProgressParser();
    const events: KohyaEvent[] = [];
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => {
      out.push(b);
      events.push(...parser.push(b, 'stdout'));
    });
    child.stderr.on('data', (b: Buffer) => {
      err.push(b);
      events.push(...parser.push(b, 'stderr'));
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      events.push(...parser.end());
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), events, tail: parser.tail() });
    });
  });
}

const of = <T extends KohyaEvent['type']>(events: KohyaEvent[], type: T) => events.filter((e): e is Extract<KohyaEvent, { type: T }> => e.type === type);

// --- a small staged dataset ------------------------------------------------------------------------
let root: string;
let baseModel: string;

const TRIGGER = 'zkchar';
function datasetConcepts(scale = 1): PlanConceptInput[] {
  const tags = ['smile', 'sitting', 'from side', 'outdoors'];
  return [
    {
      name: 'main',
      isMain: true,
      images: Array.from({ length: 6 }, (_, i) => ({
        id: `m${i}`,
        width: (i % 3 === 0 ? 768 : 512) * scale,
        height: (i % 3 === 1 ? 768 : 512) * scale,
        captioned: true,
        caption: `${TRIGGER}, red eyes, ${tags[i % 4]}`,
      })),
    },
    {
      name: 'school uniform',
      trigger: 'zkuniform',
      isMain: false,
      images: Array.from({ length: 8 }, (_, i) => ({
        id: `u${i}`,
        width: 512 * scale,
        height: 640 * scale,
        captioned: true,
        caption: `${TRIGGER}, zkuniform, ${tags[i % 4]}`,
      })),
    },
  ];
}

interface Staged {
  dir: string;
  out: string;
  plan: Plan;
  recipe: ResolvedRecipe;
  files: KohyaFiles;
}

async function stage(name: string, recipe: ResolvedRecipe, concepts = datasetConcepts(), extra: Partial<KohyaFilesOptions> = {}): Promise<Staged> {
  const dir = join(root, name);
  const staging = join(dir, 'staging');
  const out = join(dir, 'out');
  const plan = planRun({ base: recipe.base, trigger: TRIGGER, className: '1girl', recipe, concepts });
  for (const c of plan.concepts) {
    const folder = join(staging, c.folder);
    await mkdir(folder, { recursive: true });
    const input = concepts.find((x) => x.name === c.name);
    for (const [i, image] of (input?.images ?? []).entries()) {
      await writeFile(join(folder, `${image.id}.png`), png(image.width, image.height, [40 * i, 100, 200]));
      if (image.caption !== undefined) await writeFile(join(folder, `${image.id}.txt`), `${image.caption}\n`);
    }
  }
  const files = buildKohyaFiles(plan, recipe, {
    runId: name,
    outputName: OUTPUT_NAME,
    outputDir: out,
    stagingDir: staging,
    baseModelPath: baseModel,
    samplePrompts: [],
    seed: 1234,
    ...extra,
  });
  await writeKohyaFiles(files);
  return { dir, out, plan, recipe, files };
}

async function writeKohyaFiles(files: KohyaFiles): Promise<void> {
  await writeFile(files.paths.datasetToml, files.datasetToml);
  await writeFile(files.paths.configToml, files.configToml);
  await writeFile(files.paths.samplePromptsTxt, files.samplePromptsTxt);
}

beforeAll(async () => {
  const version = execFileSync('python3', ['-c', 'import sys, tomllib; print("%d.%d" % sys.version_info[:2])'], { encoding: 'utf8' }).trim();
  expect(Number(version.split('.')[1])).toBeGreaterThanOrEqual(11);
  root = await mkdtemp(join(tmpdir(), 'sd-scripts-standin-'));
  baseModel = join(root, 'base-model.safetensors');
  await writeSafetensors(baseModel, [{ name: 'model.diffusion_model.stub', dtype: 'F32', shape: [1], data: Buffer.alloc(4) }]);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

// -----------------------------------------------------------------------------------------------------
describe('sd-scripts stand-in with the files of buildKohyaFiles', () => {
  it('trains every epoch as planned: events, checkpoints, states, samples and metadata', async () => {
    const s = await stage('full', resolveRecipe('character', 'sd15', { epochs: 3 }));
    const { plan } = s;
    const spe = plan.stepsPerEpoch;
    const r = await runStandin(s.files.script, [...s.files.args], { STANDIN_STRICT_CONFIG: '1' });
    expect(r.code, r.stderr).toBe(0);

    // the trainer counted what the plan predicted
    const totals = Object.assign({}, ...of(r.events, 'totals')) as Record<string, number>;
    expect(totals).toMatchObject({
      stepsPerEpoch: spe,
      totalSteps: plan.totalSteps,
      epochs: 3,
      imagesWithRepeats: plan.concepts.reduce((n, c) => n + c.stepsPerEpoch, 0),
    });
    for (const [i, b] of plan.buckets.entries()) expect(r.stdout).toContain(`bucket ${i}: resolution (${b.size[0]}, ${b.size[1]}), count: ${b.count}`);

    expect(of(r.events, 'epoch')).toEqual([1, 2, 3].map((epoch) => ({ type: 'epoch', epoch, total: 3 })));
    const progress = of(r.events, 'progress');
    expect(progress.at(-1)).toMatchObject({ step: plan.totalSteps, total: plan.totalSteps, percent: 100 });
    // one redraw per optimizer step (tqdm redraws the last one again when it closes)
    const steps = progress.map((p) => p.step);
    expect(new Set(steps.filter((n) => n > 0)).size).toBe(plan.totalSteps);
    expect(steps.every((n, i) => i === 0 || n >= (steps[i - 1] ?? 0))).toBe(true);
    expect(progress.every((p) => p.loss === undefined || Number.isFinite(p.loss))).toBe(true);
    expect(of(r.events, 'checkpoint')).toEqual([
      { type: 'checkpoint', path: join(s.out, `${OUTPUT_NAME}-000001.safetensors`), epoch: 1 },
      { type: 'checkpoint', path: join(s.out, `${OUTPUT_NAME}-000002.safetensors`), epoch: 2 },
      { type: 'checkpoint', path: join(s.out, `${OUTPUT_NAME}.safetensors`) },
    ]);
    expect(of(r.events, 'state').filter((e) => e.path !== undefined)).toEqual([
      { type: 'state', path: join(s.out, `${OUTPUT_NAME}-000001-state`), epoch: 1, step: spe },
      { type: 'state', path: join(s.out, `${OUTPUT_NAME}-000002-state`), epoch: 2, step: 2 * spe },
      { type: 'state', path: join(s.out, `${OUTPUT_NAME}-state`), epoch: 3, step: 3 * spe },
    ]);
    expect(of(r.events, 'samples').map((e) => e.step)).toEqual([spe, 2 * spe, 3 * spe]);
    expect(of(r.events, 'saved')).toHaveLength(1);
    expect(of(r.events, 'error')).toEqual([]);

    // checkpoints: valid safetensors with the ss_* metadata and sd-scripts' hash
    const files = (await readdir(s.out)).sort();
    expect(files.filter((f) => f.endsWith('.safetensors'))).toEqual([
      `${OUTPUT_NAME}-000001.safetensors`,
      `${OUTPUT_NAME}-000002.safetensors`,
      `${OUTPUT_NAME}.safetensors`,
    ]);
    for (const [file, epoch] of [
      [`${OUTPUT_NAME}-000001.safetensors`, 1],
      [`${OUTPUT_NAME}-000002.safetensors`, 2],
      [`${OUTPUT_NAME}.safetensors`, 3],
    ] as const) {
      const path = join(s.out, file);
      const h = await readSafetensorsHeader(path);
      expect(h.metadata).toMatchObject({
        ss_output_name: OUTPUT_NAME,
        ss_epoch: String(epoch),
        ss_steps: String(epoch * spe),
        ss_network_module: 'networks.lora',
        ss_network_dim: '32',
        ss_network_alpha: '16.0',
        ss_num_epochs: '3',
        ss_seed: '1234',
        ss_base_model_version: 'sd_v1',
        'modelspec.trigger_phrase': 'zkchar',
      });
      expect(h.metadata.sshs_model_hash).toBe(await dataSectionSha256(path));
      const frequency = JSON.parse(h.metadata.ss_tag_frequency ?? '{}') as Record<string, Record<string, number>>;
      expect(Object.keys(frequency).sort()).toEqual(plan.concepts.map((c) => c.folder).sort());
      expect(frequency[plan.concepts[0]?.folder ?? '']).toMatchObject({ zkchar: 6, 'red eyes': 6, smile: 2 });
      expect(Object.values(h.tensors).every((t) => t.dtype === 'F16')).toBe(true);
    }

    // states: the last two epoch states (save_last_n_epochs_state = 2) and the end-of-run state
    expect(files.filter((f) => f.endsWith('-state'))).toEqual([`${OUTPUT_NAME}-000001-state`, `${OUTPUT_NAME}-000002-state`, `${OUTPUT_NAME}-state`]);
    const state = JSON.parse(await readFile(join(s.out, `${OUTPUT_NAME}-000002-state`, 'train_state.json'), 'utf8')) as unknown;
    expect(state).toEqual({ current_epoch: 2, current_step: 2 * spe });

    // samples: one PNG per epoch and prompt, named as sd-scripts names them, all different
    const samples = (await readdir(join(s.out, 'sample'))).sort();
    const promptCount = s.files.samplePromptsTxt.trimEnd().split('\n').length;
    expect(samples).toHaveLength(3 * promptCount);
    const hashes = new Set<string>();
    for (const name of samples) {
      const m = /^zkchar-v1_e00000([1-3])_(\d\d)_\d{14}_(\d+)\.png$/.exec(name);
      expect(m, name).not.toBeNull();
      expect(Number(m?.[3])).toBe(1234 + Number(m?.[2]));
      const bytes = await readFile(join(s.out, 'sample', name));
      expect(pngSize(bytes)).toEqual([s.recipe.sample.width, s.recipe.sample.height]);
      hashes.add(createHash('sha256').update(bytes).digest('hex'));
    }
    expect(hashes.size).toBe(samples.length);
  });

  it('crashes mid-epoch, then resumes from the last epoch state without repeating epochs', async () => {
    const s = await stage('resume', resolveRecipe('character', 'sd15', { epochs: 4 }));
    const spe = s.plan.stepsPerEpoch;
    const crash = await runStandin(s.files.script, [...s.files.args], { STANDIN_CRASH_AT_STEP: String(2 * spe + 3) });
    expect(crash.code).toBe(1);
    const errors = of(crash.events, 'error');
    expect(errors.map((e) => e.exception)).toEqual(['torch.OutOfMemoryError']);
    expect(errors[0]?.message).toContain('CUDA out of memory');
    expect(of(crash.events, 'progress').at(-1)?.step).toBe(2 * spe + 2);
    expect(of(crash.events, 'epoch').map((e) => e.epoch)).toEqual([1, 2, 3]);
    expect(crash.tail.some((l) => l.includes('Traceback (most recent call last):'))).toBe(true);
    expect(existsSync(join(s.out, `${OUTPUT_NAME}-000002.safetensors`))).toBe(true);
    expect(existsSync(join(s.out, `${OUTPUT_NAME}-000003.safetensors`))).toBe(false);
    expect(existsSync(join(s.out, `${OUTPUT_NAME}.safetensors`))).toBe(false);

    const stateDir = join(s.out, `${OUTPUT_NAME}-000002-state`);
    const resumed = buildKohyaFiles(s.plan, s.recipe, {
      runId: 'resume',
      outputName: OUTPUT_NAME,
      outputDir: s.out,
      stagingDir: join(s.dir, 'staging'),
      baseModelPath: baseModel,
      samplePrompts: [],
      seed: 1234,
      resume: { stateDir, initialEpoch: 3 },
    });
    await writeKohyaFiles(resumed);
    const r = await runStandin(resumed.script, [...resumed.args]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`resume training from local state: ${stateDir}`);
    expect(of(r.events, 'epoch').map((e) => e.epoch)).toEqual([3, 4]);
    // without --skip_until_initial_step the bar restarts at 0 over all steps: absolute = 2 × spe + n
    const last = of(r.events, 'progress').at(-1);
    expect(last).toMatchObject({ step: 2 * spe, total: s.plan.totalSteps });
    expect(2 * spe + (last?.step ?? 0)).toBe(s.plan.totalSteps);
    expect(of(r.events, 'checkpoint').map((c) => c.epoch ?? 'final')).toEqual([3, 'final']);
    const finalMeta = (await readSafetensorsHeader(join(s.out, `${OUTPUT_NAME}.safetensors`))).metadata;
    expect(finalMeta.ss_epoch).toBe('4');
    // sd-scripts restarts its step counter on a resume: the file counts only the resumed steps
    expect(finalMeta.ss_steps).toBe(String(2 * spe));

    const perEpoch = new Map<string, number>();
    for (const name of await readdir(join(s.out, 'sample'))) {
      const epoch = name.slice(OUTPUT_NAME.length + 1, OUTPUT_NAME.length + 8);
      perEpoch.set(epoch, (perEpoch.get(epoch) ?? 0) + 1);
    }
    const prompts = resumed.samplePromptsTxt.trimEnd().split('\n').length;
    expect(Object.fromEntries(perEpoch)).toEqual({ e000001: prompts, e000002: prompts, e000003: prompts, e000004: prompts });
  });

  it('can die by a signal mid-epoch, leaving the bar unterminated', async () => {
    const s = await stage('killed', resolveRecipe('quick', 'sd15'));
    const r = await runStandin(s.files.script, [...s.files.args], { STANDIN_CRASH_AT_STEP: '10', STANDIN_CRASH_MODE: 'kill' });
    expect(r.code).toBeNull();
    expect(r.signal).toBe('SIGKILL');
    expect(of(r.events, 'progress').at(-1)?.step).toBe(9);
    expect(r.tail.at(-1)).toContain(`9/${s.plan.totalSteps}`);
  });

  it('buckets without upscaling as the plan does (photo recipe)', async () => {
    const concepts: PlanConceptInput[] = [
      {
        name: 'city',
        isMain: true,
        images: [
          [1200, 800],
          [4000, 3000],
          [300, 200],
          [700, 700],
          [640, 960],
          [1920, 1080],
        ].map(([w, h], i) => ({ id: `c${i}`, width: w ?? 0, height: h ?? 0, captioned: true, caption: `${TRIGGER}, street` })),
      },
    ];
    const s = await stage('photo', resolveRecipe('photo', 'sd15', { epochs: 1 }), concepts);
    const r = await runStandin(s.files.script, [...s.files.args], { STANDIN_STRICT_CONFIG: '1' });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('bucket '));
    expect(lines).toEqual(s.plan.buckets.map((b, i) => `bucket ${i}: resolution (${b.size[0]}, ${b.size[1]}), count: ${b.count}`));
    expect(of(r.events, 'totals').find((t) => t.stepsPerEpoch !== undefined)?.stepsPerEpoch).toBe(s.plan.stepsPerEpoch);
  });

  it('reports avr_loss=nan as a nan event', async () => {
    const s = await stage('nan', resolveRecipe('quick', 'sd15'));
    const r = await runStandin(s.files.script, [...s.files.args], { STANDIN_NAN_AT_STEP: '5' });
    expect(r.code).toBe(0);
    expect(of(r.events, 'nan')).toEqual([{ type: 'nan', step: 5 }]);
  });

  it('runs SDXL through sdxl_train_network.py', async () => {
    const s = await stage('sdxl', resolveRecipe('character', 'sdxl', { epochs: 1 }), datasetConcepts(2));
    expect(s.files.script).toBe('sdxl_train_network.py');
    const r = await runStandin(s.files.script, [...s.files.args], { STANDIN_STRICT_CONFIG: '1' });
    expect(r.code, r.stderr).toBe(0);
    expect(of(r.events, 'totals').find((t) => t.stepsPerEpoch !== undefined)?.stepsPerEpoch).toBe(s.plan.stepsPerEpoch);
    const h = await readSafetensorsHeader(join(s.out, `${OUTPUT_NAME}.safetensors`));
    expect(h.metadata).toMatchObject({ ss_base_model_version: 'sdxl_base_v1-0', 'modelspec.architecture': 'stable-diffusion-xl-v1-base/lora' });
    const [sample] = await readdir(join(s.out, 'sample'));
    expect(pngSize(await readFile(join(s.out, 'sample', sample ?? '')))).toEqual([832, 1216]);
  });
});

describe("the stand-in holds sd-scripts' rules", () => {
  it('command line over config file over defaults', async () => {
    const s = await stage('precedence', resolveRecipe('character', 'sd15', { epochs: 3 }));
    const dump = join(s.dir, 'args.json');
    const r = await runStandin(s.files.script, [...s.files.args, '--max_train_epochs', '1'], { STANDIN_DUMP_ARGS: dump });
    expect(r.code, r.stderr).toBe(0);
    const args = JSON.parse(await readFile(dump, 'utf8')) as Record<string, unknown>;
    expect(args).toMatchObject({ max_train_epochs: 1, learning_rate: 1.0, network_dim: 32, max_grad_norm: 1.0, caption_extension: '.txt' });
    expect(of(r.events, 'epoch')).toEqual([{ type: 'epoch', epoch: 1, total: 1 }]);
  });

  it('refuses an unknown dataset TOML key with "Invalid user config" and exit 1', async () => {
    const s = await stage('bad-dataset', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.datasetToml, s.files.datasetToml.replace('[general]\n', '[general]\nshufle_caption = true\n'));
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain('Invalid user config');
    expect(of(r.events, 'error')).toEqual([
      { type: 'error', exception: 'voluptuous.error.MultipleInvalid', message: "extra keys not allowed @ data['general']['shufle_caption']" },
    ]);
  });

  it('refuses an integer where the dataset schema wants a float', async () => {
    const s = await stage('bad-type', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.datasetToml, s.files.datasetToml.replace('[[datasets]]\n', '[[datasets]]\nnetwork_multiplier = 1\n'));
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(1);
    expect(of(r.events, 'error')[0]?.message).toBe("expected float for dictionary value @ data['datasets'][0]['network_multiplier']");
  });

  it('ignores unknown config-file keys, as sd-scripts does (the strict test mode refuses them)', async () => {
    const s = await stage('typo', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.configToml, `${s.files.configToml}netwrok_dim = 8\n`);
    expect((await runStandin(s.files.script, [...s.files.args])).code).toBe(0);
    const strict = await runStandin(s.files.script, [...s.files.args], { STANDIN_STRICT_CONFIG: '1' });
    expect(strict.code).toBe(2);
    expect(strict.stderr).toContain('netwrok_dim');
  });

  it('dies on an integer resolution in the config file', async () => {
    const s = await stage('int-resolution', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.configToml, s.files.configToml.replace('resolution = "512,512"', 'resolution = 512'));
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(1);
    expect(of(r.events, 'error')[0]).toMatchObject({ exception: 'AttributeError', message: "'int' object has no attribute 'split'" });
  });

  it('dies on an empty caption file (AssertionError)', async () => {
    const s = await stage('empty-caption', resolveRecipe('character', 'sd15', { epochs: 1 }));
    const folder = join(s.dir, 'staging', s.plan.concepts[0]?.folder ?? '');
    await writeFile(join(folder, 'm0.txt'), '');
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(1);
    expect(of(r.events, 'error')[0]?.exception).toBe('AssertionError');
    expect(of(r.events, 'error')[0]?.message).toContain('caption file is empty');
  });

  it('dies on images of other sizes when bucketing is off and latents are not cached', async () => {
    const s = await stage('no-bucket', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.datasetToml, s.files.datasetToml.replace('enable_bucket = true', 'enable_bucket = false'));
    await writeFile(
      s.files.paths.configToml,
      s.files.configToml.replace('enable_bucket = true', 'enable_bucket = false').replace('cache_latents = true', 'cache_latents = false'),
    );
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(1);
    expect(of(r.events, 'error')[0]?.exception).toBe('AssertionError');
    expect(of(r.events, 'error')[0]?.message).toMatch(/cropping and bucketing are disabled|image size is small/);
  });

  it("under the accelerate launcher: the script's traceback, then the launcher's; the script's error is the reason", async () => {
    const s = await stage('launched-bad-dataset', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.datasetToml, s.files.datasetToml.replace('[general]\n', '[general]\nshufle_caption = true\n'));
    const r = await runStandin(s.files.script, [...s.files.args], {}, true);
    expect(r.code).toBe(1);
    const errors = of(r.events, 'error');
    expect(errors.map((e) => e.exception)).toEqual(['voluptuous.error.MultipleInvalid', 'subprocess.CalledProcessError']);
    expect(errors[1]?.message).toMatch(/^Command '\[.*train_network\.py.*\]' returned non-zero exit status 1\.$/);
    const reasons = new TrainerErrors();
    for (const e of errors) reasons.add(e);
    expect(reasons.reason({ code: r.code, signal: r.signal })).toBe(
      "the trainer exited with code 1: voluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['shufle_caption']",
    );

    const killed = await stage('launched-killed', resolveRecipe('quick', 'sd15'));
    const k = await runStandin(killed.files.script, [...killed.files.args], { STANDIN_CRASH_AT_STEP: '3', STANDIN_CRASH_MODE: 'kill' }, true);
    // The launcher outlives its script and exits 1, saying which signal killed it.
    expect({ code: k.code, signal: k.signal }).toEqual({ code: 1, signal: null });
    const launcherErrors = of(k.events, 'error');
    expect(launcherErrors.map((e) => e.message)).toEqual([expect.stringMatching(/died with <Signals\.SIGKILL: 9>\.$/)]);
    const killedReasons = new TrainerErrors();
    for (const e of launcherErrors) killedReasons.add(e);
    expect(killedReasons.reason({ code: k.code, signal: k.signal })).toBe('the trainer was killed by SIGKILL (out of memory?)');
  });

  it("dies as sd-scripts does when the optimizer's package is not installed (DAdaptAdam without dadaptation)", async () => {
    const s = await stage('no-dadaptation', resolveRecipe('character', 'sd15', { epochs: 1, optimizer: 'DAdaptAdam' }));
    const without = join(s.dir, 'python-packages');
    await mkdir(without);
    for (const name of ['torch', 'bitsandbytes', 'transformers', 'lion_pytorch', 'prodigyopt'])
      await cp(join(PYTHON_PACKAGES, name), join(without, name), { recursive: true });
    const r = await runStandin(s.files.script, [...s.files.args], { PYTHONPATH: without }, true);
    expect(r.code).toBe(1);
    const errors = of(r.events, 'error');
    expect(errors.map((e) => `${e.exception}: ${e.message}`)).toEqual([
      "ModuleNotFoundError: No module named 'dadaptation'",
      expect.stringMatching(/^ImportError: No dadaptation \//),
      expect.stringMatching(/^subprocess\.CalledProcessError: /),
    ]);
    const reasons = new TrainerErrors();
    for (const e of errors) reasons.add(e);
    expect(reasons.reason({ code: r.code, signal: r.signal })).toBe("the trainer exited with code 1: ModuleNotFoundError: No module named 'dadaptation'");
    // with the package there, the same run trains
    expect((await runStandin(s.files.script, [...s.files.args], {}, true)).code).toBe(0);
  });

  it('exits 0 having done nothing when there is no dataset at all', async () => {
    const s = await stage('no-data', resolveRecipe('character', 'sd15', { epochs: 1 }));
    await writeFile(s.files.paths.configToml, s.files.configToml.replace(/^dataset_config = .*$/m, ''));
    const r = await runStandin(s.files.script, [...s.files.args]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('No data found');
    expect(existsSync(s.out)).toBe(false);
  });
});
