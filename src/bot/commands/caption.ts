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
import type { ComponentHandler, SlashCommand } from '../interactions.ts';
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
  await interaction.editReply({ content: lines.join('\n').slice(0, 1990), files: [preview], allowedMentions: { parse: [] } });
}

// Caption editing modal: `capedit:<datasetId>:<no>:<version>`.
const EDIT_FAMILY = 'capedit';
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
    .setCustomId(`${EDIT_FAMILY}:${dataset.id}:${image.no}:${caption?.version ?? 0}`)
    .setTitle(`Caption of #${image.no} (${dataset.name})`.slice(0, 45))
    .addComponents(new ActionRowBuilder<TextInputBuilder>().addComponents(input));
  await interaction.showModal(modal);
}

export const captionEditModal: ComponentHandler = {
  family: EDIT_FAMILY,
  defer: () => 'ephemeral',
  async handle(interaction, ctx) {
    if (!interaction.isModalSubmit()) throw new UserError('That form is out of date.');
    const m = /^capedit:([a-z0-9]{1,16}):(\d{1,7}):(\d{1,7})$/.exec(interaction.customId);
    if (!m) throw new UserError('That form is out of date.');
    const dataset = await datasetById(interaction, ctx, m[1]!);
    const image = await imageOf(ctx, dataset, Number(m[2]));
    await requireEditor(interaction, ctx, dataset);
    const text = interaction.fields.getTextInputValue(EDIT_FIELD);
    validateCaptionText(text);
    const t = await triggersOf(ctx, dataset, image);
    const tags = stripLeadingTriggers(parseTags(text), [t.dataset, ...(t.concept ? [t.concept] : [])]);
    const version = Number(m[3]);
    const saved = await ctx.captions.set(dataset.id, image.no, tags, {
      by: interaction.user.id,
      source: 'edit',
      ...(version > 0 ? { ifVersion: version } : {}),
    });
    await interaction.editReply({
      content: `Saved the caption of **#${image.no}** (version ${saved.version}):\n\`\`\`\n${(await writtenCaption(ctx, dataset, image, saved.tags)).replaceAll('`', 'ˋ').slice(0, 1800)}\n\`\`\``,
      allowedMentions: { parse: [] },
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
      allowedMentions: { parse: [] },
    });
    return;
  }
  const result = await ctx.captions.undoLastBulk(dataset.id, interaction.user.id);
  if (!result) throw new UserError(`**${dataset.name}** has no bulk edit to undo.`);
  const skipped = result.skipped.length > 0 ? ` ${result.skipped.length} caption(s) changed since were left as they are.` : '';
  await interaction.editReply({
    content: `Undid “${result.description}” on ${result.restored.length} caption${result.restored.length === 1 ? '' : 's'} of **${dataset.name}**.${skipped}`,
    allowedMentions: { parse: [] },
  });
}

export const captionCommand: SlashCommand = {
  data: captionCommandData,
  // The edit form must be the first answer, so it is not deferred.
  defer: (interaction) => (interaction.options.getSubcommand(false) === 'edit' ? 'none' : 'public'),
  async execute(interaction, ctx) {
    switch (interaction.options.getSubcommand(true)) {
      case 'show':
        return show(interaction, ctx);
      case 'edit':
        return edit(interaction, ctx);
      case 'undo':
        return undo(interaction, ctx);
      default:
        throw new UserError('Unknown subcommand.');
    }
  },
  async autocomplete(interaction, ctx) {
    await interaction.respond(await autocompleteWorkshop(interaction, ctx));
  },
};
