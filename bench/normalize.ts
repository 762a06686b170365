/**
 * Normalization throughput on camera-sized photos: 24 photo-like 12 MP JPEGs (4000×3000), each
 * normalized into a ≤ 4.19 MP PNG master with thumbnail, pixel hash and pHash, with as many images
 * in flight as the bot allows (MEDIA_PARALLELISM, one libvips thread each).
 *
 * Run alone: npx tsx bench/normalize.ts [count]
 */
import { availableParallelism, cpus } from 'node:os';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { loadConfig } from '../src/core/config.ts';
import { normalizeImage, normalizeOptionsFromConfig } from '../src/core/media.ts';
import { MEDIA_PARALLELISM } from '../src/core/sharp.ts';
import { photoJpeg } from '../test/fixtures/images.ts';

const WIDTH = 4000;
const HEIGHT = 3000;

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;

export async function benchNormalize(count = 24): Promise<void> {
  const opts = normalizeOptionsFromConfig(loadConfig({}));
  console.log(
    `normalize: ${count} × ${WIDTH}×${HEIGHT} JPEG, ${MEDIA_PARALLELISM} in flight, sharp.concurrency ${sharp.concurrency()}, ` +
      `${availableParallelism()} cores (${cpus()[0]?.model.trim() ?? 'unknown CPU'}), libvips ${sharp.versions.vips}`,
  );

  let started = performance.now();
  const corpus: Buffer[] = [];
  for (let i = 0; i < count; i++) corpus.push((await photoJpeg(1000 + i, WIDTH, HEIGHT)).data);
  const corpusBytes = corpus.reduce((n, b) => n + b.length, 0);
  console.log(
    `  corpus generated in ${((performance.now() - started) / 1000).toFixed(1)} s, ${mib(corpusBytes)} of JPEG (${(corpusBytes / count / 1e6).toFixed(1)} MB each)`,
  );

  // Warm-up (library initialisation, first allocations), not counted.
  const warm = await normalizeImage(corpus[0]!, opts);
  if (!warm.ok) throw new Error(`bench image refused: ${warm.reason}`);

  const rssBefore = process.memoryUsage().rss;
  let peakRss = rssBefore;
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }, 10);

  const latencies: number[] = [];
  let masterBytes = 0;
  let next = 0;
  started = performance.now();
  // As many callers as the bot runs at once, each taking the next image when it is done.
  await Promise.all(
    Array.from({ length: MEDIA_PARALLELISM }, async () => {
      while (next < corpus.length) {
        const input = corpus[next++]!;
        const t0 = performance.now();
        const result = await normalizeImage(input, opts);
        latencies.push(performance.now() - t0);
        peakRss = Math.max(peakRss, process.memoryUsage().rss);
        if (!result.ok) throw new Error(`bench image refused: ${result.reason}`);
        masterBytes += result.master.length;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  clearInterval(sampler);

  latencies.sort((a, b) => a - b);
  const inputMegapixels = (count * WIDTH * HEIGHT) / 1e6;
  console.log(`  ${(count / seconds).toFixed(2)} images/s, ${(inputMegapixels / seconds).toFixed(1)} input MP/s (${seconds.toFixed(1)} s for ${count})`);
  console.log(
    `  per image: p50 ${percentile(latencies, 50).toFixed(0)} ms, p95 ${percentile(latencies, 95).toFixed(0)} ms, max ${percentile(latencies, 100).toFixed(0)} ms`,
  );
  console.log(`  masters: ${(masterBytes / count / 1e6).toFixed(1)} MB PNG each (${warm.width}×${warm.height})`);
  console.log(
    `  RSS: ${mib(rssBefore)} before (corpus held), peak ${mib(peakRss)} during (+${mib(peakRss - rssBefore)}), ` +
      `process max ${mib(process.resourceUsage().maxRSS * 1024)}`,
  );
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const count = Number(process.argv[2] ?? 24);
  await benchNormalize(Number.isInteger(count) && count > 0 ? count : 24);
}
