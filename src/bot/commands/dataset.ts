import {
  ActionRowBuilder,
  AttachmentBuilder,
  ButtonBuilder,
  ButtonStyle,
  ChannelType,
  MessageFlags,
  ThreadAutoArchiveDuration,
  type Attachment,
  type AutocompleteInteraction,
  type ChatInputCommandInteraction,
} from 'discord.js';
import { datasetCommandData, IMAGE_OPTION_COUNT } from '../../../commands/dataset.ts';
import { captionModeOf } from '../../core/caption-text.ts';
import {
  parseImageSelection,
  validateClassWord,
  validateConceptName,
  validateDatasetName,
  validateResolution,
  validateTrigger,
} from '../../core/dataset-rules.ts';
import { UserError } from '../../core/errors.ts';
import { BASE_FAMILIES, familyLabel, isBaseFamily } from '../../core/model-family.ts';
import { makeContactSheet } from '../../core/image-sheets.ts';
import { DEFAULT_CONCEPT, type Dataset, type DatasetKind } from '../../store/dataset-store.ts';
import type { BotContext } from '../context.ts';
import { autocompleteDatasets, datasetById, displayNameOf, guildIdOf, isModerator, resolveDataset } from '../dataset-access.ts';
import { attestationPrompt, hasAttested, holdForAttestation } from '../attestation.ts';
import { takeIn } from '../contribution.ts';
import { reportComponent, reportRow } from '../moderation-report.ts';
import { acceptedIn, channelPolicy } from '../content-policy.ts';
import type { IncomingFile } from '../intake.ts';
import { COUNT_PART, acknowledged, subcommandTable, ID_PART, customIdCodec, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import { effectiveRating, postingOf, type ContentPolicy } from '../../core/rating.ts';
import { hiddenLine, listNos, renderDatasetSummary, truncate } from '../reports.ts';

const SHEET_PAGE_SIZE = 40;

function asIncoming(a: Attachment): IncomingFile {
  return { name: a.name, url: a.url, size: a.size };
}

async function create(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const name = validateDatasetName(interaction.options.getString('name', true));
  const trigger = validateTrigger(interaction.options.getString('trigger', true));
  const className = validateClassWord(interaction.options.getString('class', true));
  const kind = interaction.options.getString('kind', true) as DatasetKind;
  const base = interaction.options.getString('base', true);
  if (!['character', 'style', 'concept'].includes(kind)) throw new UserError('Kind must be character, style or concept.');
  if (!isBaseFamily(base)) throw new UserError(`Base must be one of ${BASE_FAMILIES.map(familyLabel).join(', ')}.`);
  const resolution = validateResolution(interaction.options.getInteger('resolution'), base);

  const channel = interaction.channel;
  const parent = channel?.isThread() ? channel.parent : channel;
  const captionMode = (await ctx.settings.get(guildId)).captionMode;
  const dataset = await ctx.store.createDataset({
    guildId,
    name,
    trigger,
    className,
    kind,
    base,
    resolution,
    ownerId: interaction.user.id,
    channelId: parent?.id ?? interaction.channelId,
    ...(captionMode ? { captionMode } : {}),
  });

  let threadNote = '';
  if (parent && (parent.type === ChannelType.GuildText || parent.type === ChannelType.GuildForum)) {
    try {
      const thread =
        parent.type === ChannelType.GuildText
          ? await parent.threads.create({
              name: `dataset · ${name}`,
              autoArchiveDuration: ThreadAutoArchiveDuration.OneWeek,
              reason: `LoRA dataset ${name}`,
            })
          : await parent.threads.create({
              name: `dataset · ${name}`,
              autoArchiveDuration: ThreadAutoArchiveDuration.OneWeek,
              message: { content: `Dataset **${name}**` },
            });
      await ctx.store.setThread(dataset.id, thread.id);
      await thread.send({
        content:
          `**${name}** — a ${kind} LoRA for ${familyLabel(base)} at ${resolution} px, trigger \`${trigger}\`, class \`${className}\`.\n` +
          `Contribute with \`/dataset add\` here (up to 10 images or a zip at a time)` +
          (ctx.config.DISCORD_MESSAGE_CONTENT ? ', or just post images in this thread.' : '.') +
          ` Withdraw yours any time with \`/dataset remove images:mine\`.`,
      });
      threadNote = ` Thread: <#${thread.id}>.`;
    } catch (err) {
      ctx.logger.warn({ err, datasetId: dataset.id }, 'could not open a thread for a dataset');
      threadNote = ' (I could not open a thread here: check that I may create public threads.)';
    }
  }
  await interaction.editReply({
    content: `Created dataset **${name}** (${kind}, ${familyLabel(base)}, ${resolution} px, trigger \`${trigger}\`).${threadNote}`,
  });
}

async function add(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const conceptName = interaction.options.getString('concept');
  const concept = conceptName ? validateConceptName(conceptName) : DEFAULT_CONCEPT;
  const files: IncomingFile[] = [];
  for (let i = 1; i <= IMAGE_OPTION_COUNT; i++) {
    const a = interaction.options.getAttachment(`image${i}`);
    if (a) files.push(asIncoming(a));
  }
  const zip = interaction.options.getAttachment('zip');
  if (zip && !/\.zip$/i.test(zip.name)) throw new UserError(`\`${zip.name.slice(0, 60)}\` is not a .zip file: attach images as image1…image10.`);
  if (files.length === 0 && !zip) throw new UserError('Attach at least one image (image1…image10) or a zip.');
  const upload = {
    datasetId: dataset.id,
    concept,
    contributor: { id: interaction.user.id, name: displayNameOf(interaction) },
    channelId: interaction.channelId,
    sourceMessageId: null,
    files,
    zip: zip ? asIncoming(zip) : null,
  };
  // A member's first contribution to the server waits for their attestation: nothing is fetched
  // before it, and the upload is held to be taken in when they confirm. The question is theirs alone.
  if (!(await hasAttested(ctx, dataset.guildId, interaction.user.id))) {
    await holdForAttestation(ctx, dataset.guildId, upload);
    const question = { ...attestationPrompt(interaction.user.id, 'command'), flags: MessageFlags.Ephemeral } as const;
    // Asked before the answer was acknowledged in public, it is a reply of its own; after, the public "thinking…" goes first.
    if (!interaction.deferred) {
      await interaction.reply(question);
      return;
    }
    await interaction.deleteReply();
    await interaction.followUp(question);
    return;
  }
  // The uploader's own receipt: the Report button sits where others look at the dataset (/dataset show).
  await interaction.editReply(await takeIn(ctx, interaction.client, dataset, upload));
}

async function showPage(ctx: BotContext, dataset: Dataset, requestedPage: number, policy: ContentPolicy) {
  const [images, concepts] = await Promise.all([ctx.store.listImages(dataset.id), ctx.store.getConcepts(dataset.id)]);
  const pages = Math.max(1, Math.ceil(images.length / SHEET_PAGE_SIZE));
  const page = Math.min(Math.max(1, requestedPage), pages);
  const slice = images.slice((page - 1) * SHEET_PAGE_SIZE, page * SHEET_PAGE_SIZE);
  const range = slice.length > 0 ? `#${slice[0]!.no}–#${slice[slice.length - 1]!.no}` : '';
  const nos = images.map((i) => i.no);
  const mode = captionModeOf(dataset);
  const [tags, sentences] = await Promise.all([
    mode === 'sentences' ? null : ctx.captions.getMany(dataset.id, nos),
    mode === 'tags' ? null : ctx.sentences.getMany(dataset.id, nos),
  ]);
  const captioned = new Set(nos.filter((no) => (tags === null || tags.has(no)) && (sentences === null || sentences.has(no))));
  let content = renderDatasetSummary({ dataset, images, concepts, captioned }, page, pages, range);
  const files: AttachmentBuilder[] = [];
  // A tile this channel may not show as it is stays off the sheet.
  const shown = slice.filter((img) => postingOf(effectiveRating(img.ratings), policy) === 'show');
  const hidden = slice.filter((img) => !shown.includes(img));
  if (hidden.length > 0) content = truncate(`${content}\n${hiddenLine(hidden, policy).replace('added image', 'image')}`, 1990);
  if (shown.length > 0) {
    const tiles = await Promise.all(shown.map(async (img) => ({ image: await ctx.blobs.read(img.thumbBlob), label: `#${img.no}` })));
    const sheet = await makeContactSheet(tiles);
    files.push(new AttachmentBuilder(sheet, { name: `contact-sheet-${page}.jpg` }));
  }
  const components =
    pages > 1
      ? [
          new ActionRowBuilder<ButtonBuilder>().addComponents(
            new ButtonBuilder()
              .setCustomId(showPageButtons.encode({ datasetId: dataset.id, page: page - 1 }))
              .setLabel('◀ Previous')
              .setStyle(ButtonStyle.Secondary)
              .setDisabled(page <= 1),
            new ButtonBuilder()
              .setCustomId(showPageButtons.encode({ datasetId: dataset.id, page: page + 1 }))
              .setLabel('Next ▶')
              .setStyle(ButtonStyle.Secondary)
              .setDisabled(page >= pages),
            reportComponent(dataset.id),
          ),
        ]
      : images.length > 0
        ? [reportRow(dataset.id)]
        : [];
  return { content, files, components };
}

async function show(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const policy = await channelPolicy(interaction.client, ctx.settings, dataset.guildId, interaction.channelId);
  await interaction.editReply(await showPage(ctx, dataset, interaction.options.getInteger('page') ?? 1, policy));
}

async function list(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const datasets = await ctx.store.listDatasets(guildIdOf(interaction));
  if (datasets.length === 0) {
    await interaction.editReply('No datasets in this server yet. Start one with `/dataset create`.');
    return;
  }
  const counts = await Promise.all(datasets.map((d) => ctx.store.imageCount(d.id)));
  const lines = datasets.map(
    (d, i) =>
      `**${d.name}** · ${d.kind} · ${familyLabel(d.base)} ${d.resolution} px · ${counts[i]} image${counts[i] === 1 ? '' : 's'} · owner <@${d.ownerId}>` +
      (d.threadId ? ` · <#${d.threadId}>` : ''),
  );
  let content = `Datasets in this server (${datasets.length}):\n`;
  for (const [i, line] of lines.entries()) {
    if (content.length + line.length > 1900) {
      content += `…and ${lines.length - i} more.`;
      break;
    }
    content += `${line}\n`;
  }
  await interaction.editReply({ content });
}

async function remove(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  const selection = parseImageSelection(interaction.options.getString('images', true));
  const removed = await ctx.moderation.removeSelected(dataset, selection, { userId: interaction.user.id, moderator: isModerator(interaction, dataset) });
  await interaction.editReply(`Removed ${removed.length} image${removed.length === 1 ? '' : 's'} from **${dataset.name}**: ${listNos(removed)}.`);
}

/**
 * A signed link to the dataset as a zip in sd-scripts' layout. Who may: its owner, moderators and
 * its contributors — the members who may already edit its captions and concepts. The zip holds
 * every member's pictures, so a member who gave none does not get them all in one click.
 */
async function exportDataset(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const dataset = await resolveDataset(interaction, ctx);
  if (!isModerator(interaction, dataset) && !(await ctx.store.listImages(dataset.id)).some((i) => i.contributorId === interaction.user.id)) {
    throw new UserError(`Only contributors to **${dataset.name}**, its owner and moderators can export it.`);
  }
  // What waits for a moderator (flagged or reported) is not handed out in bulk before they decide.
  const hold = await ctx.moderation.hold(dataset, await acceptedIn(interaction.client, ctx.settings, dataset), 'be exported');
  if (hold) throw new UserError(hold);
  const { PUBLIC_URL, DOWNLOAD_SECRET } = ctx.config;
  if (!PUBLIC_URL || !DOWNLOAD_SECRET) {
    throw new UserError('Exports are sent as download links, which this server has not set up: an admin needs to set PUBLIC_URL and DOWNLOAD_SECRET.');
  }
  const { plan } = await ctx.exporter.contents(dataset);
  const { url, expiresAt } = ctx.exporter.link(dataset, PUBLIC_URL, DOWNLOAD_SECRET);
  const images = plan.concepts.reduce((n, c) => n + c.images.length, 0);
  const folders = plan.concepts.map((c) => `\`img/${c.folder}\` (${c.images.length})`).join(', ');
  await interaction.editReply(
    `**${dataset.name}** for sd-scripts: ${images} image${images === 1 ? '' : 's'} in ${folders}, each with its caption, and \`dataset.toml\`. ` +
      `[Download the zip](<${url}>) (the link expires <t:${Math.floor(expiresAt.getTime() / 1000)}:R>). ` +
      'It is put together when you download it, so images withdrawn by then are left out.',
  );
}

async function autocomplete(interaction: AutocompleteInteraction, ctx: BotContext) {
  const focused = interaction.options.getFocused(true);
  await interaction.respond(focused.name === 'dataset' ? await autocompleteDatasets(interaction, ctx, String(focused.value)) : []);
}

export const datasetCommand: SlashCommand = {
  data: datasetCommandData,
  subcommands: subcommandTable(acknowledged('public', { create, add, show, list }), acknowledged('ephemeral', { remove, export: exportDataset })),
  autocomplete,
};

/** The contact sheet's Previous/Next buttons. */
export const showPageButtons: ComponentHandler<{ datasetId: string; page: number }, 'button'> = {
  ...customIdCodec('dsshow', { datasetId: ID_PART, page: COUNT_PART }),
  kind: 'button',
  defer: 'update',
  async handle(interaction, ctx, { datasetId, page }) {
    const dataset = await datasetById(interaction, ctx, datasetId);
    const policy = await channelPolicy(interaction.client, ctx.settings, dataset.guildId, interaction.channelId);
    await interaction.editReply(await showPage(ctx, dataset, page, policy));
  },
};
