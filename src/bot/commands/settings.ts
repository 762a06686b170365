import { PermissionFlagsBits, type ChatInputCommandInteraction } from 'discord.js';
import { settingsCommandData } from '../../../commands/train.ts';
import { UserError } from '../../core/errors.ts';
import type { BotContext } from '../context.ts';
import { guildIdOf } from '../dataset-access.ts';
import type { SlashCommand } from '../interactions.ts';

async function run(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  // Discord hides the command from others by default, but the permission is checked here too.
  if (!interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild)) throw new UserError('Settings need Manage Server.');
  const guildId = guildIdOf(interaction);
  const settings = await ctx.settings.get(guildId);
  const sub = interaction.options.getSubcommand(true);
  if (sub === 'trainer-role') {
    settings.trainerRoleId = interaction.options.getRole('role')?.id ?? null;
  } else if (sub === 'limits') {
    settings.maxQueuedPerMember = interaction.options.getInteger('per-member') ?? settings.maxQueuedPerMember;
    settings.maxQueuedPerGuild = interaction.options.getInteger('per-server') ?? settings.maxQueuedPerGuild;
    if (settings.maxQueuedPerMember > settings.maxQueuedPerGuild) throw new UserError('The per-member limit cannot be above the per-server limit.');
  }
  if (sub !== 'show') {
    await ctx.settings.set(guildId, settings);
    ctx.logger.info({ guildId, userId: interaction.user.id, settings }, 'guild settings changed');
  }
  await interaction.editReply({
    content:
      `Trainer role: ${settings.trainerRoleId ? `<@&${settings.trainerRoleId}>` : 'none (Manage Server only)'} · ` +
      `runs waiting or running at once: ${settings.maxQueuedPerMember} per member, ${settings.maxQueuedPerGuild} per server`,
  });
}

export const settingsCommand: SlashCommand = {
  data: settingsCommandData,
  subcommands: {
    show: { defer: 'ephemeral', execute: run },
    'trainer-role': { defer: 'ephemeral', execute: run },
    limits: { defer: 'ephemeral', execute: run },
  },
};
