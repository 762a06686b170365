import { copyFile, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CAPTIONER_TEST_FILES, testCaptionFor, writeTestCaptioner } from '../fixtures/florence-model.ts';
import { tinted } from '../fixtures/workshop.ts';
import { addImages, adminErrors, ask, createDataset, postedIn, privateRefusal, until, worldWithFolder } from './steps.ts';

const file = worldWithFolder('lora-guild-no-captioner-', async (folder) => {
  await mkdir(join(folder, 'florence'));
  // TAGGER_MODEL_DIR makes the bot run the tagging worker; a sentence dataset never needs the tagger.
  return { TAGGER_MODEL_DIR: join(folder, 'no-tagger'), CAPTIONER_MODEL_DIR: join(folder, 'florence'), TAGGER_RETRY_SECONDS: '1' };
});

const captionerErrors = () => adminErrors(file.world, 'captioner unavailable');

/** The member who uploads (the fake Discord's default user). */
const member = () => file.world.discord.defaultUser;

describe('a missing or corrupt captioner model', () => {
  it('tells the admins once per problem, keeps accepting uploads, and describes them once the model is there', async () => {
    const { world, folder } = file;
    const modelDir = join(folder, 'florence');
    const threadId = await createDataset(world, member(), { name: 'streets', trigger: 'mdvl_city', class: 'city', kind: 'style', base: 'sdxl' });
    expect(await addImages(world, member(), 'streets', [await tinted(5, '#ff2020')])).toMatch(/1 added/);

    // Missing files: one admin-facing error naming what is missing and the setting to fix.
    await until('the missing-model error', () => captionerErrors().length > 0, 30_000);
    expect(String(captionerErrors()[0]!.msg)).toMatch(/CAPTIONER_MODEL_DIR/);
    expect(String(captionerErrors()[0]!.msg)).toMatch(/config\.json/);

    // A corrupt session file is a different problem, reported once more.
    const good = join(folder, 'good');
    await writeTestCaptioner(good);
    await mkdir(join(modelDir, 'onnx'), { recursive: true });
    await writeFile(join(modelDir, 'onnx', 'decoder_model_merged.onnx'), Buffer.from('this is not an onnx model'));
    for (const f of CAPTIONER_TEST_FILES.filter((f) => f !== 'onnx/decoder_model_merged.onnx')) await copyFile(join(good, f), join(modelDir, f));
    await until('the corrupt-model error', () => captionerErrors().length > 1, 30_000);
    expect(String(captionerErrors()[1]!.msg)).toMatch(/ONNX Runtime could not load the captioner model/);

    expect(await ask(world, { name: 'caption', subcommand: 'show', options: { dataset: 'streets', image: 1 } })).toContain('No caption yet');

    expect(await ask(world, { name: 'dataset', subcommand: 'show', options: { dataset: 'streets' } })).toContain(
      'Captions: 0/1 · not described yet: #1 · the trainer reads sentences',
    );

    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'streets' } });
    expect(await privateRefusal(plan)).toMatch(/1 image is not described yet \(#1\)\. Wait for captioning to finish/);

    // The admin puts the good file in place: the waiting job is described without anyone asking.
    await copyFile(join(good, 'onnx', 'decoder_model_merged.onnx'), join(modelDir, 'onnx', '.decoder.tmp'));
    await rename(join(modelDir, 'onnx', '.decoder.tmp'), join(modelDir, 'onnx', 'decoder_model_merged.onnx'));
    await postedIn(world, threadId, 'Described 1 image');
    expect(await ask(world, { name: 'caption', subcommand: 'show', options: { dataset: 'streets', image: 1 } })).toContain(testCaptionFor('red'));
    expect(world.log.lines.some((l) => l.msg === 'captioner model available again')).toBe(true);
    // Retried every second throughout, but each problem was said once.
    expect(captionerErrors()).toHaveLength(2);
    // The tagger was never needed, so it never complained.
    expect(world.log.lines.some((l) => String(l.msg).startsWith('tagger unavailable'))).toBe(false);
  });

  it('with tags and sentences, a missing tagger does not hold back the sentences', async () => {
    const { world } = file;
    const threadId = await createDataset(world, member(), { name: 'both', trigger: 'ohwx_both', class: 'woman', kind: 'character', base: 'sd15' });
    expect(await ask(world, { name: 'caption', subcommand: 'mode', options: { dataset: 'both', mode: 'both' } })).toBe(
      '**both** is now captioned with a sentence, then tags.',
    );
    await addImages(world, member(), 'both', [await tinted(6, '#2040ff')]);
    await postedIn(world, threadId, 'Described 1 image');
    await until('the missing-tagger error', () => adminErrors(world, 'tagger unavailable').length > 0, 30_000);
    const show = await ask(world, { name: 'caption', subcommand: 'show', options: { dataset: 'both', image: 1 } });
    expect(show).toContain(testCaptionFor('blue'));
    expect(show).toContain('No tags yet (tagging may still be running).');
  });
});
