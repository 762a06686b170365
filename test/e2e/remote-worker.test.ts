/**
 * GPUs lent from elsewhere: the bot and remote workers with their own data folders and no Redis
 * URL at all, talking only over the bot's HTTP API; the worker API's refusals; a worker killed in
 * the middle of a run, and another one resuming it from the uploaded epoch state.
 */
import type { World } from './world.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import { createHash } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { createServer, Socket, type Server } from 'node:net';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.ts';
import { bullPrefix, QueueName, type WorkerInfo } from '../../src/queues/contract.ts';
import { RunStore } from '../../src/store/run-store.ts';
import { WorkerStore } from '../../src/store/worker-store.ts';
import { GuildClient, LeaseGoneError, RefusedError, TokenRefusedError, type LeaseGrant } from '../../src/worker/guild-client.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';

const admin = { id: '300000000000000001', username: 'admin' };
const alice = { id: '300000000000000002', username: 'alice' };
const suite = steps.worldWithTagger('lora-guild-remote-', (_folder, port) => ({
  PUBLIC_URL: `http://127.0.0.1:${port}`,
  DOWNLOAD_SECRET: steps.DOWNLOAD_SECRET,
  ALLOW_INSECURE_WORKER_HTTP: 'true',
  WORKER_HEARTBEAT_SECONDS: '1',
  LEASE_SECONDS: '3',
  WORKER_UPLOAD_MAX_BYTES: String(8 * 1024 * 1024),
}));
let world: World;
let runs: RunStore;
let workers: WorkerStore;
let trainingQueue: Queue;
let threadId: string;
const silent = createLogger('silent');

const port = () => Number(suite.world.env.HTTP_PORT);
const baseUrl = () => `http://127.0.0.1:${port()}`;

/** A member's machine: its own models folder and cache, the bot's URL and a token, nothing else. */
async function remoteEnv(name: string, token: string, extra: Record<string, string> = {}): Promise<Record<string, string>> {
  const models = join(suite.folder, `${name}-models`);
  await mkdir(models, { recursive: true });
  await writeFile(join(models, 'base-sd15.safetensors'), Buffer.alloc(64));
  return {
    LORA_GUILD_URL: baseUrl(),
    WORKER_TOKEN: token,
    ALLOW_INSECURE_WORKER_HTTP: 'true',
    WORKER_QUEUES: 'training',
    TRAINER_CMD: 'python3',
    SD_SCRIPTS_DIR: 'test/fixtures/sd-scripts',
    MODELS_DIR: models,
    WORKER_CACHE_DIR: join(suite.folder, `${name}-cache`),
    WORKER_HEARTBEAT_SECONDS: '1',
    LEASE_SECONDS: '3',
    STANDIN_STEP_SECONDS: '0.003',
    // Empty packages named like the optimizers' (the stand-in imports the one a run uses).
    PYTHONPATH: join(process.cwd(), 'test/fixtures/python-packages'),
    PROGRESS_INTERVAL_SECONDS: '1',
    ...extra,
  };
}

beforeAll(async () => {
  world = suite.world;
  const prefix = world.env.REDIS_PREFIX!;
  runs = new RunStore(world.redis, prefix);
  workers = new WorkerStore(world.redis, prefix);
  trainingQueue = new Queue(QueueName.Training, { connection: world.redis, prefix: bullPrefix(prefix) });

  threadId = await steps.heroDataset(world, alice);
});

afterAll(async () => {
  await trainingQueue?.close();
});

const done = (h: InteractionHandle) => steps.done(world, h);

const threadMessages = () => steps.channelMessages(world, threadId);

const until = <T>(what: string, check: () => T | null | undefined | false | Promise<T | null | undefined | false>, timeoutMs = 60_000) =>
  steps.until(what, check, timeoutMs, () => world.worker?.log.raw.slice(-15).join('\n') ?? '');

const startRun = (options: Record<string, string | number> = {}) => steps.startRun(world, admin, { dataset: 'hero', ...options });

const epochPosts = (runId: string) => steps.epochPosts(world, threadId, runId);
const epochNumbers = (runId: string) => epochPosts(runId).map((m) => Number(/Epoch (\d+)\//.exec(m.content)?.[1]));

const modelsInfo = (): Omit<WorkerInfo, 'id' | 'at'> => ({
  host: 'test-machine',
  gpu: { name: 'Test GPU', memoryMiB: 24576 },
  models: [{ file: 'base-sd15.safetensors', base: 'sd15' }],
  busyWith: null,
  startedAt: Date.now(),
});

/** A TCP proxy to the bot that cuts the first connection carrying more than `cutAfter` bytes upstream. */
async function cuttingProxy(cutAfter: number): Promise<{ url: string; cuts: () => number; close: () => Promise<void> }> {
  let cuts = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    const upstream = new Socket();
    upstream.connect(port(), '127.0.0.1');
    sockets.add(upstream);
    let sent = 0;
    client.on('data', (d: Buffer) => {
      sent += d.length;
      if (cuts === 0 && sent > cutAfter) {
        cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port: p } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${p}`,
    cuts: () => cuts,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

describe('a GPU lent from elsewhere', () => {
  it('refuses what a worker token may not do, and nothing else is disturbed', async () => {
    const { token } = await workers.add({ guildId: world.discord.guildId, name: 'probe', ownerId: alice.id });
    const client = new GuildClient({ baseUrl: baseUrl(), token, logger: silent, retryForMs: 5_000 });
    const wrong = new GuildClient({ baseUrl: baseUrl(), token: `${token.slice(0, -4)}AAAA`, logger: silent, retryForMs: 5_000 });
    let keepAlive: NodeJS.Timeout | undefined;
    try {
      await expect(wrong.heartbeat(modelsInfo(), null)).rejects.toBeInstanceOf(TokenRefusedError);
      await client.heartbeat(modelsInfo(), null);

      const runId = await startRun({ epochs: 2 });
      // A GPU lent to another server never gets this server's run.
      const elsewhere = await workers.add({ guildId: '999999999999999999', name: 'elsewhere', ownerId: alice.id });
      const stranger = new GuildClient({ baseUrl: baseUrl(), token: elsewhere.token, logger: silent, retryForMs: 5_000 });
      await stranger.heartbeat(modelsInfo(), null);
      expect(await stranger.poll(2)).toBeNull();
      await stranger.close();
      await workers.remove(elsewhere.worker);

      const grant = (await client.poll(10)) as LeaseGrant;
      expect(grant).not.toBeNull();
      expect((grant.payload as { runId: string }).runId).toBe(runId);
      // It beats while it holds the lease, as a worker does, however long the checks below take.
      keepAlive = setInterval(() => void client.heartbeat(modelsInfo(), grant.leaseId).catch(() => undefined), 1000);

      // A blob of the run arrives, checked; one outside the lease does not.
      const image = Object.values((grant.payload as { images: Record<string, { blob: string }> }).images)[0]!.blob;
      const into = join(suite.folder, 'probe-blob');
      await client.download(grant, image, into);
      const other = createHash('sha256').update('not in this run').digest('hex');
      await world.bot!.ctx.blobs.putBuffer(Buffer.from('not in this run'));
      await expect(client.download(grant, other, into)).rejects.toMatchObject({ status: 403 });
      const forged = { ...grant, blobAccess: { exp: grant.blobAccess.exp + 1, sig: grant.blobAccess.sig } };
      await expect(client.download(forged, image, into)).rejects.toMatchObject({ status: 403 });

      // Another worker's token cannot touch this lease at all.
      const second = await workers.add({ guildId: world.discord.guildId, name: 'other', ownerId: alice.id });
      const intruder = new GuildClient({ baseUrl: baseUrl(), token: second.token, logger: silent, retryForMs: 5_000 });
      await expect(intruder.download(grant, image, into)).rejects.toBeInstanceOf(LeaseGoneError);
      await expect(intruder.event(grant.leaseId, { kind: 'cancelled', runId, lastEpoch: null })).rejects.toBeInstanceOf(LeaseGoneError);
      await intruder.close();
      await workers.remove(second.worker);

      // Uploads: bytes that do not match their hash, and a file over the cap, are refused.
      const file = join(suite.folder, 'upload.bin');
      await writeFile(file, Buffer.alloc(300_000, 7));
      const liar = createHash('sha256').update('something else').digest('hex');
      await expect(client.upload(grant.leaseId, file, liar)).rejects.toMatchObject({ status: 422 });
      expect(await world.bot!.ctx.blobs.has(liar)).toBe(false);
      const big = await request(`${baseUrl()}/api/worker/v1/leases/${grant.leaseId}/uploads/${liar}?size=${9 * 1024 * 1024}&offset=0`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}` },
        body: Buffer.alloc(1024),
      });
      expect(big.statusCode).toBe(413);
      expect(((await big.body.json()) as { error: string }).error).toMatch(/over the upload limit/);

      // A connection dropped in the middle of an upload: retried, and the file arrives whole.
      const proxy = await cuttingProxy(150_000);
      const viaProxy = new GuildClient({ baseUrl: proxy.url, token, logger: silent, uploadChunkBytes: 256 * 1024, retryForMs: 10_000 });
      const whole = join(suite.folder, 'checkpoint.bin');
      const bytes = Buffer.from(Array.from({ length: 700_000 }, (_, i) => (i * 31) % 251));
      await writeFile(whole, bytes);
      const sha = createHash('sha256').update(bytes).digest('hex');
      expect(await viaProxy.upload(grant.leaseId, whole)).toEqual({ blob: sha, bytes: bytes.length });
      expect(proxy.cuts()).toBe(1);
      expect(Buffer.compare(await world.bot!.ctx.blobs.read(sha), bytes)).toBe(0);
      await viaProxy.close();
      await proxy.close();

      // An event about another run is refused; the lease is handed back and the run waits again.
      await expect(client.event(grant.leaseId, { kind: 'cancelled', runId: 'someotherrun', lastEpoch: null })).rejects.toBeInstanceOf(RefusedError);
      clearInterval(keepAlive);
      await client.release(grant.leaseId);
      expect(await trainingQueue.getJobCountByTypes('waiting', 'prioritized')).toBe(1);
      expect((await runs.get(runId))?.status).toBe('queued');
      await done(world.discord.sendCommand({ name: 'train', subcommand: 'cancel', user: admin, permissions: MANAGE_GUILD, options: { run: runId } }));
      await until(
        'the run to be cancelled',
        async () => (await runs.get(runId))?.status === 'cancelled' || (await trainingQueue.getJobCountByTypes('waiting', 'prioritized')) === 0,
      );
    } finally {
      clearInterval(keepAlive);
      await client.close();
      await wrong.close();
    }
  });

  let runId = '';

  it('trains a run end to end on a worker with its own folder and no Redis: plan → Start → grids → final → fetch', async () => {
    const { token } = await workers.add({ guildId: world.discord.guildId, name: 'alice-4090', ownerId: alice.id });
    const env = await remoteEnv('a', token);
    expect(env).not.toHaveProperty('REDIS_URL');
    expect(env).not.toHaveProperty('DATA_DIR');
    await world.spawnWorker(env, 30_000, { remote: true });
    runId = await startRun({ epochs: 3 });
    await until('the finished message', () => steps.runSummary(world, threadId, runId));
    expect(epochNumbers(runId)).toEqual([1, 2, 3]);
    for (const post of epochPosts(runId)) expect(post.attachments).toHaveLength(1);
    const run = await runs.get(runId);
    expect(run?.status).toBe('finished');

    const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: alice, options: { run: runId, epoch: 'final' } });
    await done(fetch);
    const file = fetch.lastReply()!.attachments[0]!;
    expect(file.filename).toMatch(/\.safetensors$/);
    const headerLength = Number(file.data.readBigUInt64LE(0));
    expect(JSON.parse(file.data.subarray(8, 8 + headerLength).toString('utf8'))).toHaveProperty('__metadata__');
    // The worker's images came into its own cache; the bot's data folder was never shared.
    expect((await readdir(join(suite.folder, 'a-cache', 'blobs'))).length).toBeGreaterThan(0);
    expect(world.worker!.log.raw.join('\n')).not.toContain(token);
    expect(world.log.raw.join('\n')).not.toContain(token.slice(-43));
  });

  it('draws with a finished run on the lent GPU: /lora try posts the image, /lora compare the grid in the run’s thread', async () => {
    const ask = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: alice,
      options: { prompt: 'ohwx_hero waving', run: runId, epoch: '2', weight: 0.5, seed: 3 },
    });
    expect(await done(ask)).toMatch(/Drawing \*\*ohwx_hero waving\*\* with run `\w+`, epoch 2, weight 0\.5, seed 3/);
    const image = await until('the image', () =>
      world.discord.channelMessages(world.discord.channelId).find((m) => m.content.startsWith('🎨 **ohwx_hero waving**') && m.attachments.length === 1),
    );
    expect(image.content).toMatch(/ · epoch 2 · weight 0\.5 · seed 3 · 512×512 · /);
    expect(image.attachments[0]!.data.toString('latin1')).toContain('seed\u00003');
    expect(world.worker!.log.lines.some((l) => l.msg === 'generation done')).toBe(true);

    const compare = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'compare',
      user: alice,
      options: { run: runId, epochs: '3, 1', weights: '1, 0.5', prompt: 'ohwx_hero waving', seed: 3 },
    });
    await done(compare);
    const grid = await until('the grid', () => threadMessages().find((m) => m.content.startsWith('🧪 **ohwx_hero waving**') && m.attachments.length === 1));
    expect(grid.content).toContain('Rows: epoch 3, epoch 1 · columns: weight 1, weight 0.5');
    expect(grid.attachments[0]!.data.subarray(0, 2).toString('hex')).toBe('ffd8');
  });

  it('a cancel reaches the lent GPU while it trains: the trainer stops and the saved epochs are kept', async () => {
    const id = await startRun({ epochs: 20 });
    await until('epoch 1 of the run to cancel', () => epochNumbers(id).includes(1));
    const cancel = world.discord.sendCommand({ name: 'train', subcommand: 'cancel', user: admin, permissions: MANAGE_GUILD, options: { run: id } });
    expect(await done(cancel)).toMatch(/Stopping run/);
    await until('the cancelled message', () => threadMessages().find((m) => m.content.startsWith(`⏹️ Run \`${id}\``) && m.content.includes('kept')));
    expect((await runs.get(id))?.status).toBe('cancelled');
    expect(epochNumbers(id).length).toBeLessThan(20);
    expect(world.worker!.log.lines.some((l) => l.msg === 'stopping the run' && l.reason === 'cancel')).toBe(true);
    await world.killWorker('SIGTERM');
  });

  it('a worker killed in epoch 2 loses no epoch: another worker resumes from the uploaded state, every epoch posted once, in order', async () => {
    const a = await workers.add({ guildId: world.discord.guildId, name: 'first', ownerId: alice.id });
    await world.spawnWorker(await remoteEnv('k1', a.token, { STANDIN_STEP_SECONDS: '0.008' }), 30_000, { remote: true });
    const id = await startRun({ epochs: 4 });
    await until('epoch 1 and progress into epoch 2', async () => {
      const run = await runs.get(id);
      return epochNumbers(id).includes(1) && (run?.progress?.epoch ?? 0) >= 2 && run;
    });
    await world.killWorker('SIGKILL');

    const b = await workers.add({ guildId: world.discord.guildId, name: 'second', ownerId: admin.id });
    await world.spawnWorker(await remoteEnv('k2', b.token), 30_000, { remote: true });
    await until('the finished message', () => steps.runSummary(world, threadId, id), 90_000);
    expect(epochNumbers(id)).toEqual([1, 2, 3, 4]);
    expect(world.worker!.log.lines.some((l) => l.msg === 'resume state restored from the bot')).toBe(true);
    expect(world.worker!.log.lines.find((l) => l.msg === 'resuming from the last saved epoch')).toMatchObject({ resumeFrom: expect.any(Number) as number });
    await world.killWorker('SIGTERM');
  });

  it('a token revoked mid-run stops that worker at once; the run goes back to the queue and finishes elsewhere', async () => {
    const a = await workers.add({ guildId: world.discord.guildId, name: 'revoked', ownerId: alice.id });
    await world.spawnWorker(await remoteEnv('r1', a.token, { STANDIN_STEP_SECONDS: '0.008' }), 30_000, { remote: true });
    const id = await startRun({ epochs: 3 });
    await until('epoch 1', () => epochNumbers(id).includes(1));
    const first = world.worker!;
    await workers.remove(a.worker);
    expect(await first.exited).toBe(3);
    expect(first.log.lines.some((l) => l.msg === "the bot refused this worker's token (revoked?): stopping")).toBe(true);
    world.worker = null;

    const b = await workers.add({ guildId: world.discord.guildId, name: 'takes-over', ownerId: admin.id });
    await world.spawnWorker(await remoteEnv('r2', b.token), 30_000, { remote: true });
    await until('the finished message', () => steps.runSummary(world, threadId, id), 90_000);
    expect(epochNumbers(id)).toEqual([1, 2, 3]);
    await world.killWorker('SIGTERM');
  });
});
