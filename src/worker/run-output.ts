/**
 * What sd-scripts writes into a run's `output/` folder, by name (reference/kohya-contract.md):
 * `<name>-000001.safetensors` per epoch and `<name>.safetensors` for the last, `<name>-000001-state`
 * folders with `--save_state`, and `sample/<name>_e000001_00_<stamp>.png` per sample prompt.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { listDir } from '../core/fs-errors.ts';
import type { Logger } from '../core/logger.ts';
import { isResumableState } from './run-folder.ts';

const pad6 = (n: number) => String(n).padStart(6, '0');
const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export class RunOutput {
  constructor(
    readonly dir: string,
    private readonly name: string,
    private readonly epochs: number,
  ) {}

  /** Epoch `e`'s checkpoint: the last epoch's is the final file. */
  epochFile(e: number): string {
    return e === this.epochs ? this.finalFile : join(this.dir, `${this.name}-${pad6(e)}.safetensors`);
  }

  get finalFile(): string {
    return join(this.dir, `${this.name}.safetensors`);
  }

  /** The training state saved after epoch `e`, what `--resume` takes. */
  stateDir(e: number): string {
    return join(this.dir, `${this.name}-${pad6(e)}-state`);
  }

  /** The newest sample per prompt index of epoch `e` (a re-run epoch leaves older ones behind). */
  async samplesOf(e: number): Promise<Map<number, string>> {
    const dir = join(this.dir, 'sample');
    const re = new RegExp(`^${escapeRe(this.name)}_e${pad6(e)}_(\\d{2})_(.+)\\.png$`);
    const newest = new Map<number, string>();
    for (const name of (await listDir(dir)).sort()) {
      const m = re.exec(name);
      if (m?.[1]) newest.set(Number(m[1]), join(dir, name));
    }
    return newest;
  }

  /** The highest epoch before the last with a complete state folder (kohya's train_state.json and accelerate's RNG states). */
  async resumableEpoch(): Promise<number | null> {
    const re = new RegExp(`^${escapeRe(this.name)}-(\\d{6})-state$`);
    let best: number | null = null;
    for (const name of await listDir(this.dir)) {
      const m = re.exec(name);
      if (!m?.[1]) continue;
      const e = Number(m[1]);
      if (e < 1 || e >= this.epochs || (best !== null && e <= best)) continue;
      if (await isResumableState(join(this.dir, name))) best = e;
    }
    return best;
  }

  /** Removes what a crashed attempt left of epochs after `keep` (they are trained again). */
  async clearAfter(keep: number, log: Logger): Promise<void> {
    const name = escapeRe(this.name);
    const checkpoint = new RegExp(`^${name}-(\\d{6})\\.safetensors$`);
    const state = new RegExp(`^${name}-(\\d{6})-state$`);
    const sample = new RegExp(`^${name}_e(\\d{6})_\\d{2}_.+\\.png$`);
    let removed = 0;
    for (const entry of await listDir(this.dir)) {
      const m = checkpoint.exec(entry) ?? state.exec(entry);
      const stale = (m?.[1] !== undefined && Number(m[1]) > keep) || entry === `${this.name}.safetensors` || entry === `${this.name}-state`;
      if (stale) {
        await rm(join(this.dir, entry), { recursive: true, force: true });
        removed++;
      }
    }
    const sampleDir = join(this.dir, 'sample');
    for (const entry of await listDir(sampleDir)) {
      const m = sample.exec(entry);
      if (m?.[1] !== undefined && Number(m[1]) > keep) {
        await rm(join(sampleDir, entry), { force: true });
        removed++;
      }
    }
    if (removed > 0) log.info({ keep, removed }, 'removed files of unfinished epochs');
  }
}
