import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { AttachmentBuilder, type Client, type MessageCreateOptions, type SendableChannels } from 'discord.js';
import type { BlobStore } from '../core/blob-store.ts';
import { formatBytes } from '../core/download.ts';
import { comparisonSheets } from '../core/image-sheets.ts';
import type { Logger } from '../core/logger.ts';
import type { Rating } from '../core/rating.ts';
import { licenceNoteOf } from '../core/lora-metadata.ts';
import { bullPrefix, QueueName, runEventId, type RunEvent } from '../queues/contract.ts';
import type { GuildSettingsStore, Run, RunStore, VoteStore } from '../store/run-store.ts';
import { isPermanentDiscordError, isUneditableMessageError } from './discord-errors.ts';
import { duration, truncate } from './reports.ts';
import { summaryContent } from './tally.ts';
import { voteButton, voteSelect } from './votes.ts';

/** Discord refuses many edits of a message older than an hour: start a new status message before that. */
const STATUS_MESSAGE_MAX_AGE_MS = 50 * 60_000;
/** Tries in place (about a minute of backoff) before the queue takes over the retrying. */
const INLINE_ATTEMPTS = 7;

export interface RunReporterDeps {
  client: Client;
  runs: RunStore;
  votes: VoteStore;
  blobs: BlobStore;
  logger: Logger;
  /** Least time between two edits of a run's status message. */
  statusEditIntervalMs: number;
  /** Who allows mentions; without it only the starter is mentioned. */
  settings?: GuildSettingsStore;
  /** How run messages name a worker ("<@member>'s RTX 4090"); default its id. */
  workerLabel?: (workerId: string) => Promise<string>;
  /** How a sample image may be posted in the run's channel (its rating against the channel's policy); default shown. */
  posting?: (run: Run, image: Buffer) => Promise<SamplePosting>;
  /** Told which input files no run pins any more once a run ended (removed images' files go then). */
  onBlobsUnpinned?: (ids: string[]) => Promise<unknown>;
  /**
   * Asked when a run first starts: why it may not train now (its dataset was reported or flagged
   * while it waited), or null. A reason stops it there, with `stop`, and is said when it ends.
   */
  holdOnStart?: (run: Run) => Promise<string | null>;
  stop?: (run: Run) => Promise<unknown>;
}

export interface SamplePosting {
  how: 'show' | 'spoiler' | 'withhold';
  rating: Rating | null;
  /** Why it is withheld, when not for its rating (a moderator removed the run's dataset). */
  why?: string;
}

/** The grid as an attachment, spoilered, or left out with a line saying why (votes by number still work). */
async function sampleAttachment(deps: RunReporterDeps, run: Run, image: Buffer, name: string): Promise<{ file: AttachmentBuilder | null; note: string }> {
  const posting = (await deps.posting?.(run, image)) ?? { how: 'show', rating: null };
  if (posting.how === 'withhold') {
    return {
      file: null,
      note: posting.why
        ? `\n🛡️ Samples not shown: ${posting.why}`
        : `\n🙈 Samples not shown here: rated ${posting.rating ?? 'unknown'}, more than this channel shows. You can still vote by epoch number.`,
    };
  }
  const file = new AttachmentBuilder(image, { name });
  if (posting.how === 'spoiler') file.setSpoiler(true);
  return { file, note: posting.how === 'spoiler' ? `\nSamples behind a spoiler: rated ${posting.rating ?? 'sensitive'}.` : '' };
}

export function statusText(run: Run): string {
  const p = run.progress;
  if (!p) return `⏳ Run \`${run.id}\` of **${run.datasetName}** is starting on ${run.workerLabel ?? `\`${run.workerId ?? '?'}\``}…`;
  const pct = Math.floor((100 * p.step) / Math.max(1, p.totalSteps));
  const filled = Math.round(pct / 5);
  return (
    `🏋️ Run \`${run.id}\` of **${run.datasetName}**${run.workerLabel ? ` on ${run.workerLabel}` : ''} · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.totalSteps}\n` +
    `\`${'█'.repeat(filled)}${'░'.repeat(20 - filled)}\` ${pct}%` +
    (p.loss !== null ? ` · loss ${Number.isFinite(p.loss) ? p.loss.toFixed(4) : 'nan'}` : '') +
    (p.etaSeconds !== null ? ` · about ${duration(p.etaSeconds)} left` : '')
  );
}

/**
 * Consumes what training workers report and shows it in the run's channel: one status message
 * (edited at most once per interval), one message per epoch with its sample grid, and the end.
 * Nothing is lost while the bot or Discord is down (the queue keeps it), and each epoch is posted
 * once: the event's id marks it done after the post, and the message nonce covers a crash in between.
 */
export function startRunReporter(deps: RunReporterDeps, connection: import('ioredis').Redis, redisPrefix: string): Worker {
  const log = deps.logger.child({ queue: QueueName.RunEvents });
  const worker = new Worker<RunEvent>(
    QueueName.RunEvents,
    async (job: Job<RunEvent>) => {
      // Transient failures are retried here, in place, so that a run's messages keep their order
      // (a job retried later by the queue would be overtaken by the next events).
      for (let attempt = 1; ; attempt++) {
        try {
          await handle(deps, job.data);
          return;
        } catch (err) {
          if (isPermanentDiscordError(err)) {
            throw new UnrecoverableError(`Discord refused a run message (${err.code}): ${err.message}`);
          }
          if (err instanceof UnrecoverableError || attempt >= INLINE_ATTEMPTS) throw err;
          log.warn({ err, jobId: job.id, attempt }, 'showing a run event failed; retrying');
          await new Promise((r) => setTimeout(r, Math.min(30_000, 500 * 2 ** attempt)));
        }
      }
    },
    // One at a time keeps each run's messages in order.
    { connection, prefix: bullPrefix(redisPrefix), concurrency: 1 },
  );
  worker.on('failed', (job, err) => log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'showing a run event failed'));
  worker.on('error', (err) => log.error({ err }, 'run reporter error'));
  return worker;
}

async function channelOf(deps: RunReporterDeps, run: Run): Promise<SendableChannels> {
  const channel = await deps.client.channels.fetch(run.channelId);
  if (!channel?.isSendable()) throw new UnrecoverableError(`channel ${run.channelId} of run ${run.id} is not sendable`);
  return channel;
}

function nonceFor(eventId: string): string {
  // Discord nonces are at most 25 characters; event ids are short enough once hashed-ish.
  let h = 0;
  for (const ch of eventId) h = (Math.imul(h, 31) + ch.charCodeAt(0)) | 0;
  return `${eventId.slice(0, 14)}${(h >>> 0).toString(36)}`.slice(0, 25);
}

async function send(deps: RunReporterDeps, run: Run, eventId: string, payload: Omit<MessageCreateOptions, 'nonce' | 'enforceNonce'>) {
  const channel = await channelOf(deps, run);
  return channel.send({ ...payload, nonce: nonceFor(eventId), enforceNonce: true });
}

async function handle(deps: RunReporterDeps, event: RunEvent): Promise<void> {
  const { runs } = deps;
  const eventId = runEventId(event);
  const run = await runs.get(event.runId);
  if (!run) {
    deps.logger.warn({ runId: event.runId, kind: event.kind }, 'event for an unknown run dropped');
    return;
  }
  switch (event.kind) {
    case 'started': {
      const label = await workerLabelOf(deps, event.workerId);
      const updated = await runs.update(run.id, (r) => ({
        ...r,
        status: r.status === 'cancelled' ? r.status : 'running',
        workerId: event.workerId,
        workerLabel: label,
        startedAt: r.startedAt ?? Date.now(),
        progress: r.progress ?? {
          step: 0,
          totalSteps: event.totalSteps,
          epoch: event.resumedFromEpoch ?? 0,
          epochs: event.epochs,
          loss: null,
          etaSeconds: null,
          at: Date.now(),
        },
      }));
      if (await runs.eventDone(eventId)) return;
      // What happened to its dataset while it waited counts as at Start: it may not train now.
      const held = run.startedAt === null && run.status === 'queued' ? await deps.holdOnStart?.(updated!) : null;
      if (held && deps.stop) {
        await runs.update(run.id, (r) => ({ ...r, stoppedBecause: held }));
        await deps.stop(updated!);
        deps.logger.info({ runId: run.id }, 'run stopped as it started: its dataset waits for a moderator');
        await runs.markEventDone(eventId);
        return;
      }
      const resumed = event.resumedFromEpoch !== null ? ` (resumed after epoch ${event.resumedFromEpoch})` : '';
      await send(deps, updated!, eventId, {
        content: `🚀 Run \`${run.id}\` of **${run.datasetName}** started on ${label}${resumed}: ${event.totalSteps} steps over ${event.epochs} epochs.`,
      });
      // A resumed run keeps its status message (a second one would leave the first stale).
      if (updated!.statusMessageId) {
        await refreshStatus(deps, updated!, `${eventId}.status`);
      } else {
        const status = await send(deps, updated!, `${eventId}.status`, { content: statusText(updated!) });
        await runs.update(run.id, (r) => ({ ...r, statusMessageId: status.id, statusEditedAt: Date.now() }));
      }
      await runs.markEventDone(eventId);
      return;
    }
    case 'progress': {
      if (run.progress && run.progress.step > event.step) return; // stale
      // A late report after the end would bring back the status message the summary replaced.
      if (run.status === 'finished' || run.status === 'failed' || run.status === 'cancelled') return;
      const updated = await runs.update(run.id, (r) => ({
        ...r,
        status: r.status === 'queued' ? 'running' : r.status,
        progress: {
          step: event.step,
          totalSteps: event.totalSteps,
          epoch: event.epoch,
          epochs: event.epochs,
          loss: event.loss,
          etaSeconds: event.etaSeconds,
          at: event.at,
        },
      }));
      if (!updated || Date.now() - (updated.statusEditedAt ?? 0) < deps.statusEditIntervalMs) return;
      await refreshStatus(deps, updated, eventId);
      return;
    }
    case 'epoch': {
      const updated = await runs.update(run.id, (r) => ({
        ...r,
        epochs: {
          ...r.epochs,
          [String(event.epoch)]: { grid: event.grid, checkpoint: event.checkpoint, messageId: r.epochs[String(event.epoch)]?.messageId ?? null },
        },
      }));
      if (await runs.eventDone(eventId)) return;
      const files: AttachmentBuilder[] = [];
      let note = '';
      if (event.grid) {
        const grid = await sampleAttachment(deps, run, await deps.blobs.read(event.grid.blob), `${run.outputName}-epoch${event.epoch}.jpg`);
        if (grid.file) files.push(grid.file);
        note = grid.note;
      }
      const size = event.checkpoint ? ` · checkpoint ${formatBytes(event.checkpoint.bytes)}` : '';
      const message = await send(deps, updated!, eventId, {
        content: `🖼️ **Epoch ${event.epoch}/${event.epochs}** of run \`${run.id}\` (${run.datasetName})${size}${note}`,
        files,
        components: [voteButton(run.id, event.epoch)],
      });
      await runs.update(run.id, (r) => ({
        ...r,
        epochs: { ...r.epochs, [String(event.epoch)]: { grid: event.grid, checkpoint: event.checkpoint, messageId: message.id } },
      }));
      await runs.markEventDone(eventId);
      return;
    }
    case 'finished': {
      const finished = await runs.update(run.id, (r) => ({ ...r, status: 'finished', final: event.final, finishedAt: r.finishedAt ?? Date.now() }));
      await deps.onBlobsUnpinned?.(await runs.releaseBlobs(run.id));
      if (await runs.eventDone(eventId)) return;
      // One message ends the run: the summary, which mentions the starter and the contributors
      // once (a mention in an edit would notify nobody, so it is a new message and the status
      // message goes).
      const licence = await licenceNoteOf(deps.blobs.path(event.final.blob));
      const mentions = await mentionsFor(deps, finished!);
      const updated = await runs.update(run.id, (r) => ({ ...r, licenceNote: licence, mentions: r.mentions ?? mentions }));
      await removeStatus(deps, updated!);
      await postSummary(deps, updated!, `${eventId}.summary`);
      await runs.markEventDone(eventId);
      return;
    }
    case 'failed': {
      const updated = await runs.update(run.id, (r) => ({
        ...r,
        status: 'failed',
        failure: { reason: event.reason, logTail: event.logTail },
        finishedAt: Date.now(),
      }));
      await deps.onBlobsUnpinned?.(await runs.releaseBlobs(run.id));
      if (await runs.eventDone(eventId)) return;
      const tail = event.logTail.join('\n').replaceAll('```', 'ˋˋˋ');
      await refreshStatus(deps, updated!, `${eventId}.status`, `❌ Run \`${run.id}\` of **${run.datasetName}** failed.`);
      await send(deps, updated!, eventId, {
        content: truncate(`❌ Run \`${run.id}\` of **${run.datasetName}** failed: ${event.reason}\n\`\`\`\n${tail.slice(-1500)}\n\`\`\``, 1990),
      });
      await runs.markEventDone(eventId);
      return;
    }
    case 'cancelled': {
      const updated = await runs.update(run.id, (r) => ({ ...r, status: 'cancelled', finishedAt: Date.now() }));
      await deps.onBlobsUnpinned?.(await runs.releaseBlobs(run.id));
      if (await runs.eventDone(eventId)) return;
      const saved = event.lastEpoch ? ` Epochs 1–${event.lastEpoch} are kept.` : '';
      const headline = updated!.stoppedBecause
        ? `⏸️ Run \`${run.id}\` of **${run.datasetName}** was stopped before it trained: ${updated!.stoppedBecause} Then start it again with \`/train plan\`.`
        : `⏹️ Run \`${run.id}\` of **${run.datasetName}** was cancelled.${saved}`;
      await refreshStatus(deps, updated!, `${eventId}.status`, headline.split('\n')[0]);
      await send(deps, updated!, eventId, { content: headline });
      await runs.markEventDone(eventId);
      return;
    }
  }
}

/** Whose GPU a worker is; its id when that cannot be told (a lookup failure never holds up the message). */
async function workerLabelOf(deps: RunReporterDeps, workerId: string): Promise<string> {
  const fallback = `\`${workerId.replaceAll('`', '')}\``;
  if (!deps.workerLabel) return fallback;
  try {
    return await deps.workerLabel(workerId);
  } catch (err) {
    deps.logger.warn({ err, workerId }, 'could not tell whose GPU a worker is');
    return fallback;
  }
}

/** The starter (unless they turned mentions off), then every contributor who did not, once each. */
async function mentionsFor(deps: RunReporterDeps, run: Run): Promise<string[]> {
  const ids = [...new Set([run.createdBy, ...run.credits.contributors.map((c) => c.id)])].filter((id) => /^\d{1,20}$/.test(id));
  if (!deps.settings) return ids.slice(0, 1);
  return (await deps.settings.mentionable(run.guildId, ids)).slice(0, 50);
}

/** Deletes the run's status message (the summary replaces it); one already gone is fine. */
async function removeStatus(deps: RunReporterDeps, run: Run): Promise<void> {
  if (!run.statusMessageId) return;
  const channel = await channelOf(deps, run);
  try {
    await channel.messages.delete(run.statusMessageId);
  } catch (err) {
    if (!isUneditableMessageError(err)) throw err;
  }
  await deps.runs.update(run.id, (r) => ({ ...r, statusMessageId: null }));
}

/** After the run: every epoch's grid stacked (epochs × prompts), the tally, and a menu to vote. */
async function postSummary(deps: RunReporterDeps, run: Run, eventId: string) {
  if (await deps.runs.eventDone(eventId)) return;
  const epochs = Object.entries(run.epochs)
    .map(([e, v]) => ({ epoch: Number(e), grid: v.grid }))
    .sort((a, b) => a.epoch - b.epoch);
  const files: AttachmentBuilder[] = [];
  const grids = epochs.filter((e) => e.grid !== null);
  let note = '';
  if (grids.length > 0) {
    const sheets = await comparisonSheets(
      await Promise.all(grids.map(async (e) => ({ image: await deps.blobs.read(e.grid!.blob), label: `Epoch ${e.epoch}` }))),
    );
    const notes = new Set<string>();
    for (const [i, sheet] of sheets.entries()) {
      const shown = await sampleAttachment(deps, run, sheet, `${run.outputName}-epochs${sheets.length > 1 ? `-${i + 1}` : ''}.jpg`);
      if (shown.file) files.push(shown.file);
      if (shown.note) notes.add(shown.note);
    }
    note = [...notes].join('');
  }
  const message = await send(deps, run, eventId, {
    content: truncate(summaryContent(run, await deps.votes.tally(run.id)) + note, 2000),
    files,
    components: epochs.length > 0 ? [voteSelect(run)] : [],
    allowedMentions: { parse: [], users: run.mentions ?? [] },
  });
  await deps.runs.update(run.id, (r) => ({ ...r, summaryMessageId: message.id }));
  await deps.runs.markEventDone(eventId);
}

/** Edits the status message, or posts a fresh one when the old one is too old to edit. */
async function refreshStatus(deps: RunReporterDeps, run: Run, eventId: string, content = statusText(run)) {
  const channel = await channelOf(deps, run);
  const messageId = run.statusMessageId;
  const tooOld = messageId !== null && Date.now() - snowflakeTime(messageId) > STATUS_MESSAGE_MAX_AGE_MS;
  if (messageId && !tooOld) {
    try {
      await channel.messages.edit(messageId, { content });
      await deps.runs.update(run.id, (r) => ({ ...r, statusEditedAt: Date.now() }));
      return;
    } catch (err) {
      if (!isUneditableMessageError(err)) throw err;
    }
  }
  const message = await channel.send({ content, nonce: nonceFor(eventId), enforceNonce: true });
  await deps.runs.update(run.id, (r) => ({ ...r, statusMessageId: message.id, statusEditedAt: Date.now() }));
}

function snowflakeTime(id: string): number {
  return Number((BigInt(id) >> 22n) + 1420070400000n);
}
