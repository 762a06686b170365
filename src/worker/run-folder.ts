/**
 * A run folder after its run ended. While a run can still resume (it runs, was handed back, or its
 * worker crashed) its folder is kept whole: the training states are what a resume starts from. Once
 * it ended (finished, failed or cancelled) and its artifacts are in the blob store, the folder is
 * cleared: its checkpoints are copies of blobs and its states can never be used again.
 *
 * Crash-safe at every step: `ended.json` is written first (atomically), then every other entry is
 * removed, `run-state.json` (the run's bookkeeping, which says how it finished) last of all never.
 * A worker that picks the run up again after a crash at any point finds the bookkeeping and the end
 * and reports the end again without training. `sweepEndedRuns` removes those two small files once
 * the run ended long ago.
 */
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { codeOf, listDir } from '../core/fs-errors.ts';
import { readSafetensorsHeader } from '../core/safetensors.ts';

export const ENDED_FILE = 'ended.json';
const KEEP = new Set(['run-state.json', ENDED_FILE]);

export type RunEnd = { outcome: 'finished' } | { outcome: 'cancelled' } | { outcome: 'failed'; reason: string; logTail: string[] };

export interface ClearOptions {
  /** Called before each entry is removed (tests stop here to play a crash). */
  beforeRemove?: (entry: string) => void;
}

/** Records how the run ended, then removes everything in `runDir` but the bookkeeping. */
export async function clearEndedRun(runDir: string, end: RunEnd, options: ClearOptions = {}): Promise<string[]> {
  const path = join(runDir, ENDED_FILE);
  await writeAtomic(path, `${JSON.stringify({ ...end, at: Date.now() })}\n`);
  const removed: string[] = [];
  for (const entry of (await listDir(runDir)).sort()) {
    if (KEEP.has(entry)) continue;
    options.beforeRemove?.(entry);
    await rm(join(runDir, entry), { recursive: true, force: true });
    removed.push(entry);
  }
  return removed;
}

/** How the run in `runDir` ended, null while it has not (or the record is unreadable). */
export async function readRunEnd(runDir: string): Promise<(RunEnd & { at: number }) | null> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(join(runDir, ENDED_FILE), 'utf8'));
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || err instanceof SyntaxError) return null;
    throw err;
  }
  if (typeof parsed !== 'object' || parsed === null) return null;
  const p = parsed as Record<string, unknown>;
  const at = typeof p.at === 'number' ? p.at : 0;
  if (p.outcome === 'finished' || p.outcome === 'cancelled') return { outcome: p.outcome, at };
  if (p.outcome === 'failed' && typeof p.reason === 'string') {
    const logTail = Array.isArray(p.logTail) ? p.logTail.filter((l): l is string => typeof l === 'string') : [];
    return { outcome: 'failed', reason: p.reason, logTail, at };
  }
  return null;
}

/** Removes the folders of runs in `runsDir` that ended more than `olderThanMs` ago; returns their names. */
export async function sweepEndedRuns(runsDir: string, olderThanMs: number, now = Date.now()): Promise<string[]> {
  const swept: string[] = [];
  for (const name of await listDir(runsDir)) {
    const end = await readRunEnd(join(runsDir, name)).catch(() => null);
    if (end === null || now - end.at < olderThanMs) continue;
    await rm(join(runsDir, name), { recursive: true, force: true });
    swept.push(name);
  }
  return swept;
}

/** A complete epoch state folder: kohya's train_state.json and accelerate's RNG states. */
export async function isResumableState(dir: string): Promise<boolean> {
  const files = await listDir(dir);
  return files.includes('train_state.json') && files.some((f) => /^random_states_\d+\.pkl$/.test(f));
}

/** A complete safetensors file (a half-written one fails the header/size check). */
export async function validCheckpoint(path: string): Promise<boolean> {
  try {
    await readSafetensorsHeader(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes `text` to `path` through a temporary file and a rename: readers see the old file or the new one. */
export async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  try {
    await writeFile(tmp, text, 'utf8');
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}
