/**
 * Florence-2 captioning on the CPU through the real pipeline (sharp decode, the transformers.js
 * processor, encoder and greedy generation on onnxruntime-node, token decoding).
 *
 * With the real Florence-2 base export in a local folder (CAPTIONER_BENCH_MODEL_DIR, else
 * CAPTIONER_MODEL_DIR): captions per second, seconds per image, and the share of wall time spent
 * outside the model (decoding images, the processor, turning tokens into text). Without one, that
 * part is skipped with a line saying so (the weights cannot be fetched here).
 *
 * Always: the same pipeline on the generated Florence-2-shaped export (same files, inputs and
 * outputs; a trivial model), which measures the pipeline's own cost per image — what the real model
 * adds to it is the model itself.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CAPTIONER_MODEL_FILES } from '../src/core/captioner-model.ts';
import { loadCaptioner, type CaptionTimings } from '../src/core/florence-captioner.ts';
import { writeTestCaptioner } from '../test/fixtures/florence-model.ts';
import { writePhotoPngs } from '../test/fixtures/images.ts';

const BATCH = 4;

async function hasExport(dir: string): Promise<string | null> {
  for (const f of CAPTIONER_MODEL_FILES) {
    const st = await stat(path.join(dir, f)).catch(() => undefined);
    if (!st?.isFile() || st.size === 0) return f;
  }
  return null;
}

async function measure(label: string, modelDir: string, images: string[], maxNewTokens: number): Promise<void> {
  const captioner = await loadCaptioner(modelDir, { maxNewTokens });
  try {
    await captioner.caption(images.slice(0, 1)); // warm-up (session allocations, first run)
    const total: CaptionTimings = { prepareMs: 0, generateMs: 0, decodeMs: 0 };
    const words: number[] = [];
    const t = performance.now();
    for (let i = 0; i < images.length; i += BATCH) {
      const { captions, timings } = await captioner.captionTimed(images.slice(i, i + BATCH));
      total.prepareMs += timings.prepareMs;
      total.generateMs += timings.generateMs;
      total.decodeMs += timings.decodeMs;
      for (const c of captions) words.push(c.split(/\s+/).filter(Boolean).length);
    }
    const wallMs = performance.now() - t;
    const outside = wallMs - total.generateMs;
    const n = images.length;
    console.log(`  ${label}`);
    console.log(`    throughput:        ${((n * 1000) / wallMs).toFixed(2)} captions/s, ${(wallMs / 1000 / n).toFixed(2)} s per image (batch ${BATCH})`);
    console.log(`    inside the model:  ${(total.generateMs / 1000).toFixed(1)} s (encoders and generation)`);
    console.log(
      `    outside the model: ${(outside / 1000).toFixed(2)} s = ${((100 * outside) / wallMs).toFixed(1)}% of wall time ` +
        `(images and processor ${(total.prepareMs / n).toFixed(0)} ms/image, text ${(total.decodeMs / n).toFixed(1)} ms/image)`,
    );
    console.log(`    caption length:    ${(words.reduce((a, b) => a + b, 0) / n).toFixed(0)} words on average`);
  } finally {
    await captioner.close();
  }
}

export async function benchCaptioning(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-bench-captioning-'));
  try {
    const realDir = process.env.CAPTIONER_BENCH_MODEL_DIR ?? process.env.CAPTIONER_MODEL_DIR;
    const images = await writePhotoPngs(path.join(dir, 'images'), 8, 2000);
    console.log(`  photo-like PNGs of ~1024 px, ${os.availableParallelism()} CPUs, <MORE_DETAILED_CAPTION>`);
    const missing = realDir ? await hasExport(realDir) : 'the folder';
    if (realDir && missing === null) {
      await measure(`Florence-2 base (${realDir}), ${images.length} images:`, realDir, images, 256);
    } else {
      console.log(
        `  Florence-2 base: skipped — ${realDir ? `${realDir} has no ${missing}` : 'no local export'}. ` +
          'Set CAPTIONER_BENCH_MODEL_DIR to a folder holding onnx-community/Florence-2-base-ft (config, tokenizer, onnx/*.onnx in fp32) to measure it.',
      );
    }
    const generated = path.join(dir, 'generated');
    await writeTestCaptioner(generated);
    await measure(`generated Florence-2-shaped export (pipeline cost only), ${images.length} images:`, generated, images, 64);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
