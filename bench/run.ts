/** `npm run bench`: every benchmark in turn; each prints its own numbers. */
import { benchCaptioning } from './captioning.ts';
import { benchDownload } from './download.ts';
import { benchIntakeLoad } from './intake-load.ts';
import { benchNormalize } from './normalize.ts';
import { benchRemoteWorker } from './remote-worker.ts';
import { benchTagging } from './tagging.ts';
import { benchTraining } from './training.ts';

const benches: [string, () => Promise<void>][] = [
  ['normalisation', benchNormalize],
  ['intake under load', benchIntakeLoad],
  ['tagging', benchTagging],
  ['captioning', benchCaptioning],
  ['training', benchTraining],
  ['remote worker', benchRemoteWorker],
  ['download', benchDownload],
];

const only = process.argv[2];
for (const [name, run] of benches) {
  if (only && !name.includes(only)) continue;
  console.log(`\n== ${name}`);
  await run();
}
