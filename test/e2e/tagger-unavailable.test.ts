import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import { privateRefusal } from './steps.ts';
import { World } from './world.ts';

let world: World;
let modelDir: string;

beforeAll(async () => {
  modelDir = await mkdtemp(join(tmpdir(), 'lora-guild-no-model-'));
  world = await World.start({ env: { TAGGER_MODEL_DIR: modelDir, TAGGER_RETRY_SECONDS: '1' } });
  await world.startBot();
});
afterAll(async () => {
  await world?.close();
  await rm(modelDir, { recursive: true, force: true });
});

function taggerErrors() {
  return world.log.lines.filter((l) => l.level === 50 && String(l.msg).startsWith('tagger unavailable'));
}

async function until(check: () => boolean, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('a missing or corrupt tagger model', () => {
  it('tells the admins, keeps accepting uploads, and tags them once the model is there', async () => {
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'waiting', trigger: 'ohwx_wait', class: 'woman', kind: 'character', base: 'sd15' },
    });
    await create.waitForEdit();
    const image = await tinted(5, '#ff2020');
    const add = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'add',
      options: { dataset: 'waiting', image1: world.discord.addAttachment({ filename: image.name, data: image.data }) },
    });
    await add.waitForEdit();
    expect(add.lastReply()?.content).toMatch(/1 added/);

    // Missing files: one admin-facing error naming what is wrong and how to fix it.
    await until(() => taggerErrors().length > 0, 'the missing-model error');
    expect(String(taggerErrors()[0]!.msg)).toMatch(/model\.onnx/);
    expect(String(taggerErrors()[0]!.msg)).toMatch(/TAGGER_MODEL_DIR|selected_tags\.csv/);

    // A corrupt model is a different problem, reported once more.
    await writeFile(join(modelDir, 'model.onnx'), Buffer.from('this is not an onnx model'));
    await writeFile(join(modelDir, 'selected_tags.csv'), 'tag_id,name,category,count\n1,smile,0,10\n');
    await until(() => taggerErrors().length > 1, 'the corrupt-model error');
    expect(JSON.stringify(taggerErrors()[1])).toMatch(/onnx|model/i);

    const caption = world.discord.sendCommand({ name: 'caption', subcommand: 'show', options: { dataset: 'waiting', image: 1 } });
    await caption.waitForEdit();
    expect(caption.lastReply()?.content).toContain('No caption yet');

    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'waiting' } });
    await show.waitForEdit();
    expect(show.lastReply()?.content).toContain('Captions: 0/1 · not tagged yet: #1');

    // Untagged images cannot be trained: the plan says so, and nothing is queued.
    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'waiting' } });
    expect(await privateRefusal(plan)).toMatch(/1 image is not tagged yet \(#1\)\. Wait for tagging to finish, or run `\/tags retag`/);
    expect(plan.lastReply()?.components ?? []).toEqual([]);

    // The admin puts a good model in place: the waiting job is tagged without anyone asking.
    await writeTestModel(modelDir, { tags: WORKSHOP_TAGS });
    const threadId = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · waiting')!.id;
    await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Tagged 1 image'),
      20_000,
    );
    const after = world.discord.sendCommand({ name: 'caption', subcommand: 'show', options: { dataset: 'waiting', image: 1 } });
    await after.waitForEdit();
    expect(after.lastReply()?.content).toContain('ohwx_wait, red theme, smile');
    expect(world.log.lines.some((l) => l.msg === 'tagger model available again')).toBe(true);
  });
});
