import { ActionRowBuilder, ButtonBuilder, ButtonStyle, type AutocompleteInteraction, type ChatInputCommandInteraction } from 'discord.js';
import { tagsCommandData } from '../../../commands/workshop.ts';
import { parseImageSelection, validateConceptName } from '../../core/dataset-rules.ts';
import { captionModeOf, phraseFrequencies } from '../../core/caption-text.ts';
import { UserError } from '../../core/errors.ts';
import { addTags, changedOrNull, normalizeTag, parseTags, pruneSuggestions, removeTags, replaceTag, tagFrequencies, validateTag } from '../../core/tag-ops.ts';
import { JobName } from '../../queues/contract.ts';
import { sentenceOf } from '../../store/caption-store.ts';
import { newId, type Dataset, type ImageRecord } from '../../store/dataset-store.ts';
import type { BotContext } from '../context.ts';
import { autocompleteDatasets, datasetById, requireEditor, resolveDataset, type GuildInteraction } from '../dataset-access.ts';
import { COUNT_PART, acknowledged, ID_PART, checkThenDefer, customIdCodec, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import { listNos, truncate } from '../reports.ts';

/** The images a bulk operation covers: one concept, or the whole dataset. */
export async function imagesInScope(ctx: BotContext, dataset: Dataset, concept: string | null): Promise<ImageRecord[]> {
  const images = await ctx.store.listImages(dataset.id);
  if (concept === null) return images;
  if (!(await ctx.store.getConcept(dataset.id, concept))) {
    throw new UserError(`**${dataset.name}** has no concept \`${concept}\`. See \`/concept list\`.`);
  }
  return images.filter((i) => i.concept === concept);
}

function conceptOption(interaction: ChatInputCommandInteraction): string | null {
  const raw = interaction.options.getString('concept');
  return raw ? validateConceptName(raw) : null;
}

function scopeLabel(dataset: Dataset, concept: string | null): string {
  return concept ? `concept \`${concept}\` of **${dataset.name}**` : `**${dataset.name}**`;
}

/** Tags typed by a member: parsed, each checked, at least one. */
function typedTags(raw: string): string[] {
  const tags = parseTags(raw);
  if (tags.length === 0) throw new UserError('Name at least one tag.');
  tags.forEach(validateTag);
  return tags;
}

async function captionsOf(ctx: BotContext, dataset: Dataset, images: ImageRecord[]) {
  const map = await ctx.captions.getMany(
    dataset.id,
    images.map((i) => i.no),
  );
  return images.map((i) => map.get(i.no)?.tags ?? null);
}

async function top(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { dataset, concept, images } = await checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    const concept = conceptOption(interaction);
    return { dataset, concept, images: await imagesInScope(ctx, dataset, concept) };
  });
  await interaction.editReply(await topMessage(ctx, dataset, concept, images, interaction.options.getInteger('page') ?? 1));
}

/** Tags (or phrases) ranked on one page. */
const TOP_PAGE_SIZE = 15;
const TOP_PHRASES = 10;
const BAR_CELLS = 10;

/** One ranked line: rank, a bar of the share of captions that have it, the count, and the tag. */
function rankedLine(rank: number, rankWidth: number, text: string, count: number, share: number): string {
  const filled = Math.max(count > 0 ? 1 : 0, Math.round(share * BAR_CELLS));
  return `\`${String(rank).padStart(rankWidth)}\` ${'█'.repeat(filled)}${'░'.repeat(BAR_CELLS - filled)} **${count}** · \`${text}\``;
}

/** `/tags top` on one page: ranked tags with their counts, the phrases of the sentences, the prune offer and the page buttons. */
async function topMessage(ctx: BotContext, dataset: Dataset, concept: string | null, images: ImageRecord[], askedPage: number) {
  const mode = captionModeOf(dataset);
  const lines: string[] = [];
  const components: ActionRowBuilder<ButtonBuilder>[] = [];
  if (mode !== 'tags') lines.push(...(await topPhrases(ctx, dataset, concept, images)));
  if (mode !== 'sentences') {
    const captions = await captionsOf(ctx, dataset, images);
    const tagged = captions.filter((c): c is string[] => c !== null);
    if (tagged.length === 0) {
      lines.push(`No tags in ${scopeLabel(dataset, concept)} yet${images.length > 0 ? ': tagging may still be running' : ''}.`);
    } else {
      const freq = tagFrequencies(tagged);
      const pages = Math.max(1, Math.ceil(freq.length / TOP_PAGE_SIZE));
      const page = Math.max(1, Math.min(pages, askedPage));
      const first = (page - 1) * TOP_PAGE_SIZE;
      const width = String(Math.min(freq.length, first + TOP_PAGE_SIZE)).length;
      lines.push(
        `Tags of ${scopeLabel(dataset, concept)}, most used first: ${tagged.length} of ${images.length} images tagged, ${freq.length} different tags` +
          (pages > 1 ? ` · page ${page}/${pages}` : ''),
        ...freq.slice(first, first + TOP_PAGE_SIZE).map((f, i) => rankedLine(first + i + 1, width, f.tag, f.count, f.share)),
      );
      const untagged = images.filter((_, i) => captions[i] === null).map((i) => i.no);
      if (untagged.length > 0) lines.push(`Not tagged yet: ${listNos(untagged)}`);
      if (pages > 1) components.push(topPageRow(dataset, concept, page, pages));
      const prune = await pruneOffer(ctx, dataset, concept ?? 'main');
      if (prune) {
        lines.push(prune.text);
        components.push(...prune.components);
      }
    }
  }
  return { content: truncate(lines.join('\n'), 1990), components };
}

function topPageRow(dataset: Dataset, concept: string | null, page: number, pages: number) {
  const to = (p: number) => topPageButtons.encode({ datasetId: dataset.id, concept: concept ?? ALL_CONCEPTS, page: p });
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder()
      .setCustomId(to(page - 1))
      .setLabel('◀ Previous')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(page <= 1),
    new ButtonBuilder()
      .setCustomId(to(page + 1))
      .setLabel('Next ▶')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(page >= pages),
  );
}

/** In a page button's id: every concept of the dataset (not a concept name: those start with a letter or digit). */
const ALL_CONCEPTS = '-';

/** `/tags top`'s Previous/Next buttons: the same list, another page, in place. */
export const topPageButtons: ComponentHandler<{ datasetId: string; concept: string; page: number }, 'button'> = {
  ...customIdCodec('tagtop', { datasetId: ID_PART, concept: { pattern: /^(-|[a-z0-9][a-z0-9_-]{0,31})$/, decode: (text) => text }, page: COUNT_PART }),
  kind: 'button',
  defer: 'update',
  async handle(interaction, ctx, { datasetId, concept, page }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    const scope = concept === ALL_CONCEPTS ? null : concept;
    await interaction.editReply(await topMessage(ctx, dataset, scope, await imagesInScope(ctx, dataset, scope), page));
  },
};

/** Frequent words and phrases of the sentences in scope (the workshop's `/tags top` for prose). */
async function topPhrases(ctx: BotContext, dataset: Dataset, concept: string | null, images: ImageRecord[]): Promise<string[]> {
  const map = await ctx.sentences.getMany(
    dataset.id,
    images.map((i) => i.no),
  );
  const texts = images
    .map((i) => map.get(i.no))
    .filter((v) => v !== undefined)
    .map(sentenceOf);
  if (texts.length === 0) {
    return [`No sentences in ${scopeLabel(dataset, concept)} yet${images.length > 0 ? ': describing may still be running' : ''}.`];
  }
  const freq = phraseFrequencies(texts, texts.length >= 4 ? 2 : 1).slice(0, TOP_PHRASES);
  const width = String(freq.length).length;
  const lines = [
    `Words and phrases in the sentences of ${scopeLabel(dataset, concept)} (${texts.length} of ${images.length} images described):`,
    ...(freq.length > 0 ? freq.map((f, i) => rankedLine(i + 1, width, f.phrase, f.count, f.share)) : ['No word comes back in two sentences.']),
  ];
  const missing = images.filter((i) => !map.has(i.no)).map((i) => i.no);
  if (missing.length > 0) lines.push(`Not described yet: ${listNos(missing)}`);
  return lines;
}

/** What a tag in nearly every image says, by the dataset's kind. */
const WHAT_THE_TRIGGER_IS: Record<Dataset['kind'], string> = {
  character: 'who the character is',
  style: 'the style itself',
  concept: 'the concept itself',
};

/** Suggested pruning for a concept, with a one-click button (the list is kept for a day: store/expiring-store.ts). */
async function pruneOffer(ctx: BotContext, dataset: Dataset, concept: string) {
  const images = await imagesInScope(ctx, dataset, concept);
  const captions = (await captionsOf(ctx, dataset, images)).filter((c): c is string[] => c !== null);
  const conceptTrigger = (await ctx.store.getConcept(dataset.id, concept))?.trigger;
  const tags = pruneSuggestions(captions, { exclude: [dataset.trigger, ...(conceptTrigger ? [conceptTrigger] : [])] });
  if (tags.length === 0) return null;
  const id = newId(6);
  await ctx.expiring.pruneSuggestions.put(id, { datasetId: dataset.id, concept, tags });
  return {
    text:
      `✂️ In ≥ 90% of \`${concept}\`: ${tags.map((t) => `\`${t}\``).join(', ')}. ` +
      `These describe ${WHAT_THE_TRIGGER_IS[dataset.kind]}, so the trigger word should carry them: pruned, the LoRA learns them as part of it. ` +
      'Tags for what changes between pictures (expression, gaze, pose, setting) are never offered.',
    components: [
      new ActionRowBuilder<ButtonBuilder>().addComponents(
        new ButtonBuilder()
          .setCustomId(pruneButton.encode({ suggestionId: id }))
          .setLabel(`Prune these (${tags.length})`)
          .setStyle(ButtonStyle.Primary),
      ),
    ],
  };
}

async function prune(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { dataset, concept, offer } = await checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    const concept = conceptOption(interaction) ?? 'main';
    return { dataset, concept, offer: await pruneOffer(ctx, dataset, concept) };
  });
  if (!offer) {
    await interaction.editReply(`No tag is in ≥ 90% of the captions of concept \`${concept}\` of **${dataset.name}**: nothing to prune.`);
    return;
  }
  await interaction.editReply({ content: offer.text, components: offer.components });
}

/** What a bulk edit covers, once the member is known to be allowed to make it. */
interface BulkScope {
  dataset: Dataset;
  concept: string | null;
  images: ImageRecord[];
}

async function bulkScope(interaction: GuildInteraction, ctx: BotContext, dataset: Dataset, concept: string | null): Promise<BulkScope> {
  await requireEditor(interaction, ctx, dataset);
  return { dataset, concept, images: await imagesInScope(ctx, dataset, concept) };
}

/** The checks of a typed bulk edit (dataset, tags, concept, who may edit), before any acknowledgement. */
function typedBulk<T>(interaction: ChatInputCommandInteraction, ctx: BotContext, parse: () => T): Promise<BulkScope & { typed: T }> {
  return checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    const typed = parse();
    return { ...(await bulkScope(interaction, ctx, dataset, conceptOption(interaction))), typed };
  });
}

/** Applies a tag operation to every caption in scope, as one bulk edit that can be undone. */
async function bulk(
  interaction: GuildInteraction,
  ctx: BotContext,
  { dataset, concept, images }: BulkScope,
  op: (tags: string[]) => string[] | null,
  description: string,
) {
  const result = await ctx.captions.applyBulk(
    dataset.id,
    images.map((i) => i.no),
    op,
    { by: interaction.user.id, description },
  );
  ctx.logger.info({ datasetId: dataset.id, userId: interaction.user.id, changed: result.changed.length }, 'bulk caption edit');
  if (result.changed.length === 0) return `Nothing to change: ${description} would not change any caption of ${scopeLabel(dataset, concept)}.`;
  return (
    `${description[0]!.toUpperCase()}${description.slice(1)}: changed ${result.changed.length} caption${result.changed.length === 1 ? '' : 's'} of ${scopeLabel(dataset, concept)}` +
    ` (${result.changed.length > 1 && result.changed.length === images.length ? `all ${images.length} images` : listNos(result.changed, 15)}). Undo with \`/caption undo\`.`
  );
}

async function remove(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const scope = await typedBulk(interaction, ctx, () => typedTags(interaction.options.getString('tags', true)));
  const tags = scope.typed;
  const text = await bulk(interaction, ctx, scope, (t) => changedOrNull(removeTags(t, tags)), `removed ${tags.map((t) => `\`${t}\``).join(', ')}`);
  await interaction.editReply({ content: text });
}

async function replace(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const scope = await typedBulk(interaction, ctx, () => [
    typedTags(interaction.options.getString('from', true))[0]!,
    typedTags(interaction.options.getString('to', true))[0]!,
  ]);
  const [from, to] = scope.typed;
  const text = await bulk(interaction, ctx, scope, (t) => changedOrNull(replaceTag(t, from!, to!)), `replaced \`${from}\` with \`${to}\``);
  await interaction.editReply({ content: text });
}

async function add(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const scope = await typedBulk(interaction, ctx, () => typedTags(interaction.options.getString('tags', true)));
  const tags = scope.typed;
  const position = interaction.options.getString('position') === 'start' ? 'start' : 'end';
  const text = await bulk(interaction, ctx, scope, (t) => changedOrNull(addTags(t, tags, position)), `added ${tags.map((t) => `\`${t}\``).join(', ')}`);
  await interaction.editReply({ content: text });
}

async function retag(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { dataset, nos } = await checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    await requireEditor(interaction, ctx, dataset);
    const raw = interaction.options.getString('images');
    let nos = await ctx.store.imageNumbers(dataset.id);
    if (raw) {
      const selection = parseImageSelection(raw);
      if (selection.mine) nos = (await ctx.store.listImages(dataset.id)).filter((i) => i.contributorId === interaction.user.id).map((i) => i.no);
      else {
        const missing = selection.nos.filter((n) => !nos.includes(n));
        if (missing.length > 0) throw new UserError(`**${dataset.name}** has no image ${listNos(missing)}.`);
        nos = selection.nos;
      }
    }
    if (nos.length === 0) throw new UserError(`**${dataset.name}** has no images to tag.`);
    return { dataset, nos };
  });
  await ctx.taggingQueue.add(JobName.TagImages, {
    guildId: dataset.guildId,
    datasetId: dataset.id,
    imageNos: nos,
    retag: true,
    requestedBy: interaction.user.id,
  });
  await interaction.editReply(
    `Re-tagging ${nos.length} image${nos.length === 1 ? '' : 's'} of **${dataset.name}**; I will say here when it is done. Each image’s previous caption can be restored with \`/caption undo\`.`,
  );
}

async function undesired(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { dataset, tags } = await checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    await requireEditor(interaction, ctx, dataset);
    const raw = interaction.options.getString('tags', true).trim();
    const tags = raw.toLowerCase() === 'none' ? [] : typedTags(raw).map(normalizeTag);
    if (tags.length > 100) throw new UserError('At most 100 undesired tags.');
    return { dataset, tags };
  });
  await ctx.store.updateDataset(dataset.id, { undesiredTags: tags });
  await interaction.editReply({
    content:
      tags.length === 0
        ? `The tagger may write any tag for **${dataset.name}** again.`
        : `The tagger will leave out ${tags.map((t) => `\`${t}\``).join(', ')} for **${dataset.name}** (from the next tagging on; \`/tags remove\` cleans existing captions).`,
  });
}

/** Answers the autocomplete of the workshop commands (/tags, /caption, /concept). */
export async function autocompleteWorkshop(interaction: AutocompleteInteraction, ctx: BotContext) {
  await interaction.respond(await workshopSuggestions(interaction, ctx));
}

/** Suggestions for the `dataset`, `concept` and tag options of the workshop commands. */
async function workshopSuggestions(interaction: AutocompleteInteraction, ctx: BotContext) {
  const focused = interaction.options.getFocused(true);
  const typed = String(focused.value).trim().toLowerCase();
  if (focused.name === 'dataset') return autocompleteDatasets(interaction, ctx, typed);
  if (!interaction.guildId) return [];
  const name = interaction.options.getString('dataset');
  const dataset = name ? await ctx.store.findDataset(interaction.guildId, name) : await ctx.store.datasetForThread(interaction.channelId);
  if (!dataset || dataset.guildId !== interaction.guildId) return [];
  if (focused.name === 'concept') {
    return (await ctx.store.getConcepts(dataset.id))
      .filter((c) => c.name.includes(typed))
      .slice(0, 25)
      .map((c) => ({ name: c.name, value: c.name }));
  }
  // Tags: the most frequent ones matching the last comma-separated piece typed.
  const parts = String(focused.value).split(',');
  const last = (parts.pop() ?? '').trim().toLowerCase();
  const before = parts.map((p) => p.trim()).filter(Boolean);
  const images = await ctx.store.listImages(dataset.id);
  const tagged = [
    ...(
      await ctx.captions.getMany(
        dataset.id,
        images.map((i) => i.no),
      )
    ).values(),
  ].map((c) => c.tags);
  return tagFrequencies(tagged)
    .filter((f) => f.tag.toLowerCase().includes(last) && !before.includes(f.tag))
    .slice(0, 25)
    .map((f) => {
      const value = [...before, f.tag].join(', ').slice(0, 100);
      return { name: truncate(`${value} (${f.count})`, 100), value };
    });
}

export const tagsCommand: SlashCommand = {
  data: tagsCommandData,
  // Each may refuse (no such dataset or concept, a bad tag, not an editor): checked before any acknowledgement.
  subcommands: acknowledged('none', { top, remove, replace, add, prune, retag, undesired }),
  autocomplete: autocompleteWorkshop,
};

/** The "Prune these" button: removes the suggested tags across the concept, as one bulk edit. */
export const pruneButton: ComponentHandler<{ suggestionId: string }, 'button'> = {
  ...customIdCodec('prune', { suggestionId: ID_PART }),
  kind: 'button',
  // The result is for the channel; an expired offer or a member who may not edit is refused privately.
  defer: 'none',
  async handle(interaction, ctx, { suggestionId }) {
    const { offer, scope } = await checkThenDefer(interaction, async () => {
      const offer = await ctx.expiring.pruneSuggestions.get(suggestionId);
      if (!offer) throw new UserError('This suggestion has expired: run `/tags prune` again.');
      const dataset = await datasetById(interaction, ctx, offer.datasetId);
      return { offer, scope: await bulkScope(interaction, ctx, dataset, offer.concept) };
    });
    const text = await bulk(interaction, ctx, scope, (t) => changedOrNull(removeTags(t, offer.tags)), `pruned ${offer.tags.map((t) => `\`${t}\``).join(', ')}`);
    await interaction.editReply({ content: text });
  },
};
