import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { makeDownloadUrl } from '../../src/core/signed-url.ts';
import { DatasetStore } from '../../src/store/dataset-store.ts';
import { RunStore } from '../../src/store/run-store.ts';
import { writeTestModel, type TestTag } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_MESSAGES } from './steps.ts';
import { World } from './world.ts';

const mod = { id: '400000000000000001', username: 'mod' };
const alice = { id: '400000000000000002', username: 'alice' };
const bob = { id: '400000000000000003', username: 'bob' };
/** Manage Messages (moderation) and Manage Server (may start runs). */
const MODERATOR = String(BigInt(MANAGE_MESSAGES) | BigInt(steps.MANAGE_GUILD));
const MEMBER = '0';
const SECRET = 'a-download-secret-that-is-long-enough-0123456789';
/** Where the moderators are told what waits for review. */
const MOD_CHANNEL = '400000000000000900';

/** The tagger rates strongly red images explicit (after intake, which has no photo classifier here). */
const RATING_TAGS: TestTag[] = [
  { name: 'general', category: 9, bias: 1 },
  { name: 'sensitive', category: 9, bias: 0 },
  { name: 'questionable', category: 9, bias: -1 },
  { name: 'explicit', category: 9, bias: -2, r: 12, g: -6, b: -6 },
];

let world: World;
let tmp: string;
let store: DatasetStore;
let runs: RunStore;
let workerEnv: Record<string, string>;
let blobs: BlobStore;
let publicUrl: string;
let heroThread: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lora-guild-mod-'));
  await writeTestModel(join(tmp, 'tagger'), { tags: [...RATING_TAGS, ...WORKSHOP_TAGS] });
  const models = await steps.sd15Models(join(tmp, 'models'));
  const port = await steps.freePort();
  publicUrl = `http://127.0.0.1:${port}`;
  world = await World.start({
    discord: { guilds: [{ name: 'Guild', channels: [{ name: 'lora' }, { id: MOD_CHANNEL, name: 'mod-queue' }] }] },
    env: {
      TAGGER_MODEL_DIR: join(tmp, 'tagger'),
      HTTP_PORT: String(port),
      PUBLIC_URL: publicUrl,
      DOWNLOAD_SECRET: SECRET,
      PROGRESS_INTERVAL_SECONDS: '1',
      MODERATION_NOTICE_SECONDS: '1',
    },
  });
  await world.startBot();
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
  runs = new RunStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
  // Steps slow enough that a 20-epoch run is still training when its dataset is removed.
  workerEnv = steps.standinWorkerEnv(models, { STANDIN_STEP_SECONDS: '0.004' });
  await world.spawnWorker(workerEnv);
  await steps.workerOnline(world, 'gpu-test');
  const named = world.discord.sendCommand({
    name: 'settings',
    subcommand: 'moderation-channel',
    user: mod,
    permissions: MODERATOR,
    options: { channel: MOD_CHANNEL },
  });
  expect(await steps.done(world, named)).toMatch(new RegExp(` · moderators are told what waits for review in <#${MOD_CHANNEL}>$`));
  heroThread = await steps.heroDataset(world, alice);
});

afterAll(async () => {
  await world?.close();
  await rm(tmp, { recursive: true, force: true });
});

const done = (h: InteractionHandle) => steps.done(world, h);

function moderation(subcommand: string, options: Record<string, string | number> = {}, user = mod, permissions = MODERATOR) {
  return world.discord.sendCommand({ name: 'moderation', subcommand, user, permissions, options });
}

type Button = { custom_id: string; label: string };

function rowsOf(h: InteractionHandle): Button[][] {
  const rows = (h.lastReply()?.components ?? []) as { components: Button[] }[];
  return rows.map((r) => r.components);
}

function button(h: InteractionHandle, label: string): Button {
  const found = rowsOf(h)
    .flat()
    .find((b) => b.label === label);
  if (!found) throw new Error(`no button "${label}" in ${JSON.stringify(rowsOf(h))}`);
  return found;
}

function press(h: InteractionHandle, label: string, user = mod, permissions = MODERATOR): InteractionHandle {
  return world.discord.sendButton({ customId: button(h, label).custom_id, user, permissions, message: h.lastReply()!.id });
}

/** Whether the interaction was acknowledged so that only its user sees the answer. */
async function ephemeral(h: InteractionHandle): Promise<boolean> {
  const flags = ((await h.callback()).json as { data?: { flags?: number } }).data?.flags ?? 0;
  return (flags & 64) === 64;
}

/** Presses the Report button of hero's contact sheet (`/dataset show`) as `user` and sends the form. */
async function report(user: { id: string; username: string }, image: string, reason: string): Promise<InteractionHandle> {
  const sheet = world.discord.sendCommand({ name: 'dataset', subcommand: 'show', user, permissions: MEMBER, options: { dataset: 'hero' } });
  await done(sheet);
  const opened = press(sheet, 'Report', user, MEMBER);
  const modal = (await opened.callback()).json as { type: number; data: { custom_id: string } };
  expect(modal.type).toBe(9);
  return world.discord.sendModalSubmit({ customId: modal.data.custom_id, fields: { image, reason }, user, permissions: MEMBER });
}

function plan(dataset: string, epochs: number): InteractionHandle {
  return world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: mod, permissions: MODERATOR, options: { dataset, epochs } });
}

/** The notices in the moderation channel, oldest first. */
const notices = () => steps.channelMessages(world, MOD_CHANNEL);

/** Waits until the notices say `line` (one of their lines). */
function noticeSaying(line: string) {
  return steps.until(
    `a moderation notice saying ${line}`,
    () => notices().find((m) => m.content.split('\n').includes(line)),
    30_000,
    () => JSON.stringify(notices().map((m) => m.content)),
  );
}

/** The size of a one-row contact sheet of `tiles` default-sized tiles (256 px, 4 px apart and around). */
const sheetSize = (tiles: number) => ({ width: tiles * 256 + (tiles + 1) * 4, height: 264 });

/** The queue reply's contact sheet (its only attachment), or null when it has none. */
async function queueSheet(h: InteractionHandle): Promise<{ width: number; height: number; data: Buffer } | null> {
  const files = h.lastReply()!.attachments;
  if (files.length === 0) return null;
  expect(files.map((f) => f.filename)).toEqual([expect.stringMatching(/^moderation-queue-1\.jpg$/)]);
  const { width, height } = await sharp(files[0]!.data).metadata();
  return { width, height, data: files[0]!.data };
}

const heroFinished = (runId: string) => () => steps.runSummary(world, heroThread, runId);

describe('moderation', () => {
  it('flags an image the tagger rates above the channel’s policy after intake, telling the moderators; the dataset starts only once a moderator approves it', async () => {
    await noticeSaying('• image #1 of **hero** — rated explicit, its channel takes up to sensitive');
    expect(notices().map((m) => [m.content, m.attachments])).toEqual([
      ['🛡️ New for review: 1 item\n• image #1 of **hero** — rated explicit, its channel takes up to sensitive\n`/moderation queue` to review.', []],
    ]);
    const queue = moderation('queue');
    expect(await done(queue)).toMatch(/image #1 of \*\*hero\*\* — rated \*\*explicit\*\* by the tagger \(its channel takes up to sensitive\)/);
    expect(queue.lastReply()!.content).toMatch(/Moderation queue\*\* · 1 item/);
    expect(await ephemeral(queue)).toBe(true);
    // Only moderators see the queue: its sheet shows the flagged picture (hero's #1 is the red one).
    const sheet = (await queueSheet(queue))!;
    expect({ width: sheet.width, height: sheet.height }).toEqual(sheetSize(1));
    const { channels } = await sharp(sheet.data).extract({ left: 100, top: 100, width: 64, height: 64 }).stats();
    expect(channels[0]!.mean).toBeGreaterThan(channels[2]!.mean + 60);

    const planned = plan('hero', 1);
    expect(await done(planned)).toMatch(/🛡️ \*\*hero\*\* is waiting for a moderator: 1 image rated above what its channel takes \(sensitive\)/);
    const refused = press(planned, 'Start training');
    expect(await done(refused)).toMatch(/⚠️ \*\*hero\*\* is waiting for a moderator.*`\/moderation queue`/);
    expect(await ephemeral(refused)).toBe(true);
    expect(await runs.listForGuild(world.discord.guildId)).toEqual([]);

    // A member without Manage Messages cannot act on the queue, whatever buttons they get hold of.
    const sneaky = press(queue, 'Approve #1', bob, MEMBER);
    expect(await steps.refusal(sneaky)).toBe('⚠️ Moderation is for members with Manage Messages.');
    expect(await done(moderation('queue'))).toMatch(/1 item/);

    const approve = press(queue, 'Approve #1');
    expect(await done(approve)).toMatch(/✅ Done: approved image #1 of \*\*hero\*\*.*\nNothing waits for review/);
    expect(await queueSheet(approve)).toBeNull();

    const started = press(planned, 'Start training');
    const runId = /Queued run `([a-z0-9]+)`/.exec(await done(started))![1]!;
    await steps.until('the approved dataset’s run to finish', heroFinished(runId), 60_000);
  });

  it('takes members’ reports from the contact sheet, once each, tells only the reporter and the moderation channel, and lets moderators dismiss, remove or approve', async () => {
    // A run queued before the report (no GPU online yet) may not train once the dataset waits for a moderator.
    await world.killWorker('SIGTERM');
    const queued = await steps.startRun(world, mod, { dataset: 'hero', epochs: 1, model: 'base-sd15.safetensors' });
    expect((await runs.get(queued))?.status).toBe('queued');

    const noticesBefore = notices().length;
    const first = await report(bob, '2', 'This is not the character at all');
    expect(await done(first)).toBe('Thank you: your report on image #2 of **hero** went to the moderators. Nobody else sees who reported it.');
    expect(await ephemeral(first)).toBe(true);
    await world.spawnWorker(workerEnv);
    const stopped = await steps.until('the queued run to be stopped', () =>
      steps.channelMessages(world, heroThread).find((m) => m.content.startsWith(`⏸️ Run \`${queued}\``)),
    );
    expect(stopped.content).toBe(
      `⏸️ Run \`${queued}\` of **hero** was stopped before it trained: **hero** is waiting for a moderator: 1 report from members. ` +
        'It can start once a member with Manage Messages reviews it in `/moderation queue` and approves it. Then start it again with `/train plan`.',
    );
    expect(await runs.get(queued)).toMatchObject({ status: 'cancelled', epochs: {} });
    const told = await noticeSaying('• image #2 of **hero** — reported by a member: “This is not the character at all”');
    expect(told.content).toBe(
      '🛡️ New for review: 1 item\n• image #2 of **hero** — reported by a member: “This is not the character at all”\n`/moderation queue` to review.',
    );
    expect(told.attachments).toEqual([]);
    expect(await done(await report(bob, '#2', 'Still not the character'))).toMatch(/⚠️ You have already reported image #2 of \*\*hero\*\*/);
    expect(await done(await report(bob, 'two', 'Wrong one'))).toMatch(/⚠️ The image is its number on the contact sheet/);
    expect(await done(await report(bob, '9', 'Wrong one'))).toMatch(/⚠️ \*\*hero\*\* has no image #9/);
    expect(await done(await report(bob, '3', '     '))).toMatch(/⚠️ Please say briefly what is wrong \(3–300 characters\)/);
    expect(await done(await report(bob, '3', 'Watermarked stock photo'))).toMatch(/report on image #3/);
    expect(await done(await report(alice, '', 'Same as another dataset here: **copied** from <@400000000000000003>'))).toMatch(/report on \*\*hero\*\* went/);
    // The moderators hear of each report once (refused ones not at all), without who filed it, and only a short, plain excerpt of its words.
    await noticeSaying('• image #3 of **hero** — reported by a member: “Watermarked stock photo”');
    await noticeSaying('• dataset **hero** — reported by a member: “Same as another dataset here copied fro…”');
    const reported = notices().slice(noticesBefore);
    expect(reported.flatMap((m) => m.content.split('\n').filter((l) => l.startsWith('• ')))).toEqual([
      '• image #2 of **hero** — reported by a member: “This is not the character at all”',
      '• image #3 of **hero** — reported by a member: “Watermarked stock photo”',
      '• dataset **hero** — reported by a member: “Same as another dataset here copied fro…”',
    ]);
    for (const notice of reported) {
      expect(notice.content).not.toMatch(new RegExp(`${bob.id}|${alice.id}|bob|alice|<@`));
      expect(notice.attachments).toEqual([]);
    }
    // Nothing public names a reporter or a reason.
    const everything = [...steps.channelMessages(world, world.discord.channelId), ...steps.channelMessages(world, heroThread)];
    expect(everything.filter((m) => /character at all|stock photo|another dataset/.test(m.content))).toEqual([]);

    const queue = moderation('queue');
    const text = await done(queue);
    expect(text).toMatch(/Moderation queue\*\* · 3 items/);
    expect(text).toContain(`**1.** dataset **hero** — 1 report: <@${alice.id}> “Same as another dataset here: **copied** from <@${bob.id}>”`);
    expect(text).toContain(`**2.** image #2 of **hero** — 1 report: <@${bob.id}> “This is not the character at all”`);
    expect(text).toContain(`**3.** image #3 of **hero** — 1 report: <@${bob.id}> “Watermarked stock photo”`);
    // One tile per image on the page (the dataset's item has none).
    expect(await queueSheet(queue)).toMatchObject(sheetSize(2));
    expect(rowsOf(queue).map((row) => row.map((b) => b.label))).toEqual([
      ['Remove dataset', 'Approve dataset', 'Dismiss reports'],
      ['Remove #2', 'Approve #2', 'Dismiss reports'],
      ['Remove #3', 'Approve #3', 'Dismiss reports'],
    ]);
    const replanned = plan('hero', 1);
    await done(replanned);
    expect(await done(press(replanned, 'Start training'))).toMatch(/waiting for a moderator: 3 reports from members/);
    // Nor is it handed out in bulk: its owner's export waits for the moderators too.
    const exporting = world.discord.sendCommand({ name: 'dataset', subcommand: 'export', user: alice, options: { dataset: 'hero' } });
    expect(await done(exporting)).toMatch(/^⚠️ \*\*hero\*\* is waiting for a moderator: 3 reports from members\. It can be exported once/);

    const dismiss = world.discord.sendButton({ customId: rowsOf(queue)[1]![2]!.custom_id, user: mod, permissions: MODERATOR, message: queue.lastReply()!.id });
    expect(await done(dismiss)).toMatch(/✅ Done: dismissed the reports on image #2 of \*\*hero\*\* \(1 report closed\)[\s\S]*2 items/);
    expect(await queueSheet(dismiss)).toMatchObject(sheetSize(1));

    // Remove #3 asks for a reason, then removes the image: its record and its files.
    const image3 = (await store.getImage((await store.findDataset(world.discord.guildId, 'hero'))!.id, 3))!;
    const removing = press(dismiss, 'Remove #3');
    const form = (await removing.callback()).json as { type: number; data: { custom_id: string } };
    expect(form.type).toBe(9);
    const removed = world.discord.sendModalSubmit({
      customId: form.data.custom_id,
      fields: { reason: 'A stock photo with a watermark' },
      user: mod,
      permissions: MODERATOR,
    });
    expect(await done(removed)).toMatch(/✅ Done: removed image #3 of \*\*hero\*\* \(1 image, 1 report closed\)[\s\S]*1 item/);
    expect(await queueSheet(removed)).toBeNull();
    expect(await store.getImage(image3.datasetId, 3)).toBeNull();
    for (const blob of [image3.originalBlob, image3.masterBlob, image3.thumbBlob]) expect(await blobs.has(blob)).toBe(false);
    // A moderator's `/dataset remove` of images other members gave is in the log as well.
    const viaDataset = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'remove',
      user: mod,
      permissions: MODERATOR,
      options: { dataset: 'hero', images: '2' },
    });
    expect(await done(viaDataset)).toBe('Removed 1 image from **hero**: #2.');

    expect(await done(moderation('approve', { dataset: 'hero' }))).toBe('Done: approved dataset **hero** (1 report closed). It is in `/moderation log`.');
    expect(await done(moderation('queue'))).toMatch(/^Nothing waits for review/);
    expect(await done(plan('hero', 1))).not.toContain('🛡️');

    const log = await done(moderation('log'));
    const lines = log.split('\n').slice(1);
    expect(log).toMatch(/^\*\*Moderation log\*\* · 5 entries, newest first/);
    expect(lines[0]).toMatch(new RegExp(`<@${mod.id}> approved dataset \\*\\*hero\\*\\* \\(1 report closed\\)$`));
    expect(lines[1]).toMatch(new RegExp(`<@${mod.id}> removed image #2 of \\*\\*hero\\*\\* \\(1 image\\)$`));
    expect(lines[2]).toMatch(
      new RegExp(`<@${mod.id}> removed image #3 of \\*\\*hero\\*\\* — “A stock photo with a watermark” \\(1 image, 1 report closed\\)$`),
    );
    expect(lines[3]).toMatch(/dismissed the reports on image #2 of \*\*hero\*\* \(1 report closed\)$/);
    expect(lines[4]).toMatch(/approved image #1 of \*\*hero\*\*$/);

    // The moderation channel is deleted: notices are dropped and logged once, and nothing else breaks.
    const p = world.env.REDIS_PREFIX!;
    const arrivalsTaken = () => world.redis.scard(`${p}:mod:arrived-guilds`).then((n) => n === 0);
    const channelFetches = () => world.discord.callsTo('GET', new RegExp(`^/channels/${MOD_CHANNEL}$`)).length;
    const notPosted = () =>
      world.log.lines.filter((l) => l.msg === 'moderation notice not posted: the moderation channel is gone or the bot may not post there');
    const shown = notices().length;
    world.discord.deleteChannel(MOD_CHANNEL);
    expect(await done(await report(bob, '1', 'Looks like a real person'))).toMatch(/report on image #1/);
    await steps.until('the first notice to fail', () => notPosted().length === 1);
    expect(await done(await report(alice, '1', 'A real person, I think'))).toMatch(/report on image #1/);
    await steps.until('the second notice to be tried', async () => channelFetches() >= 2 && (await arrivalsTaken()));
    expect(await done(moderation('queue'))).toContain('**1.** image #1 of **hero** — 2 reports:');
    expect(notPosted()).toHaveLength(1);
    expect(notices()).toHaveLength(shown);

    // With no channel named, nobody is told (nothing is even tried); the queue lists it all the same.
    const off = world.discord.sendCommand({ name: 'settings', subcommand: 'moderation-channel', user: mod, permissions: MODERATOR, options: {} });
    expect(await done(off)).not.toContain('moderators are told');
    const fetches = channelFetches();
    expect(await done(await report(bob, '', 'Copied from another server'))).toMatch(/report on \*\*hero\*\* went/);
    await steps.until('the report to be noted and dropped', arrivalsTaken);
    expect(await done(moderation('queue'))).toMatch(/Moderation queue\*\* · 2 items/);
    expect(channelFetches()).toBe(fetches);
  });

  it('removes a whole dataset: images gone from Redis and disk (a running run’s files when it ends), runs cancelled, LoRAs withheld with the reason, all in the log', async () => {
    const villainThread = await steps.createDataset(world, alice, { name: 'villain', trigger: 'ohwx_villain', class: 'man', kind: 'character', base: 'sd15' });
    const files = await Promise.all([tinted(4, '#2040ff'), tinted(5, '#20c020'), tinted(6, '#2080c0')]);
    await done(
      world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user: alice, options: { dataset: 'villain', ...steps.imageOptions(world, files) } }),
    );
    await steps.taggedIn(world, villainThread, 3);
    const dataset = (await store.findDataset(world.discord.guildId, 'villain'))!;
    const images = await store.listImages(dataset.id);
    const finishedRun = await steps.startRun(world, mod, { dataset: 'villain', epochs: 1 });
    await steps.until('the first villain run to finish', () =>
      steps.channelMessages(world, villainThread).find((m) => m.content.startsWith(`✅ Run \`${finishedRun}\``)),
    );
    expect(await done(world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, permissions: MEMBER, options: { run: finishedRun } }))).toMatch(
      /\*\*villain\*\* · run/,
    );
    const running = await steps.startRun(world, mod, { dataset: 'villain', epochs: 20 });
    await steps.until('the long run’s first epoch', () => steps.epochPosts(world, villainThread, running).length >= 1);
    const waiting = await steps.startRun(world, mod, { dataset: 'villain', epochs: 1 });
    expect((await runs.get(waiting))?.status).toBe('queued');

    // Members without Manage Messages are refused, only to themselves, and nothing changes.
    const notAllowed = moderation('remove', { target: 'dataset', dataset: 'villain', reason: 'I do not like it' }, bob, MEMBER);
    expect(await done(notAllowed)).toBe('⚠️ Moderation is for members with Manage Messages.');
    expect(await ephemeral(notAllowed)).toBe(true);
    expect(await store.imageCount(dataset.id)).toBe(3);

    const reason = 'Photos of a real person shared without their consent';
    const removedAt = Date.now();
    const removal = moderation('remove', { target: 'dataset', dataset: 'villain', reason });
    expect(await done(removal)).toBe('Done: removed dataset **villain** (3 images, 2 runs cancelled, files of 3 runs withheld). It is in `/moderation log`.');
    // The running run still reads the masters: they stay until it ends; everything else is gone now.
    for (const image of images) {
      expect(await blobs.has(image.masterBlob)).toBe(true);
      expect(await blobs.has(image.originalBlob)).toBe(false);
      expect(await blobs.has(image.thumbBlob)).toBe(false);
    }
    const p = world.env.REDIS_PREFIX!;
    expect((await world.redis.keys(`${p}:ds:${dataset.id}*`)).sort()).toEqual([`${p}:ds:${dataset.id}:runs`]);
    expect(await world.redis.hmget(`${p}:blobrefs`, ...images.flatMap((i) => [i.originalBlob, i.masterBlob, i.thumbBlob]))).toEqual(Array(9).fill(null));
    expect(await store.findDataset(world.discord.guildId, 'villain')).toBeNull();
    expect((await runs.get(waiting))?.status).toBe('cancelled');

    await steps.until('the running run to stop', () =>
      steps.channelMessages(world, villainThread).find((m) => m.content.startsWith(`⏹️ Run \`${running}\` of **villain** was cancelled`)),
    );
    expect((await runs.get(running))?.status).toBe('cancelled');
    // The thread is told; an epoch the trainer still finished after the removal shows no samples.
    await steps.until('the removal notice in the thread', () =>
      steps
        .channelMessages(world, villainThread)
        .find(
          (m) =>
            m.content === `🛡️ **villain** was removed by the moderators: its images are deleted, its runs stopped and its LoRAs withheld. Reason: ${reason}`,
        ),
    );
    for (const post of steps.epochPosts(world, villainThread, running).filter((m) => m.createdAt >= removedAt)) {
      expect(post.attachments).toEqual([]);
      expect(post.content).toContain('🛡️ Samples not shown: a moderator removed this dataset.');
    }
    await steps.until('the running run’s files to be freed', async () => {
      const left = await Promise.all(images.map((i) => blobs.has(i.masterBlob)));
      return left.every((has) => !has);
    });

    for (const runId of [finishedRun, running]) {
      const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, permissions: MEMBER, options: { run: runId } });
      const text = await steps.privateRefusal(fetch);
      expect(text).toMatch(
        new RegExp(
          `^⚠️ The files of run \`${runId}\` \\(\\*\\*villain\\*\\*\\) are withheld: a moderator removed the dataset <t:\\d+:R>\\. Reason: ${reason}$`,
        ),
      );
    }
    const tryIt = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: bob,
      permissions: MEMBER,
      options: { run: finishedRun, prompt: 'a portrait' },
    });
    expect(await steps.privateRefusal(tryIt)).toMatch(/are withheld.*Reason: Photos of a real person/);
    const final = (await runs.get(finishedRun))!.final!;
    const link = makeDownloadUrl(publicUrl, { secret: SECRET, blobId: final.blob, fileName: 'villain.safetensors', expiresAt: new Date(Date.now() + 60_000) });
    const response = await fetch(link);
    expect([response.status, await response.text()]).toEqual([410, "This file was withheld by the server's moderators.\n"]);
    expect(await done(world.discord.sendCommand({ name: 'lora', subcommand: 'list', user: bob, permissions: MEMBER, options: {} }))).toContain(
      `\`${finishedRun}\` · **villain** · withheld by a moderator`,
    );

    const log = await done(moderation('log'));
    expect(log.split('\n')[1]).toMatch(
      new RegExp(`^<t:\\d+:f> <@${mod.id}> removed dataset \\*\\*villain\\*\\* — “${reason}” \\(3 images, 2 runs cancelled, files of 3 runs withheld\\)$`),
    );
    expect(await done(moderation('log', {}, bob, MEMBER))).toBe('⚠️ Moderation is for members with Manage Messages.');
  });
});
