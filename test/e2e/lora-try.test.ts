import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { sampleGridLayout } from '../../src/core/image-sheets.ts';
import { RunStore } from '../../src/store/run-store.ts';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import type { InteractionHandle, MessageSnapshot } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import { World } from './world.ts';

const admin = { id: '300000000000000001', username: 'admin' };
const alice = { id: '300000000000000002', username: 'alice' };
const bob = { id: '300000000000000003', username: 'bob' };

let world: World;
let tmp: string;
let runs: RunStore;
let blobs: BlobStore;
let threadId: string;
let runId = '';

const WORKER_ENV = (extra: Record<string, string> = {}) => steps.standinWorkerEnv(join(tmp, 'models'), { WORKER_ID: 'gpu-try', ...extra });

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-try-'));
  await writeTestModel(join(tmp, 'tagger'), { tags: WORKSHOP_TAGS });
  await steps.sd15Models(join(tmp, 'models'));
  world = await World.start({ env: { TAGGER_MODEL_DIR: join(tmp, 'tagger'), PROGRESS_INTERVAL_SECONDS: '1', LINE_EDIT_SECONDS: '1' } });
  await world.startBot();
  runs = new RunStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);

  threadId = await steps.heroDataset(world, alice);
  await spawnWorker();
});

afterAll(async () => {
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

const done = (h: InteractionHandle) => steps.done(world, h);
const refusal = steps.refusal;
const messages = (channelId: string) => steps.channelMessages(world, channelId);
const until = <T>(what: string, check: () => T | null | undefined | false, timeoutMs = 60_000) =>
  steps.until(what, check, timeoutMs, () => JSON.stringify(world.log.errors()).slice(0, 1500));

/** Starts a worker and waits for its first heartbeat (what the bot sees of it). */
async function spawnWorker(extra: Record<string, string> = {}): Promise<void> {
  await world.spawnWorker(WORKER_ENV(extra));
  await steps.workerOnline(world, 'gpu-try');
}

const startRun = (options: Record<string, string | number> = {}) =>
  steps.startRun(world, admin, { dataset: 'hero', model: 'base-sd15.safetensors', ...options });

const tried = () => steps.triedImages(world);

function buttonsOf(m: MessageSnapshot): { custom_id: string; label: string; disabled?: boolean }[] {
  return (m.components[0] as unknown as { components: { custom_id: string; label: string; disabled?: boolean }[] }).components;
}

const loraColour = (blob: string) => steps.standinLoraColour(blobs, blob);
const bar = steps.standinBar;

function pngText(png: Buffer, key: string): string | null {
  let at = 8;
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    const type = png.subarray(at + 4, at + 8).toString('latin1');
    if (type === 'tEXt') {
      const body = png.subarray(at + 8, at + 8 + len).toString('latin1');
      const [k, v] = body.split('\0');
      if (k === key) return v ?? null;
    }
    at += 12 + len;
  }
  return null;
}

/** Each text the acknowledgement showed, in order: where the request stood (its second line). */
function standings(h: InteractionHandle): string[] {
  return h
    .calls()
    .filter((c) => c.method === 'PATCH' && c.path.endsWith('/messages/@original') && c.status < 300)
    .map((c) => ((c.json as { content: string }).content.split('\n')[1] ?? '').trim());
}

function near(a: number[], b: number[], tolerance: number): boolean {
  return a.every((v, i) => Math.abs(v - b[i]!) <= tolerance);
}

describe('trying a trained LoRA', () => {
  it('draws the community’s pick after a run, and 🎲 / weight + draw it again with another seed or weight', async () => {
    runId = await startRun({ epochs: 3 });
    await until('the run to finish', () => messages(threadId).find((m) => m.content.startsWith(`✅ Run \`${runId}\``)), 90_000);
    await done(world.discord.sendButton({ customId: `vote:${runId}:2`, user: alice }));

    const ask = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: bob,
      options: { prompt: 'ohwx_hero smiling in a garden', run: runId, epoch: 'best', seed: 7 },
    });
    expect(await done(ask)).toMatch(/Drawing \*\*ohwx_hero smiling in a garden\*\* with run `\w+`, epoch 2, the community’s pick .*weight 1, seed 7/);
    const first = await until('the image', () => tried()[0]);
    expect(first.content).toMatch(/epoch 2, the community’s pick \(1 of 1 votes\) · weight 1 · seed 7 · 512×512 · asked by <@300000000000000003>/);
    const png = first.attachments[0]!.data;
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(pngText(png, 'seed')).toBe('7');
    expect(pngText(png, 'prompt')).toBe('ohwx_hero smiling in a garden');
    // The stand-in drew epoch 2's file at weight 1: the bar has that file's colour, filled (1 + 2) / 4.
    const run = (await runs.get(runId))!;
    const bar1 = await bar(png, { left: 0, top: 0, width: 512, height: 512 });
    expect(bar1.colour).toEqual(await loraColour(run.epochs['2']!.checkpoint!.blob));
    expect(bar1.share).toBeCloseTo(0.75, 2);
    expect(buttonsOf(first).map((b) => b.label)).toEqual(['Another seed', 'Weight 0.9', 'Weight 1.1', 'Use as a sample prompt']);

    // 🎲: same everything, another seed.
    const reroll = world.discord.sendButton({ customId: buttonsOf(first)[0]!.custom_id, user: bob, message: first.id });
    expect(await done(reroll)).toMatch(/seed \d+/);
    const second = await until('the second image', () => tried()[1]);
    const seed2 = /seed (\d+)/.exec(second.content)![1]!;
    expect(seed2).not.toBe('7');
    expect(second.content).toMatch(/epoch 2, the community’s pick \(1 of 1 votes\) · weight 1 · seed \d+/);
    expect(pngText(second.attachments[0]!.data, 'seed')).toBe(seed2);
    expect(second.attachments[0]!.data.equals(png)).toBe(false);

    // Weight +: same seed, weight 1.1.
    const heavier = world.discord.sendButton({ customId: buttonsOf(first)[2]!.custom_id, user: bob, message: first.id });
    expect(await done(heavier)).toMatch(/weight 1\.1, seed 7/);
    const third = await until('the heavier image', () => tried()[2]);
    expect(third.content).toMatch(/weight 1\.1 · seed 7 /);
    const bar3 = await bar(third.attachments[0]!.data, { left: 0, top: 0, width: 512, height: 512 });
    expect(bar3.colour).toEqual(bar1.colour);
    expect(bar3.share).toBeCloseTo(3.1 / 4, 2);

    // The same image asked again comes from the cache, without a worker drawing it.
    const drawnBefore = world.worker!.log.lines.filter((l) => l.msg === 'generating').length;
    const again = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: bob,
      options: { prompt: 'ohwx_hero smiling in a garden', run: runId, epoch: '2', seed: 7 },
    });
    expect(await done(again)).toMatch(/Found in the cache/);
    const fourth = await until('the cached image', () => tried()[3]);
    expect(fourth.attachments[0]!.data.equals(png)).toBe(true);
    expect(world.worker!.log.lines.filter((l) => l.msg === 'generating').length).toBe(drawnBefore);

    // "Use as a sample prompt": the next runs sample it.
    const pin = world.discord.sendButton({ customId: buttonsOf(first)[3]!.custom_id, user: alice, message: first.id });
    expect(await done(pin)).toMatch(/Added to \*\*hero\*\*’s sample prompts \(1 of 4\)/);
  });

  it('lists the sample prompts; the owner removes one with its button, another member may not', async () => {
    const prompts = (user: typeof alice) => world.discord.sendCommand({ name: 'train', subcommand: 'prompts', user, options: { dataset: 'hero' } });
    // bob sees the list without buttons.
    const seen = prompts(bob);
    expect(await done(seen)).toBe(
      '**hero**’s sample prompts (1 of 4), drawn after every epoch:\n1. ohwx_hero smiling in a garden\nThe dataset’s owner and moderators can remove them.',
    );
    expect(seen.lastReply()!.components).toEqual([]);
    // alice (the owner) gets a remove button; bob pressing it is refused and nothing changes.
    const list = prompts(alice);
    await done(list);
    const [remove] = buttonsOf(list.lastReply()!);
    expect(remove!.label).toBe('Remove 1');
    const press = (user: typeof alice) => world.discord.sendButton({ customId: remove!.custom_id, user, message: list.lastReply()!.id });
    expect(await refusal(press(bob))).toBe('⚠️ Only the owner of **hero** and moderators can remove its sample prompts.');
    expect(await done(prompts(bob))).toMatch(/1\. ohwx_hero smiling in a garden/);
    const removed = press(alice);
    await removed.waitForEdit(undefined, 30_000);
    expect(removed.lastReply()!.content).toMatch(/^🗑️ Removed \*\*ohwx_hero smiling in a garden\*\*\.\n\*\*hero\*\* has no sample prompts of its own/);
    expect(removed.lastReply()!.components).toEqual([]);
    // The same button again: the prompt is gone.
    expect(await refusal(press(alice))).toBe('⚠️ That prompt is no longer among the sample prompts.');
    expect(await done(prompts(bob))).toMatch(/has no sample prompts of its own/);
  });

  it('refuses bad settings with a clear message', async () => {
    expect(await steps.privateRefusal(world.discord.sendCommand({ name: 'lora', subcommand: 'try', options: { prompt: 'a --n trick', run: runId } }))).toMatch(
      /may not contain `--`/,
    );
    expect(
      await steps.privateRefusal(world.discord.sendCommand({ name: 'lora', subcommand: 'try', options: { prompt: 'ohwx_hero', run: runId, size: '500' } })),
    ).toMatch(/multiple of 64/);
    expect(
      await steps.privateRefusal(world.discord.sendCommand({ name: 'lora', subcommand: 'try', options: { prompt: 'ohwx_hero', run: runId, epoch: '9' } })),
    ).toMatch(/no saved file for epoch 9/);
    expect(
      await steps.privateRefusal(
        world.discord.sendCommand({ name: 'lora', subcommand: 'compare', options: { prompt: 'ohwx_hero', run: runId, epochs: '1', weights: '0.5, 7' } }),
      ),
    ).toMatch(/between -2 and 2/);
  });

  it('posts one labelled grid of epochs × weights in the run’s thread, in the order asked, and caches it', async () => {
    const ask = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'compare',
      user: bob,
      options: { run: runId, epochs: '3, 1', weights: '0.5, 1, 1.5', prompt: 'ohwx_hero portrait', seed: 11 },
    });
    expect(await done(ask)).toMatch(/epochs 3, 1 × weights 0\.5, 1, 1\.5 .*the grid goes to the run’s thread/);
    const isGrid = (m: MessageSnapshot) => m.content.startsWith('🧪 **ohwx_hero portrait**') && m.attachments.length === 1;
    const post = await until('the grid', () => messages(threadId).find(isGrid));
    expect(post.content).toContain('Rows: epoch 3, epoch 1 · columns: weight 0.5, weight 1, weight 1.5');
    const grid = post.attachments[0]!.data;
    const meta = await sharp(grid).metadata();
    // Each row is a sample grid of three 384 px cells; rows are stacked with a gap around them.
    const row = sampleGridLayout({ width: 384, height: 384 }, ['weight 0.5', 'weight 1', 'weight 1.5']);
    const gap = 4 * Math.max(1, Math.round(row.width / 512));
    expect(meta.width).toBe(row.width + 2 * gap);
    expect(meta.height).toBe(gap + 2 * (row.height + gap));
    const run = (await runs.get(runId))!;
    const colours = [await loraColour(run.epochs['3']!.checkpoint!.blob), await loraColour(run.epochs['1']!.checkpoint!.blob)];
    for (const [r, colour] of colours.entries()) {
      for (const [c, weight] of [0.5, 1, 1.5].entries()) {
        const cell = row.cells[c]!;
        const found = await bar(grid, { left: gap + cell.left, top: gap + r * (row.height + gap) + cell.top, width: 384, height: 384 });
        expect(near(found.colour, colour, 24), `row ${r} column ${c}: ${found.colour.join()} vs ${colour.join()}`).toBe(true);
        expect(found.share).toBeCloseTo((weight + 2) / 4, 1);
      }
    }

    const drawnBefore = world.worker!.log.lines.filter((l) => l.msg === 'generating').length;
    const again = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'compare',
      user: bob,
      options: { run: runId, epochs: '3, 1', weights: '0.5, 1, 1.5', prompt: 'ohwx_hero portrait', seed: 11 },
    });
    expect(await done(again)).toMatch(/Found in the cache/);
    await until('the cached grid', () => messages(threadId).filter(isGrid).length === 2);
    expect(world.worker!.log.lines.filter((l) => l.msg === 'generating').length).toBe(drawnBefore);
  });

  it('caps the images a member has waiting, naming the limit', async () => {
    await done(
      world.discord.sendCommand({ name: 'settings', subcommand: 'limits', user: admin, permissions: MANAGE_GUILD, options: { 'images-per-member': 1 } }),
    );
    await world.killWorker('SIGTERM');
    await spawnWorker({ STANDIN_GEN_SECONDS: '1.5' });
    const before = tried().length;
    await done(world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: bob, options: { prompt: 'ohwx_hero at the beach', run: runId } }));
    expect(
      await steps.privateRefusal(
        world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: bob, options: { prompt: 'ohwx_hero at night', run: runId } }),
      ),
    ).toMatch(/You already have 1 image waiting or being drawn; the limit is 1 per member/);
    // Another member is not held by bob's image.
    await done(world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: alice, options: { prompt: 'ohwx_hero at night', run: runId } }));
    await until('both images', () => tried().length === before + 2);
    // Once posted, bob may ask again.
    await done(world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: bob, options: { prompt: 'ohwx_hero in the rain', run: runId } }));
    await until('bob’s next image', () => tried().length === before + 3);
    await done(
      world.discord.sendCommand({ name: 'settings', subcommand: 'limits', user: admin, permissions: MANAGE_GUILD, options: { 'images-per-member': 3 } }),
    );
  });

  it('serves a generation before a waiting run, waits for a training run without disturbing it, and shows its place in line', async () => {
    await world.killWorker('SIGTERM');
    // Each image takes a while, so that every place in line is seen.
    await spawnWorker({ STANDIN_STEP_SECONDS: '0.005', STANDIN_GEN_SECONDS: '2.5' });
    const training = await startRun({ epochs: 4 });
    await until('the run to train', () => messages(threadId).find((m) => m.content.startsWith(`🚀 Run \`${training}\``)));
    const waiting = await startRun({ epochs: 1 });
    expect((await runs.get(waiting))?.status).toBe('queued');

    const ask = world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: bob, options: { prompt: 'ohwx_hero reading', run: runId, seed: 5 } });
    expect(await done(ask)).toMatch(new RegExp(`1st in line: the GPU is training run \`${training}\``));
    const behind = world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: alice, options: { prompt: 'ohwx_hero writing', run: runId, seed: 6 } });
    expect(await done(behind)).toMatch(new RegExp(`2nd in line: the GPU is training run \`${training}\``));
    const image = await until('the image', () => tried().find((m) => m.content.startsWith('🎨 **ohwx_hero reading**')), 120_000);
    const next = await until('the image behind it', () => tried().find((m) => m.content.startsWith('🎨 **ohwx_hero writing**')), 60_000);
    await until('the waiting run to finish', () => messages(threadId).find((m) => m.content.startsWith(`✅ Run \`${waiting}\``)), 120_000);

    // Each acknowledgement followed its request until the image was posted, editing only what changed:
    // its place while the run trained, the place going down as the image ahead was drawn, drawing, then
    // where the image went. (Between the run's end and a GPU taking it, a request may show one more place.)
    const trainingFor = (place: string) => `⏳ ${place} in line: the GPU is training run \`${training}\`; your image comes as soon as it finishes.`;
    const postedAt = (m: MessageSnapshot) => `✅ Posted below: https://discord.com/channels/${m.guildId}/${m.channelId}/${m.id}`;
    const first = standings(ask);
    expect(first.filter((s) => s !== '⏳ 1st in line for a GPU.')).toEqual([trainingFor('1st'), '🎨 Drawing now…', postedAt(image)]);
    const second = standings(behind).filter((s) => s !== '⏳ 2nd in line for a GPU.');
    expect(second).toEqual([trainingFor('2nd'), '⏳ 1st in line for a GPU.', '🎨 Drawing now…', postedAt(next)]);
    for (const h of [ask, behind]) {
      expect(h.lastReply()!.content).toMatch(/^🎨 Drawing \*\*ohwx_hero (reading|writing)\*\*.*\n✅ Posted below: /);
      // At most one edit a second (LINE_EDIT_SECONDS), the posted state excepted.
      const edits = h
        .calls()
        .filter((c) => c.method === 'PATCH')
        .map((c) => c.at);
      for (let i = 1; i < edits.length - 1; i++) expect(edits[i]! - edits[i - 1]!).toBeGreaterThanOrEqual(900);
      // The interaction's token, kept to edit, is never logged.
      expect(world.log.raw.some((l) => l.includes(h.token))).toBe(false);
    }

    // On the worker: the training run ended by itself, then the image was drawn, then the waiting run started.
    const lines = world.worker!.log.lines;
    const at = (test: (l: Record<string, unknown>) => boolean) => lines.findIndex(test);
    const trainedEnd = at((l) => l.runId === training && l.msg === 'run finished');
    const drawn = at((l) => l.msg === 'generating');
    const nextStart = at((l) => l.runId === waiting && l.msg === 'trainer started');
    expect(trainedEnd).toBeGreaterThanOrEqual(0);
    expect(drawn).toBeGreaterThan(trainedEnd);
    expect(nextStart).toBeGreaterThan(drawn);
    expect(lines.some((l) => l.runId === training && l.msg === 'stopping the run')).toBe(false);
    const run = (await runs.get(training))!;
    expect(run.status).toBe('finished');
    expect(Object.keys(run.epochs)).toEqual(['1', '2', '3', '4']);
  });

  it('refuses when no GPU online has the run’s base model', async () => {
    await world.killWorker('SIGTERM');
    expect(
      await steps.privateRefusal(world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: bob, options: { prompt: 'ohwx_hero', run: runId } })),
    ).toMatch(/No GPU online has the base model `base-sd15\.safetensors` that run `\w+` was trained on/);
  });
});
