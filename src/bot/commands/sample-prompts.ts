/**
 * A dataset's sample prompts (what its runs draw after every epoch): `/train prompts` lists them,
 * with a remove button for each to the dataset's owner and moderators. "📌 Use as a sample prompt"
 * under a tried image adds one (commands/lora.ts).
 */
import { ActionRowBuilder, ButtonBuilder, ButtonStyle, type ChatInputCommandInteraction, type InteractionEditReplyOptions } from 'discord.js';
import { createHash } from 'node:crypto';
import { UserError } from '../../core/errors.ts';
import type { Dataset } from '../../store/dataset-store.ts';
import type { BotContext } from '../context.ts';
import { datasetById, isModerator, resolveDataset, type GuildInteraction } from '../dataset-access.ts';
import { COUNT_PART, customIdCodec, ID_PART, type ComponentHandler, type IdPart } from '../interactions.ts';
import { truncate } from '../reports.ts';

/** The most prompts a run samples. */
export const MAX_SAMPLE_PROMPTS = 4;

/** A prompt's short fingerprint: a button removes the prompt it was shown for, not whatever is at its place now. */
function fingerprint(prompt: string): string {
  return createHash('sha256').update(prompt).digest('hex').slice(0, 10);
}
const FINGERPRINT_PART: IdPart<string> = { pattern: /^[0-9a-f]{10}$/, decode: (text) => text };

export const removePromptButton: ComponentHandler<{ datasetId: string; index: number; print: string }, 'button'> = {
  ...customIdCodec('sprm', { datasetId: ID_PART, index: COUNT_PART, print: FINGERPRINT_PART }),
  kind: 'button',
  defer: 'update',
  async handle(interaction, ctx, { datasetId, index, print }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    if (!isModerator(interaction, dataset)) throw new UserError(`Only the owner of **${dataset.name}** and moderators can remove its sample prompts.`);
    const prompts = dataset.samplePrompts ?? [];
    // Its place first; the list may have changed since it was shown.
    const at = prompts[index] !== undefined && fingerprint(prompts[index]) === print ? index : prompts.findIndex((p) => fingerprint(p) === print);
    if (at < 0) throw new UserError('That prompt is no longer among the sample prompts.');
    const removed = prompts[at]!;
    const updated = await ctx.store.updateDataset(dataset.id, { samplePrompts: prompts.filter((_, i) => i !== at) });
    ctx.logger.info({ datasetId: dataset.id, userId: interaction.user.id }, 'sample prompt removed');
    await interaction.editReply(promptList(interaction, updated ?? dataset, `🗑️ Removed **${truncate(removed, 200)}**.`));
  },
};

function promptList(interaction: GuildInteraction, dataset: Dataset, note?: string): InteractionEditReplyOptions {
  const prompts = dataset.samplePrompts ?? [];
  const head = note ? `${note}\n` : '';
  if (prompts.length === 0) {
    return {
      content: `${head}**${dataset.name}** has no sample prompts of its own: its runs draw the recipe’s. Add one with 📌 under an image from \`/lora try\`.`,
      components: [],
    };
  }
  const lines = prompts.map((p, i) => `${i + 1}. ${truncate(p, 300)}`);
  const mayRemove = isModerator(interaction, dataset);
  const row = new ActionRowBuilder<ButtonBuilder>().addComponents(
    prompts.map((p, i) =>
      new ButtonBuilder()
        .setCustomId(removePromptButton.encode({ datasetId: dataset.id, index: i, print: fingerprint(p) }))
        .setLabel(`Remove ${i + 1}`)
        .setEmoji('🗑️')
        .setStyle(ButtonStyle.Danger),
    ),
  );
  return {
    content: truncate(
      `${head}**${dataset.name}**’s sample prompts (${prompts.length} of ${MAX_SAMPLE_PROMPTS}), drawn after every epoch:\n${lines.join('\n')}` +
        (mayRemove ? '' : '\nThe dataset’s owner and moderators can remove them.'),
      1990,
    ),
    components: mayRemove ? [row] : [],
  };
}

/** `/train prompts [dataset]`: the list, with remove buttons for those who may. */
export async function listSamplePrompts(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<void> {
  const dataset = await resolveDataset(interaction, ctx);
  await interaction.editReply(promptList(interaction, dataset));
}
