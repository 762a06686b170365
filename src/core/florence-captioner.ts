import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Florence2ForConditionalGeneration, Florence2Processor, RawImage, Tensor } from '@huggingface/transformers';
import { CAPTIONER_MODEL_FILES as CAPTIONER_FILES, CaptionerUnavailableError } from './captioner-model.ts';
import { BatchImageError } from './errors.ts';
import { decodeForModel } from './sharp.ts';

export { CaptionerUnavailableError };

/**
 * The Florence-2 captioner (`<MORE_DETAILED_CAPTION>`), through transformers.js on onnxruntime-node
 * (CPU). It reads an onnx-community style export from a local folder only: remote loading is
 * switched off (`env.allowRemoteModels = false`, `local_files_only`), and nothing is cached
 * outside the folder (`env.useFSCache = false`). The folder comes from `ensureCaptionerModel`.
 */

export const CAPTION_TASK = '<MORE_DETAILED_CAPTION>';

/** One image given to `caption` could not be read; the others of the batch are fine. */
export class CaptionerImageError extends BatchImageError {
  override name = 'CaptionerImageError';
}

export interface CaptionTimings {
  /** Decoding images and the processor (resize, normalise, tokenise), ms. */
  prepareMs: number;
  /** The model: encoders and generation, ms. */
  generateMs: number;
  /** Decoding tokens to text, ms. */
  decodeMs: number;
}

export interface Captioner {
  info: { modelDir: string };
  /** One sentence per image, in order. A `CaptionerImageError` names an unreadable image. */
  caption(images: readonly string[]): Promise<string[]>;
  /** Like `caption`, with where the time went. */
  captionTimed(images: readonly string[]): Promise<{ captions: string[]; timings: CaptionTimings }>;
  close(): Promise<void>;
}

export interface LoadCaptionerOptions {
  /** Upper bound on generated tokens per caption (default 256; a detailed caption is about 80). */
  maxNewTokens?: number;
  /** ONNX Runtime intra-op threads (default: its own choice). */
  threads?: number;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Largest image side decoded when the processor's input size is not a fixed one. */
const DECODE_MAX_SIDE = 1024;

/**
 * Decodes an image as RGB. With the processor's fixed input size (Florence-2: 768×768, stretched,
 * bicubic), it is resized to exactly that here, in one antialiased pass as Pillow does; the
 * processor then finds nothing to resize.
 */
async function readImage(RawImageClass: typeof RawImage, file: string, size: { width: number; height: number } | null): Promise<RawImage> {
  const resize = size
    ? { width: size.width, height: size.height, fit: 'fill' as const, kernel: 'cubic' as const }
    : { width: DECODE_MAX_SIDE, height: DECODE_MAX_SIDE, fit: 'inside' as const, withoutEnlargement: true };
  const { data, info } = await decodeForModel(file).rotate().resize(resize).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return new RawImageClass(new Uint8ClampedArray(data.buffer, data.byteOffset, data.byteLength), info.width, info.height, 3);
}

/** Loads the export in `dir`. Problems with the files are `CaptionerUnavailableError`s. */
export async function loadCaptioner(dir: string, opts: LoadCaptionerOptions = {}): Promise<Captioner> {
  const modelDir = path.resolve(dir);
  for (const name of CAPTIONER_FILES) {
    const st = await stat(path.join(modelDir, name)).catch(() => undefined);
    if (!st?.isFile() || st.size === 0) {
      throw new CaptionerUnavailableError(
        `The captioner model file ${path.join(modelDir, name)} is missing or empty. The folder must hold a Florence-2 ONNX export ` +
          `(${CAPTIONER_FILES.join(', ')}), e.g. onnx-community/Florence-2-base-ft.`,
      );
    }
  }
  // Loaded here, not at start-up: the library takes over a second to import, and most processes
  // (the bot, training workers) never caption.
  const { env, Florence2ForConditionalGeneration, Florence2Processor, RawImage } = await import('@huggingface/transformers');
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.useFSCache = false;
  env.useBrowserCache = false;
  const local = { local_files_only: true } as const;
  let processor: Florence2Processor;
  let model: Florence2ForConditionalGeneration;
  try {
    processor = (await Florence2Processor.from_pretrained(modelDir, local)) as Florence2Processor;
  } catch (err) {
    throw new CaptionerUnavailableError(
      `The captioner's processor or tokenizer files in ${modelDir} could not be read (${errText(err)}). Replace them with those of the Florence-2 export.`,
      { cause: err },
    );
  }
  try {
    model = (await Florence2ForConditionalGeneration.from_pretrained(modelDir, {
      ...local,
      dtype: 'fp32',
      device: 'cpu',
      ...(opts.threads ? { session_options: { intraOpNumThreads: opts.threads } } : {}),
    })) as Florence2ForConditionalGeneration;
  } catch (err) {
    throw new CaptionerUnavailableError(
      `ONNX Runtime could not load the captioner model in ${modelDir} (a damaged or incomplete download, or not a Florence-2 export): ${errText(err)}. ` +
        'Replace the files (delete the folder to have it downloaded again).',
      { cause: err },
    );
  }
  const maxNewTokens = opts.maxNewTokens ?? 256;
  const configured = (processor.image_processor?.config as { size?: { height?: unknown; width?: unknown } }).size;
  const inputSize =
    typeof configured?.height === 'number' && typeof configured.width === 'number' && configured.height > 0 && configured.width > 0
      ? { width: configured.width, height: configured.height }
      : null;
  let closed = false;

  async function captionTimed(images: readonly string[]) {
    if (closed) throw new Error('the captioner is closed');
    if (images.length === 0) return { captions: [], timings: { prepareMs: 0, generateMs: 0, decodeMs: 0 } };
    const t0 = performance.now();
    const raws = await Promise.all(
      images.map((file, index) =>
        readImage(RawImage, file, inputSize).catch((err: unknown) => {
          throw new CaptionerImageError(index, `Image ${index + 1} (${file}) could not be read: ${errText(err)}`, { cause: err });
        }),
      ),
    );
    const inputs = (await processor(
      raws,
      images.map(() => CAPTION_TASK),
    )) as Record<string, Tensor>;
    const t1 = performance.now();
    let ids: Tensor;
    try {
      ids = (await model.generate({ ...inputs, max_new_tokens: maxNewTokens, do_sample: false, num_beams: 1 })) as Tensor;
    } catch (err) {
      throw new CaptionerUnavailableError(`The captioner model in ${modelDir} failed while writing captions: ${errText(err)}.`, { cause: err });
    }
    const t2 = performance.now();
    const texts = processor.batch_decode(ids, { skip_special_tokens: false });
    const captions = texts.map((text, i) => {
      const raw = raws[i]!;
      const out = processor.post_process_generation(text, CAPTION_TASK, [raw.width, raw.height]) as Record<string, unknown>;
      const answer = out[CAPTION_TASK];
      return typeof answer === 'string' ? answer.replace(/<pad>/g, '').replace(/\s+/g, ' ').trim() : '';
    });
    const t3 = performance.now();
    return { captions, timings: { prepareMs: t1 - t0, generateMs: t2 - t1, decodeMs: t3 - t2 } };
  }

  return {
    info: { modelDir },
    captionTimed,
    async caption(images) {
      return (await captionTimed(images)).captions;
    },
    async close() {
      if (closed) return;
      closed = true;
      await model.dispose();
    },
  };
}
