/**
 * Whether a run fits on the worker's disk before it starts: an estimate of what it writes
 * (a checkpoint per epoch, sd-scripts' training states, the staged dataset, the sample images)
 * against the free space (`fs.statfs`) of the runs folder, minus what the run folder already holds
 * (a resumed run has written part of it).
 */
import { lstat, readdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { formatBytes } from '../core/download.ts';
import type { BaseFamily } from '../core/model-family.ts';

const MiB = 1024 * 1024;

/**
 * Bytes of a saved LoRA per unit of rank (fp16/bf16 weights, text encoder included where trained),
 * from the sizes sd-scripts writes: SD 1.5 dim 32 ≈ 38 MB, SDXL dim 32 ≈ 218 MB, FLUX.1 dim 16 ≈ 160 MB.
 */
const BYTES_PER_RANK: Record<BaseFamily, number> = {
  sd15: 1.2 * MiB,
  sdxl: 6.8 * MiB,
  'sdxl-vpred': 6.8 * MiB,
  flux1: 10 * MiB,
  chroma: 10 * MiB,
};

/**
 * A training state holds the weights in fp32 (2× the checkpoint) and the optimizer's moments (two
 * fp32 tensors per weight for Adam-like optimizers: 4×); sd-scripts keeps two epoch states, writes a
 * third before removing the oldest, and saves the last state at the end.
 */
const STATE_FACTOR = 6;
const STATES_AT_ONCE = 4;
/** A sample PNG, generously. */
const SAMPLE_BYTES = 2 * MiB;

export interface RunSize {
  base: BaseFamily;
  epochs: number;
  networkDim: number;
  /** Conv rank (LoCon), null when off. */
  convDim: number | null;
  prompts: number;
  /** Bytes of the images to stage. */
  datasetBytes: number;
}

export interface DiskEstimate {
  checkpointBytes: number;
  checkpoints: number;
  stateBytes: number;
  states: number;
  datasetBytes: number;
  sampleBytes: number;
  total: number;
}

export function estimateRunDisk(run: RunSize): DiskEstimate {
  const checkpointBytes = Math.ceil(BYTES_PER_RANK[run.base] * (run.networkDim + (run.convDim ?? 0)));
  const stateBytes = checkpointBytes * STATE_FACTOR;
  const checkpoints = run.epochs;
  const states = Math.min(STATES_AT_ONCE, run.epochs + 1);
  const sampleBytes = run.epochs * run.prompts * SAMPLE_BYTES;
  const total = checkpointBytes * checkpoints + stateBytes * states + run.datasetBytes + sampleBytes;
  return { checkpointBytes, checkpoints, stateBytes, states, datasetBytes: run.datasetBytes, sampleBytes, total };
}

/** Bytes under `path` (files only, links not followed); 0 when it is not there. */
export async function bytesUnder(path: string): Promise<number> {
  let info;
  try {
    info = await lstat(path);
  } catch {
    return 0;
  }
  if (!info.isDirectory()) return info.isFile() ? info.size : 0;
  let total = 0;
  let entries: string[];
  try {
    entries = await readdir(path);
  } catch {
    return 0;
  }
  for (const entry of entries) total += await bytesUnder(join(path, entry));
  return total;
}

/** Free bytes for an unprivileged writer on the filesystem holding `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/**
 * Why the run does not fit (`free` bytes, `already` written by an earlier attempt), or null when
 * it does. Short and plain: it becomes the run's failure reason.
 */
export function diskShortfall(estimate: DiskEstimate, free: number, already = 0): string | null {
  const needed = Math.max(0, estimate.total - already);
  if (needed <= free) return null;
  const parts = [
    `${estimate.checkpoints} checkpoint${estimate.checkpoints === 1 ? '' : 's'} of ${formatBytes(estimate.checkpointBytes)}`,
    `training states ${formatBytes(estimate.stateBytes * estimate.states)}`,
    `dataset ${formatBytes(estimate.datasetBytes)}`,
    `samples ${formatBytes(estimate.sampleBytes)}`,
  ];
  const written = already > 0 ? `, ${formatBytes(already)} of it already written` : '';
  return `the worker does not have enough free disk space for this run: it needs about ${formatBytes(needed)} more (${parts.join(', ')}${written}) and ${formatBytes(free)} is free`;
}
