/**
 * A remote training worker: a GPU lent to a guild from anywhere, started as `npm run worker` with
 * `LORA_GUILD_URL` and `WORKER_TOKEN` (no Redis, no shared disk, no inbound port). It long-polls the
 * bot for a run that fits it, fetches the run's images by content address into its own cache,
 * trains exactly as an in-cluster worker does (training-run.ts), and sends back every epoch's
 * files with the state a resume needs, so that if this machine goes away the next worker goes on
 * from the last epoch.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { BlobStore, type BlobRef } from '../core/blob-store.ts';
import type { Config } from '../core/config.ts';
import { codeOf } from '../core/fs-errors.ts';
import type { Logger } from '../core/logger.ts';
import type { ArtifactRef, GeneratePayload, RunEvent, WorkerInfo } from '../queues/contract.ts';
import { checkPayload } from '../queues/train-payload.ts';
import { GenerationFailure, generateProblem, runGeneration } from './generation.ts';
import { GuildClient, LeaseGoneError, TokenRefusedError, type LeaseGrant, type ResumeState } from './guild-client.ts';
import type { EpochEvent, RunHost, RunProgress } from './run-host.ts';
import { describeRunError } from './trainer-failure.ts';
import { TrainingRun, type TrainingRunDeps } from './training-run.ts';
import { WorkerRegistry } from './worker-registry.ts';

/** The run was handed back (shutdown) or taken away (lease gone); nothing more to report. */
class HandedBack extends Error {
  constructor() {
    super('the run was handed back');
    this.name = 'HandedBack';
  }
}

const pad6 = (n: number) => String(n).padStart(6, '0');

export interface RemoteWorkerDeps extends TrainingRunDeps {
  /** Finds the GPU for the heartbeat (default: nvidia-smi). */
  gpu?: () => Promise<WorkerInfo['gpu']>;
  /** Bytes per upload request (tests make it small). */
  uploadChunkBytes?: number;
}

export interface RemoteWorkerHandle {
  /** Resolves when the worker stopped (closed, or its token was refused). */
  done: Promise<'closed' | 'token-refused'>;
  client: GuildClient;
  close(): Promise<void>;
}

/** Checks the remote settings before anything starts; the problems, in words. */
export function remoteSettingsProblems(config: Config): string[] {
  const problems: string[] = [];
  if (!config.LORA_GUILD_URL) problems.push("LORA_GUILD_URL: the bot's address, as /worker add showed it");
  if (!config.WORKER_TOKEN) problems.push('WORKER_TOKEN: the token /worker add showed (lgw_…)');
  if (config.LORA_GUILD_URL && new URL(config.LORA_GUILD_URL).protocol !== 'https:' && !config.ALLOW_INSECURE_WORKER_HTTP) {
    problems.push('LORA_GUILD_URL: must be https:// (the token travels with every request); ALLOW_INSECURE_WORKER_HTTP=true allows http for a local test');
  }
  return problems;
}

/** The RunHost of a remote worker: everything goes to the bot under the lease. */
class RemoteRunHost implements RunHost {
  cancel = false;
  leaseGone = false;

  constructor(
    readonly workerId: string,
    readonly blobs: BlobStore,
    readonly runsDir: string,
    private readonly client: GuildClient,
    private readonly leaseId: string,
    private readonly log: Logger,
  ) {}

  private guard<T>(p: Promise<T>): Promise<T> {
    return p.catch((err: unknown) => {
      if (err instanceof LeaseGoneError) this.leaseGone = true;
      throw err;
    });
  }

  send(event: RunEvent): Promise<void> {
    return this.guard(this.client.event(this.leaseId, event));
  }

  async epochSaved(event: EpochEvent, stateDir: string | null): Promise<void> {
    let state: ResumeState | undefined;
    if (stateDir !== null) {
      const files: ResumeState['files'] = [];
      for (const name of (await readdir(stateDir)).sort()) {
        const path = join(stateDir, name);
        if (!(await stat(path)).isFile()) continue;
        const { blob, bytes } = await this.guard(this.client.upload(this.leaseId, path));
        files.push({ name, blob, bytes });
      }
      state = { epoch: event.epoch, files };
      this.log.info({ epoch: event.epoch, files: files.length, bytes: files.reduce((n, f) => n + f.bytes, 0) }, 'epoch state uploaded');
    }
    await this.guard(this.client.event(this.leaseId, event, state));
  }

  async artifact(ref: BlobRef): Promise<ArtifactRef> {
    const { blob, bytes } = await this.guard(this.client.upload(this.leaseId, this.blobs.path(ref.id), ref.id));
    return { blob, bytes, sha256: blob };
  }

  cancelRequested(): Promise<boolean> {
    return Promise.resolve(this.cancel);
  }

  progress(_progress: RunProgress): Promise<void> {
    // Progress reaches the bot as `progress` events.
    return Promise.resolve();
  }

  async handBack(): Promise<never> {
    if (!this.leaseGone) {
      try {
        await this.client.release(this.leaseId);
      } catch (err) {
        this.log.warn({ err }, 'could not hand the run back; the lease will lapse instead');
      }
    }
    throw new HandedBack();
  }

  stillOwned(): Promise<boolean> {
    return Promise.resolve(!this.leaseGone);
  }
}

/**
 * Keeps the cache under its size: run folders of runs this worker no longer holds go first (oldest
 * first), then blobs least recently used. Never what the current lease needs.
 */
export async function trimCache(
  cacheDir: string,
  maxBytes: number,
  keep: { blobs: Set<string>; runId: string | null },
  log: Logger,
): Promise<{ freed: number; total: number }> {
  const entries: { path: string; bytes: number; at: number; kind: 'run' | 'blob' }[] = [];
  const sizeOf = async (path: string): Promise<number> => {
    const info = await stat(path).catch(() => null);
    if (!info) return 0;
    if (!info.isDirectory()) return info.size;
    let total = 0;
    for (const name of await readdir(path).catch(() => [] as string[])) total += await sizeOf(join(path, name));
    return total;
  };
  const runs = join(cacheDir, 'runs');
  for (const name of await readdir(runs).catch(() => [] as string[])) {
    if (name === keep.runId) continue;
    const path = join(runs, name);
    const info = await stat(path).catch(() => null);
    if (info) entries.push({ path, bytes: await sizeOf(path), at: info.mtimeMs, kind: 'run' });
  }
  const blobsDir = join(cacheDir, 'blobs');
  for (const a of await readdir(blobsDir).catch(() => [] as string[])) {
    for (const b of await readdir(join(blobsDir, a)).catch(() => [] as string[])) {
      for (const id of await readdir(join(blobsDir, a, b)).catch(() => [] as string[])) {
        if (keep.blobs.has(id)) continue;
        const info = await stat(join(blobsDir, a, b, id)).catch(() => null);
        if (info?.isFile()) entries.push({ path: join(blobsDir, a, b, id), bytes: info.size, at: Math.max(info.atimeMs, info.mtimeMs), kind: 'blob' });
      }
    }
  }
  let total = await sizeOf(cacheDir);
  let freed = 0;
  // Run folders before blobs; within each, least recently used first.
  entries.sort((x, y) => (x.kind === y.kind ? x.at - y.at : x.kind === 'run' ? -1 : 1));
  for (const entry of entries) {
    if (total <= maxBytes) break;
    await rm(entry.path, { recursive: true, force: true });
    total -= entry.bytes;
    freed += entry.bytes;
  }
  if (freed > 0) log.info({ freed, total, maxBytes }, 'cache trimmed');
  return { freed, total };
}

export function startRemoteWorker(config: Config, deps: RemoteWorkerDeps): RemoteWorkerHandle {
  const problems = remoteSettingsProblems(config);
  if (problems.length > 0) throw new Error(`the remote worker is not configured:\n  - ${problems.join('\n  - ')}`);
  const log = deps.logger.child({ unit: 'remote-worker' });
  const cacheDir = resolve(config.WORKER_CACHE_DIR);
  const runsDir = join(cacheDir, 'runs');
  const blobs = new BlobStore(cacheDir);
  const client = new GuildClient({
    baseUrl: config.LORA_GUILD_URL!,
    token: config.WORKER_TOKEN!,
    logger: deps.logger,
    ...(deps.uploadChunkBytes ? { uploadChunkBytes: deps.uploadChunkBytes } : {}),
  });
  const workerId = /^lgw_(w[a-z0-9]{10})_/.exec(config.WORKER_TOKEN!)?.[1] ?? 'remote';
  const maxCacheBytes = config.WORKER_CACHE_MAX_GB * 1024 ** 3;

  let leaseId: string | null = null;
  let host: RemoteRunHost | null = null;
  let current: TrainingRun | null = null;
  let closing = false;
  let tokenRefused = false;
  const stopPolling = new AbortController();

  const registry = new WorkerRegistry({
    workerId,
    modelsDir: config.MODELS_DIR,
    diskDir: cacheDir,
    intervalSeconds: config.WORKER_HEARTBEAT_SECONDS,
    logger: log,
    ...(deps.gpu ? { gpu: deps.gpu } : {}),
    publish: async (info) => {
      const { id: _id, at: _at, ...rest } = info;
      try {
        const answer = await client.heartbeat(rest, leaseId);
        if (host && answer.lease === 'gone' && !host.leaseGone) {
          log.warn('the lease on this run is gone (expired or taken back): stopping it');
          host.leaseGone = true;
          current?.requestStop('shutdown');
        }
        if (host && answer.cancel && !host.cancel) {
          host.cancel = true;
          current?.requestStop('cancel');
        }
      } catch (err) {
        if (err instanceof TokenRefusedError) {
          refuse(err);
          return;
        }
        throw err;
      }
    },
  });

  function refuse(err: TokenRefusedError): void {
    if (tokenRefused) return;
    tokenRefused = true;
    log.fatal({ reason: err.message }, "the bot refused this worker's token (revoked?): stopping");
    if (host) host.leaseGone = true;
    current?.requestStop('shutdown');
    stopPolling.abort();
  }

  /** Beats faster while a run is held, so cancel and revocation reach the trainer within seconds. */
  let fastBeat: NodeJS.Timeout | null = null;
  const beatFast = (on: boolean) => {
    if (fastBeat) clearInterval(fastBeat);
    fastBeat = null;
    if (on) {
      const every = Math.max(500, Math.min(2000, (config.LEASE_SECONDS * 1000) / 4));
      fastBeat = setInterval(() => void registry.beat(), every);
      fastBeat.unref();
    }
  };

  async function fetchInputs(grant: LeaseGrant, ids: string[]): Promise<{ fetched: number; cached: number; bytes: number }> {
    await blobs.init();
    let fetched = 0;
    let cached = 0;
    let bytes = 0;
    const queue = [...new Set(ids)];
    const work = async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        if (await blobs.has(id)) {
          cached++;
          const now = new Date();
          await utimes(blobs.path(id), now, now).catch(() => undefined);
          continue;
        }
        const tmp = blobs.tempPath('fetch');
        const size = await client.download(grant, id, tmp);
        bytes += size;
        // The download was hashed as it arrived and refused unless it matched `id`.
        const ref = await blobs.putFile(tmp, { move: true, verified: { id, size } });
        if (ref.id !== id) throw new Error(`a fetched file changed on disk (${id.slice(0, 12)}…)`);
        fetched++;
      }
    };
    await Promise.all(Array.from({ length: 4 }, work));
    return { fetched, cached, bytes };
  }

  /** Puts the uploaded epoch state where the run looks for it, when this machine lacks it. */
  async function restoreState(grant: LeaseGrant, runDir: string, outputName: string): Promise<void> {
    if (!grant.resume) return;
    const dir = join(runDir, 'output', `${outputName}-${pad6(grant.resume.epoch)}-state`);
    const tmp = `${dir}.${randomUUID().slice(0, 8)}.tmp`;
    const present = await stat(join(dir, 'train_state.json')).then(
      () => true,
      () => false,
    );
    if (present) return;
    await mkdir(tmp, { recursive: true });
    for (const f of grant.resume.files) {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(f.name)) throw new Error(`a state file has an unsafe name: ${JSON.stringify(f.name)}`);
      await copyFile(blobs.path(f.blob), join(tmp, f.name));
    }
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    log.info({ epoch: grant.resume.epoch, files: grant.resume.files.length }, 'resume state restored from the bot');
  }

  /** The bot's record of what was reported wins over what this machine remembers. */
  async function seedRunState(grant: LeaseGrant, runDir: string, runId: string): Promise<void> {
    const path = join(runDir, 'run-state.json');
    let local: { reportedEpochs?: number[]; attempts?: number; finished?: unknown; firstStartedAt?: number } = {};
    try {
      local = JSON.parse(await readFile(path, 'utf8')) as typeof local;
    } catch (err) {
      if (codeOf(err) !== 'ENOENT' && !(err instanceof SyntaxError)) throw err;
    }
    const state = {
      runId,
      firstStartedAt: grant.firstStartedAt ?? local.firstStartedAt ?? Date.now(),
      reportedEpochs: [...new Set([...grant.reportedEpochs])].sort((a, b) => a - b),
      finished: null,
      attempts: local.attempts ?? 0,
    };
    await mkdir(runDir, { recursive: true });
    await writeFile(`${path}.tmp`, `${JSON.stringify(state, null, 1)}\n`);
    await rename(`${path}.tmp`, path);
  }

  async function runLease(grant: LeaseGrant): Promise<void> {
    const checked = checkPayload(grant.payload);
    leaseId = grant.leaseId;
    if (!checked.ok) {
      log.error({ reason: checked.reason }, 'refusing a run');
      if (checked.runId !== null) await client.event(grant.leaseId, { kind: 'failed', runId: checked.runId, reason: checked.reason, logTail: [] });
      return;
    }
    const payload = checked.payload;
    const runLog = log.child({ runId: payload.runId });
    host = new RemoteRunHost(workerId, blobs, runsDir, client, grant.leaseId, runLog);
    const run = new TrainingRun({ ...deps, gpuMiB: () => registry.gpu?.memoryMiB ?? null }, host, payload);
    current = run;
    beatFast(true);
    await registry.setBusy(payload.runId);
    const started = Date.now();
    try {
      const inputs = [...Object.values(payload.images).map((i) => i.blob), ...(grant.resume?.files.map((f) => f.blob) ?? [])];
      await trimCache(cacheDir, maxCacheBytes, { blobs: new Set(inputs), runId: payload.runId }, runLog);
      const got = await fetchInputs(grant, inputs);
      runLog.info({ ...got, ms: Date.now() - started }, 'inputs ready');
      const runDir = join(runsDir, payload.runId);
      await seedRunState(grant, runDir, payload.runId);
      await restoreState(grant, runDir, payload.outputName);
      if (closing) run.requestStop('shutdown');
      await run.execute();
    } catch (err) {
      if (err instanceof HandedBack || host.leaseGone) {
        runLog.info('run left to the bot (handed back or lease gone)');
      } else if (err instanceof TokenRefusedError) {
        refuse(err);
      } else {
        await run.stopTrainer();
        const { reason, logTail } = describeRunError(err);
        try {
          await run.reportFailure(reason, logTail);
        } catch (reportErr) {
          runLog.error({ err: reportErr }, 'could not report the failure; the lease will lapse and the run go back to the queue');
        }
      }
    } finally {
      current = null;
      host = null;
      leaseId = null;
      beatFast(false);
      await registry.setBusy(null);
      await trimCache(cacheDir, maxCacheBytes, { blobs: new Set(), runId: null }, runLog).catch((err: unknown) => runLog.warn({ err }, 'cache trim failed'));
    }
  }

  /** An image generation: the LoRA files come from the bot, the images go back to it. */
  async function runGenerationLease(grant: LeaseGrant): Promise<void> {
    const payload = grant.generation as GeneratePayload;
    leaseId = grant.leaseId;
    const genLog = log.child({ requestId: typeof payload?.requestId === 'string' ? payload.requestId.slice(0, 32) : null });
    beatFast(true);
    const started = Date.now();
    try {
      const problem = generateProblem(payload);
      if (problem) throw new GenerationFailure(problem);
      genLog.info({ runId: payload.runId, images: payload.cells.length }, 'generating');
      const loras = [...new Set(payload.cells.map((c) => c.lora))];
      await trimCache(cacheDir, maxCacheBytes, { blobs: new Set(loras), runId: null }, genLog);
      await fetchInputs(grant, loras);
      const cells = await runGeneration({ config, logger: genLog, env: deps.env, blobs, workerId }, payload, join(cacheDir, 'generate', payload.requestId));
      const uploaded = [];
      for (const c of cells) {
        const { blob, bytes } = await client.upload(grant.leaseId, blobs.path(c.blob), c.blob);
        uploaded.push({ epoch: c.epoch, weight: c.weight, blob, bytes });
      }
      await client.generated(grant.leaseId, { ok: true, cells: uploaded, seconds: Math.round((Date.now() - started) / 100) / 10 });
      genLog.info({ seconds: (Date.now() - started) / 1000 }, 'generation done');
    } catch (err) {
      if (err instanceof TokenRefusedError) refuse(err);
      else if (err instanceof LeaseGoneError) genLog.warn("the generation's lease is gone");
      else {
        const reason = err instanceof GenerationFailure ? err.reason : `the worker failed: ${err instanceof Error ? err.message : String(err)}`;
        genLog.warn({ reason }, 'generation failed');
        await client
          .generated(grant.leaseId, { ok: false, reason })
          .catch((reportErr: unknown) => genLog.error({ err: reportErr }, 'could not report the failed generation'));
      }
    } finally {
      leaseId = null;
      beatFast(false);
    }
  }

  const done = (async (): Promise<'closed' | 'token-refused'> => {
    await mkdir(cacheDir, { recursive: true });
    await registry.start();
    log.info({ bot: new URL(config.LORA_GUILD_URL!).origin, workerId }, 'remote worker ready: waiting for runs');
    let delay = 1000;
    while (!closing && !tokenRefused) {
      try {
        const grant = await client.poll(20, stopPolling.signal);
        delay = 1000;
        if (grant && !closing) await (grant.generation !== undefined ? runGenerationLease(grant) : runLease(grant));
        else if (grant) await client.release(grant.leaseId);
      } catch (err) {
        if (err instanceof TokenRefusedError) refuse(err);
        else if (!closing && !tokenRefused) {
          log.warn({ err }, 'polling for work failed; trying again');
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(30_000, delay * 2);
        }
      }
    }
    await registry.close();
    await client.close();
    return tokenRefused ? 'token-refused' : 'closed';
  })();

  return {
    done,
    client,
    async close() {
      closing = true;
      stopPolling.abort();
      current?.requestStop('shutdown');
      await done;
    },
  };
}
