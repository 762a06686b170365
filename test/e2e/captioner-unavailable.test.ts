import { copyFile, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAPTIONER_TEST_FILES, testCaptionFor, writeTestCaptioner } from '../fixtures/florence-model.ts';
import { tinted } from '../fixtures/workshop.ts';
import { privateRefusal } from './steps.ts';
import { World } from './world.ts';

let world: World;
let tmp: string;
let modelDir: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-no-captioner-'));
  modelDir = join(tmp, 'florence');
  await mkdir(modelDir);
  // TAGGER_MODEL_DIR makes the bot run the tagging worker; a sentence dataset never needs the tagger.
  world = await World.start({ env: { TAGGER_MODEL_DIR: join(tmp, 'no-tagger'), CAPTIONER_MODEL_DIR: modelDir, TAGGER_RETRY_SECONDS: '1' } });
  await world.startBot();
});
afterAll(async () => {
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

function captionerErrors() {
  return world.log.lines.filter((l) => l.level === 50 && String(l.msg).startsWith('captioner unavailable'));
}

async function until(check: () => boolean, what: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('a missing or corrupt captioner model', () => {
  it('tells the admins once per problem, keeps accepting uploads, and describes them once the model is there', async () => {
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'streets', trigger: 'mdvl_city', class: 'city', kind: 'style', base: 'sdxl' },
    });
    await create.waitForEdit();
    const image = await tinted(5, '#ff2020');
    const add = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'add',
      options: { dataset: 'streets', image1: world.discord.addAttachment({ filename: image.name, data: image.data }) },
    });
    await add.waitForEdit();
    expect(add.lastReply()?.content).toMatch(/1 added/);

    // Missing files: one admin-facing error naming what is missing and the setting to fix.
    await until(() => captionerErrors().length > 0, 'the missing-model error');
    expect(String(captionerErrors()[0]!.msg)).toMatch(/CAPTIONER_MODEL_DIR/);
    expect(String(captionerErrors()[0]!.msg)).toMatch(/config\.json/);

    // A corrupt session file is a different problem, reported once more.
    const good = join(tmp, 'good');
    await writeTestCaptioner(good);
    await mkdir(join(modelDir, 'onnx'), { recursive: true });
    await writeFile(join(modelDir, 'onnx', 'decoder_model_merged.onnx'), Buffer.from('this is not an onnx model'));
    for (const f of CAPTIONER_TEST_FILES.filter((f) => f !== 'onnx/decoder_model_merged.onnx')) await copyFile(join(good, f), join(modelDir, f));
    await until(() => captionerErrors().length > 1, 'the corrupt-model error');
    expect(String(captionerErrors()[1]!.msg)).toMatch(/ONNX Runtime could not load the captioner model/);

    const caption = world.discord.sendCommand({ name: 'caption', subcommand: 'show', options: { dataset: 'streets', image: 1 } });
    await caption.waitForEdit();
    expect(caption.lastReply()?.content).toContain('No caption yet');

    const show = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', options: { dataset: 'streets' } });
    await show.waitForEdit();
    expect(show.lastReply()?.content).toContain('Captions: 0/1 · not described yet: #1 · the trainer reads sentences');

    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'streets' } });
    expect(await privateRefusal(plan)).toMatch(/1 image is not described yet \(#1\)\. Wait for captioning to finish/);

    // The admin puts the good file in place: the waiting job is described without anyone asking.
    await copyFile(join(good, 'onnx', 'decoder_model_merged.onnx'), join(modelDir, 'onnx', '.decoder.tmp'));
    await rename(join(modelDir, 'onnx', '.decoder.tmp'), join(modelDir, 'onnx', 'decoder_model_merged.onnx'));
    const threadId = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · streets')!.id;
    await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Described 1 image'),
      30_000,
    );
    const after = world.discord.sendCommand({ name: 'caption', subcommand: 'show', options: { dataset: 'streets', image: 1 } });
    await after.waitForEdit();
    expect(after.lastReply()?.content).toContain(testCaptionFor('red'));
    expect(world.log.lines.some((l) => l.msg === 'captioner model available again')).toBe(true);
    // Retried every second throughout, but each problem was said once.
    expect(captionerErrors()).toHaveLength(2);
    // The tagger was never needed, so it never complained.
    expect(world.log.lines.some((l) => String(l.msg).startsWith('tagger unavailable'))).toBe(false);
  });

  it('with tags and sentences, a missing tagger does not hold back the sentences', async () => {
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      options: { name: 'both', trigger: 'ohwx_both', class: 'woman', kind: 'character', base: 'sd15' },
    });
    await create.waitForEdit();
    const mode = world.discord.sendCommand({ name: 'caption', subcommand: 'mode', options: { dataset: 'both', mode: 'both' } });
    await mode.waitForEdit();
    expect(mode.lastReply()?.content).toBe('**both** is now captioned with a sentence, then tags.');
    const image = await tinted(6, '#2040ff');
    const add = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'add',
      options: { dataset: 'both', image1: world.discord.addAttachment({ filename: image.name, data: image.data }) },
    });
    await add.waitForEdit();
    const threadId = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · both')!.id;
    await world.discord.waitForCall(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Described 1 image'),
      30_000,
    );
    await until(() => world.log.lines.some((l) => l.level === 50 && String(l.msg).startsWith('tagger unavailable')), 'the missing-tagger error');
    const show = world.discord.sendCommand({ name: 'caption', subcommand: 'show', options: { dataset: 'both', image: 1 } });
    await show.waitForEdit();
    expect(show.lastReply()?.content).toContain(testCaptionFor('blue'));
    expect(show.lastReply()?.content).toContain('No tags yet (tagging may still be running).');
  });
});
