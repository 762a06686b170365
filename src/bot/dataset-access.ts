import {
  PermissionFlagsBits,
  type AutocompleteInteraction,
  type ChatInputCommandInteraction,
  type MessageComponentInteraction,
  type ModalSubmitInteraction,
} from 'discord.js';
import { UserError } from '../core/errors.ts';
import type { Dataset } from '../store/dataset-store.ts';
import type { BotContext } from './context.ts';

export type GuildInteraction = ChatInputCommandInteraction | AutocompleteInteraction | MessageComponentInteraction | ModalSubmitInteraction;

export function guildIdOf(interaction: GuildInteraction): string {
  if (!interaction.guildId) throw new UserError('Datasets live in servers: use this command in a server channel.');
  return interaction.guildId;
}

/** The dataset named in the options, or the one whose thread this is. Always of this guild. */
export async function resolveDataset(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<Dataset> {
  const guildId = guildIdOf(interaction);
  const name = interaction.options.getString('dataset');
  if (name) {
    const ds = await ctx.store.findDataset(guildId, name.trim());
    if (!ds) throw new UserError(`There is no dataset named \`${name.trim().slice(0, 40)}\` in this server. See \`/dataset list\`.`);
    return ds;
  }
  const ds = await ctx.store.datasetForThread(interaction.channelId);
  if (ds && ds.guildId === guildId) return ds;
  throw new UserError('Name a dataset with the `dataset` option, or use this command in the dataset’s thread.');
}

/** A dataset by id from a button or modal, refused when it is gone or of another guild. */
export async function datasetById(interaction: GuildInteraction, ctx: BotContext, id: string): Promise<Dataset> {
  const dataset = await ctx.store.getDataset(id);
  if (!dataset || dataset.guildId !== guildIdOf(interaction)) throw new UserError('That dataset no longer exists.');
  return dataset;
}

export function displayNameOf(interaction: GuildInteraction): string {
  const member = interaction.member;
  if (member && 'displayName' in member && typeof member.displayName === 'string') return member.displayName;
  return interaction.user.globalName ?? interaction.user.username;
}

/** The owner, or a member with Manage Messages. */
export function isModerator(interaction: GuildInteraction, dataset: Dataset): boolean {
  return dataset.ownerId === interaction.user.id || (interaction.memberPermissions?.has(PermissionFlagsBits.ManageMessages) ?? false);
}

/**
 * Who may change a dataset's captions and concepts: its owner, moderators (Manage Messages), and
 * everyone who has contributed images to it.
 */
export async function requireEditor(interaction: GuildInteraction, ctx: BotContext, dataset: Dataset): Promise<void> {
  if (isModerator(interaction, dataset)) return;
  const images = await ctx.store.listImages(dataset.id);
  if (images.some((i) => i.contributorId === interaction.user.id)) return;
  throw new UserError(
    `Only contributors to **${dataset.name}**, its owner and moderators can change its captions. Contribute an image with \`/dataset add\` first.`,
  );
}

/** Suggestions for a `dataset` option: this guild's datasets matching what was typed. */
export async function autocompleteDatasets(interaction: AutocompleteInteraction, ctx: BotContext, typed: string) {
  if (!interaction.guildId) return [];
  const datasets = await ctx.store.listDatasets(interaction.guildId);
  const t = typed.toLowerCase();
  return datasets
    .filter((d) => d.name.includes(t))
    .slice(0, 25)
    .map((d) => ({ name: d.name, value: d.name }));
}
