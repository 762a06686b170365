/** Steps the end-to-end tests share: waiting for replies and messages, starting a run, reading tried images. */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import type { BlobStore } from '../../src/core/blob-store.ts';
import type { WorkerInfo } from '../../src/queues/contract.ts';
import { listWorkers } from '../../src/store/worker-heartbeats.ts';
import { afterAll, beforeAll, expect } from 'vitest';
import { writeTestModel } from '../fixtures/onnx-model.ts';
import { tinted, WORKSHOP_TAGS } from '../fixtures/workshop.ts';
import type { AttachmentInfo, InteractionHandle, MessageSnapshot } from '../harness/fake-discord.ts';
import type { CommandSpec } from '../harness/fake-discord-types.ts';
import { World } from './world.ts';

export const MANAGE_GUILD = String(1n << 5n);
export const MANAGE_MESSAGES = String(1n << 13n);

/** A port free on 127.0.0.1 right now (for a bot whose PUBLIC_URL must be known before it starts). */
export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A world (bot started) for the tests of a file, with a folder of its own named from `prefix`:
 * `env` makes the bot's settings, given the folder. Started before the tests; closed and the folder
 * removed after them. Read `world` and `folder` inside tests and hooks.
 */
export function worldWithFolder(prefix: string, env: (folder: string) => Promise<Record<string, string>> | Record<string, string>) {
  let world: World | undefined;
  let folder: string | undefined;
  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), prefix));
    world = await World.start({ env: await env(folder) });
    await world.startBot();
  });
  afterAll(async () => {
    await world?.close();
    if (folder) await rm(folder, { recursive: true, force: true });
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the world is started by beforeAll: read it inside a test or hook');
    return value;
  };
  return {
    get world(): World {
      return started(world);
    },
    get folder(): string {
      return started(folder);
    },
  };
}

/** The secret the bots of the tests sign their download links with (and remote workers' leases). */
export const DOWNLOAD_SECRET = 'a-download-secret-that-is-long-enough-0123456789';

/**
 * `worldWithFolder` for the files that tag and train: the workshop's tagger model in the folder's
 * `tagger/`, the bot's HTTP server on a free port (given to `env`), progress posted every second.
 */
export function worldWithTagger(prefix: string, env: (folder: string, port: number) => Promise<Record<string, string>> | Record<string, string>) {
  return worldWithFolder(prefix, async (folder) => {
    await writeTestModel(join(folder, 'tagger'), { tags: WORKSHOP_TAGS });
    const port = await freePort();
    return { TAGGER_MODEL_DIR: join(folder, 'tagger'), HTTP_PORT: String(port), PROGRESS_INTERVAL_SECONDS: '1', ...(await env(folder, port)) };
  });
}

interface CallbackJson {
  type: number;
  data?: { flags?: number; content?: string };
}

const EPHEMERAL = 64;

/**
 * Waits for a command's reply and returns its text; a refusal (a followup, or an ephemeral reply
 * in place of the deferral) fails with the bot's logged errors.
 */
export async function done(world: World, h: InteractionHandle, timeoutMs = 60_000): Promise<string> {
  const refused = (content: string | undefined) => new Error(`refused: ${content}\n${JSON.stringify(world.log.errors()).slice(0, 1500)}`);
  await Promise.race([
    h.waitForEdit(undefined, timeoutMs),
    h.waitForFollowup(undefined, timeoutMs).then((f) => {
      throw refused((f.json as { content?: string }).content);
    }),
    h.callback(timeoutMs).then(
      (c) => {
        const json = c.json as CallbackJson;
        if (json.type === 4 && ((json.data?.flags ?? 0) & EPHEMERAL) !== 0) throw refused(json.data?.content);
        return new Promise<never>(() => undefined);
      },
      () => new Promise<never>(() => undefined),
    ),
  ]);
  return h.lastReply()?.content ?? '';
}

/** Sends a slash command (as the default member unless `spec.user` says otherwise) and returns its reply's text; a refusal fails. */
export async function ask(world: World, spec: CommandSpec): Promise<string> {
  return done(world, world.discord.sendCommand(spec));
}

/**
 * A refusal that was the asker's alone from the start: the interaction was acknowledged with an
 * ephemeral reply (or an ephemeral deferral), never a public "thinking…" that a refusal replaced,
 * and nothing else was posted for it. Returns the refusal's text.
 */
export async function privateRefusal(h: InteractionHandle, timeoutMs = 30_000): Promise<string> {
  const json = (await h.callback(timeoutMs)).json as CallbackJson;
  if (((json.data?.flags ?? 0) & EPHEMERAL) === 0) throw new Error(`acknowledged in public before the answer: ${JSON.stringify(json)}`);
  const content = json.type === 4 ? (json.data?.content ?? '') : ((await h.waitForEdit(undefined, timeoutMs)).json as { content?: string }).content;
  if (!content?.startsWith('⚠️ ')) throw new Error(`not a refusal: ${content}`);
  if (h.followups().length > 0) throw new Error(`followups after a refusal: ${JSON.stringify(h.followups().map((f) => f.json))}`);
  expect(h.lastReply()).toMatchObject({ flags: EPHEMERAL, deleted: false });
  return content;
}

/** Polls `check` until it gives a value; `context` adds what helps to understand a time-out. */
export async function until<T>(
  what: string,
  check: () => T | null | undefined | false | Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
  context?: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${context ? `\n${context()}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A channel's or thread's messages that are still there, oldest first. */
export function channelMessages(world: World, channelId: string): MessageSnapshot[] {
  return world.discord
    .channelMessages(channelId)
    .filter((m) => !m.deleted)
    .sort((a, b) => a.createdAt - b.createdAt || (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
}

/** Plans a run and presses Start as `user` (with Manage Server); returns the queued run's id. */
export async function startRun(world: World, user: { id: string; username: string }, options: Record<string, string | number>): Promise<string> {
  const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', user, permissions: MANAGE_GUILD, options });
  await done(world, plan);
  const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
  const start = world.discord.sendButton({ customId: row.components[0]!.custom_id, user, permissions: MANAGE_GUILD, message: plan.lastReply()!.id });
  const reply = await done(world, start);
  const runId = /Queued run `([a-z0-9]+)`/.exec(reply)?.[1];
  if (!runId) throw new Error(`no run queued: ${reply}`);
  return runId;
}

/** The per-epoch posts of a run in a thread, oldest first. */
export function epochPosts(world: World, threadId: string, runId: string): MessageSnapshot[] {
  return channelMessages(world, threadId).filter((m) => m.content.includes(`of run \`${runId}\``) && m.content.startsWith('🖼️'));
}

/** A run's finished summary in its thread (posted once, when the run is done), waited for. */
export function runSummary(world: World, threadId: string, runId: string): MessageSnapshot | undefined {
  return channelMessages(world, threadId).find((m) => m.content.startsWith(`✅ Run \`${runId}\``));
}

/** Waits for a run's finished summary in its thread. */
export async function finished(world: World, threadId: string, runId: string, timeoutMs = 60_000): Promise<MessageSnapshot> {
  return until('the finished message', () => runSummary(world, threadId, runId), timeoutMs);
}

/** The text of a command's refusal (an ephemeral followup). */
export async function refusal(h: InteractionHandle, timeoutMs = 30_000): Promise<string> {
  return ((await h.waitForFollowup(undefined, timeoutMs)).json as { content: string }).content;
}

type Member = { id: string; username: string };

/** `/dataset create` as `user`; returns the dataset's thread. */
export async function createDataset(world: World, user: Member, options: Record<string, string | number>): Promise<string> {
  await done(world, world.discord.sendCommand({ name: 'dataset', subcommand: 'create', user, options }));
  const name = String(options.name);
  return world.discord.threads(world.discord.channelId).find((t) => t.name === `dataset · ${name}`)!.id;
}

/** The images of `files` as `/dataset add` options (`image1`, `image2`, …). */
export function imageOptions(world: World, files: { name: string; data: Buffer }[]): Record<string, AttachmentInfo> {
  return Object.fromEntries(files.map((f, i) => [`image${i + 1}`, world.discord.addAttachment({ filename: f.name, data: f.data })]));
}

/** Waits until the bot posts a message saying `text` in `threadId`. */
export async function postedIn(world: World, threadId: string, text: string, timeoutMs = 30_000): Promise<void> {
  await world.discord.waitForCall(
    (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes(text),
    timeoutMs,
  );
}

/** Waits until the tagger says in `threadId` that it tagged `count` images. */
export async function taggedIn(world: World, threadId: string, count: number): Promise<void> {
  await postedIn(world, threadId, `Tagged ${count} images`);
}

/** `/dataset add` of `files` to `dataset` as `user`; returns the reply. */
export async function addImages(world: World, user: Member, dataset: string, files: { name: string; data: Buffer }[]): Promise<string> {
  return done(world, world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user, options: { dataset, ...imageOptions(world, files) } }));
}

/**
 * `/caption edit` of image `image` of `dataset` as `user`: the form opens with `title`, and `fields`
 * are submitted in it. Returns the reply to the submission.
 */
export async function editCaption(world: World, user: Member, dataset: string, image: number, title: string, fields: Record<string, string>): Promise<string> {
  const callback = await world.discord.sendCommand({ name: 'caption', subcommand: 'edit', user, options: { dataset, image } }).callback();
  expect(callback.json).toMatchObject({ type: 9, data: { title } });
  const customId = (callback.json as { data: { custom_id: string } }).data.custom_id;
  return done(world, world.discord.sendModalSubmit({ customId, fields, user }));
}

/** The error lines the bot logged for the admins that start with `prefix`. */
export function adminErrors(world: World, prefix: string): Record<string, unknown>[] {
  return world.log.lines.filter((l) => l.level === 50 && String(l.msg).startsWith(prefix));
}

/** The dataset most tests train on: alice's character `hero` (trigger `ohwx_hero`, SD 1.5) with `count` tagged images. */
export async function heroDataset(world: World, user: Member, count = 3, extra: Record<string, string | number> = {}): Promise<string> {
  const name = String(extra.name ?? 'hero');
  const threadId = await createDataset(world, user, { name, trigger: `ohwx_${name}`, class: 'woman', kind: 'character', base: 'sd15', ...extra });
  const colours = ['#ff2020', '#2040ff', '#20c020', '#e0c020'];
  const files = await Promise.all(colours.slice(0, count).map((c, i) => tinted(i + 1, c)));
  await addImages(world, user, name, files);
  await taggedIn(world, threadId, count);
  return threadId;
}

/** A training worker's settings with the sd-scripts stand-in, as fast as tests want it. */
export function standinWorkerEnv(modelsDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    WORKER_QUEUES: 'training',
    WORKER_ID: 'gpu-test',
    // As in production: the script runs under `accelerate launch` (its stand-in here); the trainer's
    // working folder is the run folder, so the path is absolute.
    TRAINER_CMD: `python3 ${join(process.cwd(), 'test/fixtures/sd-scripts/accelerate_launch.py')} --num_cpu_threads_per_process 1`,
    SD_SCRIPTS_DIR: 'test/fixtures/sd-scripts',
    // Empty packages named like the optimizers' (the stand-in and the worker's check import them).
    PYTHONPATH: join(process.cwd(), 'test/fixtures/python-packages'),
    MODELS_DIR: modelsDir,
    TRAINING_STALLED_SECONDS: '2',
    WORKER_HEARTBEAT_SECONDS: '1',
    STANDIN_STEP_SECONDS: '0.003',
    ...extra,
  };
}

/** A models folder holding an SD 1.5 base model (the stand-in reads only its name). */
export async function sd15Models(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'base-sd15.safetensors'), Buffer.alloc(64));
  return dir;
}

/** Waits for a worker's first heartbeat ("worker ready" comes before it; plans know its models only after it). */
export async function workerOnline(world: World, id: string): Promise<WorkerInfo> {
  return until(`worker ${id}'s first heartbeat`, async () => (await listWorkers(world.redis, world.env.REDIS_PREFIX!)).find((w) => w.id === id), 30_000);
}

/** Images tried with `/lora try` in a channel (the main one unless named), oldest first. */
export function triedImages(world: World, channelId = world.discord.channelId): MessageSnapshot[] {
  return channelMessages(world, channelId).filter((m) => m.content.startsWith('🎨 **') && m.attachments.length === 1);
}

/** The colour the sd-scripts stand-in draws a LoRA file's bar with (sha256 of its sha256, three bytes into 40..239). */
export async function standinLoraColour(blobs: BlobStore, blob: string): Promise<number[]> {
  const digest = createHash('sha256')
    .update(await readFile(blobs.path(blob)))
    .digest();
  return [...createHash('sha256').update(digest).digest().subarray(0, 3)].map((b) => 40 + (b % 200));
}

/** Colour and filled share of the stand-in's bottom bar (the LoRA file and its weight), read in a region of an image. */
export async function standinBar(image: Buffer, region: { left: number; top: number; width: number; height: number }) {
  const { data, info } = await sharp(image).extract(region).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const y = info.height - Math.round(info.height / 24); // inside the bar
  const pixel = (x: number) => {
    const i = (y * info.width + x) * 3;
    return [data[i]!, data[i + 1]!, data[i + 2]!];
  };
  let lit = 0;
  for (let x = 0; x < info.width; x++) if (Math.max(...pixel(x)) > 0x30) lit++;
  // The middle of the filled part: away from the edges a scaled JPEG blurs.
  return { share: lit / info.width, colour: pixel(Math.floor(lit / 2)) };
}
