import {
  ActionRowBuilder,
  AttachmentBuilder,
  ButtonBuilder,
  ButtonStyle,
  ModalBuilder,
  PermissionFlagsBits,
  TextInputBuilder,
  TextInputStyle,
  type AutocompleteInteraction,
  type ChatInputCommandInteraction,
  type Client,
} from 'discord.js';
import { moderationCommandData } from '../../../commands/moderation.ts';
import { MAX_REASON_CHARS, MIN_REASON_CHARS } from '../../core/dataset-rules.ts';
import { UserError } from '../../core/errors.ts';
import { codeOf } from '../../core/fs-errors.ts';
import { makeContactSheet } from '../../core/image-sheets.ts';
import type { Dataset } from '../../store/dataset-store.ts';
import type { AuditEntry, ModerationTarget } from '../../store/moderation-store.ts';
import { acceptedIn } from '../content-policy.ts';
import type { BotContext } from '../context.ts';
import { autocompleteDatasets, datasetById, guildIdOf, type GuildInteraction } from '../dataset-access.ts';
import { COUNT_PART, ID_PART, customIdCodec, oneOfPart, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import type { QueueItem } from '../moderation.ts';
import { listNos, truncate } from '../reports.ts';

/** Items per queue page: each has a row of buttons, and the pager takes the fifth row. */
const QUEUE_PAGE_SIZE = 4;
const LOG_PAGE_SIZE = 10;
const REASON_FIELD = 'reason';

/** Checked on every command and button, whatever Discord shows to whom. */
export function requireModerator(interaction: GuildInteraction): void {
  if (!interaction.memberPermissions?.has(PermissionFlagsBits.ManageMessages)) {
    throw new UserError('Moderation is for members with Manage Messages.');
  }
}

/** A dataset named in the options: moderators reach every dataset of the server, not only the thread's. */
async function namedDataset(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<Dataset> {
  const name = interaction.options.getString('dataset', true).trim();
  const dataset = await ctx.store.findDataset(guildIdOf(interaction), name);
  if (!dataset) throw new UserError(`There is no dataset named \`${name.slice(0, 40)}\` in this server.`);
  return dataset;
}

function limitOf(client: Client, ctx: BotContext) {
  return (dataset: Dataset) => acceptedIn(client, ctx.settings, dataset);
}

function targetName(item: { target: ModerationTarget; dataset: { name: string } }): string {
  return item.target.kind === 'dataset' ? `dataset **${item.dataset.name}**` : `image #${item.target.no} of **${item.dataset.name}**`;
}

function quote(text: string, max = 80): string {
  return `“${truncate(text.replace(/\s+/g, ' '), max)}”`;
}

function describeItem(item: QueueItem, index: number): string {
  const why: string[] = [];
  if (item.rating) why.push(`rated **${item.rating.rating}** by the ${item.rating.by} (its channel takes up to ${item.rating.limit})`);
  if (item.reports.length > 0) {
    const shown = item.reports.slice(0, 3).map((r) => `<@${r.reporterId}> ${quote(r.reason)}`);
    const more = item.reports.length > 3 ? ` and ${item.reports.length - 3} more` : '';
    why.push(`${item.reports.length} report${item.reports.length === 1 ? '' : 's'}: ${shown.join(' · ')}${more}`);
  }
  return `**${index}.** ${targetName(item)} — ${why.join(' · ')}`;
}

function itemButtons(item: QueueItem): ActionRowBuilder<ButtonBuilder> {
  const no = item.target.kind === 'image' ? item.target.no : 0;
  const data = { datasetId: item.dataset.id, no };
  const what = no === 0 ? 'dataset' : `#${no}`;
  const row = new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(removeButton.encode(data)).setLabel(`Remove ${what}`).setStyle(ButtonStyle.Danger),
    new ButtonBuilder()
      .setCustomId(reviewButton.encode({ action: 'approve', ...data }))
      .setLabel(`Approve ${what}`)
      .setStyle(ButtonStyle.Success),
  );
  if (item.reports.length > 0) {
    row.addComponents(
      new ButtonBuilder()
        .setCustomId(reviewButton.encode({ action: 'dismiss', ...data }))
        .setLabel('Dismiss reports')
        .setStyle(ButtonStyle.Secondary),
    );
  }
  return row;
}

function pager(view: 'queue' | 'log', page: number, pages: number): ActionRowBuilder<ButtonBuilder> {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder()
      .setCustomId(pageButton.encode({ view, page: Math.max(1, page - 1) }))
      .setLabel('◀ Previous')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(page <= 1),
    new ButtonBuilder()
      .setCustomId(pageButton.encode({ view, page: page + 1 }))
      .setLabel('Next ▶')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(page >= pages),
  );
}

/**
 * The images of a queue page on one contact sheet, each labelled with its item's number and image
 * number, or null when the page has no images. Flagged tiles are shown: only moderators see the queue.
 */
async function queueSheet(ctx: BotContext, slice: readonly QueueItem[], first: number, page: number): Promise<AttachmentBuilder | null> {
  const tiles: { image: Buffer; label: string }[] = [];
  for (const [i, item] of slice.entries()) {
    if (item.target.kind !== 'image') continue;
    const image = await ctx.store.getImage(item.dataset.id, item.target.no);
    // Removed since the queue was read: its line stays, its tile goes.
    const thumb =
      image &&
      (await ctx.blobs.read(image.thumbBlob).catch((err: unknown) => {
        if (codeOf(err) === 'ENOENT') return null;
        throw err;
      }));
    if (thumb) tiles.push({ image: thumb, label: `${first + i + 1}. #${item.target.no}` });
  }
  if (tiles.length === 0) return null;
  return new AttachmentBuilder(await makeContactSheet(tiles, { columns: tiles.length }), { name: `moderation-queue-${page}.jpg` });
}

/** One page of the queue, with a row of actions per item and its images on a contact sheet. */
async function queueView(client: Client, ctx: BotContext, guildId: string, requested: number, note = '') {
  const items = await ctx.moderation.queue(guildId, limitOf(client, ctx));
  const head = note ? `${note}\n` : '';
  // `files` is always given, so that an edited page replaces the sheet it had.
  if (items.length === 0) return { content: `${head}Nothing waits for review: no flagged or reported images or datasets.`, components: [], files: [] };
  const pages = Math.ceil(items.length / QUEUE_PAGE_SIZE);
  const page = Math.min(Math.max(1, requested), pages);
  const slice = items.slice((page - 1) * QUEUE_PAGE_SIZE, page * QUEUE_PAGE_SIZE);
  const first = (page - 1) * QUEUE_PAGE_SIZE;
  const lines = slice.map((item, i) => truncate(describeItem(item, first + i + 1), 440));
  const title = `**Moderation queue** · ${items.length} item${items.length === 1 ? '' : 's'}${pages > 1 ? ` · page ${page}/${pages}` : ''}`;
  const sheet = await queueSheet(ctx, slice, first, page);
  return {
    content: truncate(`${head}${title}\n${lines.join('\n')}`, 1990),
    components: [...slice.map(itemButtons), ...(pages > 1 ? [pager('queue', page, pages)] : [])],
    files: sheet ? [sheet] : [],
  };
}

const ACTION_WORDS: Record<AuditEntry['action'], string> = {
  'remove-image': 'removed',
  'remove-images': 'removed',
  'remove-dataset': 'removed',
  'approve-image': 'approved',
  'approve-dataset': 'approved',
  dismiss: 'dismissed the reports on',
};

function effectText(entry: AuditEntry): string {
  const e = entry.effect;
  const parts: string[] = [];
  if (e.images) parts.push(`${e.images} image${e.images === 1 ? '' : 's'}`);
  if (e.runsCancelled) parts.push(`${e.runsCancelled} run${e.runsCancelled === 1 ? '' : 's'} cancelled`);
  if (e.runsWithheld) parts.push(`files of ${e.runsWithheld} run${e.runsWithheld === 1 ? '' : 's'} withheld`);
  if (e.reportsClosed) parts.push(`${e.reportsClosed} report${e.reportsClosed === 1 ? '' : 's'} closed`);
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}

export function describeEntry(entry: AuditEntry): string {
  const what = entry.nos
    ? `${entry.nos.length === 1 ? 'image' : 'images'} ${listNos(entry.nos)} of **${entry.datasetName}**`
    : entry.no === null
      ? `dataset **${entry.datasetName}**`
      : `image #${entry.no} of **${entry.datasetName}**`;
  const why = entry.reason ? ` — ${quote(entry.reason, 200)}` : '';
  return `<t:${Math.floor(entry.at / 1000)}:f> <@${entry.moderatorId}> ${ACTION_WORDS[entry.action]} ${what}${why}${effectText(entry)}`;
}

async function logView(ctx: BotContext, guildId: string, requested: number) {
  const total = (await ctx.moderation.logPage(guildId, 0, 0)).total;
  if (total === 0) return { content: 'The moderation log is empty: nothing was removed, approved or dismissed yet.', components: [] };
  const pages = Math.ceil(total / LOG_PAGE_SIZE);
  const page = Math.min(Math.max(1, requested), pages);
  const { entries } = await ctx.moderation.logPage(guildId, (page - 1) * LOG_PAGE_SIZE, LOG_PAGE_SIZE);
  const title = `**Moderation log** · ${total} entr${total === 1 ? 'y' : 'ies'}, newest first${pages > 1 ? ` · page ${page}/${pages}` : ''}`;
  return {
    content: truncate(`${title}\n${entries.map((e) => truncate(describeEntry(e), 380)).join('\n')}`, 1990),
    components: pages > 1 ? [pager('log', page, pages)] : [],
  };
}

/** What a moderator's action did, in one line. */
function doneText(entry: AuditEntry): string {
  return `Done: ${ACTION_WORDS[entry.action]} ${entry.no === null ? `dataset **${entry.datasetName}**` : `image #${entry.no} of **${entry.datasetName}**`}${effectText(entry)}. It is in \`/moderation log\`.`;
}

function reasonOf(text: string): string {
  const reason = text.replace(/\s+/g, ' ').trim();
  if (reason.length < MIN_REASON_CHARS || reason.length > MAX_REASON_CHARS) {
    throw new UserError(`A removal needs a reason of ${MIN_REASON_CHARS}–${MAX_REASON_CHARS} characters: it goes into the audit log.`);
  }
  return reason;
}

async function remove(ctx: BotContext, dataset: Dataset, no: number, moderatorId: string, reason: string): Promise<AuditEntry> {
  const by = { moderatorId, reason: reasonOf(reason) };
  if (no !== 0) return ctx.moderation.removeImage(dataset, no, by);
  const entry = await ctx.moderation.removeDataset(dataset, by);
  // Its contributors learn where it went (who removed it stays in the audit log).
  await ctx.notices.post(
    dataset.threadId ?? dataset.channelId,
    `🛡️ **${dataset.name}** was removed by the moderators: its images are deleted, its runs stopped and its LoRAs withheld. Reason: ${by.reason}`,
    `dataset-removed:${dataset.id}`,
  );
  return entry;
}

export const moderationCommand: SlashCommand = {
  data: moderationCommandData,
  subcommands: {
    queue: {
      defer: 'ephemeral',
      async execute(interaction, ctx) {
        requireModerator(interaction);
        await interaction.editReply(await queueView(interaction.client, ctx, guildIdOf(interaction), interaction.options.getInteger('page') ?? 1));
      },
    },
    remove: {
      defer: 'ephemeral',
      async execute(interaction, ctx) {
        requireModerator(interaction);
        const target = interaction.options.getString('target', true);
        const image = interaction.options.getInteger('image');
        if (target === 'image' && image === null) throw new UserError('Say which image with `image:` (its number on the contact sheet).');
        if (target === 'dataset' && image !== null) throw new UserError('To remove one image, choose `target: image`; `target: dataset` removes all of it.');
        const dataset = await namedDataset(interaction, ctx);
        const entry = await remove(ctx, dataset, target === 'image' ? image! : 0, interaction.user.id, interaction.options.getString('reason', true));
        await interaction.editReply(doneText(entry));
      },
    },
    approve: {
      defer: 'ephemeral',
      async execute(interaction, ctx) {
        requireModerator(interaction);
        const dataset = await namedDataset(interaction, ctx);
        const image = interaction.options.getInteger('image');
        const by = { moderatorId: interaction.user.id, reason: null };
        const entry =
          image === null
            ? await ctx.moderation.approveDataset(dataset, await acceptedIn(interaction.client, ctx.settings, dataset), by)
            : await ctx.moderation.approveImage(dataset, image, by);
        await interaction.editReply(doneText(entry));
      },
    },
    log: {
      defer: 'ephemeral',
      async execute(interaction, ctx) {
        requireModerator(interaction);
        await interaction.editReply(await logView(ctx, guildIdOf(interaction), interaction.options.getInteger('page') ?? 1));
      },
    },
  },
  async autocomplete(interaction: AutocompleteInteraction, ctx: BotContext) {
    const focused = interaction.options.getFocused(true);
    const allowed = interaction.memberPermissions?.has(PermissionFlagsBits.ManageMessages) ?? false;
    await interaction.respond(allowed && focused.name === 'dataset' ? await autocompleteDatasets(interaction, ctx, String(focused.value)) : []);
  },
};

const TARGET_FIELDS = { datasetId: ID_PART, no: COUNT_PART };

/** Approve or dismiss from the queue; the queue is shown again, as it is now, in place. */
export const reviewButton: ComponentHandler<{ action: 'approve' | 'dismiss'; datasetId: string; no: number }, 'button'> = {
  ...customIdCodec('modreview', { action: oneOfPart(['approve', 'dismiss'] as const), ...TARGET_FIELDS }),
  kind: 'button',
  defer: 'update',
  async handle(interaction, ctx, { action, datasetId, no }) {
    requireModerator(interaction);
    const dataset = await datasetById(interaction, ctx, datasetId);
    const by = { moderatorId: interaction.user.id, reason: null };
    let entry: AuditEntry;
    if (action === 'dismiss') {
      const target: ModerationTarget = no === 0 ? { kind: 'dataset', datasetId } : { kind: 'image', datasetId, no };
      entry = await ctx.moderation.dismiss(dataset, target, by);
    } else if (no === 0) {
      entry = await ctx.moderation.approveDataset(dataset, await acceptedIn(interaction.client, ctx.settings, dataset), by);
    } else {
      entry = await ctx.moderation.approveImage(dataset, no, by);
    }
    await interaction.editReply(await queueView(interaction.client, ctx, dataset.guildId, 1, `✅ ${doneText(entry)}`));
  },
};

/** Remove from the queue: asks for the reason in a form first. */
export const removeButton: ComponentHandler<{ datasetId: string; no: number }, 'button'> = {
  ...customIdCodec('modremove', TARGET_FIELDS),
  kind: 'button',
  defer: 'none',
  async handle(interaction, ctx, data) {
    requireModerator(interaction);
    const dataset = await datasetById(interaction, ctx, data.datasetId);
    const what = data.no === 0 ? `dataset ${dataset.name}` : `#${data.no} of ${dataset.name}`;
    await interaction.showModal(
      new ModalBuilder()
        .setCustomId(removeModal.encode(data))
        .setTitle(`Remove ${what}`.slice(0, 45))
        .addComponents(
          new ActionRowBuilder<TextInputBuilder>().addComponents(
            new TextInputBuilder()
              .setCustomId(REASON_FIELD)
              .setLabel('Reason (kept in the audit log)')
              .setStyle(TextInputStyle.Paragraph)
              .setRequired(true)
              .setMinLength(MIN_REASON_CHARS)
              .setMaxLength(MAX_REASON_CHARS),
          ),
        ),
    );
  },
};

/** The removal form's answer: removes, then shows the queue as it is now. */
export const removeModal: ComponentHandler<{ datasetId: string; no: number }, 'modal'> = {
  ...customIdCodec('modremovef', TARGET_FIELDS),
  kind: 'modal',
  defer: 'ephemeral',
  async handle(interaction, ctx, { datasetId, no }) {
    requireModerator(interaction);
    const dataset = await datasetById(interaction, ctx, datasetId);
    const entry = await remove(ctx, dataset, no, interaction.user.id, interaction.fields.getTextInputValue(REASON_FIELD));
    await interaction.editReply(await queueView(interaction.client, ctx, dataset.guildId, 1, `✅ ${doneText(entry)}`));
  },
};

/** Previous / Next of the queue and of the log. */
export const pageButton: ComponentHandler<{ view: 'queue' | 'log'; page: number }, 'button'> = {
  ...customIdCodec('modpage', { view: oneOfPart(['queue', 'log'] as const), page: COUNT_PART }),
  kind: 'button',
  defer: 'update',
  async handle(interaction, ctx, { view, page }) {
    requireModerator(interaction);
    const guildId = guildIdOf(interaction);
    await interaction.editReply(view === 'queue' ? await queueView(interaction.client, ctx, guildId, page) : await logView(ctx, guildId, page));
  },
};
