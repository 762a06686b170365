import type { ChatInputCommandInteraction } from 'discord.js';
import { conceptCommandData } from '../../../commands/workshop.ts';
import { MAX_CONCEPTS, parseImageSelection, validateConceptName, validateTrigger } from '../../core/dataset-rules.ts';
import { UserError } from '../../core/errors.ts';
import { MAX_FOLDER_REPEATS } from '../../core/kohya-layout.ts';
import type { BotContext } from '../context.ts';
import { requireEditor, resolveDataset } from '../dataset-access.ts';
import { acknowledged, type SlashCommand } from '../interactions.ts';
import { listNos } from '../reports.ts';
import { autocompleteWorkshop } from './tags.ts';

async function add(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const name = validateConceptName(interaction.options.getString('name', true));
  const rawTrigger = interaction.options.getString('trigger');
  const trigger = rawTrigger ? validateTrigger(rawTrigger) : null;
  const concepts = await ctx.store.getConcepts(dataset.id);
  if (concepts.some((c) => c.name === name)) throw new UserError(`**${dataset.name}** already has a concept \`${name}\`.`);
  if (concepts.length >= MAX_CONCEPTS) throw new UserError(`A dataset has at most ${MAX_CONCEPTS} concepts.`);
  await ctx.store.ensureConcept(dataset.id, name, trigger);
  await interaction.editReply({
    content:
      `Added concept \`${name}\` to **${dataset.name}**${trigger ? ` with trigger \`${trigger}\` (captions start \`${dataset.trigger}, ${trigger}, …\`)` : ''}. ` +
      `Contribute to it with \`/dataset add concept:${name}\` or move images with \`/concept move\`.`,
  });
}

async function list(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const [concepts, images] = await Promise.all([ctx.store.getConcepts(dataset.id), ctx.store.listImages(dataset.id)]);
  const lines = concepts.map((c) => {
    const n = images.filter((i) => i.concept === c.name).length;
    return `\`${c.name}\`${c.trigger ? ` · trigger \`${c.trigger}\`` : ''}${c.repeats !== undefined ? ` · ${c.repeats} repeats` : ''} · ${n} image${n === 1 ? '' : 's'}`;
  });
  await interaction.editReply({ content: `Concepts of **${dataset.name}**:\n${lines.join('\n')}` });
}

async function move(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const target = validateConceptName(interaction.options.getString('concept', true));
  if (!(await ctx.store.getConcept(dataset.id, target))) {
    throw new UserError(`**${dataset.name}** has no concept \`${target}\`: add it with \`/concept add\` first.`);
  }
  const selection = parseImageSelection(interaction.options.getString('images', true));
  const images = await ctx.store.listImages(dataset.id);
  const nos = selection.mine ? images.filter((i) => i.contributorId === interaction.user.id).map((i) => i.no) : selection.nos;
  const missing = nos.filter((n) => !images.some((i) => i.no === n));
  if (missing.length > 0) throw new UserError(`**${dataset.name}** has no image ${listNos(missing)}. Nothing was moved.`);
  const moved = await ctx.store.moveImages(dataset.id, nos, target);
  await interaction.editReply(
    moved.length === 0 ? `Those images are already in \`${target}\`.` : `Moved ${listNos(moved)} to concept \`${target}\` of **${dataset.name}**.`,
  );
}

/** A concept's own repeats (a subset shown more or less often than the recipe's balance), or back to the balance. */
async function repeats(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const name = validateConceptName(interaction.options.getString('concept', true));
  const count = interaction.options.getInteger('repeats', true);
  if (!Number.isInteger(count) || count < 0 || count > MAX_FOLDER_REPEATS)
    throw new UserError(`Repeats are 1–${MAX_FOLDER_REPEATS}, or 0 for the recipe's balance.`);
  if (!(await ctx.store.setConceptRepeats(dataset.id, name, count === 0 ? null : count))) {
    throw new UserError(`**${dataset.name}** has no concept \`${name}\`.`);
  }
  await interaction.editReply(
    count === 0
      ? `\`${name}\` of **${dataset.name}** is balanced by the recipe again.`
      : `\`${name}\` of **${dataset.name}** is shown ${count} time${count === 1 ? '' : 's'} per epoch (the plan's folder \`${count}_${name}\`).`,
  );
}

export const conceptCommand: SlashCommand = {
  data: conceptCommandData,
  subcommands: acknowledged('public', { add, list, move, repeats }),
  autocomplete: autocompleteWorkshop,
};
