import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bullPrefix, JobName, QueueName, runEventId, sharedKeys, type RunEvent, type WorkerInfo } from '../../src/queues/contract.ts';
import { WorkerStore } from '../../src/store/worker-store.ts';
import { sd15Layout, writeModelFile } from '../fixtures/model-layouts.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import type { World } from './world.ts';

const admin = { id: '310000000000000001', username: 'admin' };
const alice = { id: '310000000000000002', username: 'alice' };
const bob = { id: '310000000000000003', username: 'bob' };
const OTHER_GUILD = '399999999999999999';

// No PUBLIC_URL at first: GPUs elsewhere cannot be lent yet.
const suite = steps.worldWithTagger('lora-guild-workers-', async (folder) => {
  await mkdir(join(folder, 'models'));
  return {};
});
let world: World;
let threadId: string;
let workerStore: WorkerStore;
let runEvents: Queue;
let prefix: string;

const done = (h: InteractionHandle) => steps.done(world, h);

/** The reason a command was refused: an ephemeral error, as the edit of an ephemeral reply or a followup. */
async function refusal(h: InteractionHandle): Promise<string> {
  const call = await Promise.race([h.waitForFollowup(undefined, 30_000), h.waitForEdit(undefined, 30_000)]);
  const content = (call.json as { content: string }).content;
  expect(content).toMatch(/^⚠️ /);
  return content;
}

const until = steps.until;

const threadMessages = () => steps.channelMessages(world, threadId);

const command = (subcommand: string, user: { id: string; username: string }, options: Record<string, string | number | boolean> = {}, permissions = '0') =>
  world.discord.sendCommand({ name: 'worker', subcommand, user, permissions, options });

/** The lent GPUs `/worker remove` offers `user` (with `permissions`) while they type `typed`. */
async function removable(user: { id: string; username: string }, permissions: string, typed: string) {
  const h = world.discord.sendAutocomplete({ name: 'worker', subcommand: 'remove', options: { worker: typed }, focused: 'worker', user, permissions });
  return ((await h.callback()).json as { data: { choices: { name: string; value: string }[] } }).data.choices;
}

/** A heartbeat as the bot writes it for a remote worker (or as an in-cluster worker writes its own). */
async function beat(info: Partial<WorkerInfo> & { id: string }) {
  const full: WorkerInfo = { host: 'host', gpu: null, models: [], busyWith: null, startedAt: Date.now(), at: Date.now(), ...info };
  await world.redis.set(sharedKeys.worker(prefix, info.id), JSON.stringify(full), 'EX', 3600);
}

async function restartBot(env: Record<string, string | undefined>) {
  await world.stopBot();
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete world.env[k];
    else world.env[k] = v;
  }
  await world.startBot();
}

beforeAll(async () => {
  world = suite.world;
  prefix = world.env.REDIS_PREFIX!;
  workerStore = new WorkerStore(world.redis, prefix);
  runEvents = new Queue(QueueName.RunEvents, { connection: world.redis, prefix: bullPrefix(prefix) });
  threadId = await steps.heroDataset(world, alice, 2);
});

afterAll(async () => {
  await runEvents?.close();
});

describe('lending a GPU', () => {
  it('hands out no token while the bot has no public https address', async () => {
    expect(await refusal(command('add', admin, { name: 'gaming-pc' }, MANAGE_GUILD))).toMatch(/no public address yet.*PUBLIC_URL/);
    await restartBot({ PUBLIC_URL: `http://127.0.0.1:${world.env.HTTP_PORT}` });
    expect(await refusal(command('add', admin, { name: 'gaming-pc' }, MANAGE_GUILD))).toMatch(/not https/);
    expect(await workerStore.listForGuild(world.discord.guildId)).toEqual([]);
    // Plain http is for tests and local networks, and only when the operator says so.
    await restartBot({ ALLOW_INSECURE_WORKER_HTTP: 'true' });
    expect(await refusal(command('add', admin, { name: 'gaming-pc' }, MANAGE_GUILD))).toMatch(/not switched on.*DOWNLOAD_SECRET/);
    await restartBot({ DOWNLOAD_SECRET: steps.DOWNLOAD_SECRET });
  });

  let aliceToken = '';
  let aliceWorkerId = '';

  it('lets members lend only when the server allows it, and shows the token once, only to them, with the command to run', async () => {
    expect(await refusal(command('add', alice, { name: 'gaming-pc' }))).toMatch(/Only members with Manage Server can lend a GPU.*members-may-lend:true/);
    const settings = world.discord.sendCommand({
      name: 'settings',
      subcommand: 'workers',
      user: admin,
      permissions: MANAGE_GUILD,
      options: { 'members-may-lend': true },
    });
    expect(await done(settings)).toContain('GPUs may be lent (`/worker add`) by any member');

    const add = command('add', alice, { name: 'gaming-pc' });
    const reply = await done(add);
    expect((await add.callback()).json).toMatchObject({ type: 5, data: { flags: 64 } });
    expect(reply).toMatch(/\*\*gaming-pc\*\* may now train for this server.*shown only this once/);
    aliceToken = /WORKER_TOKEN=(lgw_\S+)/.exec(reply)?.[1] ?? '';
    const worker = await workerStore.authenticate(aliceToken);
    expect(worker).toMatchObject({ name: 'gaming-pc', ownerId: alice.id, guildId: world.discord.guildId });
    aliceWorkerId = worker!.id;
    expect(reply).toContain(`LORA_GUILD_URL=http://127.0.0.1:${world.env.HTTP_PORT} WORKER_TOKEN=${aliceToken} WORKER_QUEUES=training MODELS_DIR=`);
    expect(reply).toContain('npm run worker');
    expect(reply).toMatch(/docker run .*--gpus all .*-e WORKER_TOKEN=lgw_\S+ .*lora-guild-worker/);
    expect(world.log.raw.join('\n')).not.toContain(aliceToken.slice(-43));

    expect(await refusal(command('add', admin, { name: 'Gaming-PC' }, MANAGE_GUILD))).toMatch(/already has a GPU named \*\*Gaming-PC\*\*/);
    expect(await refusal(command('add', bob, { name: 'my/pc' }))).toMatch(/1–32 letters, digits/);
    expect(await refusal(command('add', bob, { name: '  ' }))).toMatch(/1–32 letters, digits/);
    expect(await done(command('add', bob, { name: 'bobs laptop' }))).toContain('**bobs laptop** may now train');
    // One member lends at most three GPUs (an admin is not limited but by the server's total).
    expect(await done(command('add', bob, { name: 'spare 1' }))).toContain('may now train');
    expect(await done(command('add', bob, { name: 'spare 2' }))).toContain('may now train');
    expect(await refusal(command('add', bob, { name: 'spare 3' }))).toMatch(/You already lend 3 GPUs here/);
    await done(command('remove', bob, { worker: 'spare 1' }));
    await done(command('remove', bob, { worker: 'spare 2' }));
    expect((await workerStore.listForGuild(world.discord.guildId)).map((w) => w.name).sort()).toEqual(['bobs laptop', 'gaming-pc']);
  });

  let runId = '';

  it('lists the GPUs that train here and offers their models in a plan; another server’s GPU never appears', async () => {
    const guildId = world.discord.guildId;
    await beat({
      id: aliceWorkerId,
      gpu: { name: 'NVIDIA GeForce RTX 4090', memoryMiB: 24564 },
      ramMiB: 65536,
      diskFreeMiB: 120 * 1024,
      models: [
        { file: 'base-sd15.safetensors', base: 'sd15' },
        { file: 'pony-xl.safetensors', base: 'sdxl' },
      ],
      remote: { guildId, ownerId: alice.id, name: 'gaming-pc' },
    });
    await beat({ id: 'rack-1', gpu: { name: 'NVIDIA A100-SXM4-80GB', memoryMiB: 81920 }, models: [{ file: 'base-sd15.safetensors', base: 'sd15' }] });
    await beat({
      id: 'wzzzzzzzzzz',
      gpu: { name: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576 },
      models: [{ file: 'secret-sd15.safetensors', base: 'sd15' }],
      remote: { guildId: OTHER_GUILD, ownerId: '399999999999999998', name: 'elsewhere' },
    });

    const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: admin, permissions: MANAGE_GUILD, options: { dataset: 'hero' } });
    const planText = await done(plan);
    expect(planText).toContain('base `base-sd15.safetensors`');
    expect(planText).toContain(`🖥️ Trains on whichever is free first: 🟢 <@${alice.id}>'s RTX 4090 · 🟢 \`rack-1\` (A100-SXM4-80GB)`);
    expect(planText).not.toMatch(/elsewhere|secret|3090/);
    expect(
      await steps.privateRefusal(
        world.discord.sendCommand({
          name: 'train',
          subcommand: 'plan',
          user: admin,
          permissions: MANAGE_GUILD,
          options: { dataset: 'hero', model: 'secret-sd15.safetensors' },
        }),
      ),
    ).toMatch(/No training worker has the base model `secret-sd15.safetensors`/);
    const models = world.discord.sendAutocomplete({
      name: 'train',
      subcommand: 'plan',
      options: { dataset: 'hero', model: '' },
      focused: 'model',
      user: admin,
    });
    expect(((await models.callback()).json as { data: { choices: { value: string }[] } }).data.choices.map((c) => c.value)).toEqual(['base-sd15.safetensors']);

    const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
    const start = world.discord.sendButton({ customId: row.components[0]!.custom_id, user: admin, permissions: MANAGE_GUILD, message: plan.lastReply()!.id });
    runId = /Queued run `([a-z0-9]+)`/.exec(await done(start))?.[1] ?? '';
    expect(runId).not.toBe('');

    const list = await done(command('list', bob));
    const lines = list.split('\n');
    expect(lines[0]).toBe('**GPUs that train for this server** (2 of 3 online)');
    expect(list).toContain(`🟢 **gaming-pc** · lent by <@${alice.id}> · RTX 4090 24 GiB · 64 GiB RAM · 120 GiB disk free`);
    expect(list).toContain('Base models: `base-sd15.safetensors` (SD 1.5), `pony-xl.safetensors` (SDXL)');
    expect(list).toContain(`⚫ **bobs laptop** · lent by <@${bob.id}> · offline, never connected yet`);
    expect(list).toContain('🟢 **rack-1** · the server’s own · A100-SXM4-80GB 80 GiB');
    expect(list).toMatch(/Idle, ready to train/);
    expect(list).toContain(`Waiting: #1 \`${runId}\` (hero)`);
    expect(list).not.toMatch(/elsewhere|secret|3090/);
  });

  it('says whose GPU trains a run, in the run’s messages and in the list', async () => {
    await beat({
      id: aliceWorkerId,
      gpu: { name: 'NVIDIA GeForce RTX 4090', memoryMiB: 24564 },
      models: [{ file: 'base-sd15.safetensors', base: 'sd15' }],
      busyWith: runId,
      remote: { guildId: world.discord.guildId, ownerId: alice.id, name: 'gaming-pc' },
    });
    // What the bot's worker API reports when a lent GPU starts the run.
    const event: RunEvent = { kind: 'started', runId, workerId: aliceWorkerId, resumedFromEpoch: null, epochs: 10, stepsPerEpoch: 20, totalSteps: 200 };
    await runEvents.add(JobName.RunEvent, event, { jobId: runEventId(event) });
    const started = await until('the started message', () => threadMessages().find((m) => m.content.startsWith(`🚀 Run \`${runId}\``)));
    expect(started.content).toContain(`started on <@${alice.id}>'s RTX 4090: 200 steps over 10 epochs`);
    const status = await until('the status message', () => threadMessages().find((m) => m.content.startsWith(`🏋️ Run \`${runId}\``)));
    expect(status.content).toContain(`of **hero** on <@${alice.id}>'s RTX 4090 · epoch 0/10 · step 0/200`);
    // A member's name shows, but nobody is pinged.
    const post = world.discord.calls.find((c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('🚀'));
    expect(post?.json).toMatchObject({ allowed_mentions: { parse: [] } });

    // The server's own worker is busy with a run of another server: neither its id nor its dataset shows.
    await beat({
      id: 'rack-1',
      gpu: { name: 'NVIDIA A100-SXM4-80GB', memoryMiB: 81920 },
      models: [{ file: 'base-sd15.safetensors', base: 'sd15' }],
      busyWith: 'otherrun1',
    });
    const list = await done(command('list', alice));
    expect(list).toContain(`Training \`${runId}\` (hero, epoch 0/10)`);
    expect(list).toContain('Training a run of another server');
    const queue = await done(world.discord.sendCommand({ name: 'train', subcommand: 'queue', user: bob }));
    expect(queue).toContain(`**gaming-pc** (NVIDIA GeForce RTX 4090, 24 GiB, busy with \`${runId}\`)`);
    expect(queue).toContain('`rack-1` (NVIDIA A100-SXM4-80GB, 80 GiB, busy with another server’s run)');
    expect(queue).not.toMatch(/otherrun1|elsewhere/);
    await beat({ id: 'rack-1', gpu: { name: 'NVIDIA A100-SXM4-80GB', memoryMiB: 81920 }, models: [{ file: 'base-sd15.safetensors', base: 'sd15' }] });
  });

  it('still offers an offline GPU’s models, marked offline', async () => {
    await world.redis.del(sharedKeys.worker(prefix, aliceWorkerId));
    const plan = await done(
      world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: admin, permissions: MANAGE_GUILD, options: { dataset: 'hero' } }),
    );
    expect(plan).toContain(`🖥️ Trains on whichever is free first: ⚫ <@${alice.id}>'s RTX 4090 (offline) · 🟢 \`rack-1\` (A100-SXM4-80GB)`);
    const list = await done(command('list', alice));
    expect(list).toMatch(new RegExp(`⚫ \\*\\*gaming-pc\\*\\* · lent by <@${alice.id}> · offline, last seen \\d+ s ago · RTX 4090 24 GiB`));
  });

  it('removes a GPU for its owner or Manage Server only, and its token stops working at once', async () => {
    expect((await removable(bob, '0', '')).map((c) => c.name)).toEqual(['bobs laptop']);
    expect(await removable(admin, MANAGE_GUILD, 'gam')).toEqual([{ name: 'gaming-pc', value: aliceWorkerId }]);

    expect(await refusal(command('remove', bob, { worker: 'gaming-pc' }))).toMatch(/Only the member who lends a GPU, or a member with Manage Server/);
    expect(await workerStore.authenticate(aliceToken)).not.toBeNull();
    expect(await refusal(command('remove', alice, { worker: 'no-such-gpu' }))).toMatch(/no lent GPU named `no-such-gpu`/);

    expect(await done(command('remove', alice, { worker: aliceWorkerId }))).toMatch(/Removed \*\*gaming-pc\*\*: its token no longer works/);
    expect(await workerStore.authenticate(aliceToken)).toBeNull();
    expect(await done(command('remove', admin, { worker: 'Bobs Laptop' }, MANAGE_GUILD))).toContain('Removed **bobs laptop**');
    const list = await done(command('list', alice));
    expect(list).not.toMatch(/gaming-pc|bobs laptop/);
    expect(list).toContain('(1 of 1 online)');
  });

  it('the command shown with a token starts a worker that comes online here; removing the GPU stops it', async () => {
    const reply = await done(command('add', alice, { name: 'studio' }));
    const line = /^(LORA_GUILD_URL=\S+ .*) npm run worker$/m.exec(reply)?.[1];
    expect(line).toBeDefined();
    const shown = Object.fromEntries(line!.split(' ').map((pair) => pair.split('=', 2) as [string, string]));
    expect(Object.keys(shown).sort()).toEqual([
      'ALLOW_INSECURE_WORKER_HTTP',
      'LORA_GUILD_URL',
      'MODELS_DIR',
      'SD_SCRIPTS_DIR',
      'WORKER_QUEUES',
      'WORKER_TOKEN',
    ]);
    const models = join(suite.folder, 'studio-models');
    await mkdir(models);
    // A checkpoint with SD 1.5's tensor layout, under a name that does not say so.
    await writeModelFile(join(models, 'my-favourite.safetensors'), sd15Layout());
    // The member's machine: what the reply said, with its own folders (no Redis, no data dir of the bot's).
    await world.spawnWorker(
      {
        ...shown,
        MODELS_DIR: models,
        SD_SCRIPTS_DIR: 'test/fixtures/sd-scripts',
        TRAINER_CMD: 'python3',
        WORKER_CACHE_DIR: join(suite.folder, 'studio-cache'),
        WORKER_HEARTBEAT_SECONDS: '1',
      },
      30_000,
      { remote: true },
    );
    const studio = (await workerStore.find(world.discord.guildId, 'studio'))!;
    await until('the worker’s first heartbeat', async () => (await world.redis.exists(sharedKeys.worker(prefix, studio.id))) === 1);
    const list = await done(command('list', alice));
    expect(list).toMatch(new RegExp(`🟢 \\*\\*studio\\*\\* · lent by <@${alice.id}> · (no GPU found|.+ \\d+ GiB) · \\d+ GiB RAM · \\d+ (GiB|MiB) disk free`));
    expect(list).toContain('Base models: `my-favourite.safetensors` (SD 1.5)');

    expect(await done(command('remove', alice, { worker: 'studio' }))).toContain('Removed **studio**');
    // The worker learns at its next request that its token is gone, and stops (exit status 3).
    expect(await world.worker!.exited).toBe(3);
    expect(world.worker!.log.lines.some((l) => /refused this worker's token/.test(String(l.msg)))).toBe(true);
    world.worker = null;
  });
});
