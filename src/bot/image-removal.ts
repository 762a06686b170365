import type { BlobStore } from '../core/blob-store.ts';
import type { ImageSelection } from '../core/dataset-rules.ts';
import { UserError } from '../core/errors.ts';
import type { Mutex } from '../core/limiter.ts';
import type { Logger } from '../core/logger.ts';
import type { CaptionStore } from '../store/caption-store.ts';
import type { Dataset, DatasetStore } from '../store/dataset-store.ts';
import type { RunStore } from '../store/run-store.ts';
import { listNos } from './reports.ts';

export interface ImageRemovalDeps {
  store: DatasetStore;
  captions: CaptionStore;
  runs: RunStore;
  blobs: BlobStore;
  /** The lock intake holds around blob writes with their records. */
  blobLock: Mutex;
  logger: Logger;
}

/** Who asks for a removal: anyone may remove their own images; moderators anyone's. */
export interface Remover {
  userId: string;
  moderator: boolean;
}

/** Takes images out of a dataset: records, captions, and the files nothing else refers to. */
export class ImageRemovalService {
  constructor(private readonly deps: ImageRemovalDeps) {}

  /** Removes the images a member selected, all or none: refused when one is missing or not theirs to remove. */
  async removeSelected(dataset: Dataset, selection: ImageSelection, by: Remover): Promise<number[]> {
    const nos = await this.allowed(dataset, selection, by);
    const removed = await this.remove(dataset.id, nos);
    this.deps.logger.info({ datasetId: dataset.id, userId: by.userId, removed: removed.length }, 'images removed');
    return removed;
  }

  /**
   * Removes every image of a dataset whose record is already gone (a moderator's removal), with
   * its captions and what is left of it. Returns how many images were removed.
   */
  async removeDataset(datasetId: string): Promise<number> {
    const { store, captions } = this.deps;
    const removed = await this.remove(datasetId, await store.imageNumbers(datasetId));
    await captions.deleteDataset(datasetId);
    await store.deleteLeftovers(datasetId);
    return removed.length;
  }

  /**
   * Deletes the files of blobs a run no longer pins, when no image refers to them and no other run
   * pins them (images removed while the run trained: their files go when it ends).
   */
  async deleteUnpinned(ids: readonly string[]): Promise<number> {
    if (ids.length === 0) return 0;
    const { store, runs, blobs, blobLock } = this.deps;
    return blobLock.run(async () => {
      let deleted = 0;
      for (const id of ids) {
        if ((await store.blobRefCount(id)) > 0 || (await runs.isPinned(id))) continue;
        await blobs.delete(id);
        deleted++;
      }
      if (deleted > 0) this.deps.logger.info({ deleted }, 'files of removed images deleted after the run that used them ended');
      return deleted;
    });
  }

  /** Removes records and deletes the files nothing else refers to. */
  private async remove(datasetId: string, nos: number[]): Promise<number[]> {
    const { store, captions, runs, blobs, blobLock } = this.deps;
    return blobLock.run(async () => {
      const { removed, freedBlobs } = await store.removeImages(datasetId, nos);
      const gone = removed.map((r) => r.no);
      await captions.deleteForImages(datasetId, gone);
      // Files a queued or running run still needs stay until it ends; the orphan sweep takes them then.
      const deletable = await Promise.all(freedBlobs.map(async (id) => ((await runs.isPinned(id)) ? null : id)));
      await Promise.all(deletable.filter((id): id is string => id !== null).map((id) => blobs.delete(id)));
      return gone;
    });
  }

  private async allowed(dataset: Dataset, selection: ImageSelection, by: Remover): Promise<number[]> {
    const { store } = this.deps;
    if (selection.mine) {
      const mine = (await store.listImages(dataset.id)).filter((i) => i.contributorId === by.userId).map((i) => i.no);
      if (mine.length === 0) throw new UserError(`You have no images in **${dataset.name}**.`);
      return mine;
    }
    const found = await store.getImages(dataset.id, selection.nos);
    const missing = selection.nos.filter((n) => !found.some((f) => f.no === n));
    if (missing.length > 0) throw new UserError(`**${dataset.name}** has no image ${listNos(missing)}. Nothing was removed.`);
    const others = found.filter((i) => i.contributorId !== by.userId);
    if (others.length > 0 && !by.moderator) {
      throw new UserError(
        `You can remove only your own images: ${listNos(others.map((o) => o.no))} ${others.length === 1 ? 'was' : 'were'} added by someone else. ` +
          'The dataset owner or a member with Manage Messages can remove them. Nothing was removed.',
      );
    }
    return found.map((i) => i.no);
  }
}
