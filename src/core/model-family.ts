/**
 * What a model file is, told from its safetensors header alone (tensor names and shapes, and the
 * `__metadata__` some checkpoints carry), never from its file name (reference/model-families.md).
 *
 * Base checkpoints: SD 1.5, SDXL, SDXL v-prediction, FLUX.1 (dev or schnell) and Chroma. Companion
 * files FLUX.1 and Chroma train with: the CLIP-L and T5-XXL text encoders and the 16-channel
 * autoencoder. Anything else (SD 2.x, SDXL refiner, inpainting UNets, SD VAEs, Diffusers-format
 * FLUX, LoRAs) is `unknown`, with the reason.
 */

/** The base families a LoRA can be trained for. */
export const BASE_FAMILIES = ['sd15', 'sdxl', 'sdxl-vpred', 'flux1', 'chroma'] as const;
export type BaseFamily = (typeof BASE_FAMILIES)[number];

/** Files FLUX.1 / Chroma need besides the checkpoint. */
export const COMPANION_KINDS = ['clip_l', 't5xxl', 'ae'] as const;
export type CompanionKind = (typeof COMPANION_KINDS)[number];

export type ModelFileKind = BaseFamily | CompanionKind | 'unknown';

export interface ModelDetection {
  kind: ModelFileKind;
  /** Why, in a few words (for logs and for `unknown`). */
  detail: string;
  /** FLUX.1 only: the guidance-distilled dev model or schnell. */
  variant?: 'dev' | 'schnell';
  /** SDXL v-prediction only: the checkpoint says it was trained with zero terminal SNR. */
  zeroTerminalSnr?: boolean;
  /** Weights stored as 8-bit floats (fp8 T5-XXL files, fp8 checkpoints). */
  fp8?: boolean;
}

export interface FamilyInfo {
  label: string;
  /** Native training resolution (square side). */
  nativeResolution: number;
  /** Text encoders and autoencoder the trainer needs besides the checkpoint. */
  companions: readonly CompanionKind[];
  /** The transformer families (FLUX.1, Chroma) use `flux_train_network.py`. */
  transformer: boolean;
}

export const FAMILY_INFO: Record<BaseFamily, FamilyInfo> = {
  sd15: { label: 'SD 1.5', nativeResolution: 512, companions: [], transformer: false },
  sdxl: { label: 'SDXL', nativeResolution: 1024, companions: [], transformer: false },
  'sdxl-vpred': { label: 'SDXL v-pred', nativeResolution: 1024, companions: [], transformer: false },
  // docs/flux_train_network.md §3: FLUX.1 needs CLIP-L, T5-XXL and the AE; Chroma does not use CLIP-L.
  flux1: { label: 'FLUX.1', nativeResolution: 1024, companions: ['clip_l', 't5xxl', 'ae'], transformer: true },
  chroma: { label: 'Chroma', nativeResolution: 1024, companions: ['t5xxl', 'ae'], transformer: true },
};

export function isBaseFamily(value: unknown): value is BaseFamily {
  return typeof value === 'string' && (BASE_FAMILIES as readonly string[]).includes(value);
}

export function familyLabel(family: BaseFamily): string {
  return FAMILY_INFO[family].label;
}

export function isTransformerFamily(family: BaseFamily): boolean {
  return FAMILY_INFO[family].transformer;
}

/** The shape of one tensor as a header lists it; only `shape` (and `dtype`, for fp8) are read. */
export interface TensorShape {
  shape: readonly number[];
  dtype?: string;
}

type Tensors = Readonly<Record<string, TensorShape>>;

const sameShape = (t: TensorShape | undefined, expected: readonly number[]): boolean =>
  t !== undefined && t.shape.length === expected.length && t.shape.every((d, i) => d === expected[i]);

/** Single-file FLUX/Chroma checkpoints saved by ComfyUI prefix every key with this. */
const COMFY_PREFIX = 'model.diffusion_model.';

/** The tensors under `prefix`, with it removed; all of them when none has it (or the prefix is empty). */
function stripPrefix(tensors: Tensors, prefix: string): Tensors {
  if (prefix === '') return tensors;
  const out: Record<string, TensorShape> = {};
  let found = false;
  for (const [name, t] of Object.entries(tensors)) {
    if (!name.startsWith(prefix)) continue;
    out[name.slice(prefix.length)] = t;
    found = true;
  }
  return found ? out : tensors;
}

function anyFp8(tensors: Tensors): boolean {
  return Object.values(tensors).some((t) => typeof t.dtype === 'string' && t.dtype.startsWith('F8'));
}

function unknown(detail: string): ModelDetection {
  return { kind: 'unknown', detail };
}

/** FLUX.1 and Chroma in the BFL single-file layout (`double_blocks.N…`, `single_blocks.N…`). */
function detectTransformer(all: Tensors): ModelDetection | null {
  const t = stripPrefix(all, COMFY_PREFIX);
  if ('transformer_blocks.0.attn.add_k_proj.bias' in t && 'single_transformer_blocks.0.attn.to_k.bias' in t) {
    return unknown('a FLUX transformer in the Diffusers layout; sd-scripts needs the single-file layout (flux1-dev.safetensors)');
  }
  if (!('double_blocks.0.img_attn.qkv.weight' in t) || !('single_blocks.0.linear1.weight' in t)) return null;
  // hidden size 3072, 64 packed latent channels in, 4096-wide T5 context (flux_models / chroma_models params)
  if (!sameShape(t['img_in.weight'], [3072, 64]) || !sameShape(t['txt_in.weight'], [3072, 4096])) {
    return unknown('a FLUX-like transformer with other sizes than FLUX.1 (img_in/txt_in)');
  }
  const fp8 = anyFp8(t);
  if ('distilled_guidance_layer.in_proj.weight' in t) {
    // Chroma replaces the per-block modulation with one approximator network and drops CLIP-L's vector_in.
    if ('double_blocks.0.img_mod.lin.weight' in t || 'vector_in.in_layer.weight' in t) {
      return unknown('a transformer with both Chroma and FLUX.1 modulation layers');
    }
    return { kind: 'chroma', detail: 'Chroma transformer (distilled guidance layer, no per-block modulation)', ...(fp8 ? { fp8 } : {}) };
  }
  if (!('double_blocks.0.img_mod.lin.weight' in t) || !('vector_in.in_layer.weight' in t)) {
    return unknown('a FLUX-like transformer without FLUX.1 modulation layers');
  }
  // sd-scripts' analyze_checkpoint_state: schnell is the one without the guidance embedder.
  const variant = 'guidance_in.in_layer.weight' in t || 'guidance_in.in_layer.bias' in t ? 'dev' : 'schnell';
  return { kind: 'flux1', variant, detail: `FLUX.1 ${variant} transformer`, ...(fp8 ? { fp8 } : {}) };
}

const UNET = 'model.diffusion_model.';

/** SD 1.x and SDXL single-file checkpoints (LDM/SGM layout: UNet, text encoders, VAE in one file). */
function detectUnetCheckpoint(t: Tensors, metadata: Readonly<Record<string, string>>): ModelDetection | null {
  const inConv = t[`${UNET}input_blocks.0.0.weight`];
  if (inConv === undefined) return null;
  const inChannels = inConv.shape[1];
  if (inChannels !== 4) return unknown(`a UNet with ${inChannels ?? '?'} input channels (an inpainting or other special model)`);
  const bigG = 'conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight' in t;
  const sdxlClipL = 'conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight' in t;
  if (bigG || sdxlClipL) {
    if (!bigG || !sdxlClipL) return unknown('an SDXL refiner or a checkpoint missing one of SDXL’s two text encoders');
    // SDXL base: 320 channels, ADM input 2816 (pooled 1280 + 6 × 256 size embeddings).
    if (!sameShape(inConv, [320, 4, 3, 3]) || !sameShape(t[`${UNET}label_emb.0.0.weight`], [1280, 2816])) {
      return unknown('an SDXL-like UNet with other sizes than SDXL base');
    }
    // v-prediction SDXL checkpoints (NoobAI-XL v-pred and its merges) carry empty `v_pred` and
    // `ztsnr` marker tensors; model-spec metadata may say so too. Without either, nothing in the
    // weights tells v from epsilon: such a file is plain SDXL and the dataset can ask for v-pred.
    const vpred = 'v_pred' in t || metadata['modelspec.prediction_type'] === 'v';
    if (vpred) {
      const zeroTerminalSnr = 'ztsnr' in t;
      return { kind: 'sdxl-vpred', zeroTerminalSnr, detail: `SDXL v-prediction checkpoint${zeroTerminalSnr ? ' (zero terminal SNR)' : ''}` };
    }
    return { kind: 'sdxl', detail: 'SDXL base checkpoint (CLIP-L + OpenCLIP bigG)' };
  }
  if ('cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight' in t) {
    return unknown('an SD 2.x checkpoint (OpenCLIP ViT-H), not trained here');
  }
  const token = t['cond_stage_model.transformer.text_model.embeddings.token_embedding.weight'];
  if (token !== undefined) {
    // SD 1.x: CLIP ViT-L (768 wide) feeds cross-attention of 320-channel blocks.
    if (!sameShape(token, [49408, 768]) || !sameShape(inConv, [320, 4, 3, 3])) return unknown('an SD 1.x-like checkpoint with other sizes');
    if (metadata['modelspec.prediction_type'] === 'v') return unknown('an SD 1.x checkpoint trained for v-prediction, not trained here');
    return { kind: 'sd15', detail: 'SD 1.x checkpoint (CLIP ViT-L)' };
  }
  return unknown('a UNet without its text encoder');
}

function detectClipL(all: Tensors): ModelDetection | null {
  for (const prefix of ['', 'transformer.', 'clip_l.']) {
    const t = stripPrefix(all, prefix);
    const token = t['text_model.embeddings.token_embedding.weight'];
    if (token === undefined || !('text_model.encoder.layers.0.self_attn.q_proj.weight' in t)) continue;
    if (sameShape(token, [49408, 768]) && 'text_model.encoder.layers.11.mlp.fc2.weight' in t && !('text_model.encoder.layers.12.mlp.fc2.weight' in t)) {
      return { kind: 'clip_l', detail: 'CLIP ViT-L text encoder (12 layers, 768 wide)', ...(anyFp8(t) ? { fp8: true } : {}) };
    }
    return unknown(`a CLIP text encoder ${token.shape[1] ?? '?'} wide that is not CLIP-L (perhaps SDXL's CLIP-G)`);
  }
  return null;
}

function detectT5(all: Tensors): ModelDetection | null {
  for (const prefix of ['', 't5xxl.transformer.', 't5xxl.']) {
    const t = stripPrefix(all, prefix);
    const q = t['encoder.block.0.layer.0.SelfAttention.q.weight'];
    if (q === undefined) continue;
    // T5 v1.1 XXL encoder: d_model 4096, 24 blocks, vocabulary 32128 (shared or embed_tokens).
    const embed = t['shared.weight'] ?? t['encoder.embed_tokens.weight'];
    if (sameShape(q, [4096, 4096]) && (embed === undefined || sameShape(embed, [32128, 4096])) && 'encoder.block.23.layer.1.DenseReluDense.wo.weight' in t) {
      const fp8 = anyFp8(t);
      return { kind: 't5xxl', detail: `T5-XXL text encoder${fp8 ? ' (fp8)' : ''}`, ...(fp8 ? { fp8 } : {}) };
    }
    return unknown('a T5 encoder that is not T5-XXL');
  }
  return null;
}

function detectAutoencoder(all: Tensors): ModelDetection | null {
  for (const prefix of ['', 'vae.', 'first_stage_model.']) {
    const t = stripPrefix(all, prefix);
    const decIn = t['decoder.conv_in.weight'];
    if (decIn === undefined || !('encoder.conv_in.weight' in t)) continue;
    const latent = decIn.shape[1];
    // FLUX.1's AE: 16 latent channels, encoder emits mean and log-variance (32), no quant_conv.
    if (latent === 16 && sameShape(t['encoder.conv_out.weight'], [32, 512, 3, 3])) {
      return { kind: 'ae', detail: 'FLUX autoencoder (16 latent channels)' };
    }
    return unknown(`an autoencoder with ${latent ?? '?'} latent channels (an SD/SDXL VAE, not the FLUX one)`);
  }
  return null;
}

/** Marks LoRA files (they hold `lora_unet_…`/`lora_te…` or PEFT `…lora_A…` weights), never base models. */
function looksLikeLora(t: Tensors): boolean {
  return Object.keys(t).some((n) => /^lora_(unet|te\d?|transformer)_|\.lora_(A|B|down|up)\.|^(lycoris|oft)_/.test(n));
}

/**
 * What a model file is, from its header's tensors (`name → {shape, dtype}`) and `__metadata__`.
 * Pure: no file access; give it `readSafetensorsHeader(path)`'s `tensors` and `metadata`.
 */
export function detectModelFile(tensors: Tensors, metadata: Readonly<Record<string, string>> = {}): ModelDetection {
  if (Object.keys(tensors).length === 0) return unknown('no tensors');
  if (looksLikeLora(tensors)) return unknown('a LoRA or other add-on network, not a base model');
  return (
    detectTransformer(tensors) ??
    detectUnetCheckpoint(tensors, metadata) ??
    detectClipL(tensors) ??
    detectT5(tensors) ??
    detectAutoencoder(tensors) ??
    unknown('no known layout')
  );
}
