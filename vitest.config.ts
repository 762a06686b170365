import { relative } from 'node:path';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Vitest orders files project by project (e2e, integration, unit), so the longest integration file
 * started when most e2e files were done and ran on alone. This orders the files of all projects
 * together, longest first: by the last run's durations when every file has one, else by size (a
 * fresh clone). Unit files, which share one module graph (isolate: false), still run last.
 */
class LongestFirst extends BaseSequencer {
  override sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const { cache, config } = this.ctx;
    const key = (f: TestSpecification) => `${f.project.name}:${relative(config.root, f.moduleId)}`;
    const timed = files.every((f) => cache.getFileTestResults(key(f)) !== undefined);
    const cost = (f: TestSpecification) => (timed ? (cache.getFileTestResults(key(f))?.duration ?? 0) : (cache.getFileStats(key(f))?.size ?? 0));
    const shared = (f: TestSpecification) => (f.project.config.isolate ? 0 : 1);
    return Promise.resolve([...files].sort((a, b) => shared(a) - shared(b) || cost(b) - cost(a)));
  }
}

export default defineConfig({
  test: {
    // Vitest's default is one file at a time per spare core: one on a 2-core machine. Most of an
    // integration or e2e file's time is spent waiting (on child processes, Redis, the fake
    // Discord), so three files run at once, e2e files too: each starts its own Redis, fake Discord,
    // data folder and ports, and waits for what it expects rather than for a fixed time. On two
    // cores that keeps about 1.6 of them busy (two files at once: about 1.2, and 25% longer).
    maxWorkers: Number(process.env.VITEST_MAX_WORKERS ?? 3),
    // The default reporter for people; JSON for CI's closing line (.ci/summary.mjs).
    reporters: ['default', ['json', { outputFile: '.tmp/test-results.json' }]],
    sequence: { sequencer: LongestFirst },
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
          // Unit tests share no state through modules, so they share the loaded modules: loading
          // the product's modules again for each file was a third of the unit tests' time.
          isolate: false,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts', 'test/harness/**/*.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
