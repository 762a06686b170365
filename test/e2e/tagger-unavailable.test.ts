import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import { addImages, adminErrors, ask, createDataset, postedIn, privateRefusal, until, worldWithFolder } from './steps.ts';

const file = worldWithFolder('lora-guild-no-model-', (modelDir) => ({ TAGGER_MODEL_DIR: modelDir, TAGGER_RETRY_SECONDS: '1' }));

const taggerErrors = () => adminErrors(file.world, 'tagger unavailable');

/** The member who uploads (the fake Discord's default user). */
const member = () => file.world.discord.defaultUser;

describe('a missing or corrupt tagger model', () => {
  it('tells the admins, keeps accepting uploads, and tags them once the model is there', async () => {
    const { world, folder: modelDir } = file;
    const threadId = await createDataset(world, member(), { name: 'waiting', trigger: 'ohwx_wait', class: 'woman', kind: 'character', base: 'sd15' });
    expect(await addImages(world, member(), 'waiting', [await tinted(5, '#ff2020')])).toMatch(/1 added/);

    // Missing files: one admin-facing error naming what is wrong and how to fix it.
    await until('the missing-model error', () => taggerErrors().length > 0, 20_000);
    expect(String(taggerErrors()[0]!.msg)).toMatch(/model\.onnx/);
    expect(String(taggerErrors()[0]!.msg)).toMatch(/TAGGER_MODEL_DIR|selected_tags\.csv/);

    // A corrupt model is a different problem, reported once more.
    await writeFile(join(modelDir, 'model.onnx'), Buffer.from('this is not an onnx model'));
    await writeFile(join(modelDir, 'selected_tags.csv'), 'tag_id,name,category,count\n1,smile,0,10\n');
    await until('the corrupt-model error', () => taggerErrors().length > 1, 20_000);
    expect(JSON.stringify(taggerErrors()[1])).toMatch(/onnx|model/i);

    expect(await ask(world, { name: 'caption', subcommand: 'show', options: { dataset: 'waiting', image: 1 } })).toContain('No caption yet');

    expect(await ask(world, { name: 'dataset', subcommand: 'show', options: { dataset: 'waiting' } })).toContain('Captions: 0/1 · not tagged yet: #1');

    // Untagged images cannot be trained: the plan says so, and nothing is queued.
    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'waiting' } });
    expect(await privateRefusal(plan)).toMatch(/1 image is not tagged yet \(#1\)\. Wait for tagging to finish, or run `\/tags retag`/);
    expect(plan.lastReply()?.components ?? []).toEqual([]);

    // The admin puts a good model in place: the waiting job is tagged without anyone asking.
    await writeTestModel(modelDir, { tags: WORKSHOP_TAGS });
    await postedIn(world, threadId, 'Tagged 1 image', 20_000);
    expect(await ask(world, { name: 'caption', subcommand: 'show', options: { dataset: 'waiting', image: 1 } })).toContain('ohwx_wait, red theme, smile');
    expect(world.log.lines.some((l) => l.msg === 'tagger model available again')).toBe(true);
  });
});
