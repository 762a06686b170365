import {
  ActionRowBuilder,
  AttachmentBuilder,
  ModalBuilder,
  TextInputBuilder,
  TextInputStyle,
  type ChatInputCommandInteraction,
} from 'discord.js';
import { captionCommandData } from '../../../commands/workshop.ts';
import { UserError } from '../../core/errors.ts';
import { composeCaption, parseTags, stripLeadingTriggers, validateCaptionText } from '../../core/tag-ops.ts';
import type { Dataset, ImageRecord } from '../../store/dataset-store.ts';
import type { BotContext } from '../context.ts';
import { datasetById, requireEditor, resolveDataset } from '../dataset-access.ts';
import { COUNT_PART, ID_PART, joinCustomId, splitCustomId, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import { autocompleteWorkshop } from './tags.ts';

async function imageOf(ctx: BotContext, dataset: Dataset, no: number): Promise<ImageRecord> {
  const image = await ctx.store.getImage(dataset.id, no);
  if (!image) throw new UserError(`**${dataset.name}** has no image #${no}.`);
  return image;
}

async function triggersOf(ctx: BotContext, dataset: Dataset, image: ImageRecord) {
  const concept = await ctx.store.getConcept(dataset.id, image.concept);
  return { dataset: dataset.trigger, concept: concept?.trigger ?? null };
}

/** The full caption as the trainer will read it: triggers first, then the tags. */
export async function writtenCaption(ctx: BotContext, dataset: Dataset, image: ImageRecord, tags: string[]): Promise<string> {
  const t = await triggersOf(ctx, dataset, image);
  return composeCaption(t.dataset, t.concept, tags);
}

async function show(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const image = await imageOf(ctx, dataset, interaction.options.getInteger('image', true));
  const caption = await ctx.captions.get(dataset.id, image.no);
  const lines = [
    `**#${image.no}** of **${dataset.name}** · \`${image.sourceName}\` by ${image.contributorName} · ${image.width}×${image.height} · concept \`${image.concept}\``,
  ];
  if (caption) {
    lines.push(`\`\`\`\n${(await writtenCaption(ctx, dataset, image, caption.tags)).replaceAll('`', 'ˋ')}\n\`\`\``);
    lines.push(`Version ${caption.version} · ${caption.source} · <t:${Math.floor(caption.at / 1000)}:R>`);
  } else {
    lines.push('No caption yet (tagging may still be running).');
  }
  const preview = new AttachmentBuilder(await ctx.blobs.read(image.thumbBlob), { name: `image-${image.no}.webp` });
  await interaction.editReply({ content: lines.join('\n').slice(0, 1990), files: [preview] });
}

const EDIT_FIELD = 'tags';

async function edit(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const image = await imageOf(ctx, dataset, interaction.options.getInteger('image', true));
  await requireEditor(interaction, ctx, dataset);
  const caption = await ctx.captions.get(dataset.id, image.no);
  const input = new TextInputBuilder()
    .setCustomId(EDIT_FIELD)
    .setLabel('Tags, comma-separated (triggers are added)')
    .setStyle(TextInputStyle.Paragraph)
    .setRequired(false)
    .setMaxLength(4000);
  const current = caption?.tags.join(', ') ?? '';
  if (current) input.setValue(current);
  const modal = new ModalBuilder()
    .setCustomId(captionEditModal.encode({ datasetId: dataset.id, imageNo: image.no, version: caption?.version ?? 0 }))
    .setTitle(`Caption of #${image.no} (${dataset.name})`.slice(0, 45))
    .addComponents(new ActionRowBuilder<TextInputBuilder>().addComponents(input));
  await interaction.showModal(modal);
}

/** The caption editing form; `version` is the caption it started from (0: none), so a concurrent edit is not overwritten. */
export const captionEditModal: ComponentHandler<{ datasetId: string; imageNo: number; version: number }, 'modal'> = {
  family: 'capedit',
  kind: 'modal',
  encode: ({ datasetId, imageNo, version }) => joinCustomId('capedit', datasetId, imageNo, version),
  parse(customId) {
    const p = splitCustomId(customId, 'capedit', [ID_PART, COUNT_PART, COUNT_PART]);
    return p && { datasetId: p[0]!, imageNo: Number(p[1]), version: Number(p[2]) };
  },
  defer: 'ephemeral',
  async handle(interaction, ctx, { datasetId, imageNo, version }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    const image = await imageOf(ctx, dataset, imageNo);
    await requireEditor(interaction, ctx, dataset);
    const text = interaction.fields.getTextInputValue(EDIT_FIELD);
    validateCaptionText(text);
    const t = await triggersOf(ctx, dataset, image);
    const tags = stripLeadingTriggers(parseTags(text), [t.dataset, ...(t.concept ? [t.concept] : [])]);
    const saved = await ctx.captions.set(dataset.id, image.no, tags, {
      by: interaction.user.id,
      source: 'edit',
      ...(version > 0 ? { ifVersion: version } : {}),
    });
    await interaction.editReply({
      content: `Saved the caption of **#${image.no}** (version ${saved.version}):\n\`\`\`\n${(await writtenCaption(ctx, dataset, image, saved.tags)).replaceAll('`', 'ˋ').slice(0, 1800)}\n\`\`\``,
    });
  },
};

async function undo(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const no = interaction.options.getInteger('image');
  if (no !== null) {
    const image = await imageOf(ctx, dataset, no);
    const restored = await ctx.captions.undo(dataset.id, image.no, interaction.user.id);
    if (!restored) throw new UserError(`#${image.no} has no earlier caption to go back to.`);
    await interaction.editReply({
      content: `Restored version ${restored.version} of the caption of **#${image.no}**:\n\`\`\`\n${(await writtenCaption(ctx, dataset, image, restored.tags)).replaceAll('`', 'ˋ').slice(0, 1800)}\n\`\`\``,
    });
    return;
  }
  const result = await ctx.captions.undoLastBulk(dataset.id, interaction.user.id);
  if (!result) throw new UserError(`**${dataset.name}** has no bulk edit to undo.`);
  const skipped = result.skipped.length > 0 ? ` ${result.skipped.length} caption(s) changed since were left as they are.` : '';
  await interaction.editReply({
    content: `Undid “${result.description}” on ${result.restored.length} caption${result.restored.length === 1 ? '' : 's'} of **${dataset.name}**.${skipped}`,
  });
}

export const captionCommand: SlashCommand = {
  data: captionCommandData,
  subcommands: {
    show: { defer: 'public', execute: show },
    // The edit form must be the first answer, so it is not deferred.
    edit: { defer: 'none', execute: edit },
    undo: { defer: 'public', execute: undo },
  },
  async autocomplete(interaction, ctx) {
    await interaction.respond(await autocompleteWorkshop(interaction, ctx));
  },
};
