import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { writeRaterModel } from '../fixtures/rater-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import { World } from './world.ts';

/** The generated photo classifier rates every image nsfw: each epoch's samples are explicit. */
const admin = { id: '310000000000000001', username: 'admin' };
const alice = { id: '310000000000000002', username: 'alice' };

let world: World;
let tmp: string;
let threadId: string;

const done = (h: InteractionHandle) => steps.done(world, h);

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-samples-'));
  await writeTestModel(join(tmp, 'tagger'), { tags: WORKSHOP_TAGS });
  const rater = await writeRaterModel(join(tmp, 'rater'), [
    { name: 'sfw', bias: 0 },
    { name: 'nsfw', bias: 1 },
  ]);
  world = await World.start({ env: { TAGGER_MODEL_DIR: join(tmp, 'tagger'), RATER_MODEL_DIR: rater, PROGRESS_INTERVAL_SECONDS: '1' } });
  await world.startBot();
  // This server takes every rating into its datasets but shows only general images outside age-restricted channels.
  await done(
    world.discord.sendCommand({ name: 'settings', subcommand: 'moderation', user: admin, permissions: MANAGE_GUILD, options: { accepted: 'explicit' } }),
  );
  threadId = await steps.createDataset(world, alice, { name: 'hero', trigger: 'ohwx_hero', class: 'woman', kind: 'character', base: 'sd15' });
  const files = await Promise.all([tinted(1, '#ff2020'), tinted(2, '#2040ff'), tinted(3, '#20c020')]);
  const added = world.discord.sendCommand({
    name: 'dataset',
    subcommand: 'add',
    user: alice,
    options: { dataset: 'hero', ...steps.imageOptions(world, files) },
  });
  const report = await done(added);
  expect(report).toMatch(/3 added, 0 refused/);
  expect(report).toMatch(/🙈 3 added images are not on the contact sheet/);
  expect(added.lastReply()!.attachments.filter((a) => a.filename.startsWith('contact-sheet'))).toEqual([]);
  await steps.taggedIn(world, threadId, 3);
  await world.spawnWorker(steps.standinWorkerEnv(await steps.sd15Models(join(tmp, 'models'))));
  await steps.workerOnline(world, 'gpu-test');
});

afterAll(async () => {
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

describe('sample grids rated above the policy', () => {
  it('post no image in a normal thread, and members still vote by epoch number', async () => {
    const runId = await steps.startRun(world, admin, { dataset: 'hero', epochs: 2 });
    const finished = await steps.finished(world, threadId, runId);
    const posts = steps.epochPosts(world, threadId, runId);
    expect(posts.map((m) => /Epoch (\d+)\/2/.exec(m.content)?.[1])).toEqual(['1', '2']);
    for (const p of posts) {
      expect(p.attachments).toEqual([]);
      expect(p.content).toMatch(/🙈 Samples not shown here: rated explicit, more than this channel shows\. You can still vote by epoch number\./);
      expect(JSON.stringify(p.components)).toContain(`vote:${runId}:`);
    }
    expect(finished.attachments).toEqual([]);
    expect(finished.content).toMatch(/🙈 Samples not shown here/);
    expect(JSON.stringify(finished.components)).toContain(`votesel:${runId}`);

    const vote = world.discord.sendButton({ customId: `vote:${runId}:2`, user: alice });
    expect(await done(vote)).toMatch(/Your vote: \*\*epoch 2\*\*/);
  });
});
