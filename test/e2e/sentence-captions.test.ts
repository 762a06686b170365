import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { bullPrefix, QueueName, type TrainRunPayload } from '../../src/queues/contract.ts';
import { stageDataset } from '../../src/worker/staging.ts';
import { testCaptionFor, writeTestCaptioner } from '../fixtures/florence-model.ts';
import { normalJpeg } from '../fixtures/images.ts';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import { buildZip } from '../fixtures/zip.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import { editCaption } from './steps.ts';
import { World } from './world.ts';

let world: World;
let tmp: string;
let trainingQueue: Queue<TrainRunPayload>;
const alice = { id: '200000000000000001', username: 'alice' };
const admin = { id: '300000000000000001', username: 'admin' };
const MANAGE_GUILD = String(1n << 5n);

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-sentences-'));
  await writeTestModel(join(tmp, 'tagger'), { tags: WORKSHOP_TAGS });
  await writeTestCaptioner(join(tmp, 'florence'));
  world = await World.start({ env: { TAGGER_MODEL_DIR: join(tmp, 'tagger'), CAPTIONER_MODEL_DIR: join(tmp, 'florence') } });
  await world.startBot();
  trainingQueue = new Queue(QueueName.Training, { connection: world.redis, prefix: bullPrefix(world.env.REDIS_PREFIX!) });
});
afterAll(async () => {
  await trainingQueue?.close();
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

function command(name: string, subcommand: string, options: Record<string, string | number>, user = alice, extra = {}): InteractionHandle {
  return world.discord.sendCommand({ name, subcommand, user, options, ...extra });
}

async function done(h: InteractionHandle): Promise<string> {
  await Promise.race([
    h.waitForEdit(undefined, 60_000),
    h.waitForFollowup(undefined, 60_000).then((f) => {
      throw new Error(`refused: ${(f.json as { content?: string }).content}`);
    }),
  ]);
  return h.lastReply()?.content ?? '';
}

function threadOf(name: string): string {
  return world.discord.threads(world.discord.channelId).find((t) => t.name === `dataset · ${name}`)!.id;
}

async function notice(threadId: string, text: string) {
  return world.discord.waitForCall((c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes(text), 60_000);
}

/**
 * Plans and starts a run (no worker is online, so it waits in the queue), stages the queued
 * payload exactly as a training worker does, cancels the run, and returns the caption files.
 */
async function stagedCaptions(dataset: string): Promise<Record<string, string>> {
  const plan = command('train', 'plan', { dataset, model: 'base-sdxl.safetensors' }, admin, { permissions: MANAGE_GUILD });
  await done(plan);
  const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
  const start = world.discord.sendButton({ customId: row.components[0]!.custom_id, user: admin, permissions: MANAGE_GUILD, message: plan.lastReply()!.id });
  const runId = /Queued run `([a-z0-9]+)`/.exec(await done(start))?.[1];
  if (!runId) throw new Error('no run queued');
  const job = await trainingQueue.getJob(runId);
  const payload = job!.data;
  const dir = join(tmp, `staged-${runId}`);
  await stageDataset(
    new BlobStore(world.dataDir),
    dir,
    payload.plan.concepts.map((c) => ({
      folder: c.folder,
      images: c.images.map((i) => ({ id: i.id, blob: payload.images[i.id]!.blob, caption: payload.images[i.id]!.caption })),
    })),
  );
  expect(await done(command('train', 'cancel', { run: runId }, admin, { permissions: MANAGE_GUILD }))).toMatch(/Cancelled run/);
  const out: Record<string, string> = {};
  for (const folder of await readdir(dir)) {
    if (!/^\d+_/.test(folder)) continue;
    for (const f of (await readdir(join(dir, folder))).filter((n) => n.endsWith('.txt')).sort()) {
      out[f] = await readFile(join(dir, folder, f), 'utf8');
    }
  }
  return out;
}

describe('sentence captions for photos', () => {
  let threadId = '';

  it('describes uploaded photos in a sentence (a style dataset starts in sentence mode) and says so in the thread', async () => {
    expect(await done(command('dataset', 'create', { name: 'oldtown', trigger: 'mdvl_city', class: 'city', kind: 'style', base: 'sdxl' }))).toMatch(
      /Created dataset/,
    );
    threadId = threadOf('oldtown');
    const files = [await tinted(1, '#ff2020'), await tinted(2, '#2040ff'), await tinted(3, '#20c020')];
    const options = Object.fromEntries(files.map((f, i) => [`image${i + 1}`, world.discord.addAttachment({ filename: f.name, data: f.data })]));
    expect(await done(command('dataset', 'add', { dataset: 'oldtown', ...options }))).toMatch(/3 added/);
    const posted = await notice(threadId, 'Described 3 images');
    expect(JSON.stringify(posted.json)).toContain('#1–#3');
    expect(await done(command('caption', 'mode', { dataset: 'oldtown' }))).toMatch(/captioned with sentences \(the default for a style dataset\)/);
    expect(await done(command('dataset', 'show', { dataset: 'oldtown' }))).toContain('Captions: 3/3 · the trainer reads sentences');
  });

  it('shows the sentence and what the trainer reads: the trigger first, as a short phrase', async () => {
    const red = await done(command('caption', 'show', { dataset: 'oldtown', image: 1 }));
    expect(red).toContain(testCaptionFor('red'));
    expect(red).toContain('mdvl_city, a photo of a red city street with old stone houses\n');
    expect(red).toMatch(/Sentence \(version 1 · captioner/);
    expect(await done(command('caption', 'show', { dataset: 'oldtown', image: 2 }))).toContain(testCaptionFor('blue'));
  });

  it('lists frequent words and phrases of the sentences in /tags top', async () => {
    const top = await done(command('tags', 'top', { dataset: 'oldtown' }));
    expect(top).toMatch(/Words and phrases in the sentences of \*\*oldtown\*\* \(3 of 3 images described\)/);
    expect(top).toMatch(/^` ?\d+` █{10} \*\*3\*\* · `(photo|old stone houses)`$/m);
    expect(top).not.toMatch(/`a photo of a red city street/);
  });

  it('replaces a word across every sentence, and undo brings it back', async () => {
    expect(await done(command('caption', 'replace', { dataset: 'oldtown', from: 'street', to: 'alley' }))).toMatch(
      /Replaced “street” with “alley” in the sentences: changed 3 sentences of \*\*oldtown\*\*/,
    );
    expect(await done(command('caption', 'show', { dataset: 'oldtown', image: 3 }))).toContain(
      'mdvl_city, a photo of a green city alley with old stone houses\n',
    );
    expect(await done(command('caption', 'replace', { dataset: 'oldtown', from: 'castle', to: 'fort' }))).toMatch(
      /No sentence of \*\*oldtown\*\* holds “castle”/,
    );
    expect(await done(command('caption', 'undo', { dataset: 'oldtown' }))).toMatch(/Undid “replaced “street” with “alley” in the sentences” on 3 sentences/);
    expect(await done(command('caption', 'show', { dataset: 'oldtown', image: 3 }))).toContain('city street with old stone houses');
  });

  it('edits one sentence in a form', async () => {
    const reply = await editCaption(world, alice, 'oldtown', 2, 'Sentence of #2 (oldtown)', { sentence: 'mdvl_city, A rainy night on a blue lit square.' });
    expect(reply).toContain('A rainy night on a blue lit square.');
    expect(await done(command('caption', 'show', { dataset: 'oldtown', image: 2 }))).toContain('mdvl_city, a rainy night on a blue lit square\n');
  });

  it('stages for the trainer what each mode says, making the missing captions when the mode changes', async () => {
    expect(await stagedCaptions('oldtown')).toEqual({
      '1.txt': 'mdvl_city, a photo of a red city street with old stone houses\n',
      '2.txt': 'mdvl_city, a rainy night on a blue lit square\n',
      '3.txt': 'mdvl_city, a photo of a green city street with old stone houses\n',
    });

    expect(await done(command('caption', 'mode', { dataset: 'oldtown', mode: 'tags' }))).toMatch(/now captioned with tags\. Making the 3 missing captions now/);
    await notice(threadId, 'Tagged 3 images');
    const tags = await stagedCaptions('oldtown');
    expect(tags['1.txt']).toBe('mdvl_city, red theme, smile, long hair, tiara\n');
    expect(tags['2.txt']).toMatch(/^mdvl_city, blue theme, /);

    // Both: nothing is missing any more, so nothing is made again.
    expect(await done(command('caption', 'mode', { dataset: 'oldtown', mode: 'both' }))).toBe('**oldtown** is now captioned with a sentence, then tags.');
    const both = await stagedCaptions('oldtown');
    expect(both['1.txt']).toBe('mdvl_city, a photo of a red city street with old stone houses, red theme, smile, long hair, tiara\n');
    expect(both['2.txt']).toMatch(/^mdvl_city, a rainy night on a blue lit square, blue theme, /);
  });
});

describe('sentences that come with an upload', () => {
  it('are kept as sentences: /tags top lists real tags, and the images are still tagged by the machine', async () => {
    expect(await done(command('dataset', 'create', { name: 'zipped', trigger: 'ohwx_z', class: 'woman', kind: 'character', base: 'sd15' }))).toMatch(/Created/);
    const threadId = threadOf('zipped');
    const [a, b] = [await tinted(11, '#ff2020'), await normalJpeg(12)];
    const zip = buildZip([
      { name: 'a.jpg', data: a.data },
      { name: 'a.txt', data: Buffer.from('ohwx_z, a woman in a red coat walking down a narrow street, with old houses on both sides\n') },
      { name: 'b.jpg', data: b.data },
      { name: 'b.txt', data: Buffer.from('A portrait of a smiling woman, standing in front of a wooden door.') },
    ]);
    const file = world.discord.addAttachment({ filename: 'set.zip', data: zip, contentType: 'application/zip' });
    expect(await done(command('dataset', 'add', { dataset: 'zipped', zip: file as never }))).toMatch(/2 added/);
    await notice(threadId, 'Tagged 2 images');

    const top = await done(command('tags', 'top', { dataset: 'zipped' }));
    expect(top).toMatch(/^`\d` █{10} \*\*2\*\* · `smile`$/m);
    expect(top).not.toMatch(/walking down|narrow street|wooden door/);

    const shown = await done(command('caption', 'show', { dataset: 'zipped', image: 1 }));
    expect(shown).toMatch(/Sentence \(version 1 · upload/);
    expect(shown).toContain('a woman in a red coat walking down a narrow street, with old houses on both sides');
    expect(shown).toContain('ohwx_z, red theme, smile'); // the trainer reads tags in this dataset's mode
  });
});
