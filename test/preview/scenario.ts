/**
 * The preview's script: two members build a dataset from 20 photos and a zip, tag and prune it, an
 * admin plans and starts three epochs on a worker running the sd-scripts stand-in, members vote,
 * fetch the file and try it, with the usual mistakes along the way (a file cut short, an exact
 * copy, a mistyped dataset name, Start pressed by someone who may not). Each phase is recorded for
 * the HTML transcript. Uses the e2e world (Redis, fake Discord, the real bot, a worker process).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeTestModel, type TestTag } from '../fixtures/onnx-model.ts';
import type { InteractionHandle, MessageSnapshot } from '../harness/fake-discord.ts';
import { channelMessages, freePort, MANAGE_GUILD, sd15Models, standinWorkerEnv, until, workerOnline } from '../e2e/steps.ts';
import { World } from '../e2e/world.ts';
import { previewUploads } from './photos.ts';
import { PreviewRecorder, type Member } from './recorder.ts';
import type { PreviewTranscript } from './transcript.ts';

const GUILD = 'Pixel Guild';
const BOT = { id: '900000000000000001', username: 'LoRA Guild', bot: true };
const mira: Member = { id: '910000000000000001', username: 'mira' };
const jonas: Member = { id: '910000000000000002', username: 'jonas' };
const sam: Member = { id: '910000000000000003', username: 'sam', permissions: MANAGE_GUILD };

/**
 * Tags the generated tagger finds, by the picture's mean colours (see onnx-model.ts): a few on
 * every picture (what pruning suggests), the rest on some, as a real tagger would.
 */
const TAGS: TestTag[] = [
  { name: '1girl', category: 0, bias: 4 },
  { name: 'solo', category: 0, bias: 3 },
  { name: 'outdoors', category: 0, bias: 2 },
  { name: 'looking_at_viewer', category: 0, bias: -6.6, g: 20 },
  { name: 'smile', category: 0, bias: -6.6, b: 20 },
  { name: 'long_hair', category: 0, bias: -0.6, r: 10, g: -10 },
  { name: 'blue_sky', category: 0, bias: -10.6, b: 20 },
  { name: 'night', category: 0, bias: 4.4, r: -20 },
  { name: 'sunset', category: 0, bias: -9, r: 20 },
  { name: 'aurora_(star_guardian)', category: 4, bias: 0.5 },
];

export interface ScenarioOptions {
  outDir: string;
  /** Progress lines for the person waiting. */
  say(line: string): void;
}

function answered(h: InteractionHandle, timeoutMs = 60_000): Promise<unknown> {
  return Promise.race([h.waitForEdit(undefined, timeoutMs), h.waitForFollowup(undefined, timeoutMs)]);
}

export async function runScenario(opts: ScenarioOptions): Promise<PreviewTranscript> {
  const tmp = await mkdtemp(join(tmpdir(), 'lora-guild-preview-'));
  let world: World | null = null;
  try {
    opts.say('generating photos and models…');
    const [uploads, , models] = await Promise.all([previewUploads(), writeTestModel(join(tmp, 'tagger'), { tags: TAGS }), sd15Models(join(tmp, 'models'))]);
    const port = await freePort();
    opts.say('starting Redis, the fake Discord, the bot and a worker…');
    world = await World.start({
      discord: {
        botUser: BOT,
        guilds: [{ name: GUILD, channels: [{ name: 'lora-lab' }], members: [mira, jonas, sam].map((m) => ({ user: { id: m.id, username: m.username } })) }],
      },
      env: {
        TAGGER_MODEL_DIR: join(tmp, 'tagger'),
        HTTP_PORT: String(port),
        PUBLIC_URL: `http://127.0.0.1:${port}`,
        DOWNLOAD_SECRET: 'a-download-secret-for-the-preview-0123456789',
        PROGRESS_INTERVAL_SECONDS: '1',
        ATTESTATION_REQUIRED: 'true',
        DISCORD_MESSAGE_CONTENT: 'true',
      },
    });
    await world.startBot();
    // Slower steps than in tests, so that progress is seen between epochs.
    await world.spawnWorker(standinWorkerEnv(models, { WORKER_ID: 'gpu-preview', STANDIN_STEP_SECONDS: '0.02' }));
    await workerOnline(world, 'gpu-preview');
    const w = world;
    const rec = new PreviewRecorder(w, opts.outDir, [mira, jonas, sam], GUILD);
    const channel = w.discord.channelId;
    const inThread = (id: string, test: (m: MessageSnapshot) => boolean, what: string, timeoutMs = 60_000) =>
      until(
        what,
        () => channelMessages(w, id).find(test),
        timeoutMs,
        () => JSON.stringify(w.log.errors()).slice(0, 1500),
      );
    const reply = (h: InteractionHandle) => h.lastReply()!;

    // ---- intake ----
    opts.say('intake…');
    await answered(rec.command(mira, 'dataset', 'create', { name: 'aurora', trigger: 'ohwx_aurora', class: 'woman', kind: 'character', base: 'sd15' }));
    const thread = w.discord.threads(channel).find((t) => t.name === 'dataset · aurora')!.id;
    const images = (files: typeof uploads.mira) => Object.fromEntries(files.map((f, i) => [`image${i + 1}`, rec.attach(f)]));
    const first = rec.command(mira, 'dataset', 'add', { dataset: 'aurora', ...images(uploads.mira) });
    // Her first upload asks her (alone) to confirm once, and goes in when she does.
    const question = await first.waitForFollowup(undefined, 60_000);
    await answered(rec.press(mira, w.discord.message((question.response as { id: string }).id)!, /confirm/i));
    await answered(rec.command(mira, 'dataset', 'add', { dataset: 'auroa', image1: rec.attach(uploads.stray) }));

    const firstPost = rec.post(jonas, thread, 'some from our hike last weekend 🏔️', uploads.jonas);
    const asked = await inThread(
      thread,
      (m) => m.authorId === BOT.id && m.components.length > 0 && m.createdAt >= Number(new Date(firstPost.timestamp)),
      'the confirmation',
    );
    await answered(rec.press(jonas, asked, /confirm/i));
    await inThread(thread, (m) => m.authorId === BOT.id && /\d+ added/.test(m.content), 'the report on jonas’s post');
    await answered(rec.command(jonas, 'dataset', 'add', { zip: rec.attach(uploads.zip, thread) }, thread));
    await until('the tagger', () => channelMessages(w, thread).filter((m) => m.content.startsWith('🏷️ Tagged')).length >= 3, 60_000).catch(() =>
      opts.say('(the tagger did not report all three uploads within a minute; going on)'),
    );
    await answered(rec.command(mira, 'dataset', 'show', { dataset: 'aurora' }, thread));
    await rec.endPhase(
      'intake',
      'Intake',
      'Mira creates **aurora** and adds ten photos (taken in once she confirms), mistypes the dataset name; Jonas posts eight in the thread (one cut short, one a copy of Mira’s), confirms once, and adds a zip.',
    );

    // ---- workshop ----
    opts.say('workshop…');
    await answered(rec.command(mira, 'tags', 'top', { dataset: 'aurora' }, thread));
    await answered(rec.command(mira, 'caption', 'show', { dataset: 'aurora', image: 3 }, thread));
    const edit = rec.command(mira, 'caption', 'edit', { dataset: 'aurora', image: 3 }, thread);
    await answered(await rec.submitDialog(mira, edit, { tags: 'smile, red hair, long hair, hills, dusk' }, thread));
    const prune = rec.command(mira, 'tags', 'prune', { dataset: 'aurora' }, thread);
    await answered(prune);
    if (JSON.stringify(reply(prune).components).includes('Prune')) await answered(rec.press(mira, reply(prune), /^Prune/));
    await rec.endPhase('workshop', 'Workshop', 'Mira reviews the tags, looks at and edits one caption in the dialog, and prunes the tags every image has.');

    // ---- training ----
    opts.say('training (three epochs on the stand-in)…');
    const plan = rec.command(sam, 'train', 'plan', { dataset: 'aurora', epochs: 3 }, thread);
    await answered(plan);
    await answered(rec.press(jonas, reply(plan), /start/i));
    const start = rec.press(sam, reply(plan), /start/i);
    await answered(start);
    const runId = /Queued run `([a-z0-9]+)`/.exec(reply(start).content)?.[1];
    if (!runId) throw new Error(`no run was queued: ${reply(start).content}`);
    const progress = await inThread(thread, (m) => m.content.startsWith(`🏋️ Run \`${runId}\``) && /epoch [2-3]\//.test(m.content), 'progress', 120_000);
    await rec.capture(progress, 'The status message while training (captured during epoch 2; it gives way to the summary at the end).');
    const summary = await inThread(thread, (m) => m.content.startsWith(`✅ Run \`${runId}\``), 'the end of the run', 180_000);
    const epochs = channelMessages(w, thread).filter((m) => m.content.startsWith('🖼️') && m.content.includes(runId));
    const second = epochs.find((m) => /Epoch 2\//.test(m.content)) ?? epochs[0]!;
    await answered(rec.press(mira, second, /./));
    await answered(rec.pick(jonas, summary, '3'));
    await answered(rec.press(sam, second, /./));
    // The tally on the summary and the buttons is edited in batches, one progress interval apart.
    await until('the tally of three votes', () => w.discord.message(summary.id)?.content.includes('Votes (3)'), 15_000).catch(() =>
      opts.say('(the summary did not show three votes within 15 s; going on)'),
    );
    await rec.endPhase(
      'training',
      'Training',
      'Sam plans three epochs and starts them (Jonas’s press is refused); the worker reports progress and one sample grid per epoch; members vote.',
    );

    // ---- delivery ----
    opts.say('delivery…');
    await rec.capture(w.discord.message(summary.id)!, 'The run’s summary in the thread, as it looks after the votes.');
    await answered(rec.command(jonas, 'lora', 'fetch', { run: runId, epoch: 'best' }, thread));
    const tryIt = rec.command(mira, 'lora', 'try', { prompt: 'ohwx_aurora smiling on a beach at sunset', run: runId, epoch: 'best', seed: 7 }, thread);
    await answered(tryIt);
    await until(
      'the tried image',
      () => [...channelMessages(w, thread), ...channelMessages(w, channel)].find((m) => m.content.startsWith('🎨 **') && m.attachments.length > 0),
      90_000,
    ).catch(() => opts.say('(no image from /lora try within 90 s; going on)'));
    await rec.endPhase('delivery', 'Delivery', 'Jonas fetches the community’s pick; Mira tries it with a prompt and gets an image drawn by the worker.');
    return rec.transcript();
  } finally {
    await world?.close();
    await rm(tmp, { recursive: true, force: true });
  }
}
