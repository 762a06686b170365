import type { Client } from 'discord.js';
import type { Logger } from '../core/logger.ts';
import type { Run, RunStore, Tally, VoteStore } from '../store/run-store.ts';

export function renderTally(tally: Tally): string {
  if (tally.total === 0) return 'No votes yet.';
  const parts = [...tally.counts].map(([e, n]) => `epoch ${e}: **${n}**`);
  return `Votes (${tally.total}): ${parts.join(' · ')} · leading: **epoch ${tally.best}**`;
}

/** The summary message after a run: the tally and a menu to vote (edited as votes come in). */
export function summaryContent(run: Run, tally: Tally): string {
  return (
    `🏁 **${run.datasetName}** · run \`${run.id}\`: ${Object.keys(run.epochs).length} epochs side by side (rows = epochs, columns = sample prompts).\n` +
    `${renderTally(tally)}\nFetch the LoRA with \`/lora fetch run:${run.id}\` (\`epoch:best\` for the community’s pick).`
  );
}

/**
 * Edits a run's summary message with the current tally, at most once per interval per run, so a
 * burst of votes makes one edit.
 */
export class TallyUpdater {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly lastEdit = new Map<string, number>();

  constructor(
    private readonly deps: { client: Client; runs: RunStore; votes: VoteStore; logger: Logger; intervalMs: number },
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
    if (!run?.summaryMessageId) return;
    const channel = await this.deps.client.channels.fetch(run.channelId);
    if (!channel?.isSendable()) return;
    const tally = await this.deps.votes.tally(runId);
    await channel.messages.edit(run.summaryMessageId, { content: summaryContent(run, tally) });
  }

  stop(): void {
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }
}
