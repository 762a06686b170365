import { ActionRowBuilder, ButtonBuilder, ButtonStyle, StringSelectMenuBuilder } from 'discord.js';
import { UserError } from '../core/errors.ts';
import type { Run } from '../store/run-store.ts';
import type { BotContext } from './context.ts';
import { guildIdOf } from './dataset-access.ts';
import { COUNT_PART, ID_PART, customIdCodec, type ComponentHandler, type ComponentInteraction } from './interactions.ts';
import { renderTally } from './tally.ts';

/** The button under an epoch's sample grid. */
export function voteButton(runId: string, epoch: number, votes = 0) {
  const label = votes === 0 ? `Vote for epoch ${epoch}` : `Vote for epoch ${epoch} · ${votes} vote${votes === 1 ? '' : 's'}`;
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(voteButtonHandler.encode({ runId, epoch })).setLabel(label).setStyle(ButtonStyle.Primary).setEmoji('🗳️'),
  );
}

/** The menu under a run's summary. */
export function voteSelect(run: Run) {
  const epochs = Object.keys(run.epochs)
    .map(Number)
    .sort((a, b) => a - b)
    .slice(-25);
  return new ActionRowBuilder<StringSelectMenuBuilder>().addComponents(
    new StringSelectMenuBuilder()
      .setCustomId(voteSelectHandler.encode({ runId: run.id }))
      .setPlaceholder('Vote for the best epoch')
      .addOptions(epochs.map((e) => ({ label: `Epoch ${e}`, value: String(e) }))),
  );
}

async function castVote(interaction: ComponentInteraction, ctx: BotContext, runId: string, epoch: number) {
  const run = await ctx.runs.get(runId);
  if (!run || run.guildId !== guildIdOf(interaction)) throw new UserError('That run no longer exists.');
  if (!run.epochs[String(epoch)]) throw new UserError(`Run \`${run.id}\` has no epoch ${epoch}.`);
  const previous = await ctx.votes.vote(run.id, interaction.user.id, epoch);
  const tally = await ctx.votes.tally(run.id);
  ctx.tallies.schedule(run.id);
  const moved = previous !== null && previous !== epoch ? ` (moved from epoch ${previous})` : previous === epoch ? ' (unchanged)' : '';
  await interaction.editReply({ content: `🗳️ Your vote: **epoch ${epoch}**${moved}.\n${renderTally(tally)}` });
}

export const voteButtonHandler: ComponentHandler<{ runId: string; epoch: number }, 'button'> = {
  ...customIdCodec('vote', { runId: ID_PART, epoch: COUNT_PART }),
  kind: 'button',
  defer: 'ephemeral',
  async handle(interaction, ctx, { runId, epoch }) {
    await castVote(interaction, ctx, runId, epoch);
  },
};

export const voteSelectHandler: ComponentHandler<{ runId: string }, 'select'> = {
  ...customIdCodec('votesel', { runId: ID_PART }),
  kind: 'select',
  defer: 'ephemeral',
  async handle(interaction, ctx, { runId }) {
    const epoch = Number(interaction.values[0]);
    if (!Number.isInteger(epoch)) throw new UserError('Pick an epoch.');
    await castVote(interaction, ctx, runId, epoch);
  },
};
