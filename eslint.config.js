// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * The layers of src/ (see design.md): core knows nothing of Discord, Redis or queues; store and
 * queues know nothing of the bot or the workers; the workers know nothing of the bot; the bot
 * starts the tagging worker in-process (app.ts) and otherwise leaves the workers alone. Native
 * libraries sit behind one module each: sharp behind core/sharp.ts, onnxruntime-node behind the
 * tagger's thread (their types may be imported anywhere).
 */
function layerRules() {
  const native = {
    sharp: { name: 'sharp', allowTypeImports: true, message: 'Take sharp instances from src/core/sharp.ts, which owns its settings.' },
    onnx: {
      name: 'onnxruntime-node',
      allowTypeImports: true,
      message: "ONNX Runtime runs only in the tagger's thread (src/core/tagger-thread.ts).",
    },
  };
  const outside = (layers, message) => ({ regex: `(^|/)(${layers.join('|')})/`, message });
  /** One config per group of files: for a file that two configs match, the later rule wins whole. */
  const restrict = (files, { ignores = [], paths = [], patterns = [] }) => ({
    files,
    ignores,
    rules: { '@typescript-eslint/no-restricted-imports': ['error', { paths, patterns }] },
  });
  const corePaths = [
    { name: 'discord.js', message: 'src/core knows nothing of Discord.' },
    { name: 'bullmq', message: 'src/core knows nothing of queues.' },
    { name: 'ioredis', message: 'src/core knows nothing of Redis.' },
  ];
  const coreOutside = outside(['bot', 'worker', 'store', 'queues'], 'src/core imports nothing from bot, worker, store or queues.');
  const sharpModule = 'src/core/sharp.ts';
  const onnxModule = 'src/core/tagger-thread.ts';
  const nativeRest = [native.sharp, native.onnx];
  return [
    restrict(['src/core/**/*.ts'], { ignores: [sharpModule, onnxModule], paths: [...corePaths, ...nativeRest], patterns: [coreOutside] }),
    restrict([sharpModule], { paths: [...corePaths, native.onnx], patterns: [coreOutside] }),
    restrict([onnxModule], { paths: [...corePaths, native.sharp], patterns: [coreOutside] }),
    restrict(['src/store/**/*.ts', 'src/queues/**/*.ts'], {
      paths: nativeRest,
      patterns: [outside(['bot', 'worker'], 'src/store and src/queues import nothing from the bot or the workers.')],
    }),
    restrict(['src/worker/**/*.ts'], { paths: nativeRest, patterns: [outside(['bot'], 'The workers import nothing from the bot.')] }),
    restrict(['src/bot/**/*.ts'], {
      ignores: ['src/bot/app.ts'],
      paths: nativeRest,
      patterns: [outside(['worker'], 'The bot reaches the workers through the queues (src/queues), not their code.')],
    }),
    restrict(['src/bot/app.ts'], {
      paths: nativeRest,
      patterns: [
        {
          regex: '(^|/)worker/(?!tagging\\.ts$)',
          message: 'The bot imports from the workers only the tagging worker it can run in-process (worker/tagging.ts).',
        },
      ],
    }),
  ];
}

export default tseslint.config(
  { ignores: ['node_modules/', 'data/', 'dist/', 'coverage/', '.tmp/', '.ci/', 'scripts/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
    },
  },
  ...layerRules(),
  {
    files: ['test/**/*.ts', 'bench/**/*.ts', 'commands/**/*.ts'],
    rules: { 'no-console': 'off' },
  },
  { files: ['eslint.config.js'], ...tseslint.configs.disableTypeChecked },
);
