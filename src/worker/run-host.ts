/**
 * What a training run needs from where it runs. A run is the same code in both places; the host
 * differs:
 * - in-cluster (`LocalRunHost`): the worker shares the bot's Redis and `DATA_DIR`; events go on
 *   the `run-events` queue, artifacts are already in the shared blob store, cancel is a Redis flag,
 *   and the BullMQ job lock says who owns the run;
 * - remote (`RemoteRunHost`, remote-worker.ts): everything goes over the bot's HTTPS API under a
 *   lease.
 */
import { WaitingError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BlobRef, BlobStore } from '../core/blob-store.ts';
import { jobLockKey } from '../queues/bullmq-internals.ts';
import { sharedKeys, type ArtifactRef, type RunEvent, type TrainRunPayload } from '../queues/contract.ts';
import type { RunEventQueue } from '../queues/run-events.ts';

export type EpochEvent = Extract<RunEvent, { kind: 'epoch' }>;

export interface RunProgress {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number | null;
}

export interface RunHost {
  /** The worker's id, as `started` names it. */
  readonly workerId: string;
  /** Local blobs: staging links masters from here; artifacts are put here first. */
  readonly blobs: BlobStore;
  /** The folder holding one folder per run. */
  readonly runsDir: string;
  /** Sends an event; idempotent by `runEventId`. */
  send(event: RunEvent): Promise<void>;
  /**
   * Epoch `e` is saved: sends its event. `stateDir` is the state a resume would start from (null
   * when the trainer saved none); a remote host hands it to the bot first, so that whichever
   * worker picks the run up next resumes from it.
   */
  epochSaved(event: EpochEvent, stateDir: string | null): Promise<void>;
  /** Makes a local blob an artifact the bot has and keeps (never swept as an orphan). */
  artifact(ref: BlobRef): Promise<ArtifactRef>;
  cancelRequested(runId: string): Promise<boolean>;
  progress(progress: RunProgress): Promise<void>;
  /** Gives the run back to the queue, to resume from its last saved epoch; never returns. */
  handBack(): Promise<never>;
  /** Whether this worker still holds the run (else another worker has taken it over). */
  stillOwned(): Promise<boolean>;
}

/** A worker beside the bot: shared Redis, shared blob store, the run's BullMQ job. */
export class LocalRunHost implements RunHost {
  constructor(
    readonly workerId: string,
    readonly blobs: BlobStore,
    readonly runsDir: string,
    private readonly connection: Redis,
    private readonly redisPrefix: string,
    private readonly events: RunEventQueue,
    private readonly job: Job<TrainRunPayload>,
    private readonly token: string | undefined,
  ) {}

  send(event: RunEvent): Promise<void> {
    return this.events.send(event);
  }

  epochSaved(event: EpochEvent): Promise<void> {
    // The state stays in the run folder on the shared disk, where the next worker finds it.
    return this.events.send(event);
  }

  /**
   * Marks a blob as a run artifact before any event names it, so the bot's orphan sweep keeps it
   * even when the bot only gets to the event hours later.
   */
  async artifact(ref: BlobRef): Promise<ArtifactRef> {
    await this.connection.sadd(sharedKeys.artifacts(this.redisPrefix), ref.id);
    return { blob: ref.id, bytes: ref.size, sha256: ref.id };
  }

  async cancelRequested(runId: string): Promise<boolean> {
    return (await this.connection.get(sharedKeys.runCancel(this.redisPrefix, runId))) !== null;
  }

  async progress(progress: RunProgress): Promise<void> {
    await this.job.updateProgress({ ...progress });
  }

  async handBack(): Promise<never> {
    if (this.token !== undefined) await this.job.moveToWait(this.token);
    throw new WaitingError();
  }

  async stillOwned(): Promise<boolean> {
    if (this.token === undefined || this.job.id === undefined) return true;
    return (await this.connection.get(jobLockKey(this.job))) === this.token;
  }
}
