import type { Redis } from 'ioredis';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobStore } from '../core/blob-store.ts';
import type { Mutex } from '../core/limiter.ts';
import { enrichLoraMetadata } from '../core/lora-metadata.ts';
import { sharedKeys, type ArtifactRef } from '../queues/contract.ts';
import type { DeliveredFile, ExpiringStore } from '../store/expiring-store.ts';
import type { Run, VoteStore } from '../store/run-store.ts';

export interface DeliveryDeps {
  redis: Redis;
  redisPrefix: string;
  votes: VoteStore;
  blobs: BlobStore;
  blobLock: Mutex;
  expiring: ExpiringStore;
}

/** The LoRA files members fetch: the trainer's output with our metadata added. */
export class DeliveryService {
  constructor(private readonly deps: DeliveryDeps) {}

  /**
   * The delivered file of a run's epoch: the header rewritten with credits, triggers, tag
   * frequencies and the current vote winner, the tensors untouched. Cached per epoch and vote
   * result, so a fetch after a new vote carries the new winner.
   */
  async file(run: Run, epoch: number, artifact: ArtifactRef): Promise<DeliveredFile> {
    const { votes, blobs, blobLock, expiring, redis, redisPrefix } = this.deps;
    const tally = await votes.tally(run.id);
    const winner = tally.best === null ? null : { epoch: tally.best, votes: tally.counts.get(tally.best) ?? 0 };
    // sd-scripts restarts its step count on a resume: the run's own count goes into the file.
    const steps = Math.min(run.summary.totalSteps, epoch * run.summary.stepsPerEpoch);
    const id = { runId: run.id, epoch, steps, winner };
    const cached = await expiring.deliveredFiles.get(id);
    if (cached && (await blobs.has(cached.blob))) return cached;
    const tmpDir = blobs.tempPath('enrich');
    await mkdir(tmpDir, { recursive: true });
    const dest = join(tmpDir, 'lora.safetensors');
    try {
      await enrichLoraMetadata(blobs.path(artifact.blob), dest, {
        triggerWords: run.credits.triggers,
        tagFrequency: run.credits.tagFrequency,
        contributors: run.credits.contributors,
        datasetHash: run.credits.datasetHash,
        recipe: { ...run.recipe },
        voteWinner: winner,
        title: `${run.datasetName} (LoRA Guild run ${run.id})`,
        runId: run.id,
        epoch: epoch === run.summary.epochs ? 'final' : epoch,
        resolution: run.credits.resolution,
        base: run.credits.base,
        steps,
      });
      const ref = await blobLock.run(async () => {
        const put = await blobs.putFile(dest, { move: true });
        await redis.sadd(sharedKeys.artifacts(redisPrefix), put.id);
        return put;
      });
      const file = { blob: ref.id, bytes: ref.size };
      await expiring.deliveredFiles.put(id, file);
      return file;
    } finally {
      await rm(tmpDir, { recursive: true, force: true });
    }
  }
}
