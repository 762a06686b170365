/**
 * A training worker's heartbeat: every WORKER_HEARTBEAT_SECONDS it writes what it is (id, host,
 * GPU, the base checkpoints it has, the run it is busy with) to `sharedKeys.worker`, expiring after
 * three missed beats; the bot lists the live ones with `listWorkers` (store/worker-heartbeats.ts: /train status,
 * base model choices). The key is removed on a clean shutdown.
 */
import { execFile } from 'node:child_process';
import { readdir, stat, statfs } from 'node:fs/promises';
import { hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger.ts';
import { detectModelFile, isBaseFamily, type ModelDetection } from '../core/model-family.ts';
import { readSafetensorsHeader } from '../core/safetensors.ts';
import { sharedKeys, type WorkerInfo } from '../queues/contract.ts';

type ModelInfo = WorkerInfo['models'][number];
type CompanionInfo = NonNullable<WorkerInfo['companions']>[number];
type GpuInfo = WorkerInfo['gpu'];

const MODEL_FILE = /\.(safetensors|ckpt)$/i;
const MiB = 1024 * 1024;

/** The family a checkpoint's file name announces, if any (`…XL…` → sdxl, `sd15`/`v1-5` → sd15). */
export function baseFromFileName(file: string): ModelInfo['base'] {
  const stem = file.replace(MODEL_FILE, '');
  // "sdxl", "sd_xl_base", "pony-xl", "juggernautXL", "ponyDiffusionV6XL"; not "pixlart".
  if (/sd[-_ ]?xl/i.test(stem) || /(?:^|[^A-Za-z])[xX][lL](?![a-z])/.test(stem) || /XL/.test(stem)) return 'sdxl';
  if (/sd[-_ ]?1[-_.]?5|v1[-_.]5|(?:^|[^0-9.])1\.5(?:[^0-9]|$)/i.test(stem)) return 'sd15';
  return null;
}

/** Reads `nvidia-smi` once; null without an NVIDIA GPU (or driver). The first GPU is the one used. */
export function probeGpu(timeoutMs = 5_000): Promise<GpuInfo> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader,nounits'], { timeout: timeoutMs, windowsHide: true }, (err, stdout) => {
      if (err) {
        resolve(null);
        return;
      }
      const line = stdout.split('\n').find((l) => l.trim().length > 0);
      const m = line ? /^(.*?),\s*(\d+)\s*$/.exec(line.trim()) : null;
      resolve(m?.[1] && m[2] ? { name: m[1].trim(), memoryMiB: Number(m[2]) } : null);
    });
  });
}

export interface ModelScan {
  /** Base checkpoints, with their family when it can be told. */
  models: ModelInfo[];
  /** Text encoders and autoencoders (what FLUX.1 and Chroma need besides the checkpoint). */
  companions: CompanionInfo[];
}

/** `null`: not a readable safetensors file (a `.ckpt`, or broken), so the header can't tell. */
type Detected = ModelDetection | null;

/**
 * The model files in `dir` (plain `.safetensors`/`.ckpt` files, not in sub-folders), sorted by
 * name. A safetensors file's header decides what it is; the file name is only consulted when the
 * header can't be read (`.ckpt`). Files the header shows to be something else (a VAE, a LoRA,
 * SD 2.x) are left out. `cache` keeps a file's detection while its size and time are unchanged.
 */
export async function scanModelFiles(dir: string, cache = new Map<string, Detected>()): Promise<ModelScan> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return { models: [], companions: [] };
  }
  const scan: ModelScan = { models: [], companions: [] };
  for (const file of names.filter((n) => MODEL_FILE.test(n) && !n.startsWith('.')).sort()) {
    let info;
    try {
      info = await stat(join(dir, file));
    } catch {
      continue;
    }
    if (!info.isFile()) continue;
    const key = `${file}\0${info.size}\0${info.mtimeMs}`;
    let detected: Detected;
    if (cache.has(key)) {
      detected = cache.get(key) ?? null;
    } else {
      detected = null;
      if (/\.safetensors$/i.test(file)) {
        try {
          const header = await readSafetensorsHeader(join(dir, file));
          detected = detectModelFile(header.tensors, header.metadata);
        } catch {
          detected = null;
        }
      }
      cache.set(key, detected);
    }
    if (detected === null) {
      scan.models.push({ file, base: baseFromFileName(file) });
    } else if (isBaseFamily(detected.kind)) {
      scan.models.push({ file, base: detected.kind, ...(detected.variant ? { variant: detected.variant } : {}) });
    } else if (detected.kind !== 'unknown') {
      scan.companions.push({ file, kind: detected.kind, ...(detected.fp8 ? { fp8: true } : {}) });
    }
  }
  return scan;
}

export interface WorkerRegistryOptions {
  /** In-cluster: the heartbeat is a Redis key the bot reads. */
  redis?: Redis;
  /** The deployment's Redis prefix (REDIS_PREFIX). */
  prefix?: string;
  /** Remote: the heartbeat is sent to the bot instead (over HTTPS). */
  publish?: (info: WorkerInfo) => Promise<void>;
  workerId: string;
  modelsDir: string;
  intervalSeconds: number;
  logger: Logger;
  /** Finds the GPU (default: nvidia-smi). */
  gpu?: () => Promise<GpuInfo>;
  /** The folder whose free disk space the heartbeat reports (DATA_DIR, or a lent GPU's cache). */
  diskDir?: string;
  /** Which optimizers the trainer can import (optimizers.ts); without it the heartbeat says nothing of them. */
  optimizers?: () => Promise<{ available: string[]; missing: string[] }>;
}

/** System memory, and the free space of the disk holding `diskDir` (omitted when it cannot be read). */
export async function machineFacts(diskDir: string | undefined): Promise<Pick<WorkerInfo, 'ramMiB' | 'diskFreeMiB'>> {
  const facts: Pick<WorkerInfo, 'ramMiB' | 'diskFreeMiB'> = { ramMiB: Math.round(totalmem() / MiB) };
  if (diskDir !== undefined) {
    try {
      const fs = await statfs(diskDir);
      facts.diskFreeMiB = Math.floor((fs.bavail * fs.bsize) / MiB);
    } catch {
      // Not there yet, or not readable: the heartbeat goes without it.
    }
  }
  return facts;
}

export class WorkerRegistry {
  readonly key: string;
  readonly startedAt = Date.now();
  #busyWith: string | null = null;
  #gpu: GpuInfo = null;
  #optimizers: string[] | null = null;
  #timer: NodeJS.Timeout | null = null;
  #beating: Promise<void> = Promise.resolve();
  #closed = false;
  readonly #modelCache = new Map<string, Detected>();
  #firstBeatDone: () => void = () => undefined;
  readonly #firstBeat = new Promise<void>((resolve) => (this.#firstBeatDone = resolve));

  constructor(private readonly opts: WorkerRegistryOptions) {
    this.key = sharedKeys.worker(opts.prefix ?? '', opts.workerId);
  }

  /** The GPU found at start (null: none, or not started yet). */
  get gpu(): GpuInfo {
    return this.#gpu;
  }

  /** Probes the GPU and the optimizers, beats once, then every interval. */
  async start(): Promise<void> {
    try {
      const optimizers = this.#probeOptimizers();
      this.#gpu = await (this.opts.gpu ?? probeGpu)();
      this.opts.logger.info({ workerId: this.opts.workerId, gpu: this.#gpu }, this.#gpu ? 'GPU found' : 'no NVIDIA GPU found (nvidia-smi)');
      await optimizers;
      await this.beat();
    } finally {
      this.#firstBeatDone();
    }
    this.#timer = setInterval(() => void this.beat(), this.opts.intervalSeconds * 1000);
    this.#timer.unref();
  }

  /** A failed check vouches for no optimizer: runs are refused with a reason rather than failing later. */
  async #probeOptimizers(): Promise<void> {
    if (!this.opts.optimizers) return;
    try {
      const { available, missing } = await this.opts.optimizers();
      this.#optimizers = available;
      if (missing.length > 0) this.opts.logger.warn({ available, missing }, 'the trainer cannot import some optimizers; they are not offered');
      else this.opts.logger.info({ available }, 'the trainer can import every optimizer');
    } catch (err) {
      this.#optimizers = [];
      this.opts.logger.error({ err }, 'could not check which optimizers the trainer can import; none is offered');
    }
  }

  /** Settles once the first heartbeat (GPU and optimizers checked) was tried: the worker is visible. */
  get firstBeat(): Promise<void> {
    return this.#firstBeat;
  }

  /** What the worker is doing; beats at once so the bot sees it without waiting. */
  async setBusy(runId: string | null): Promise<void> {
    this.#busyWith = runId;
    await this.beat();
  }

  async info(): Promise<WorkerInfo> {
    return {
      id: this.opts.workerId,
      host: hostname(),
      gpu: this.#gpu,
      ...(await scanModelFiles(this.opts.modelsDir, this.#modelCache)),
      ...(this.#optimizers !== null ? { optimizers: this.#optimizers } : {}),
      busyWith: this.#busyWith,
      startedAt: this.startedAt,
      at: Date.now(),
      ...(await machineFacts(this.opts.diskDir)),
    };
  }

  /** One heartbeat; failures are logged (the next beat tries again), never thrown. */
  beat(): Promise<void> {
    this.#beating = this.#beating.then(async () => {
      if (this.#closed) return;
      try {
        const info = await this.info();
        if (this.#closed) return;
        if (this.opts.publish) await this.opts.publish(info);
        else await this.opts.redis?.set(this.key, JSON.stringify(info), 'EX', Math.max(3, 3 * this.opts.intervalSeconds));
      } catch (err) {
        this.opts.logger.warn({ err }, 'worker heartbeat failed');
      }
    });
    return this.#beating;
  }

  /** Stops beating and removes the key. */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#closed = true;
    await this.#beating;
    await this.opts.redis?.del(this.key);
  }
}
