/**
 * WD14 tagging throughput through the real pipeline (sharp preprocessing + onnxruntime-node) on a
 * generated "heavy" WD14-shaped model (tens of ms per 448² image; real weights cannot be fetched
 * here) and 64 photo-like PNGs of about 1024 px.
 *
 * Prints images/s, ms per image, the time spent inside `session.run` against wall time, and the
 * share of wall time outside inference: preprocessing of the next batches runs on the thread pool
 * while the worker thread infers the current batch, so that share should stay under 10%. For
 * comparison, the same images one `tag()` call per batch (no overlap). On a 2-core machine both
 * stages are CPU-bound, so overlapping mostly moves preprocessing inside the inference window
 * (`session.run` gets slower as they share the cores) rather than adding throughput; with a real
 * WD14 model (~50× the work of this one per image) preprocessing is a few percent either way.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { preprocessForTagger } from '../src/core/tagger-preprocess.ts';
import { loadTagger } from '../src/core/wd14-tagger.ts';
import { writeTestModel, type TestTag } from '../test/fixtures/onnx-model.ts';
import { writePhotoPngs } from '../test/fixtures/images.ts';

const IMAGES = 64;
const BATCH = 8;

/** A few hundred tags, like a small selected_tags.csv, with weights on the mean colour. */
function benchTags(): TestTag[] {
  const tags: TestTag[] = [];
  for (let i = 0; i < 400; i++) {
    tags.push({ name: `tag_${i}`, category: i % 10 === 9 ? 4 : 0, bias: -1 + (i % 7) / 3, b: (i % 5) - 2, g: (i % 3) - 1, r: (i % 4) - 1.5 });
  }
  return tags;
}

export async function benchTagging(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-bench-tagging-'));
  try {
    const model = await writeTestModel(path.join(dir, 'model'), { tags: benchTags(), heavy: true });
    const images = await writePhotoPngs(path.join(dir, 'images'), IMAGES, 1000);
    console.log(
      `  ${IMAGES} PNGs of ~1024 px, heavy test model (${(model.bytes / 1e6).toFixed(1)} MB, ${model.tags.length} tags), batch ${BATCH}, ${os.availableParallelism()} CPUs`,
    );

    // Preprocessing alone, all images at once (what the pipeline has to hide).
    let t = performance.now();
    await Promise.all(images.map((f) => preprocessForTagger(f, 448)));
    const preprocessMs = performance.now() - t;

    const tagger = await loadTagger(model.dir);
    try {
      await tagger.tag(images.slice(0, BATCH), { batchSize: BATCH }); // warm-up (allocations, first run)
      const before = tagger.stats();
      t = performance.now();
      const results = await tagger.tag(images, { batchSize: BATCH });
      const wallMs = performance.now() - t;
      const after = tagger.stats();
      const inferenceMs = after.inferenceMs - before.inferenceMs;
      const batches = after.batches - before.batches;
      if (results.length !== IMAGES) throw new Error(`expected ${IMAGES} results, got ${results.length}`);

      const outside = wallMs - inferenceMs;
      console.log(`  throughput:         ${((IMAGES * 1000) / wallMs).toFixed(1)} images/s, ${(wallMs / IMAGES).toFixed(1)} ms per image`);
      console.log(`  wall time:          ${wallMs.toFixed(0)} ms for ${IMAGES} images in ${batches} batches`);
      console.log(`  inside session.run: ${inferenceMs.toFixed(0)} ms (${(inferenceMs / IMAGES).toFixed(1)} ms per image)`);
      console.log(`  outside inference:  ${outside.toFixed(0)} ms = ${((100 * outside) / wallMs).toFixed(1)}% of wall time (aim < 10%)`);

      // The same work without overlap: one tag() call per batch, so each batch is decoded, then inferred.
      const serialBefore = tagger.stats();
      t = performance.now();
      for (let i = 0; i < IMAGES; i += BATCH) await tagger.tag(images.slice(i, i + BATCH), { batchSize: BATCH });
      const serialMs = performance.now() - t;
      const serialInference = tagger.stats().inferenceMs - serialBefore.inferenceMs;
      console.log(
        `  without overlap:    ${((IMAGES * 1000) / serialMs).toFixed(1)} images/s; session.run ${(serialInference / IMAGES).toFixed(1)} ms per image, ` +
          `${(((serialMs - serialInference) * 100) / serialMs).toFixed(1)}% of wall time outside inference`,
      );
      console.log(`  preprocessing alone, all images at once: ${preprocessMs.toFixed(0)} ms (${(preprocessMs / IMAGES).toFixed(1)} ms per image)`);
    } finally {
      await tagger.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await benchTagging();
}
