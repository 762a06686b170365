import type { ActionRowBuilder, ButtonBuilder, Client } from 'discord.js';
import type { Logger } from '../core/logger.ts';
import { duration, truncate } from './reports.ts';
import type { Run, RunStore, Tally, VoteStore } from '../store/run-store.ts';

/** The rule `best` follows on a tie, in the words members read. */
export const TIE_RULE = 'a tie goes to the later epoch';

/** "epochs 2 and 3", "epochs 1, 2 and 4". */
export function epochList(epochs: readonly number[]): string {
  const head = epochs.slice(0, -1).join(', ');
  return epochs.length < 2 ? `epoch ${epochs.join('')}` : `epochs ${head} and ${epochs[epochs.length - 1]}`;
}

export function renderTally(tally: Tally): string {
  if (tally.total === 0) return 'No votes yet.';
  const parts = [...tally.counts].map(([e, n]) => `epoch ${e}: **${n}**`);
  const lead =
    tally.tied.length > 1
      ? `tied: **${epochList(tally.tied)}** (\`best\` is epoch ${tally.best} until a vote breaks the tie: ${TIE_RULE})`
      : `leading: **epoch ${tally.best}**`;
  return `Votes (${tally.total}): ${parts.join(' · ')} · ${lead}`;
}

/**
 * The one message a finished run ends with (the status message turned into it), for members: the
 * epochs side by side, the tally, how to fetch it, and who is told. The file's name and hash are
 * in `/lora fetch`'s reply, beside the file.
 */
export function summaryContent(run: Run, tally: Tally): string {
  const seconds = run.startedAt !== null && run.finishedAt !== null ? Math.max(0, (run.finishedAt - run.startedAt) / 1000) : null;
  const epochs = Object.keys(run.epochs).length;
  const lines = [
    `✅ Run \`${run.id}\` of **${run.datasetName}** finished${seconds !== null ? ` in ${duration(seconds)}` : ''}`,
    ...(run.licenceNote ? [`⚖️ ${run.licenceNote}`] : []),
    epochs > 0 ? `🏁 ${epochs} epoch${epochs === 1 ? '' : 's'} side by side below · vote for the best one with its button or the menu.` : '',
    renderTally(tally),
    `Fetch the LoRA with \`/lora fetch run:${run.id}\` (\`epoch:best\` for the community’s pick).`,
    mentionLine(run),
  ];
  return truncate(lines.filter(Boolean).join('\n'), 1990);
}

/** The starter first, then the contributors; "(turn off with /settings mentions)" tells how to stop it. */
function mentionLine(run: Run): string {
  const [starter, ...others] = run.mentions ?? [];
  if (starter === undefined) return '';
  const thanks = others.length === 0 ? '' : ` · thanks to ${others.map((id) => `<@${id}>`).join(' ')} for the images`;
  const isStarter = starter === run.createdBy;
  return `🔔 ${isStarter ? `<@${starter}>, your run is done` : `thanks to <@${starter}>`}${thanks} (mentions: \`/settings mentions\`)`;
}

/**
 * Edits a run's summary message with the current tally, at most once per interval per run, so a
 * burst of votes makes one edit.
 */
export class TallyUpdater {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly lastEdit = new Map<string, number>();
  /** The count each epoch button shows now (absent: none yet). */
  private readonly shownCounts = new Map<string, number>();

  constructor(
    private readonly deps: {
      client: Client;
      runs: RunStore;
      votes: VoteStore;
      logger: Logger;
      intervalMs: number;
      /** An epoch's vote button showing its count (votes.ts). */
      epochButton: (runId: string, epoch: number, votes: number) => ActionRowBuilder<ButtonBuilder>;
    },
  ) {}

  schedule(runId: string): void {
    if (this.pending.has(runId)) return;
    const wait = Math.max(0, (this.lastEdit.get(runId) ?? 0) + this.deps.intervalMs - Date.now());
    const timer = setTimeout(() => {
      this.pending.delete(runId);
      this.lastEdit.set(runId, Date.now());
      this.edit(runId).catch((err: unknown) => this.deps.logger.warn({ err, runId }, 'tally update failed'));
    }, wait);
    timer.unref();
    this.pending.set(runId, timer);
  }

  private async edit(runId: string) {
    const run = await this.deps.runs.get(runId);
    if (!run) return;
    const channel = await this.deps.client.channels.fetch(run.channelId);
    if (!channel?.isSendable()) return;
    const tally = await this.deps.votes.tally(runId);
    // Each epoch's button shows its count (only those that changed since the last edit).
    for (const [epoch, posted] of Object.entries(run.epochs)) {
      if (!posted.messageId) continue;
      const count = tally.counts.get(Number(epoch)) ?? 0;
      const key = `${runId}:${epoch}`;
      if ((this.shownCounts.get(key) ?? 0) === count) continue;
      await channel.messages.edit(posted.messageId, { components: [this.deps.epochButton(runId, Number(epoch), count)] });
      this.shownCounts.set(key, count);
    }
    if (!run.summaryMessageId) return;
    await channel.messages.edit(run.summaryMessageId, { content: summaryContent(run, tally) });
  }

  stop(): void {
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }
}
