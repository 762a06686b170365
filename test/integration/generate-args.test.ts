import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkNegativeFor,
  checkPromptText,
  checkWeight,
  FLUX_GENERATE_SCRIPT,
  generateArgs,
  generatedFile,
  generateScript,
  parseSize,
  parseWeights,
} from '../../src/core/generate-args.ts';
import { chromaLayout, clipLLayout, fluxAeLayout, fluxLayout, t5xxlLayout, writeModelFile } from '../fixtures/model-layouts.ts';

const run = promisify(execFile);
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-genargs-'));
  await writeFile(join(tmp, 'base.safetensors'), Buffer.alloc(64));
  const header = Buffer.from(JSON.stringify({ __metadata__: {}, 'lora_unet_a.lora_down.weight': { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  await writeFile(join(tmp, 'lora.safetensors'), Buffer.concat([size, header, Buffer.alloc(2)]));
  await writeModelFile(join(tmp, 'flux1-dev.safetensors'), fluxLayout());
  await writeModelFile(join(tmp, 'flux1-schnell.safetensors'), fluxLayout({ schnell: true }));
  await writeModelFile(join(tmp, 'chroma.safetensors'), chromaLayout());
  await writeModelFile(join(tmp, 'clip_l.safetensors'), clipLLayout());
  await writeModelFile(join(tmp, 't5xxl.safetensors'), t5xxlLayout());
  await writeModelFile(join(tmp, 'ae.safetensors'), fluxAeLayout());
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('what members may ask for', () => {
  it('refuses `--` in prompts (gen_img.py reads it as an option), empty and over-long prompts', () => {
    expect(checkPromptText('  ohwx_hero,\n smiling  ', 'prompt')).toBe('ohwx_hero, smiling');
    expect(() => checkPromptText('a cat --n dog', 'prompt')).toThrow(/may not contain `--`/);
    expect(() => checkPromptText('   ', 'prompt')).toThrow(/empty/);
    expect(checkPromptText('', 'negative prompt')).toBe('');
    expect(() => checkPromptText('x'.repeat(401), 'negative prompt')).toThrow(/at most 400/);
  });

  it('reads sizes and weights', () => {
    expect(parseSize(null, 1024)).toEqual({ width: 1024, height: 1024 });
    expect(parseSize('768x512', 512)).toEqual({ width: 768, height: 512 });
    expect(() => parseSize('500', 512)).toThrow(/multiple of 64/);
    expect(() => parseSize('big', 512)).toThrow(/`size`/);
    expect(parseWeights('1, 0.5 0.75', 6)).toEqual([1, 0.5, 0.75]);
    expect(() => parseWeights('1, 1', 6)).toThrow(/twice/);
    expect(() => parseWeights('3', 6)).toThrow(/between -2 and 2/);
    expect(() => parseWeights('a', 6)).toThrow(/not a weight/);
    expect(checkWeight(0.1 + 0.2)).toBe(0.3);
  });
});

describe('the gen_img.py command line', () => {
  it('names the model, the LoRA and its weight, the seed and size; the stand-in reads it and writes the image gen_img.py would', async () => {
    const outDir = join(tmp, 'out');
    const args = generateArgs({
      modelPath: join(tmp, 'base.safetensors'),
      base: 'sdxl',
      loraPath: join(tmp, 'lora.safetensors'),
      weight: 0.8,
      outDir,
      settings: { prompt: 'ohwx_hero smiling', negative: 'blurry', seed: 1234, width: 320, height: 256 },
    });
    expect(args).toContain('--sdxl');
    expect(args.slice(args.indexOf('--prompt'), args.indexOf('--prompt') + 2)).toEqual(['--prompt', 'ohwx_hero smiling --n blurry']);
    const dump = join(tmp, 'args.json');
    await run('python3', ['test/fixtures/sd-scripts/gen_img.py', ...args], { env: { ...process.env, STANDIN_DUMP_ARGS: dump } });
    const parsed = JSON.parse(await readFile(dump, 'utf8')) as Record<string, unknown>;
    expect(parsed).toMatchObject({ sdxl: true, seed: 1234, W: 320, H: 256, network_module: ['networks.lora'], network_mul: [0.8], images_per_prompt: 1 });
    const names = await readdir(outDir);
    const name = generatedFile('sdxl', names, 1234);
    expect(name).toMatch(/^im_\d{14}_000_1234\.png$/);
    const png = await readFile(join(outDir, name!));
    expect(png.readUInt32BE(16)).toBe(320);
    expect(png.readUInt32BE(20)).toBe(256);
    expect(png.toString('latin1')).toContain('negative-prompt\0blurry');
    expect(generatedFile('sdxl', names, 99)).toBeNull();
  });

  it('the stand-in refuses what gen_img.py refuses', async () => {
    await expect(
      run('python3', ['test/fixtures/sd-scripts/gen_img.py', '--ckpt', join(tmp, 'base.safetensors'), '--prompt', 'x', '--sampler', 'nope']),
    ).rejects.toMatchObject({ code: 2 });
    await expect(run('python3', ['test/fixtures/sd-scripts/gen_img.py', '--ckpt', join(tmp, 'missing.safetensors'), '--prompt', 'x'])).rejects.toMatchObject({
      code: 1,
    });
  });
});

describe('the flux_minimal_inference.py command line', () => {
  const script = `test/fixtures/sd-scripts/${FLUX_GENERATE_SCRIPT}`;
  const files = () => ({ clipL: join(tmp, 'clip_l.safetensors'), t5xxl: join(tmp, 't5xxl.safetensors'), ae: join(tmp, 'ae.safetensors') });
  const draw = async (args: string[], dump: string) => {
    const { stdout } = await run('python3', [script, ...args], { env: { ...process.env, STANDIN_DUMP_ARGS: dump } });
    return { stdout, parsed: JSON.parse(await readFile(dump, 'utf8')) as Record<string, unknown> };
  };

  it('FLUX.1: the model type, text encoders and autoencoder, the LoRA as "file;weight"; the stand-in writes the image as the script names it', async () => {
    expect(generateScript('flux1')).toBe('flux_minimal_inference.py');
    expect(generateScript('chroma')).toBe('flux_minimal_inference.py');
    expect(generateScript('sdxl-vpred')).toBe('gen_img.py');
    const outDir = join(tmp, 'flux-out');
    const lora = join(tmp, 'lora.safetensors');
    const inv = {
      modelPath: join(tmp, 'flux1-dev.safetensors'),
      base: 'flux1' as const,
      loraPath: lora,
      weight: -0.5,
      outDir,
      settings: { prompt: 'ohwx_hero reading', negative: '', seed: 42, width: 256, height: 320 },
      flux: { ...files(), applyT5AttnMask: false, fp8: true },
    };
    const { stdout, parsed } = await draw(generateArgs(inv), join(tmp, 'flux-args.json'));
    expect(parsed).toMatchObject({
      model_type: 'flux',
      clip_l: files().clipL,
      t5xxl: files().t5xxl,
      ae: files().ae,
      apply_t5_attn_mask: false,
      prompt: 'ohwx_hero reading',
      seed: 42,
      width: 256,
      height: 320,
      guidance: 3.5,
      steps: null,
      negative_prompt: null,
      flux_dtype: 'fp8',
      offload: true,
      lora_weights: [`${lora};-0.5`],
    });
    // The script picks dev's 50 steps itself (4 for schnell).
    expect(stdout).toContain('num_steps: 50');
    const names = await readdir(outDir);
    const name = generatedFile('flux1', names, 42);
    expect(name).toMatch(/^\d{8}_\d{6}\.png$/);
    expect(stdout).toContain(`Saved image to ${join(outDir, name!)}`);
    const png = await readFile(join(outDir, name!));
    expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([256, 320]);
    expect(generatedFile('sdxl', names, 42)).toBeNull();

    const schnell = await draw(
      generateArgs({ ...inv, modelPath: join(tmp, 'flux1-schnell.safetensors'), outDir: join(tmp, 'schnell-out') }),
      join(tmp, 's.json'),
    );
    expect(schnell.stdout).toContain('num_steps: 4');
  });

  it('Chroma: no CLIP-L, the T5 mask, no guidance, and real guidance with a negative prompt; FLUX.1 takes none', async () => {
    const args = generateArgs({
      modelPath: join(tmp, 'chroma.safetensors'),
      base: 'chroma',
      loraPath: join(tmp, 'lora.safetensors'),
      weight: 1,
      outDir: join(tmp, 'chroma-out'),
      settings: { prompt: 'a watercolour street', negative: 'blurry', seed: 3, width: 512, height: 512 },
      flux: { clipL: null, t5xxl: files().t5xxl, ae: files().ae, applyT5AttnMask: true, fp8: false },
    });
    expect(args).not.toContain('--clip_l');
    const { stdout, parsed } = await draw(args, join(tmp, 'chroma-args.json'));
    expect(parsed).toMatchObject({
      model_type: 'chroma',
      clip_l: null,
      apply_t5_attn_mask: true,
      guidance: 0,
      negative_prompt: 'blurry',
      cfg_scale: 4,
      flux_dtype: null,
    });
    expect(stdout).toContain('Using classifier free guidance');
    expect(generatedFile('chroma', await readdir(join(tmp, 'chroma-out')), 3)).not.toBeNull();
    expect(() => checkNegativeFor('flux1', 'blurry')).toThrow(/FLUX\.1 draws without a negative prompt/);
    expect(checkNegativeFor('chroma', 'blurry')).toBe('blurry');
  });

  it('the images differ by seed, LoRA weight and prompt, and repeat for the same settings', async () => {
    const image = async (tag: string, seed: number, weight: number, prompt: string) => {
      const outDir = join(tmp, `cmp-${tag}`);
      await run('python3', [
        script,
        ...generateArgs({
          modelPath: join(tmp, 'flux1-dev.safetensors'),
          base: 'flux1',
          loraPath: join(tmp, 'lora.safetensors'),
          weight,
          outDir,
          settings: { prompt, negative: '', seed, width: 256, height: 256 },
          flux: { ...files(), applyT5AttnMask: false, fp8: false },
        }),
      ]);
      return readFile(join(outDir, generatedFile('flux1', await readdir(outDir), seed)!));
    };
    const [a, same, seed, weight, prompt] = await Promise.all([
      image('a', 1, 1, 'x'),
      image('a2', 1, 1, 'x'),
      image('b', 2, 1, 'x'),
      image('c', 1, 0.5, 'x'),
      image('d', 1, 1, 'y'),
    ]);
    expect(same.equals(a)).toBe(true);
    for (const other of [seed, weight, prompt]) expect(other.equals(a)).toBe(false);
  });

  it('the stand-in refuses what the script refuses: unknown arguments, missing files, the wrong model type, a file that is no LoRA', async () => {
    const base = ['--ckpt_path', join(tmp, 'flux1-dev.safetensors'), '--clip_l', files().clipL, '--t5xxl', files().t5xxl, '--ae', files().ae];
    await Promise.all([
      expect(run('python3', [script, ...base, '--network_mul', '1'])).rejects.toMatchObject({ code: 2 }),
      expect(run('python3', [script, ...base, '--model_type', 'sdxl'])).rejects.toMatchObject({ code: 2 }),
      expect(run('python3', [script, ...base.slice(0, 6), '--ae', join(tmp, 'missing.safetensors'), '--output_dir', join(tmp, 'x')])).rejects.toMatchObject({
        code: 1,
        stderr: expect.stringContaining('FileNotFoundError') as unknown,
      }),
      expect(run('python3', [script, ...base, '--model_type', 'chroma', '--output_dir', join(tmp, 'x')])).rejects.toMatchObject({
        stderr: expect.stringContaining('Missing key(s)') as unknown,
      }),
      expect(run('python3', [script, ...base, '--lora_weights', `${join(tmp, 'ae.safetensors')};1`, '--output_dir', join(tmp, 'x')])).rejects.toMatchObject({
        stderr: expect.stringContaining('Unexpected key(s)') as unknown,
      }),
      expect(run('python3', [script, ...base, '--flux_dtype', 'int4', '--output_dir', join(tmp, 'x')])).rejects.toMatchObject({
        stderr: expect.stringContaining('Unsupported dtype: int4') as unknown,
      }),
    ]);
  });
});
