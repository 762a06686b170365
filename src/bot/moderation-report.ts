import { ActionRowBuilder, ButtonBuilder, ButtonStyle, ModalBuilder, TextInputBuilder, TextInputStyle } from 'discord.js';
import { MAX_REASON_CHARS, MIN_REASON_CHARS } from '../core/dataset-rules.ts';
import { UserError } from '../core/errors.ts';
import type { ModerationTarget } from '../store/moderation-store.ts';
import { datasetById } from './dataset-access.ts';
import { ID_PART, customIdCodec, type ComponentHandler } from './interactions.ts';

const IMAGE_FIELD = 'image';
const REASON_FIELD = 'reason';

/** The contact sheet's "Report" button (any member). */
export function reportRow(datasetId: string): ActionRowBuilder<ButtonBuilder> {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(reportComponent(datasetId));
}

export function reportComponent(datasetId: string): ButtonBuilder {
  return new ButtonBuilder().setCustomId(reportButton.encode({ datasetId })).setLabel('Report').setEmoji('🚩').setStyle(ButtonStyle.Secondary);
}

/** Opens the report form: which image (or the whole dataset) and why. */
export const reportButton: ComponentHandler<{ datasetId: string }, 'button'> = {
  ...customIdCodec('modreport', { datasetId: ID_PART }),
  kind: 'button',
  defer: 'none',
  async handle(interaction, ctx, { datasetId }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    await interaction.showModal(
      new ModalBuilder()
        .setCustomId(reportModal.encode({ datasetId }))
        .setTitle(`Report to the moderators: ${dataset.name}`.slice(0, 45))
        .addComponents(
          new ActionRowBuilder<TextInputBuilder>().addComponents(
            new TextInputBuilder()
              .setCustomId(IMAGE_FIELD)
              .setLabel('Image number (empty: the whole dataset)')
              .setStyle(TextInputStyle.Short)
              .setRequired(false)
              .setMaxLength(8),
          ),
          new ActionRowBuilder<TextInputBuilder>().addComponents(
            new TextInputBuilder()
              .setCustomId(REASON_FIELD)
              .setLabel('What is wrong with it?')
              .setStyle(TextInputStyle.Paragraph)
              .setRequired(true)
              .setMinLength(MIN_REASON_CHARS)
              .setMaxLength(MAX_REASON_CHARS),
          ),
        ),
    );
  },
};

/** The report form's answer: recorded once per member and target; only the reporter is told. */
export const reportModal: ComponentHandler<{ datasetId: string }, 'modal'> = {
  ...customIdCodec('modreportf', { datasetId: ID_PART }),
  kind: 'modal',
  defer: 'ephemeral',
  async handle(interaction, ctx, { datasetId }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    const raw = interaction.fields.getTextInputValue(IMAGE_FIELD).trim().replace(/^#/, '');
    if (raw !== '' && !/^\d{1,7}$/.test(raw))
      throw new UserError('The image is its number on the contact sheet, like 3 (or leave it empty for the whole dataset).');
    const target: ModerationTarget = raw === '' ? { kind: 'dataset', datasetId } : { kind: 'image', datasetId, no: Number(raw) };
    await ctx.moderation.report(dataset, target, interaction.user.id, interaction.fields.getTextInputValue(REASON_FIELD));
    await interaction.editReply(
      `Thank you: your report on ${target.kind === 'image' ? `image #${target.no} of ` : ''}**${dataset.name}** went to the moderators. Nobody else sees who reported it.`,
    );
  },
};
