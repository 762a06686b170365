import {
  ActionRowBuilder,
  AttachmentBuilder,
  ModalBuilder,
  TextInputBuilder,
  TextInputStyle,
  type ChatInputCommandInteraction,
  type ModalSubmitInteraction,
} from 'discord.js';
import { captionCommandData } from '../../../commands/workshop.ts';
import { isUserError, UserError } from '../../core/errors.ts';
import {
  CAPTION_MODE_LABELS,
  captionModeOf,
  composeForMode,
  isCaptionMode,
  normalizeSentence,
  replaceInSentence,
  stripLeadingTriggerPhrase,
  tracksOf,
  validateSentence,
  type CaptionTrack,
} from '../../core/caption-text.ts';
import { validateConceptName } from '../../core/dataset-rules.ts';
import { previewJpeg } from '../../core/image-sheets.ts';
import { effectiveRating, postingOf } from '../../core/rating.ts';
import { channelPolicy } from '../content-policy.ts';
import { composeCaption, MAX_CAPTION_CHARS, parseTags, stripLeadingTriggers, validateCaptionText } from '../../core/tag-ops.ts';
import { JobName } from '../../queues/contract.ts';
import { MAX_BULK_EDITS, sentenceOf, type CaptionStore, type CaptionVersion } from '../../store/caption-store.ts';
import type { Dataset, ImageRecord } from '../../store/dataset-store.ts';
import type { BotContext } from '../context.ts';
import { datasetById, requireEditor, resolveDataset } from '../dataset-access.ts';
import { COUNT_PART, acknowledged, subcommandTable, ID_PART, customIdCodec, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import { listNos, truncate } from '../reports.ts';
import { autocompleteWorkshop, imagesInScope } from './tags.ts';

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
async function writtenCaption(ctx: BotContext, dataset: Dataset, image: ImageRecord, tags: string[]): Promise<string> {
  const t = await triggersOf(ctx, dataset, image);
  return composeCaption(t.dataset, t.concept, tags);
}

function fenced(text: string, max = 900): string {
  return `\`\`\`\n${truncate(text.replaceAll('`', 'ˋ'), max)}\n\`\`\``;
}

function versionLine(v: CaptionVersion): string {
  return `version ${v.version} · ${v.source} · <t:${Math.floor(v.at / 1000)}:R>`;
}

async function show(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const image = await imageOf(ctx, dataset, interaction.options.getInteger('image', true));
  const mode = captionModeOf(dataset);
  const [caption, sentence] = await Promise.all([ctx.captions.get(dataset.id, image.no), ctx.sentences.get(dataset.id, image.no)]);
  const t = await triggersOf(ctx, dataset, image);
  const lines = [
    `**#${image.no}** of **${dataset.name}** · \`${image.sourceName}\` by ${image.contributorName} · ${image.width}×${image.height} · concept \`${image.concept}\``,
  ];
  lines.push(ratingLine(image));
  if (!caption && !sentence) {
    lines.push('No caption yet (captioning may still be running).');
  } else {
    if (sentence) lines.push(`Sentence (${versionLine(sentence)}):\n${fenced(sentenceOf(sentence))}`);
    else if (mode !== 'tags') lines.push('No sentence yet (captioning may still be running).');
    if (caption) lines.push(`Tags (${versionLine(caption)}):\n${fenced(caption.tags.join(', '))}`);
    else if (mode !== 'sentences') lines.push('No tags yet (tagging may still be running).');
    const written = composeForMode(mode, t.dataset, t.concept, caption?.tags ?? null, sentence ? sentenceOf(sentence) : null);
    if (written !== null) lines.push(`The trainer reads (${CAPTION_MODE_LABELS[mode]}):\n${fenced(written, 600)}`);
  }
  // The preview follows the channel's policy like a contact sheet tile: shown, spoilered, or left out.
  const policy = await channelPolicy(interaction.client, ctx.settings, dataset.guildId, interaction.channelId);
  const how = postingOf(effectiveRating(image.ratings), policy);
  const files: AttachmentBuilder[] = [];
  if (how === 'withhold') lines.push(`🙈 No preview here: rated above ${policy.spoilered}, more than this channel shows.`);
  else {
    // Large enough to judge a caption by (the thumbnail is for contact sheets).
    const preview = new AttachmentBuilder(await previewJpeg(ctx.blobs.path(image.masterBlob)), { name: `image-${image.no}.jpg` });
    files.push(preview.setSpoiler(how === 'spoiler'));
  }
  await interaction.editReply({ content: truncate(lines.join('\n'), 1990), files });
}

/** The image's rating and who gave it (the highest counts). */
function ratingLine(image: ImageRecord): string {
  const rating = effectiveRating(image.ratings);
  if (rating === null) return 'Rating: not rated yet.';
  const by = Object.entries(image.ratings ?? {}).map(([source, r]) => `${source === 'tagger' ? 'tagger' : 'photo classifier'}: ${r}`);
  return `Rating: **${rating}** (${by.join(', ')})`;
}

/** Which caption a command works on: the one named, else the one the dataset's mode leads with. */
function partOf(interaction: ChatInputCommandInteraction, dataset: Dataset): CaptionTrack {
  const raw = interaction.options.getString('part');
  if (raw === 'tags' || raw === 'sentences') return raw;
  if (raw !== null) throw new UserError('Part must be tags or sentences.');
  return captionModeOf(dataset) === 'tags' ? 'tags' : 'sentences';
}

function storeOf(ctx: BotContext, part: CaptionTrack): CaptionStore {
  return part === 'tags' ? ctx.captions : ctx.sentences;
}

const EDIT_FIELD = 'tags';
const SENTENCE_FIELD = 'sentence';

async function edit(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const image = await imageOf(ctx, dataset, interaction.options.getInteger('image', true));
  await requireEditor(interaction, ctx, dataset);
  const part = partOf(interaction, dataset);
  const caption = await storeOf(ctx, part).get(dataset.id, image.no);
  const input =
    part === 'tags'
      ? new TextInputBuilder().setCustomId(EDIT_FIELD).setLabel('Tags, comma-separated (triggers are added)').setRequired(false)
      : new TextInputBuilder().setCustomId(SENTENCE_FIELD).setLabel('The sentence (triggers are added in front)').setRequired(true);
  // The form takes exactly what the bot accepts, so nothing typed is refused for its length.
  input.setStyle(TextInputStyle.Paragraph).setMaxLength(MAX_CAPTION_CHARS);
  const current = caption ? (part === 'tags' ? caption.tags.join(', ') : sentenceOf(caption)) : '';
  if (current) input.setValue(current);
  const form = { datasetId: dataset.id, imageNo: image.no, version: caption?.version ?? 0 };
  const modal = new ModalBuilder()
    .setCustomId(part === 'tags' ? captionEditModal.encode(form) : captionSentenceModal.encode(form))
    .setTitle(`${part === 'tags' ? 'Caption' : 'Sentence'} of #${image.no} (${dataset.name})`.slice(0, 45))
    .addComponents(new ActionRowBuilder<TextInputBuilder>().addComponents(input));
  await interaction.showModal(modal);
}
/**
 * Runs a form's save; when it is refused, the member gets the reason and their text back (in the
 * reply, or as a file when it does not fit), so nothing they typed is lost with the form.
 */
async function savingForm(interaction: ModalSubmitInteraction, text: string, save: () => Promise<void>): Promise<void> {
  try {
    await save();
  } catch (err) {
    if (!isUserError(err)) throw err;
    const head = `⚠️ ${err.message}\nNothing was saved. Here is your text, to fix and paste into \`/caption edit\` again:`;
    const inline = `\`\`\`\n${text.replaceAll('`', 'ˋ')}\n\`\`\``;
    if (head.length + 1 + inline.length <= 2000) {
      await interaction.editReply({ content: `${head}\n${inline}` });
    } else {
      const file = new AttachmentBuilder(Buffer.from(text, 'utf8'), { name: 'your-caption.txt' });
      await interaction.editReply({ content: `${head} (attached)`, files: [file] });
    }
  }
}

type CaptionFormIds = { datasetId: string; imageNo: number; version: number };

interface CaptionFormSave {
  ctx: BotContext;
  dataset: Dataset;
  image: ImageRecord;
  text: string;
  /** The dataset's trigger and the image's concept's, if it has one. */
  triggers: string[];
  /** `ifVersion`: the caption the form started from, so a concurrent edit is not overwritten. */
  options: { by: string; source: 'edit'; ifVersion?: number };
}

/** A caption form's submit: checks who may edit, saves the text with `save` and answers what it returns; a refused text is given back. */
function captionForm(family: string, field: string, save: (form: CaptionFormSave) => Promise<string>): ComponentHandler<CaptionFormIds, 'modal'> {
  return {
    ...customIdCodec(family, { datasetId: ID_PART, imageNo: COUNT_PART, version: COUNT_PART }),
    kind: 'modal',
    defer: 'ephemeral',
    async handle(interaction, ctx, { datasetId, imageNo, version }) {
      const dataset = await datasetById(interaction, ctx, datasetId);
      const image = await imageOf(ctx, dataset, imageNo);
      await requireEditor(interaction, ctx, dataset);
      const text = interaction.fields.getTextInputValue(field);
      await savingForm(interaction, text, async () => {
        const t = await triggersOf(ctx, dataset, image);
        const triggers = [t.dataset, ...(t.concept ? [t.concept] : [])];
        const options = { by: interaction.user.id, source: 'edit' as const, ...(version > 0 ? { ifVersion: version } : {}) };
        await interaction.editReply({ content: await save({ ctx, dataset, image, text, triggers, options }) });
      });
    },
  };
}

/** The caption editing form. */
export const captionEditModal = captionForm('capedit', EDIT_FIELD, async ({ ctx, dataset, image, text, triggers, options }) => {
  validateCaptionText(text);
  const saved = await ctx.captions.set(dataset.id, image.no, stripLeadingTriggers(parseTags(text), triggers), options);
  const written = (await writtenCaption(ctx, dataset, image, saved.tags)).replaceAll('`', 'ˋ').slice(0, 1800);
  return `Saved the caption of **#${image.no}** (version ${saved.version}):\n\`\`\`\n${written}\n\`\`\``;
});

/** The sentence editing form. */
export const captionSentenceModal = captionForm('capsent', SENTENCE_FIELD, async ({ ctx, dataset, image, text, triggers, options }) => {
  validateSentence(text);
  const saved = await ctx.sentences.set(dataset.id, image.no, [stripLeadingTriggerPhrase(text, triggers)], options);
  return `Saved the sentence of **#${image.no}** (version ${saved.version}):\n${fenced(sentenceOf(saved), 1800)}`;
});

/** Find and replace a word or phrase in every sentence in scope, as one bulk edit that can be undone. */
async function replace(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const from = normalizeSentence(interaction.options.getString('from', true));
  const to = normalizeSentence(interaction.options.getString('to') ?? '');
  if (from === '') throw new UserError('Say which word or phrase to replace.');
  if (/[\p{Cc}]/u.test(from + to)) throw new UserError('The words to find and to write cannot hold control characters.');
  const rawConcept = interaction.options.getString('concept');
  const concept = rawConcept ? validateConceptName(rawConcept) : null;
  const images = await imagesInScope(ctx, dataset, concept);
  const description = to === '' ? `removed “${from}” from the sentences` : `replaced “${from}” with “${to}” in the sentences`;
  const result = await ctx.sentences.applyBulk(
    dataset.id,
    images.map((i) => i.no),
    ([sentence]) => {
      const edit = replaceInSentence(sentence ?? '', from, to);
      return edit.changed ? [edit.text] : null;
    },
    { by: interaction.user.id, description },
  );
  ctx.logger.info({ datasetId: dataset.id, userId: interaction.user.id, changed: result.changed.length }, 'bulk sentence edit');
  const scope = concept ? `concept \`${concept}\` of **${dataset.name}**` : `**${dataset.name}**`;
  const content =
    result.changed.length === 0
      ? `No sentence of ${scope} holds “${from}”: nothing was changed.`
      : `${description.charAt(0).toUpperCase()}${description.slice(1)}: changed ${result.changed.length} sentence${result.changed.length === 1 ? '' : 's'} of ${scope} ` +
        `(${listNos(result.changed, 15)}). Undo with \`/caption undo\`.`;
  await interaction.editReply({ content: truncate(content, 1990) });
}

async function undo(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  await requireEditor(interaction, ctx, dataset);
  const no = interaction.options.getInteger('image');
  if (no !== null) {
    const image = await imageOf(ctx, dataset, no);
    const part = partOf(interaction, dataset);
    const restored = await storeOf(ctx, part).undo(dataset.id, image.no, interaction.user.id);
    const what = part === 'tags' ? 'tags' : 'sentence';
    if (!restored) throw new UserError(`#${image.no} has no earlier ${what} to go back to.`);
    const text = part === 'tags' ? await writtenCaption(ctx, dataset, image, restored.tags) : sentenceOf(restored);
    await interaction.editReply({
      content: `Restored version ${restored.version} of the ${what} of **#${image.no}**:\n${fenced(text, 1800)}`,
    });
    return;
  }
  // The newest bulk edit of either part.
  const [tagEdit, sentenceEdit] = await Promise.all([
    ctx.captions.listBulkEdits(dataset.id, MAX_BULK_EDITS).then((l) => l.find((b) => b.undone === null)),
    ctx.sentences.listBulkEdits(dataset.id, MAX_BULK_EDITS).then((l) => l.find((b) => b.undone === null)),
  ]);
  const store = sentenceEdit && (!tagEdit || sentenceEdit.at > tagEdit.at) ? ctx.sentences : ctx.captions;
  const result = await store.undoLastBulk(dataset.id, interaction.user.id);
  if (!result) throw new UserError(`**${dataset.name}** has no bulk edit to undo.`);
  const noun = store === ctx.sentences ? 'sentence' : 'caption';
  const skipped = result.skipped.length > 0 ? ` ${result.skipped.length} ${noun}(s) changed since were left as they are.` : '';
  await interaction.editReply({
    content: `Undid “${result.description}” on ${result.restored.length} ${noun}${result.restored.length === 1 ? '' : 's'} of **${dataset.name}**.${skipped}`,
  });
}

/** Shows or sets what the trainer reads; a new mode has the missing captions made. */
async function mode(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const raw = interaction.options.getString('mode');
  const current = captionModeOf(dataset);
  if (raw === null) {
    await interaction.editReply(
      `**${dataset.name}** is captioned with ${CAPTION_MODE_LABELS[current]}${dataset.captionMode ? '' : ` (the default for a ${dataset.kind} dataset)`}. ` +
        'Change it with `/caption mode mode:`.',
    );
    return;
  }
  if (!isCaptionMode(raw)) throw new UserError('The mode must be tags, sentences or both.');
  await requireEditor(interaction, ctx, dataset);
  await ctx.store.updateDataset(dataset.id, { captionMode: raw });
  ctx.logger.info({ datasetId: dataset.id, userId: interaction.user.id, from: current, to: raw }, 'caption mode changed');
  const nos = await ctx.store.imageNumbers(dataset.id);
  let missing = 0;
  if (nos.length > 0) {
    const tracks = tracksOf(raw);
    for (const track of tracks) {
      const have = await storeOf(ctx, track).getMany(dataset.id, nos);
      missing = Math.max(missing, nos.filter((n) => !have.has(n)).length);
    }
    if (missing > 0) {
      await ctx.taggingQueue.add(JobName.TagImages, {
        guildId: dataset.guildId,
        datasetId: dataset.id,
        imageNos: nos,
        retag: false,
        requestedBy: interaction.user.id,
        tracks,
      });
    }
  }
  await interaction.editReply(
    `**${dataset.name}** is now captioned with ${CAPTION_MODE_LABELS[raw]}.` +
      (missing > 0 ? ` Making the ${missing} missing caption${missing === 1 ? '' : 's'} now; I will say here when they are done.` : ''),
  );
}

export const captionCommand: SlashCommand = {
  data: captionCommandData,
  subcommands: subcommandTable(
    acknowledged('public', { show, undo, replace, mode }),
    // The edit form must be the first answer, so it is not deferred.
    acknowledged('none', { edit }),
  ),
  autocomplete: autocompleteWorkshop,
};
