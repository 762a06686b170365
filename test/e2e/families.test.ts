/**
 * FLUX.1 and Chroma end to end through the fake Discord: a worker with a given GPU (a fake
 * nvidia-smi) and models folder (sparse files with the real key layouts), plans that pick the
 * memory preset from that GPU, refusals with nothing queued, and runs of the sd-scripts stand-in's
 * flux_train_network.py whose delivered files carry the family metadata.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { bullPrefix, QueueName, type WorkerInfo } from '../../src/queues/contract.ts';
import { RunStore } from '../../src/store/run-store.ts';
import { listWorkers } from '../../src/store/worker-heartbeats.ts';
import { chromaLayout, clipLLayout, fluxAeLayout, fluxLayout, t5xxlLayout, writeModelFile } from '../fixtures/model-layouts.ts';
import { writeTestCaptioner } from '../fixtures/florence-model.ts';
import { tinted } from '../fixtures/workshop.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import * as steps from './steps.ts';
import { MANAGE_GUILD } from './steps.ts';
import type { World } from './world.ts';

const admin = { id: '300000000000000001', username: 'admin' };
const alice = { id: '300000000000000002', username: 'alice' };
const FAKE_NVIDIA_SMI = fileURLToPath(new URL('../fixtures/nvidia-smi/', import.meta.url));
const GPUS = {
  12: 'NVIDIA GeForce RTX 3060, 12288',
  16: 'NVIDIA GeForce RTX 4060 Ti, 16380',
  24: 'NVIDIA GeForce RTX 4090, 24564',
} as const;

const suite = steps.worldWithTagger('lora-guild-families-', async (folder, port) => {
  // FLUX.1 and Chroma datasets are captioned with sentences.
  await writeTestCaptioner(join(folder, 'florence'));
  return { CAPTIONER_MODEL_DIR: join(folder, 'florence'), PUBLIC_URL: `http://127.0.0.1:${port}`, DOWNLOAD_SECRET: steps.DOWNLOAD_SECRET };
});
let world: World;
let models: string;
let runs: RunStore;
let trainingQueue: Queue;
let blobs: BlobStore;
const threads: Record<string, string> = {};

const done = (h: InteractionHandle) => steps.done(world, h);
const refusal = steps.privateRefusal;
const until = steps.until;
const threadMessages = (threadId: string) => steps.channelMessages(world, threadId);

/** (Re)starts the training worker with a GPU of `gb` GB, and waits until its heartbeat says so. */
async function workerWithGpu(gb: keyof typeof GPUS): Promise<WorkerInfo> {
  await world.killWorker('SIGTERM');
  await world.spawnWorker(
    steps.standinWorkerEnv(models, {
      TRAINER_CMD: 'python3',
      STANDIN_STRICT_CONFIG: '1',
      PATH: `${FAKE_NVIDIA_SMI}:${process.env.PATH ?? ''}`,
      FAKE_GPU: GPUS[gb],
    }),
  );
  const mib = Number(GPUS[gb].split(', ')[1]);
  return until(`a ${gb} GB worker`, async () => (await listWorkers(world.redis, world.env.REDIS_PREFIX!)).find((w) => w.gpu?.memoryMiB === mib));
}

async function createDataset(name: string, kind: string, base: string): Promise<void> {
  const threadId = await steps.createDataset(world, alice, { name, trigger: `ohwx_${name}`, class: 'woman', kind, base });
  threads[name] = threadId;
  const files = await Promise.all([tinted(1, '#ff2020'), tinted(2, '#2040ff'), tinted(3, '#20c020')]);
  await done(world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user: alice, options: { dataset: name, ...steps.imageOptions(world, files) } }));
  await world.discord.waitForCall((c) => c.path === `/channels/${threadId}/messages` && JSON.stringify(c.json).includes('Described 3 images'), 60_000);
}

function plan(dataset: string, options: Record<string, string | number> = {}): InteractionHandle {
  return world.discord.sendCommand({ name: 'train', subcommand: 'plan', user: admin, permissions: MANAGE_GUILD, options: { dataset, ...options } });
}

async function nothingQueued(): Promise<void> {
  expect(await runs.listForGuild(world.discord.guildId)).toHaveLength(0);
  expect(await trainingQueue.getJobCountByTypes('waiting', 'active', 'delayed', 'completed', 'failed')).toBe(0);
}

/** Presses Start on a shown plan and follows the run to its end; returns its id and the fetched final file's metadata. */
async function startAndFinish(shown: InteractionHandle, dataset: string, epochs: number) {
  const row = shown.lastReply()!.components[0] as { components: { custom_id: string }[] };
  const start = world.discord.sendButton({ customId: row.components[0]!.custom_id, user: admin, permissions: MANAGE_GUILD, message: shown.lastReply()!.id });
  const runId = /Queued run `([a-z0-9]+)`/.exec(await done(start))?.[1];
  if (!runId) throw new Error('no run queued');
  const threadId = threads[dataset]!;
  const finished = await steps.finished(world, threadId, runId, 120_000);
  const grids = threadMessages(threadId).filter((m) => m.content.startsWith('🖼️') && m.content.includes(`of run \`${runId}\``));
  expect(grids.map((m) => new RegExp(`Epoch (\\d+)/${epochs}`).exec(m.content)?.[1])).toEqual(Array.from({ length: epochs }, (_, i) => String(i + 1)));
  for (const g of grids) expect(g.attachments).toHaveLength(1);
  const fetch = world.discord.sendCommand({ name: 'lora', subcommand: 'fetch', user: alice, options: { run: runId } });
  const delivered = await done(fetch);
  const file = fetch.lastReply()!.attachments[0]!;
  const headerLength = Number(file.data.readBigUInt64LE(0));
  const meta = (JSON.parse(file.data.subarray(8, 8 + headerLength).toString('utf8')) as { __metadata__: Record<string, string> }).__metadata__;
  return { runId, finished: finished.content, delivered, meta };
}

beforeAll(async () => {
  world = suite.world;
  models = join(suite.folder, 'models');
  await mkdir(models);
  // The worker's models folder: FLUX.1 dev, Chroma, CLIP-L and the AE; no T5-XXL yet.
  await writeModelFile(join(models, 'flux1-dev.safetensors'), fluxLayout({ dtype: 'F8_E4M3' }));
  await writeModelFile(join(models, 'Chroma1-Base.safetensors'), chromaLayout());
  await writeModelFile(join(models, 'clip_l.safetensors'), clipLLayout());
  await writeModelFile(join(models, 'ae.safetensors'), fluxAeLayout());
  runs = new RunStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
  trainingQueue = new Queue(QueueName.Training, { connection: world.redis, prefix: bullPrefix(world.env.REDIS_PREFIX!) });
  await createDataset('fluxhero', 'character', 'flux1');
  await createDataset('chromastyle', 'style', 'chroma');
});

afterAll(async () => {
  await trainingQueue?.close();
});

describe('FLUX.1 and Chroma', () => {
  it('refuses with its reason and queues nothing: no T5-XXL anywhere, LoHa on FLUX.1, a 24 GB preset on a 12 GB worker', async () => {
    const worker = await workerWithGpu(12);
    expect(worker.models).toEqual([
      { file: 'Chroma1-Base.safetensors', base: 'chroma' },
      { file: 'flux1-dev.safetensors', base: 'flux1', variant: 'dev' },
    ]);
    expect(worker.companions?.map((c) => c.kind).sort()).toEqual(['ae', 'clip_l']);

    expect(await refusal(plan('fluxhero'))).toBe(
      '⚠️ FLUX.1 also needs `t5xxl` (the T5-XXL text encoder), and it is not in the models folder of the worker `gpu-test`.',
    );
    expect(await refusal(plan('chromastyle'))).toMatch(/^⚠️ Chroma also needs `t5xxl`/);
    await nothingQueued();

    await writeModelFile(join(models, 't5xxl_fp16.safetensors'), t5xxlLayout());
    await until('the worker to advertise T5-XXL', async () =>
      (await listWorkers(world.redis, world.env.REDIS_PREFIX!))[0]?.companions?.some((c) => c.kind === 't5xxl'),
    );
    const list = await done(world.discord.sendCommand({ name: 'worker', subcommand: 'list', user: admin, permissions: MANAGE_GUILD }));
    expect(list).toContain('Base models: `Chroma1-Base.safetensors` (Chroma), `flux1-dev.safetensors` (FLUX.1)');
    expect(list).toContain('FLUX.1/Chroma files: `ae.safetensors` (ae), `clip_l.safetensors` (clip_l), `t5xxl_fp16.safetensors` (t5xxl)');
    expect(await refusal(plan('fluxhero', { network: 'loha' }))).toMatch(/^⚠️ LoHa can't be trained on FLUX\.1 here/);
    expect(await refusal(plan('fluxhero', { vram: '24gb' }))).toBe(
      '⚠️ The 24 GB memory preset needs a GPU with 24 GB or more; the worker `gpu-test` has 12 GB. Leave `vram` out to use the 12 GB preset.',
    );
    // Without a preset named, the 12 GB one is planned.
    expect(await done(plan('fluxhero'))).toMatch(/memory preset \*\*12 GB\*\* \(fp8 base, 16 blocks swapped, batch 1\) for `gpu-test` \(12 GB\)/);
    await nothingQueued();
  });

  it('FLUX.1 on a 16 GB worker: the 16 GB preset, one grid per epoch, a flux-1-dev file and its licence', async () => {
    await workerWithGpu(16);
    const shown = plan('fluxhero', { epochs: 2 });
    const text = await done(shown);
    expect(text).toMatch(/recipe `character`/);
    expect(text).toMatch(/FLUX\.1 · LoRA · memory preset \*\*16 GB\*\* \(fp8 base, 8 blocks swapped, batch 1\) for `gpu-test` \(16 GB\)/);
    expect(text).toMatch(/`clip_l.safetensors`, `t5xxl_fp16.safetensors`, `ae.safetensors`/);
    const { runId, finished, delivered, meta } = await startAndFinish(shown, 'fluxhero', 2);
    expect(meta).toMatchObject({
      ss_base_model_version: 'flux1',
      'modelspec.architecture': 'flux-1-dev/lora',
      ss_model_type: 'flux',
      ss_network_module: 'networks.lora_flux',
      ss_guidance_scale: '1.0',
    });
    expect(finished).toMatch(/non-commercial licence/);
    expect(delivered).toMatch(/FLUX\.1 · trigger/);
    expect(delivered).toMatch(/FLUX\.1 \[dev\].*non-commercial licence/);

    // /lora try draws with flux_minimal_inference.py: the final epoch's file at weight 0.5.
    const ask = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: alice,
      options: { run: runId, prompt: 'ohwx_fluxhero reading a book', weight: 0.5, seed: 21, size: '512' },
    });
    expect(await done(ask)).toMatch(/Drawing \*\*ohwx_fluxhero reading a book\*\* with run `\w+`, the final epoch, weight 0\.5, seed 21/);
    const image = await until('the FLUX image', () => steps.triedImages(world).find((m) => m.content.includes(`run \`${runId}\``)));
    expect(image.content).toMatch(/the final epoch · weight 0\.5 · seed 21 · 512×512/);
    const drawn = await steps.standinBar(image.attachments[0]!.data, { left: 0, top: 0, width: 512, height: 512 });
    expect(drawn.colour).toEqual(await steps.standinLoraColour(blobs, (await runs.get(runId))!.final!.blob));
    expect(drawn.share).toBeCloseTo(2.5 / 4, 2);
    expect(world.worker!.log.lines.some((l) => l.msg === 'generating' && l.runId === runId)).toBe(true);
    expect(
      await steps.privateRefusal(
        world.discord.sendCommand({ name: 'lora', subcommand: 'try', user: alice, options: { run: runId, prompt: 'ohwx_fluxhero', negative: 'blurry' } }),
      ),
    ).toBe('⚠️ FLUX.1 draws without a negative prompt; leave `negative` out.');

    // /lora compare: both epochs side by side in the dataset's thread.
    const compare = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'compare',
      user: alice,
      options: { run: runId, prompt: 'ohwx_fluxhero portrait', epochs: '1, 2', weights: '1', seed: 4, size: '256' },
    });
    expect(await done(compare)).toMatch(/epochs 1, 2 × weights 1/);
    const grid = await until('the FLUX comparison', () =>
      threadMessages(threads.fluxhero!).find((m) => m.content.startsWith('🧪 **ohwx_fluxhero portrait**') && m.attachments.length === 1),
    );
    expect(grid.content).toContain('Rows: epoch 1, epoch 2 · columns: weight 1');
  });

  it('Chroma on a 24 GB worker: the style dataset gets the style recipe, the 24 GB preset, and a chroma file', async () => {
    await workerWithGpu(24);
    // The worker has finished a FLUX.1 run here: FLUX.1 plans use its measured speed, Chroma's the table.
    expect(await done(plan('fluxhero'))).toMatch(/⏱️ About \*\*.+\*\* of training \(time estimated from `gpu-test`'s own FLUX\.1 runs\)/);
    const shown = plan('chromastyle', { epochs: 2 });
    const text = await done(shown);
    expect(text).not.toMatch(/time estimated from/i);
    expect(text).toMatch(/recipe `style`/);
    expect(text).toMatch(/Chroma · LoRA · memory preset \*\*24 GB\*\* \(fp8 base, no block swap, batch 2\) for `gpu-test` \(24 GB\)/);
    expect(text).not.toMatch(/clip_l/);
    const { runId, finished, delivered, meta } = await startAndFinish(shown, 'chromastyle', 2);
    expect(meta).toMatchObject({
      ss_base_model_version: 'chroma',
      'modelspec.architecture': 'chroma/lora',
      ss_model_type: 'chroma',
      ss_apply_t5_attn_mask: 'True',
      ss_guidance_scale: '0.0',
    });
    expect(finished).not.toMatch(/licence/);
    expect(delivered).not.toMatch(/licence/);

    // Chroma draws without CLIP-L, and with a negative prompt.
    const ask = world.discord.sendCommand({
      name: 'lora',
      subcommand: 'try',
      user: alice,
      options: { run: runId, prompt: 'a watercolour harbour', negative: 'blurry', seed: 8, size: '256' },
    });
    expect(await done(ask)).toMatch(/Drawing \*\*a watercolour harbour\*\* with run `\w+`/);
    const image = await until('the Chroma image', () => steps.triedImages(world).find((m) => m.content.includes(`run \`${runId}\``)));
    expect(image.content).toMatch(/seed 8 · 256×256 · negative: blurry/);
    const drawn = await steps.standinBar(image.attachments[0]!.data, { left: 0, top: 0, width: 256, height: 256 });
    expect(drawn.colour).toEqual(await steps.standinLoraColour(blobs, (await runs.get(runId))!.final!.blob));
  });
});
