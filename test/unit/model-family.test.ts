import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { detectModelFile, FAMILY_INFO, BASE_FAMILIES } from '../../src/core/model-family.ts';
import { readSafetensorsHeader } from '../../src/core/safetensors.ts';
import { scanModelFiles } from '../../src/worker/worker-registry.ts';
import {
  chromaLayout,
  clipLLayout,
  fluxAeLayout,
  fluxDiffusersLayout,
  fluxLayout,
  loraLayout,
  sd15Layout,
  sd2Layout,
  sdxlLayout,
  sdxlVaeLayout,
  t5xxlLayout,
  writeModelFile,
  type Layout,
} from '../fixtures/model-layouts.ts';

const detect = (layout: Layout, metadata: Record<string, string> = {}) => detectModelFile(layout, metadata);

function expectUnknown(found: ReturnType<typeof detect>, why: RegExp): void {
  expect(found.kind).toBe('unknown');
  expect(found.detail).toMatch(why);
}

describe('detectModelFile', () => {
  it('tells each base family from its key layout', () => {
    expect(detect(sd15Layout())).toMatchObject({ kind: 'sd15' });
    expect(detect(sdxlLayout())).toMatchObject({ kind: 'sdxl' });
    expect(detect(fluxLayout())).toMatchObject({ kind: 'flux1', variant: 'dev' });
    expect(detect(chromaLayout())).toMatchObject({ kind: 'chroma' });
  });

  it('tells FLUX.1 schnell from dev by the guidance embedder, and reads ComfyUI-prefixed and fp8 files', () => {
    expect(detect(fluxLayout({ schnell: true }))).toMatchObject({ kind: 'flux1', variant: 'schnell' });
    expect(detect(fluxLayout({ comfyPrefix: true }))).toMatchObject({ kind: 'flux1', variant: 'dev' });
    expect(detect(fluxLayout({ dtype: 'F8_E4M3' }))).toMatchObject({ kind: 'flux1', fp8: true });
    expect(detect(chromaLayout({ dtype: 'F8_E4M3' }))).toMatchObject({ kind: 'chroma', fp8: true });
  });

  it('sees v-prediction SDXL only through its marker tensors or model-spec metadata', () => {
    expect(detect(sdxlLayout({ vpred: true, ztsnr: true }))).toMatchObject({ kind: 'sdxl-vpred', zeroTerminalSnr: true });
    expect(detect(sdxlLayout({ vpred: true }))).toMatchObject({ kind: 'sdxl-vpred', zeroTerminalSnr: false });
    expect(detect(sdxlLayout(), { 'modelspec.prediction_type': 'v' })).toMatchObject({ kind: 'sdxl-vpred' });
    expect(detect(sdxlLayout(), { 'modelspec.prediction_type': 'epsilon' })).toMatchObject({ kind: 'sdxl' });
  });

  it('tells the FLUX companion files: CLIP-L, T5-XXL (fp16 and fp8) and the autoencoder', () => {
    expect(detect(clipLLayout())).toMatchObject({ kind: 'clip_l' });
    expect(detect(t5xxlLayout())).toMatchObject({ kind: 't5xxl' });
    expect(detect(t5xxlLayout({ fp8: true }))).toMatchObject({ kind: 't5xxl', fp8: true });
    expect(detect(fluxAeLayout())).toMatchObject({ kind: 'ae' });
  });

  it('calls everything else unknown, saying what it looks like', () => {
    expectUnknown(detect(sd2Layout()), /SD 2/);
    expectUnknown(detect(sd15Layout({ inpainting: true })), /9 input channels/);
    expectUnknown(detect(sdxlLayout({ refiner: true })), /refiner/);
    expectUnknown(detect(sdxlVaeLayout()), /4 latent channels/);
    expectUnknown(detect(fluxDiffusersLayout()), /Diffusers/);
    expectUnknown(detect(loraLayout()), /LoRA/);
    expect(detect({ weight: { dtype: 'F32', shape: [4, 4] } })).toMatchObject({ kind: 'unknown', detail: 'no known layout' });
    expect(detect({})).toMatchObject({ kind: 'unknown' });
  });

  it('checks shapes, not only names: a FLUX-named transformer of another width is unknown', () => {
    const odd = fluxLayout();
    odd['img_in.weight'] = { dtype: 'BF16', shape: [2048, 64] };
    expect(detect(odd)).toMatchObject({ kind: 'unknown' });
    const sd = sd15Layout();
    sd['cond_stage_model.transformer.text_model.embeddings.token_embedding.weight'] = { dtype: 'F16', shape: [49408, 1024] };
    expect(detect(sd)).toMatchObject({ kind: 'unknown' });
    const t5 = t5xxlLayout();
    t5['encoder.block.0.layer.0.SelfAttention.q.weight'] = { dtype: 'F16', shape: [768, 768] };
    expectUnknown(detect(t5), /not T5-XXL/);
  });

  it('lists what each family needs besides the checkpoint', () => {
    expect(BASE_FAMILIES.filter((f) => FAMILY_INFO[f].companions.length > 0)).toEqual(['flux1', 'chroma']);
    expect(FAMILY_INFO.flux1.companions).toEqual(['clip_l', 't5xxl', 'ae']);
    expect(FAMILY_INFO.chroma.companions).toEqual(['t5xxl', 'ae']);
  });
});

describe('model files on disk', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('reads a full-size FLUX.1 header from a sparse file and detects it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'model-family-'));
    dirs.push(dir);
    const path = join(dir, 'renamed-to-look-like-sd15.safetensors');
    await writeModelFile(path, fluxLayout());
    const header = await readSafetensorsHeader(path);
    // 11.9 billion parameters in bf16: the data section is really that large, as a hole.
    expect(header.dataLength).toBeGreaterThan(20e9);
    expect((await stat(path)).blocks * 512).toBeLessThan(10e6);
    expect(detectModelFile(header.tensors, header.metadata)).toMatchObject({ kind: 'flux1', variant: 'dev' });
  });

  it('sorts a models folder into base checkpoints and companions by header, not by name', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'model-family-'));
    dirs.push(dir);
    await writeModelFile(join(dir, 'flux1-dev.safetensors'), fluxLayout({ dtype: 'F8_E4M3' }));
    await writeModelFile(join(dir, 'chroma-unlocked.safetensors'), chromaLayout());
    await writeModelFile(join(dir, 'noobai-XL-vpred.safetensors'), sdxlLayout({ vpred: true, ztsnr: true }));
    // Names that lie: the header wins.
    await writeModelFile(join(dir, 'my-sdxl-model.safetensors'), sd15Layout());
    await writeModelFile(join(dir, 'clip_l.safetensors'), clipLLayout());
    await writeModelFile(join(dir, 't5xxl_fp8_e4m3fn.safetensors'), t5xxlLayout({ fp8: true }));
    await writeModelFile(join(dir, 'ae.safetensors'), fluxAeLayout());
    await writeModelFile(join(dir, 'sdxl_vae.safetensors'), sdxlVaeLayout());
    await writeModelFile(join(dir, 'someone-XL-lora.safetensors'), loraLayout());
    await writeFile(join(dir, 'old-sd15.ckpt'), 'a pickle the header reader cannot open');
    const scan = await scanModelFiles(dir);
    expect(scan.models).toEqual([
      { file: 'chroma-unlocked.safetensors', base: 'chroma' },
      { file: 'flux1-dev.safetensors', base: 'flux1', variant: 'dev' },
      { file: 'my-sdxl-model.safetensors', base: 'sd15' },
      { file: 'noobai-XL-vpred.safetensors', base: 'sdxl-vpred' },
      { file: 'old-sd15.ckpt', base: 'sd15' },
    ]);
    expect(scan.companions).toEqual([
      { file: 'ae.safetensors', kind: 'ae' },
      { file: 'clip_l.safetensors', kind: 'clip_l' },
      { file: 't5xxl_fp8_e4m3fn.safetensors', kind: 't5xxl', fp8: true },
    ]);
  });
});
