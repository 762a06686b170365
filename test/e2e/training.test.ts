import { createHash } from 'node:crypto';
import { cp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bullPrefix, QueueName } from '../../src/queues/contract.ts';
import { RunStore } from '../../src/store/run-store.ts';
import { listWorkers } from '../../src/store/worker-heartbeats.ts';
import { tinted } from '../fixtures/workshop.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import type { World } from './world.ts';

const admin = { id: '300000000000000001', username: 'admin' };
const alice = { id: '300000000000000002', username: 'alice' };
const bob = { id: '300000000000000003', username: 'bob' };

const suite = steps.worldWithTagger('lora-guild-train-', async (folder, port) => {
  await steps.sd15Models(join(folder, 'models'));
  // Vote counts on the epoch buttons are edited every second, not production's every 10 s.
  return { PUBLIC_URL: `http://127.0.0.1:${port}`, DOWNLOAD_SECRET: steps.DOWNLOAD_SECRET, VOTE_EDIT_SECONDS: '1' };
});
let world: World;
let runs: RunStore;
let threadId: string;
let trainingQueue: Queue;

const WORKER_ENV = () => steps.standinWorkerEnv(join(suite.folder, 'models'));

beforeAll(async () => {
  world = suite.world;
  runs = new RunStore(world.redis, world.env.REDIS_PREFIX!);
  trainingQueue = new Queue(QueueName.Training, { connection: world.redis, prefix: bullPrefix(world.env.REDIS_PREFIX!) });
  threadId = await steps.heroDataset(world, alice);
  await world.spawnWorker(WORKER_ENV());
  await steps.workerOnline(world, 'gpu-test');
});

afterAll(async () => {
  await trainingQueue?.close();
});

const done = (h: InteractionHandle) => steps.done(world, h);

const refusal = steps.privateRefusal;

const threadMessages = (channelId = threadId) => steps.channelMessages(world, channelId);

const until = steps.until;

const startRun = (options: Record<string, string | number> = {}) => steps.startRun(world, admin, { dataset: 'hero', ...options });

function safetensorsMetadata(file: Buffer): Record<string, string> {
  const headerLength = Number(file.readBigUInt64LE(0));
  return (JSON.parse(file.subarray(8, 8 + headerLength).toString('utf8')) as { __metadata__: Record<string, string> }).__metadata__;
}

const epochPosts = (runId: string) => steps.epochPosts(world, threadId, runId);

describe('a training run', () => {
  it('refuses what it cannot run, with a clear message and nothing queued', async () => {
    await done(
      world.discord.sendCommand({
        name: 'dataset',
        subcommand: 'create',
        user: alice,
        options: { name: 'empty', trigger: 'ohwx_e', class: 'cat', kind: 'concept', base: 'sd15' },
      }),
    );
    expect(await refusal(world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'empty' } }))).toMatch(/has no images yet/);
    expect(await refusal(world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'hero', model: 'missing.safetensors' } }))).toMatch(
      /No training worker has the base model `missing.safetensors`.*base-sd15.safetensors/,
    );
    expect(await refusal(world.discord.sendCommand({ name: 'train', subcommand: 'plan', options: { dataset: 'hero', optimizer: 'AdamW', lr: 5 } }))).toMatch(
      /learning rate/i,
    );

    // A member without the trainer role (or Manage Server) sees the plan and who may start it: no button.
    const own = world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: bob, permissions: '0', options: { dataset: 'hero' } });
    const ownPlan = await done(own);
    // First what a member cares about, in plain words; the trainer's settings only under Details.
    const [lead, details] = ownPlan.split('\n**Details**\n') as [string, string];
    expect(lead.split('\n').slice(0, 5)).toEqual([
      '**Plan for hero**: a LoRA of `ohwx_hero` for SD 1.5',
      '🖼️ **3 images**',
      expect.stringMatching(/^⏱️ About \*\*\d+ (s|min)\*\* of training$/) as unknown,
      '🖥️ Trains on 🟢 `gpu-test`',
      '🎁 Sample pictures after each of the **8** epochs to compare and vote on, then the LoRA file of the epoch you pick (`/lora fetch`)',
    ]);
    expect(lead).not.toMatch(/_main|dim|alpha|Prodigy|AdamW|cosine|bucket|steps|repeats/i);
    expect(details).toMatch(/^recipe `character` · base `base-sd15\.safetensors` · 512 px · batch 1$/m);
    expect(details).toMatch(/^Network dim \d+ \/ alpha \d+ · Prodigy lr 1 · cosine/m);
    expect(details).toMatch(/^`\d+_main` — 3 images × \d+ repeats = \d+ per epoch$/m);
    // The buckets and resizes an upload reply no longer shows: the masters are 640×512, bucketed 576×448 at 512 px.
    expect(details).toMatch(/^Buckets: 576×448 ×\d+$/m);
    expect(details).toContain('Resized for training: 3 of 3 scaled to their bucket, 3 trimmed at the edges to fit it');
    expect(details).toMatch(/^\d+ steps per epoch × 8 epochs = \d+ steps$/m);
    expect(lead).toMatch(/^🔒 Starting a run needs Manage Server/m);
    expect(own.lastReply()!.components).toEqual([]);

    // Pressing Start on someone else's plan is answered to them alone: nothing appears in public.
    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: admin, permissions: MANAGE_GUILD, options: { dataset: 'hero' } });
    await done(plan);
    const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
    const publicBefore = world.discord.channelMessages().filter((m) => !m.deleted).length;
    const press = world.discord.sendButton({ customId: row.components[0]!.custom_id, user: bob, permissions: '0', message: plan.lastReply()!.id });
    expect((await press.callback()).json).toMatchObject({ type: 5, data: { flags: 64 } });
    await press.waitForEdit();
    expect(press.lastReply()).toMatchObject({ flags: 64, content: expect.stringMatching(/needs Manage Server/) as unknown });
    const seen = world.discord.channelMessages();
    expect(seen.filter((m) => !m.deleted)).toHaveLength(publicBefore);
    expect(seen.filter((m) => m.deleted && m.createdAt >= press.sentAt)).toEqual([]);
    expect(await runs.listForGuild(world.discord.guildId)).toHaveLength(0);
    expect(await trainingQueue.getJobCountByTypes('waiting', 'active', 'delayed', 'completed')).toBe(0);
  });

  let runId = '';

  it('goes plan → Start → progress → one grid per epoch → the final file, in the dataset thread', async () => {
    runId = await startRun({ epochs: 3 });
    const finished = await steps.finished(world, threadId, runId);
    // For members: which epochs, the votes and how to fetch; the file's name and hash come with /lora fetch.
    expect(finished.content).toMatch(/Fetch the LoRA with `\/lora fetch run:\w+`/);
    expect(finished.content).not.toMatch(/sha256|\.safetensors/);
    const posts = epochPosts(runId);
    expect(posts.map((m) => /Epoch (\d+)\/3/.exec(m.content)?.[1])).toEqual(['1', '2', '3']);
    for (const p of posts) {
      expect(p.attachments).toHaveLength(1);
      expect(p.attachments[0]!.data.subarray(1, 4).toString() + p.attachments[0]!.data.subarray(0, 2).toString('hex')).toMatch(/PNG|ffd8/);
      expect(JSON.stringify(p.components)).toContain(`vote:${runId}:`);
    }
    expect(threadMessages().filter((m) => m.content.startsWith(`🚀 Run \`${runId}\``))).toHaveLength(1);
    // One message ends the run: the status message gave way to the summary, with the epochs side by
    // side and the vote menu; it mentions the member who started it and the contributor, once.
    const ending = threadMessages().filter((m) => m.content.includes(`Run \`${runId}\``) && /^(✅|⏳|🏋️|🏁)/u.test(m.content));
    expect(ending).toEqual([finished]);
    expect(finished.attachments.map((a) => a.filename)).toEqual([`hero-${runId}-epochs.jpg`]);
    // Laid out for Discord's preview: the three epochs side by side, wider than tall.
    const sheet = await sharp(finished.attachments[0]!.data).metadata();
    expect(sheet.width).toBeGreaterThan(sheet.height);
    expect(JSON.stringify(finished.components)).toContain(`votesel:${runId}`);
    expect(finished.content).toContain(`🔔 <@${admin.id}>, your run is done · thanks to <@${alice.id}> for the images`);
    const post = world.discord.calls.find(
      (c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('your run is done'),
    );
    expect((post!.json as { allowed_mentions: unknown }).allowed_mentions).toEqual({ parse: [], users: [admin.id, alice.id] });
    const run = await runs.get(runId);
    expect(run?.status).toBe('finished');
    expect(Object.keys(run!.epochs)).toEqual(['1', '2', '3']);
  });

  it('counts one vote per member (a second vote moves it) and `best` resolves to the winner', async () => {
    const a = world.discord.sendButton({ customId: `vote:${runId}:2`, user: alice });
    expect(await done(a)).toMatch(/Your vote: \*\*epoch 2\*\*/);
    // One vote each for epochs 2 and 3 is a tie, said as one; `best` follows the stated rule.
    const tie = await done(world.discord.sendSelect({ customId: `votesel:${runId}`, values: ['3'], user: bob }));
    expect(tie).toContain(
      'Votes (2): epoch 2: **1** · epoch 3: **1** · tied: **epochs 2 and 3** (`best` is epoch 3 until a vote breaks the tie: a tie goes to the later epoch)',
    );
    expect(tie).not.toContain('leading');
    const tied = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, options: { run: runId, epoch: 'best' } });
    expect(await done(tied)).toContain('epoch 3, the community’s pick (tied with epoch 2 at 1 vote each: a tie goes to the later epoch)');
    expect(tied.lastReply()!.attachments[0]!.filename).toBe(`hero-${runId}.safetensors`); // epoch 3 is the last
    const moved = world.discord.sendSelect({ customId: `votesel:${runId}`, values: ['2'], user: bob });
    expect(await done(moved)).toMatch(/epoch 2\*\* \(moved from epoch 3\)[\s\S]*Votes \(2\): epoch 2: \*\*2\*\* · leading: \*\*epoch 2\*\*$/);
    await done(world.discord.sendButton({ customId: `vote:${runId}:1`, user: admin }));
    // Each epoch's button shows its count (edits are batched, so it may take one interval).
    const label = (epoch: number) => JSON.stringify(epochPosts(runId)[epoch - 1]!.components);
    await until(
      'the counts on the vote buttons',
      () => label(2).includes('Vote for epoch 2 · 2 votes') && label(1).includes('Vote for epoch 1 · 1 vote"'),
      30_000,
    );
    expect(label(3)).toContain('"Vote for epoch 3"');

    const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, options: { run: runId, epoch: 'best' } });
    expect(await done(fetch)).toMatch(/epoch 2, the community’s pick \(2 of 3 votes\)/);
    const file = fetch.lastReply()!.attachments[0]!;
    // The file's details sit with the file: its name, size and sha256.
    const sha = createHash('sha256').update(file.data).digest('hex');
    expect(fetch.lastReply()!.content).toContain(`📄 \`hero-${runId}-e2.safetensors\` · `);
    expect(fetch.lastReply()!.content).toContain(` · sha256 \`${sha}\``);
    expect(file.filename).toBe(`hero-${runId}-e2.safetensors`);
    const headerLength = Number(file.data.readBigUInt64LE(0));
    const header = JSON.parse(file.data.subarray(8, 8 + headerLength).toString('utf8')) as { __metadata__: Record<string, string> };
    const meta = header.__metadata__;
    expect(meta['modelspec.trigger_phrase']).toBe('ohwx_hero');
    expect(JSON.parse(meta['loraguild.vote_winner']!)).toEqual({ epoch: 2, votes: 2 });
    expect(meta.sshs_model_hash).toBe(
      createHash('sha256')
        .update(file.data.subarray(8 + headerLength))
        .digest('hex'),
    );
    expect(meta.ss_steps).toBe(String(2 * (await runs.get(runId))!.summary.stepsPerEpoch));
    expect(JSON.parse(meta.ss_tag_frequency!)).toHaveProperty([Object.keys(JSON.parse(meta.ss_tag_frequency!) as object)[0]!, 'smile']);
  });

  it('gives a signed link when the file is larger than the interaction allows; the link serves the exact bytes and ranges', async () => {
    const small = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', options: { run: runId, epoch: 'best' } });
    await done(small);
    const attached = small.lastReply()!.attachments[0]!.data;

    const big = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', options: { run: runId, epoch: 'best' }, attachmentSizeLimit: 100 });
    const content = await done(big);
    expect(big.lastReply()!.attachments).toHaveLength(0);
    const url = /\(<(http[^>]+)>\)/.exec(content)?.[1];
    expect(url).toBeDefined();
    const whole = await fetch(url!);
    expect(whole.status).toBe(200);
    expect(whole.headers.get('content-disposition')).toContain(`hero-${runId}-e2.safetensors`);
    const bytes = Buffer.from(await whole.arrayBuffer());
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(createHash('sha256').update(attached).digest('hex'));
    const part = await fetch(url!, { headers: { range: 'bytes=8-99' } });
    expect(part.status).toBe(206);
    expect(Buffer.from(await part.arrayBuffer())).toEqual(bytes.subarray(8, 100));
    const tampered = await fetch(url!.replace(/sig=./, (m) => (m.endsWith('A') ? 'sig=B' : 'sig=A')));
    expect(tampered.status).toBe(403);
    await tampered.arrayBuffer();
    expect(world.log.raw.join('\n')).not.toContain(new URL(url!).searchParams.get('sig')!);
  });

  it('trains a style dataset with the style recipe, and gives a concept’s own trigger apart from the dataset’s', async () => {
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      user: alice,
      options: { name: 'city', trigger: 'mdvl_city', class: 'city', kind: 'style', base: 'sd15' },
    });
    await done(create);
    const cityThread = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · city')!.id;
    await done(world.discord.sendCommand({ name: 'caption', subcommand: 'mode', user: alice, options: { dataset: 'city', mode: 'tags' } }));
    await done(
      world.discord.sendCommand({ name: 'concept', subcommand: 'add', user: alice, options: { dataset: 'city', name: 'flowers', trigger: 'flower closeup' } }),
    );
    const add = async (files: Awaited<ReturnType<typeof tinted>>[], concept?: string) => {
      const options = Object.fromEntries(files.map((f, i) => [`image${i + 1}`, world.discord.addAttachment({ filename: f.name, data: f.data })]));
      await done(
        world.discord.sendCommand({
          name: 'dataset',
          subcommand: 'add',
          user: alice,
          options: { dataset: 'city', ...options, ...(concept ? { concept } : {}) },
        }),
      );
    };
    await add([await tinted(31, '#ff2020'), await tinted(32, '#2040ff')]);
    await add([await tinted(33, '#20c020')], 'flowers');
    await until(
      'the city images tagged',
      () =>
        world.discord
          .channelMessages(cityThread)
          .filter((m) => /Tagged \d+ image/.test(m.content))
          .reduce((n, m) => n + Number(/Tagged (\d+)/.exec(m.content)![1]), 0) >= 3,
    );

    // Alice turns mentions off for herself (no Manage Server needed); she is then only named nowhere.
    const quiet = world.discord.sendCommand({ name: 'settings', subcommand: 'mentions', user: alice, permissions: '0', options: { on: false } });
    expect(await done(quiet)).toMatch(/will not be mentioned/);
    const plan = world.discord.sendCommand({
      name: 'train',
      subcommand: 'plan',
      user: admin,
      permissions: MANAGE_GUILD,
      options: { dataset: 'city', epochs: 1 },
    });
    const planText = await done(plan);
    expect(planText).toMatch(/recipe `style`/);
    expect(planText).not.toMatch(/outfit/i);
    const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
    const started = await done(
      world.discord.sendButton({ customId: row.components[0]!.custom_id, user: admin, permissions: MANAGE_GUILD, message: plan.lastReply()!.id }),
    );
    const id = /Queued run `([a-z0-9]+)`/.exec(started)![1]!;
    await until(
      'the city run to finish',
      () => threadMessages(cityThread).find((m) => m.content.includes(`Run \`${id}\``) && m.content.startsWith('✅')),
      90_000,
    );
    expect((await runs.get(id))?.status).toBe('finished');
    const ended = threadMessages(cityThread).find((m) => m.content.includes(`Run \`${id}\``) && m.content.startsWith('✅'))!;
    expect(ended.content).toContain(`🔔 <@${admin.id}>, your run is done (mentions`);
    expect(ended.content).not.toContain(alice.id);
    await done(world.discord.sendCommand({ name: 'settings', subcommand: 'mentions', user: alice, permissions: '0', options: { on: true } }));

    expect(await done(world.discord.sendCommand({ name: 'train', subcommand: 'status', options: { run: id } }))).toMatch(/· style ·/);
    const list = await done(world.discord.sendCommand({ name: 'lora', subcommand: 'list', options: {} }));
    expect(list.split('\n').find((l) => l.includes(id))).toMatch(/style/);
    expect(list).not.toMatch(new RegExp(`${id}.*character`));

    const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, options: { run: id } });
    const fetched = await done(fetch);
    expect(fetched).toContain('trigger `mdvl_city` · for a sub-concept add `flower closeup`');
    expect(fetched).not.toContain('mdvl_city, flower closeup');
    const meta = safetensorsMetadata(fetch.lastReply()!.attachments[0]!.data);
    expect(meta['modelspec.trigger_phrase']).toBe('mdvl_city');
    expect(JSON.parse(meta['loraguild.trigger_words']!)).toEqual(['mdvl_city', 'flower closeup']);
  });

  it('stops a run on /train cancel and keeps what was saved', async () => {
    const id = await startRun({ epochs: 20 });
    await until('epoch 1 of the run to cancel', () => epochPosts(id).length >= 1);
    const cancel = world.discord.sendCommand({ name: 'train', subcommand: 'cancel', user: admin, permissions: MANAGE_GUILD, options: { run: id } });
    expect(await done(cancel)).toMatch(/Stopping run/);
    const msg = await until('the cancelled message', () =>
      threadMessages().find((m) => m.content.startsWith(`⏹️ Run \`${id}\``) && m.content.includes('kept')),
    );
    expect(msg.content).toMatch(/Epochs 1–\d+ are kept/);
    expect((await runs.get(id))?.status).toBe('cancelled');
    expect(epochPosts(id).length).toBeLessThan(20);
  });

  it('resumes from the last saved epoch after the worker is killed, posting every epoch exactly once', async () => {
    const id = await startRun({ epochs: 4 });
    await until('epoch 2 of the run to crash', () => epochPosts(id).length >= 2);
    await world.killWorker('SIGKILL');
    await world.spawnWorker(WORKER_ENV());
    await until('the resumed run to finish', () => threadMessages().find((m) => m.content.startsWith(`✅ Run \`${id}\``)), 90_000);
    expect(epochPosts(id).map((m) => /Epoch (\d+)\/4/.exec(m.content)?.[1])).toEqual(['1', '2', '3', '4']);
    expect(threadMessages().some((m) => m.content.startsWith(`🚀 Run \`${id}\``) && /resumed after epoch [12]/.test(m.content))).toBe(true);
    // One status message for the whole run, resumed or not, showing how it ended.
    const statuses = threadMessages().filter((m) => m.content.includes(`Run \`${id}\``) && /^(✅|⏳|🏋️)/u.test(m.content));
    expect(statuses.map((m) => m.content)).toEqual([expect.stringMatching(/^✅ Run .* finished in \d+ s\n/)]);
    // The resumed trainer counted its steps from 0 again; the delivered file counts the whole run.
    const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: bob, options: { run: id } });
    await done(fetch);
    const meta = safetensorsMetadata(fetch.lastReply()!.attachments[0]!.data);
    const { summary } = (await runs.get(id))!;
    expect(summary.totalSteps).toBe(4 * summary.stepsPerEpoch);
    expect(meta.ss_steps).toBe(String(summary.totalSteps));
    expect(meta.ss_epoch).toBe('4');
  });

  it('loses nothing while the bot is down and Discord fails: every epoch is posted exactly once', async () => {
    const id = await startRun({ epochs: 3 });
    await until('the run to start', () => threadMessages().find((m) => m.content.startsWith(`🚀 Run \`${id}\``)));
    await world.stopBot();
    await until(
      'the worker to finish while the bot is down',
      () => world.worker?.log.lines.some((l) => l.runId === id && /finished/.test(String(l.msg))) ?? false,
      90_000,
    );
    // Discord answers 500 (more times than discord.js retries by itself), then 429, on the next posts.
    world.discord.failNext({ method: 'POST', path: new RegExp(`^/channels/${threadId}/messages$`), status: 500, times: 4 });
    world.discord.failNext({ method: 'POST', path: new RegExp(`^/channels/${threadId}/messages$`), status: 429, retryAfter: 0.2 });
    await world.startBot();
    await until('the finished message after recovery', () => threadMessages().find((m) => m.content.startsWith(`✅ Run \`${id}\``)), 90_000);
    expect(epochPosts(id).map((m) => /Epoch (\d+)\/3/.exec(m.content)?.[1])).toEqual(['1', '2', '3']);
    expect(world.discord.calls.filter((c) => c.injected).length).toBeGreaterThanOrEqual(5);
  });

  it('still trains the images it was started with when one is removed while it waits in the queue', async () => {
    await world.killWorker('SIGTERM');
    // With no worker online the base model must be named; the run waits for a worker.
    const id = await startRun({ epochs: 2, model: 'base-sd15.safetensors' });
    const run = (await runs.get(id))!;
    expect(run.status).toBe('queued');
    const { DatasetStore } = await import('../../src/store/dataset-store.ts');
    const { BlobStore } = await import('../../src/core/blob-store.ts');
    const store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
    const blobs = new BlobStore(world.dataDir);
    const first = (await store.getImage(run.datasetId, 1))!;
    const remove = world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user: alice, options: { dataset: 'hero', images: '1' } });
    expect(await done(remove)).toMatch(/Removed 1 image/);
    expect(await store.getImage(run.datasetId, 1)).toBeNull();
    expect(await blobs.has(first.masterBlob)).toBe(true); // the queued run still needs it

    await world.spawnWorker(WORKER_ENV());
    await until('the run over the removed image to finish', () => steps.runSummary(world, threadId, id), 90_000);
    expect(epochPosts(id)).toHaveLength(2);
    // Once the run is over, nothing holds the file any more: the orphan sweep may take it.
    expect(await runs.isPinned(first.masterBlob)).toBe(false);
  });

  it('refuses an optimizer that no online worker can import, naming those it can', async () => {
    const partial = join(suite.folder, 'python-packages-without-dadaptation');
    await cp(join(process.cwd(), 'test/fixtures/python-packages'), partial, { recursive: true });
    await rm(join(partial, 'dadaptation'), { recursive: true });
    await world.killWorker('SIGTERM');
    await world.spawnWorker({ ...WORKER_ENV(), PYTHONPATH: partial });
    for (let i = 0; !(await listWorkers(world.redis, world.env.REDIS_PREFIX!)).some((w) => w.optimizers !== undefined); i++) {
      if (i > 600) throw new Error('no heartbeat with the optimizers');
      await new Promise((r) => setTimeout(r, 50));
    }
    const plan = (optimizer: string) =>
      world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: admin, permissions: MANAGE_GUILD, options: { dataset: 'hero', optimizer } });
    expect(await refusal(plan('DAdaptAdam'))).toMatch(
      /No training worker online can use the DAdaptAdam optimizer: its Python package is not installed there\. Choose another with `optimizer:` \(Prodigy, AdamW, AdamW8bit, Adafactor, Lion\)\./,
    );
    expect(await done(plan('Prodigy'))).toMatch(/steps per epoch/);
    await world.killWorker('SIGTERM');
    await world.spawnWorker(WORKER_ENV());
  });

  it("tells members the training script's own error, not the launcher's that follows it", async () => {
    await world.killWorker('SIGTERM');
    await world.spawnWorker({ ...WORKER_ENV(), STANDIN_CRASH_AT_STEP: '2' });
    // The model is named: the new worker's first heartbeat may not be there yet.
    const id = await startRun({ epochs: 2, model: 'base-sd15.safetensors' });
    const failed = await until('the failure report', () =>
      threadMessages().find((m) => m.content.startsWith(`❌ Run \`${id}\``) && m.content.includes('failed:')),
    );
    const [headline] = failed.content.split('\n');
    expect(headline).toMatch(/failed: the trainer exited with code 1: torch\.OutOfMemoryError: CUDA out of memory/);
    expect(headline).not.toContain('CalledProcessError');
    // The log tail still shows both tracebacks for whoever debugs it.
    expect(failed.content).toContain('CalledProcessError');
    expect((await runs.get(id))?.status).toBe('failed');
  });
});
