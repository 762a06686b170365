import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPromptText, checkWeight, generateArgs, generatedFile, parseSize, parseWeights } from '../../src/core/generate-args.ts';

const run = promisify(execFile);
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-genargs-'));
  await writeFile(join(tmp, 'base.safetensors'), Buffer.alloc(64));
  const header = Buffer.from(JSON.stringify({ __metadata__: {}, 'lora_unet_a.lora_down.weight': { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  await writeFile(join(tmp, 'lora.safetensors'), Buffer.concat([size, header, Buffer.alloc(2)]));
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
    const name = generatedFile(names, 1234);
    expect(name).toMatch(/^im_\d{14}_000_1234\.png$/);
    const png = await readFile(join(outDir, name!));
    expect(png.readUInt32BE(16)).toBe(320);
    expect(png.readUInt32BE(20)).toBe(256);
    expect(png.toString('latin1')).toContain('negative-prompt\0blurry');
    expect(generatedFile(names, 99)).toBeNull();
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
