import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Vitest's default is one file at a time per spare core: one on a 2-core machine. Most of an
    // integration or e2e file's time is spent waiting (on child processes, Redis, the fake
    // Discord), so two files run at once, e2e files too: each starts its own Redis, fake Discord,
    // data folder and ports, and waits for what it expects rather than for a fixed time.
    maxWorkers: Number(process.env.VITEST_MAX_WORKERS ?? 2),
    // The default reporter for people; JSON for CI's closing line (.ci/summary.mjs).
    reporters: ['default', ['json', { outputFile: '.tmp/test-results.json' }]],
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
