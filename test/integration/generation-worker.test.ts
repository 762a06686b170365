/**
 * The in-cluster generation consumer against a real Redis, real BullMQ and the sd-scripts stand-in:
 * a worker takes only the generations it has the model files for. One without the model leaves
 * the job in line untouched (never active, never handed back), the worker with the model draws it,
 * and a generation nobody took before it lapsed is answered as such. BullMQ's own event stream
 * counts what happened to each job.
 */
import { Writable } from 'node:stream';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { loadConfig } from '../../src/core/config.ts';
import { createLogger } from '../../src/core/logger.ts';
import { bullPrefix, JobName, QueueName, type GeneratedPayload, type GeneratePayload } from '../../src/queues/contract.ts';
import { startGenerationWorker, type GenerationHandle } from '../../src/worker/generation.ts';
import { redisForFile } from '../harness/redis-per-file.ts';

const STANDIN_DIR = fileURLToPath(new URL('../fixtures/sd-scripts/', import.meta.url));
const PREFIX = 'genw';
const server = redisForFile();

let tmp: string;
let conn: Redis;
let blobs: BlobStore;
let lora: string;
let generate: Queue<GeneratePayload>;
let generated: Queue<GeneratedPayload>;
let events: QueueEvents;
const seen: { event: string; jobId: string }[] = [];
const handles: GenerationHandle[] = [];
/** Each worker's log lines, parsed. */
const logs: Record<string, Record<string, unknown>[]> = {};

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'lg-genworker-'));
  conn = server.redis.duplicate({ maxRetriesPerRequest: null });
  blobs = new BlobStore(join(tmp, 'data'));
  await blobs.init();
  const header = Buffer.from(JSON.stringify({ 'lora_unet_a.lora_down.weight': { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  lora = (await blobs.putBuffer(Buffer.concat([size, header, Buffer.alloc(2)]))).id;
  const prefix = bullPrefix(PREFIX);
  generate = new Queue(QueueName.Generate, { connection: conn, prefix });
  generated = new Queue(QueueName.Generated, { connection: conn, prefix });
  events = new QueueEvents(QueueName.Generate, { connection: conn.duplicate(), prefix });
  for (const event of ['active', 'delayed', 'waiting', 'completed', 'failed'] as const) {
    events.on(event, ({ jobId }: { jobId: string }) => seen.push({ event, jobId }));
  }
  await events.waitUntilReady();
});

afterAll(async () => {
  for (const h of handles) await h.close();
  await events?.close();
  await generate?.close();
  await generated?.close();
  conn?.disconnect();
  await rm(tmp, { recursive: true, force: true });
});

/** A worker whose models folder holds `models`; its log lines go to logs[id]. */
async function startWorker(id: string, models: string[]): Promise<void> {
  const modelsDir = join(tmp, `models-${id}`);
  await mkdir(modelsDir, { recursive: true });
  for (const m of models) await writeFile(join(modelsDir, m), Buffer.alloc(64));
  const config = loadConfig({
    REDIS_PREFIX: PREFIX,
    DATA_DIR: join(tmp, 'data'),
    MODELS_DIR: modelsDir,
    SD_SCRIPTS_DIR: STANDIN_DIR,
    TRAINER_CMD: 'python3',
    LOG_LEVEL: 'silent',
  });
  const lines: Record<string, unknown>[] = (logs[id] = []);
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  handles.push(startGenerationWorker({ config, logger: createLogger('debug', sink), env: process.env, blobs, workerId: id }, conn));
}

function payload(requestId: string, baseModel: string, expiresAt = Date.now() + 3600_000): GeneratePayload {
  return {
    requestId,
    guildId: 'g1',
    runId: 'run1',
    baseModel,
    base: 'sd15',
    prompt: 'ohwx_hero',
    negative: '',
    seed: 5,
    width: 256,
    height: 256,
    cells: [{ epoch: 1, weight: 1, lora }],
    expiresAt,
  };
}

async function until<T>(what: string, check: () => Promise<T | null | undefined | false> | T | null | undefined | false): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const result = (requestId: string) => generated.getJob(`generated-${requestId}`).then((j) => j?.data);
const looks = (id: string) => (logs[id] ?? []).filter((l) => l.msg === 'no generation here to draw').length;
const eventsOf = (jobId: string) => seen.filter((e) => e.jobId === jobId).map((e) => e.event);

describe('a worker takes only the generations it can draw', () => {
  it('one without the model leaves the job in line untouched; the one with it draws it', async () => {
    await startWorker('nomodel', []);
    await until('the first look', () => looks('nomodel') >= 1);
    const before = looks('nomodel');
    await generate.add(JobName.Generate, payload('req1', 'base.safetensors'), { jobId: 'gen-req1' });
    // Woken by the new job, the worker looks and finds nothing it can draw.
    await until('a look after the job was queued', () => looks('nomodel') > before);
    expect(await generate.getJobState('gen-req1')).toBe('waiting');
    expect(eventsOf('gen-req1')).not.toContain('active');

    await startWorker('withmodel', ['base.safetensors']);
    const drawn = await until('the image', () => result('req1'));
    expect(drawn).toMatchObject({ ok: true, workerId: 'withmodel', cells: [{ epoch: 1, weight: 1 }] });
    await until('the job to complete', () => eventsOf('gen-req1').includes('completed'));
    // Taken once, by the worker with the model; never handed back and forth.
    expect(eventsOf('gen-req1').filter((e) => e === 'active')).toHaveLength(1);
    expect(eventsOf('gen-req1')).not.toContain('delayed');
    const job = await generate.getJob('gen-req1');
    expect(job?.attemptsStarted).toBe(1);
    expect(job?.processedBy).toBe('withmodel');
    expect((logs.nomodel ?? []).some((l) => l.msg === 'generating')).toBe(false);
  });

  it('a generation that lapsed with nobody able to draw it is answered, once', async () => {
    await generate.add(JobName.Generate, payload('req2', 'nobody-has-this.safetensors', Date.now() - 1), { jobId: 'gen-req2' });
    const answer = await until('the answer', () => result('req2'));
    expect(answer).toMatchObject({ ok: false, reason: 'no GPU with the base model nobody-has-this.safetensors took it in time' });
    await until('the job to complete', () => eventsOf('gen-req2').includes('completed'));
    expect(eventsOf('gen-req2').filter((e) => e === 'active')).toHaveLength(1);
  });
});
