import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLoraMetadata, computeDatasetHash, enrichLoraMetadata, jsonAscii, type LoraInfo } from '../../src/core/lora-metadata.ts';
import { readSafetensorsHeader, SafetensorsError, writeSafetensors, type TensorInput } from '../../src/core/safetensors.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-metadata-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

/** Deterministic bytes that are not all alike. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const TENSORS: TensorInput[] = [
  { name: 'lora_unet_down_blocks_0_attentions_0_proj_in.alpha', dtype: 'F16', shape: [], data: Buffer.from([0x00, 0x4c]) },
  { name: 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight', dtype: 'F16', shape: [8, 320], data: bytes(8 * 320 * 2, 1) },
  { name: 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight', dtype: 'F16', shape: [320, 8], data: bytes(320 * 8 * 2, 2) },
  { name: 'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight', dtype: 'F32', shape: [8, 77], data: bytes(8 * 77 * 4, 3) },
];

/** What sd-scripts writes, abridged: every value a string. */
const KOHYA_METADATA: Record<string, string> = {
  ss_session_id: '1234567890',
  ss_output_name: 'aria-r3k9',
  ss_network_module: 'networks.lora',
  ss_network_dim: '8',
  ss_network_alpha: '4.0',
  ss_base_model_version: 'sd_v1',
  ss_epoch: '4',
  ss_steps: '400',
  ss_tag_frequency: '{"10_aria": {"aria": 12, "1girl": 12}}',
  ss_dataset_dirs: '{"10_aria": {"n_repeats": 10, "img_count": 12}}',
  sshs_legacy_hash: 'a1b2c3d4',
  'modelspec.sai_model_spec': '1.0.1',
  'modelspec.architecture': 'stable-diffusion-v1/lora',
  'modelspec.implementation': 'diffusers',
  'modelspec.title': 'aria-r3k9',
  'modelspec.resolution': '512x512',
  'modelspec.date': '2026-03-01T12:00:00',
  'modelspec.prediction_type': 'epsilon',
};

const INFO: LoraInfo = {
  triggerWords: ['aria', ' aria_casual ', '', 'aria'],
  tagFrequency: { '10_aria': { aria: 12, '1girl': 11, 'blue hair': 9 }, '5_aria_casual': { aria_casual: 6, hoodie: 4 } },
  contributors: [
    { id: '111111111111111111', name: 'Zoë', images: 10 },
    { id: '222222222222222222', name: 'bob "the" builder', images: 8 },
  ],
  datasetHash: sha256('dataset'),
  recipe: { name: 'prodigy-character', optimizer: 'Prodigy', lr: 1, networkDim: 16, extras: { d_coef: 2 } },
  voteWinner: { epoch: 4, votes: 7 },
  title: 'Aria (community LoRA)',
  runId: 'r3k9',
  epoch: 4,
  resolution: 512,
  base: 'sd15',
};

/** The file's raw parts, read as a third-party tool would: 8-byte LE length, JSON, data section. */
async function rawParts(path: string) {
  const file = await readFile(path);
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  return { header, data: file.subarray(8 + n), n };
}

async function loraFile(name: string, metadata: Record<string, string> = KOHYA_METADATA): Promise<string> {
  const path = join(dir, name);
  await writeSafetensors(path, TENSORS, metadata);
  return path;
}

describe('enrichLoraMetadata', () => {
  it('writes a file whose header parses and whose tensor bytes are identical', async () => {
    const src = await loraFile('a.safetensors');
    const dest = join(dir, 'a-enriched.safetensors');
    const result = await enrichLoraMetadata(src, dest, INFO);

    const before = await rawParts(src);
    const after = await rawParts(dest);
    expect(after.n % 8).toBe(0);
    expect(Buffer.compare(after.data, before.data)).toBe(0);
    expect(sha256(after.data)).toBe(sha256(before.data));
    // Tensor entries unchanged (dtype, shape, offsets).
    for (const t of TENSORS) expect(after.header[t.name]).toEqual(before.header[t.name]);
    // The repo's strict reader accepts it too.
    const parsed = await readSafetensorsHeader(dest);
    expect(Object.keys(parsed.tensors).sort()).toEqual(TENSORS.map((t) => t.name).sort());
    expect(parsed.metadata).toEqual(result.metadata);
  });

  it('sets sshs_model_hash to the sha256 of the data section', async () => {
    const src = await loraFile('b.safetensors');
    const dest = join(dir, 'b-enriched.safetensors');
    const { modelHash } = await enrichLoraMetadata(src, dest, INFO);
    const { header, data } = await rawParts(dest);
    const meta = header.__metadata__ as Record<string, string>;
    expect(meta.sshs_model_hash).toBe(sha256(data));
    expect(modelHash).toBe(sha256(Buffer.concat(TENSORS.map((t) => t.data))));
  });

  it('keeps every existing key and writes only strings', async () => {
    const src = await loraFile('c.safetensors', { ...KOHYA_METADATA, 'custom.key': 'kept' });
    const dest = join(dir, 'c-enriched.safetensors');
    await enrichLoraMetadata(src, dest, INFO);
    const meta = (await rawParts(dest)).header.__metadata__ as Record<string, unknown>;
    for (const [k, v] of Object.entries(KOHYA_METADATA)) {
      if (k === 'ss_tag_frequency' || k === 'modelspec.title') continue; // ours, overwritten
      expect(meta[k], k).toBe(v);
    }
    expect(meta['custom.key']).toBe('kept');
    for (const [k, v] of Object.entries(meta)) expect(typeof v, k).toBe('string');
  });

  it('lets a kohya metadata reader see our triggers, tag frequency and guild keys', async () => {
    const src = await loraFile('d.safetensors');
    const dest = join(dir, 'd-enriched.safetensors');
    await enrichLoraMetadata(src, dest, INFO);
    const meta = (await rawParts(dest)).header.__metadata__ as Record<string, string>;

    expect(meta['modelspec.trigger_phrase']).toBe('aria');
    expect(meta['modelspec.title']).toBe('Aria (community LoRA)');
    expect(JSON.parse(meta.ss_tag_frequency!)).toEqual(INFO.tagFrequency);
    // What a web UI does with it: the top tags per folder.
    const freq = JSON.parse(meta.ss_tag_frequency!) as Record<string, Record<string, number>>;
    const top = Object.entries(freq['10_aria']!).sort((a, b) => b[1] - a[1])[0];
    expect(top).toEqual(['aria', 12]);

    expect(JSON.parse(meta['loraguild.contributors']!)).toEqual(INFO.contributors);
    expect(meta['loraguild.contributors']).toContain('Zo\\u00eb'); // ASCII-escaped like json.dumps
    expect(JSON.parse(meta['loraguild.recipe']!)).toEqual(INFO.recipe);
    expect(JSON.parse(meta['loraguild.vote_winner']!)).toEqual({ epoch: 4, votes: 7 });
    expect(JSON.parse(meta['loraguild.trigger_words']!)).toEqual(['aria', 'aria_casual']);
    expect(meta['loraguild.dataset_hash']).toBe(INFO.datasetHash);
    expect(meta['loraguild.run_id']).toBe('r3k9');
    expect(meta['loraguild.epoch']).toBe('4');
  });

  it('adds modelspec basics when sd-scripts wrote none (no_metadata), for SDXL too', async () => {
    const src = await loraFile('e.safetensors', { ss_network_module: 'networks.lora', ss_network_dim: '8' });
    const dest = join(dir, 'e-enriched.safetensors');
    const { metadata } = await enrichLoraMetadata(src, dest, { ...INFO, base: 'sdxl', resolution: 1024, epoch: 'final', voteWinner: null });
    expect(metadata['modelspec.sai_model_spec']).toBe('1.0.1');
    expect(metadata['modelspec.architecture']).toBe('stable-diffusion-xl-v1-base/lora');
    expect(metadata['modelspec.implementation']).toBe('https://github.com/Stability-AI/generative-models');
    expect(metadata['modelspec.resolution']).toBe('1024x1024');
    expect(metadata['loraguild.epoch']).toBe('final');
    expect(metadata['loraguild.vote_winner']).toBe('null');
    expect(metadata.ss_network_dim).toBe('8');
  });

  it("writes the steps of the whole run as ss_steps (a resumed sd-scripts counts only its own), and keeps the trainer's count otherwise", () => {
    // 4 epochs × 100 steps, resumed after epoch 2: the resumed process wrote 200.
    const resumed = { ...KOHYA_METADATA, ss_steps: '200' };
    expect(buildLoraMetadata(resumed, { ...INFO, steps: 400 }, sha256('x')).ss_steps).toBe('400');
    expect(buildLoraMetadata(resumed, INFO, sha256('x')).ss_steps).toBe('200');
    expect(() => buildLoraMetadata(resumed, { ...INFO, steps: 0 }, sha256('x'))).toThrow(/steps/);
    expect(() => buildLoraMetadata(resumed, { ...INFO, steps: 2.5 }, sha256('x'))).toThrow(/steps/);
  });

  it('does not overwrite an existing architecture', () => {
    const meta = buildLoraMetadata({ 'modelspec.architecture': 'stable-diffusion-v2-512/lora' }, INFO, sha256('x'));
    expect(meta['modelspec.architecture']).toBe('stable-diffusion-v2-512/lora');
  });

  it('accepts an existing sshs_model_hash that matches, and refuses one that does not', async () => {
    const dataHash = sha256(Buffer.concat(TENSORS.map((t) => t.data)));
    const ok = await loraFile('f.safetensors', { ...KOHYA_METADATA, sshs_model_hash: dataHash });
    await expect(enrichLoraMetadata(ok, join(dir, 'f-enriched.safetensors'), INFO)).resolves.toMatchObject({ modelHash: dataHash });

    const bad = await loraFile('g.safetensors', { ...KOHYA_METADATA, sshs_model_hash: sha256('something else') });
    const dest = join(dir, 'g-enriched.safetensors');
    await expect(enrichLoraMetadata(bad, dest, INFO)).rejects.toThrow(SafetensorsError);
    await expect(readFile(dest)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('can rewrite a file in place, leaving no temp files', async () => {
    const src = await loraFile('h.safetensors');
    const dataBefore = (await rawParts(src)).data;
    await enrichLoraMetadata(src, src, INFO);
    const after = await rawParts(src);
    expect(Buffer.compare(after.data, dataBefore)).toBe(0);
    expect((after.header.__metadata__ as Record<string, string>)['loraguild.run_id']).toBe('r3k9');
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('refuses bad info before writing anything', async () => {
    const src = await loraFile('i.safetensors');
    const dest = join(dir, 'i-enriched.safetensors');
    await expect(enrichLoraMetadata(src, dest, { ...INFO, datasetHash: 'nope' })).rejects.toThrow(/datasetHash/);
    await expect(enrichLoraMetadata(src, dest, { ...INFO, tagFrequency: { '10_aria': { aria: -1 } } })).rejects.toThrow(/count/);
    await expect(readFile(dest)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('jsonAscii', () => {
  it('escapes non-ASCII like Python json.dumps, and stays valid JSON', () => {
    expect(jsonAscii({ name: 'Zoë 🎨' })).toBe('{"name":"Zo\\u00eb \\ud83c\\udfa8"}');
    expect(JSON.parse(jsonAscii({ name: 'Zoë 🎨' }))).toEqual({ name: 'Zoë 🎨' });
  });
});

describe('computeDatasetHash', () => {
  const a = sha256('a');
  const b = sha256('b');

  it('does not depend on the order of the items', () => {
    const one = computeDatasetHash([
      { blob: a, caption: 'aria, 1girl' },
      { blob: b, caption: null },
    ]);
    const two = computeDatasetHash([
      { blob: b, caption: null },
      { blob: a, caption: 'aria, 1girl' },
    ]);
    expect(one).toBe(two);
    expect(one).toMatch(/^[0-9a-f]{64}$/);
  });

  it('is the sha256 of the sorted blob:caption lines', () => {
    const lines = [`${a}:"x"`, `${b}:null`].sort();
    expect(lines[0]!.startsWith(b)).toBe(true); // sha256('b') < sha256('a'): the order is the sort's
    const expected = sha256(`${lines.join('\n')}\n`);
    expect(
      computeDatasetHash([
        { blob: b, caption: null },
        { blob: a, caption: 'x' },
      ]),
    ).toBe(expected);
  });

  it('changes with any caption, tells a missing caption from an empty one, and resists forged lines', () => {
    const base = computeDatasetHash([{ blob: a, caption: 'aria' }]);
    expect(computeDatasetHash([{ blob: a, caption: 'aria, smile' }])).not.toBe(base);
    expect(computeDatasetHash([{ blob: a, caption: null }])).not.toBe(computeDatasetHash([{ blob: a, caption: '' }]));
    const forged = computeDatasetHash([{ blob: a, caption: `x"\n${b}:"y` }]);
    const honest = computeDatasetHash([
      { blob: a, caption: 'x' },
      { blob: b, caption: 'y' },
    ]);
    expect(forged).not.toBe(honest);
  });

  it('refuses an invalid blob id', () => {
    expect(() => computeDatasetHash([{ blob: 'nope', caption: null }])).toThrow(/blob/);
  });
});
