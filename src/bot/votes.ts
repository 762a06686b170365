import {
  ActionRowBuilder,
  ButtonBuilder,
  ButtonStyle,
  StringSelectMenuBuilder,
  type Client,
} from 'discord.js';
import { UserError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { Run, RunStore, Tally, VoteStore } from '../store/run-store.ts';
import type { BotContext } from './context.ts';
import { guildIdOf } from './dataset-access.ts';
import type { ComponentHandler } from './interactions.ts';

export function voteButton(runId: string, epoch: number) {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(`vote:${runId}:${epoch}`).setLabel(`Vote for epoch ${epoch}`).setStyle(ButtonStyle.Primary).setEmoji('🗳️'),
  );
}

export function voteSelect(run: Run) {
  const epochs = Object.keys(run.epochs)
    .map(Number)
    .sort((a, b) => a - b)
    .slice(-25);
  return new ActionRowBuilder<StringSelectMenuBuilder>().addComponents(
    new StringSelectMenuBuilder()
      .setCustomId(`votesel:${run.id}`)
      .setPlaceholder('Vote for the best epoch')
      .addOptions(epochs.map((e) => ({ label: `Epoch ${e}`, value: String(e) }))),
  );
}

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
    await channel.messages.edit(run.summaryMessageId, { content: summaryContent(run, tally), allowedMentions: { parse: [] } });
  }

  stop(): void {
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }
}

async function castVote(interaction: Parameters<ComponentHandler['handle']>[0], ctx: BotContext, runId: string, epoch: number) {
  const run = await ctx.runs.get(runId);
  if (!run || run.guildId !== guildIdOf(interaction)) throw new UserError('That run no longer exists.');
  if (!run.epochs[String(epoch)]) throw new UserError(`Run \`${run.id}\` has no epoch ${epoch}.`);
  const previous = await ctx.votes.vote(run.id, interaction.user.id, epoch);
  const tally = await ctx.votes.tally(run.id);
  ctx.tallies.schedule(run.id);
  const moved = previous !== null && previous !== epoch ? ` (moved from epoch ${previous})` : previous === epoch ? ' (unchanged)' : '';
  await interaction.editReply({ content: `🗳️ Your vote: **epoch ${epoch}**${moved}.\n${renderTally(tally)}`, allowedMentions: { parse: [] } });
}

export const voteButtonHandler: ComponentHandler = {
  family: 'vote',
  defer: () => 'ephemeral',
  async handle(interaction, ctx) {
    const m = /^vote:([a-z0-9]{1,16}):(\d{1,4})$/.exec(interaction.customId);
    if (!m) throw new UserError('That button is out of date.');
    await castVote(interaction, ctx, m[1]!, Number(m[2]));
  },
};

export const voteSelectHandler: ComponentHandler = {
  family: 'votesel',
  defer: () => 'ephemeral',
  async handle(interaction, ctx) {
    const runId = /^votesel:([a-z0-9]{1,16})$/.exec(interaction.customId)?.[1];
    if (!runId || !interaction.isStringSelectMenu()) throw new UserError('That menu is out of date.');
    const epoch = Number(interaction.values[0]);
    if (!Number.isInteger(epoch)) throw new UserError('Pick an epoch.');
    await castVote(interaction, ctx, runId, epoch);
  },
};

