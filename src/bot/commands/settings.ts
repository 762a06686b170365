import { PermissionFlagsBits, type ChatInputCommandInteraction } from 'discord.js';
import { settingsCommandData } from '../../../commands/train.ts';
import { CAPTION_MODE_LABELS, isCaptionMode } from '../../core/caption-text.ts';
import { UserError } from '../../core/errors.ts';
import { isRating, policyProblem, type Rating } from '../../core/rating.ts';
import type { GuildSettings } from '../../store/run-store.ts';
import type { BotContext } from '../context.ts';
import { guildIdOf } from '../dataset-access.ts';
import type { SlashCommand, Subcommand } from '../interactions.ts';

/**
 * A settings subcommand: checks Manage Server, applies `change` (none for `show`), saves, and
 * shows the settings as they are now.
 */
function settingsSubcommand(change?: (settings: GuildSettings, interaction: ChatInputCommandInteraction) => void): Subcommand {
  return {
    defer: 'ephemeral',
    async execute(interaction, ctx: BotContext) {
      // Discord hides the command from others by default, but the permission is checked here too.
      if (!interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild)) throw new UserError('Settings need Manage Server.');
      const guildId = guildIdOf(interaction);
      const settings = await ctx.settings.get(guildId);
      if (change) {
        change(settings, interaction);
        await ctx.settings.set(guildId, settings);
        ctx.logger.info({ guildId, userId: interaction.user.id, settings }, 'guild settings changed');
      }
      await interaction.editReply(
        `Trainer role: ${settings.trainerRoleId ? `<@&${settings.trainerRoleId}>` : 'none (Manage Server only)'} · ` +
          `runs waiting or running at once: ${settings.maxQueuedPerMember} per member, ${settings.maxQueuedPerGuild} per server · ` +
          `new datasets are captioned with ${settings.captionMode ? CAPTION_MODE_LABELS[settings.captionMode] : 'sentences or tags by their kind and base'} · ` +
          `images waiting at once: ${settings.maxGenerationsPerMember} per member · ` +
          `GPUs may be lent (\`/worker add\`) by ${settings.membersMayLend ? 'any member' : 'Manage Server only'} · ` +
          `outside age-restricted channels: up to ${settings.moderation.shown} shown, up to ${settings.moderation.spoilered} behind a spoiler, ` +
          `above ${settings.moderation.accepted} refused` +
          (settings.moderationChannelId ? ` · moderators are told what waits for review in <#${settings.moderationChannelId}>` : ''),
      );
    },
  };
}

export const settingsCommand: SlashCommand = {
  data: settingsCommandData,
  subcommands: {
    show: settingsSubcommand(),
    mentions: {
      defer: 'ephemeral',
      async execute(interaction, ctx: BotContext) {
        const on = interaction.options.getBoolean('on', true);
        await ctx.settings.setMentioned(guildIdOf(interaction), interaction.user.id, on);
        await interaction.editReply(
          on
            ? 'You will be mentioned when a run you started, or of a dataset you added images to, finishes.'
            : 'You will not be mentioned when runs finish any more. `/settings mentions on:true` turns it back on.',
        );
      },
    },
    'trainer-role': settingsSubcommand((settings, interaction) => {
      settings.trainerRoleId = interaction.options.getRole('role')?.id ?? null;
    }),
    limits: settingsSubcommand((settings, interaction) => {
      settings.maxQueuedPerMember = interaction.options.getInteger('per-member') ?? settings.maxQueuedPerMember;
      settings.maxQueuedPerGuild = interaction.options.getInteger('per-server') ?? settings.maxQueuedPerGuild;
      settings.maxGenerationsPerMember = interaction.options.getInteger('images-per-member') ?? settings.maxGenerationsPerMember;
      if (settings.maxQueuedPerMember > settings.maxQueuedPerGuild) throw new UserError('The per-member limit cannot be above the per-server limit.');
    }),
    workers: settingsSubcommand((settings, interaction) => {
      settings.membersMayLend = interaction.options.getBoolean('members-may-lend', true);
    }),
    captions: settingsSubcommand((settings, interaction) => {
      const mode = interaction.options.getString('mode', true);
      if (mode !== 'auto' && !isCaptionMode(mode)) throw new UserError('The mode must be auto, tags, sentences or both.');
      settings.captionMode = mode === 'auto' ? null : mode;
    }),
    'moderation-channel': settingsSubcommand((settings, interaction) => {
      settings.moderationChannelId = interaction.options.getChannel('channel')?.id ?? null;
    }),
    moderation: settingsSubcommand((settings, interaction) => {
      const pick = (name: string, current: Rating): Rating => {
        const raw = interaction.options.getString(name);
        if (raw === null) return current;
        if (!isRating(raw)) throw new UserError(`${name} must be general, sensitive, questionable or explicit.`);
        return raw;
      };
      const next = {
        shown: pick('shown', settings.moderation.shown),
        spoilered: pick('spoilered', settings.moderation.spoilered),
        accepted: pick('accepted', settings.moderation.accepted),
      };
      const problem = policyProblem(next);
      if (problem) throw new UserError(problem);
      settings.moderation = next;
    }),
  },
};
