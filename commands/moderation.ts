import { PermissionFlagsBits } from 'discord.js';
import { MAX_REASON_CHARS, MIN_REASON_CHARS } from '../src/core/dataset-rules.ts';
import { guildCommand, subcommand } from './options.ts';

export const moderationCommandData = guildCommand('moderation', 'Review reported and flagged images and datasets (Manage Messages)')
  // Discord shows it to moderators only; the bot checks the permission on every use too.
  .setDefaultMemberPermissions(PermissionFlagsBits.ManageMessages)
  .addSubcommand(
    subcommand('queue', 'Images and datasets flagged by their rating or reported by members').addIntegerOption((o) =>
      o.setName('page').setDescription('Page of the queue').setMinValue(1),
    ),
  )
  .addSubcommand(
    subcommand('remove', 'Remove an image, or a whole dataset (its runs are cancelled and their files withheld)')
      .addStringOption((o) =>
        o
          .setName('target')
          .setDescription('One image, or the whole dataset')
          .setRequired(true)
          .addChoices({ name: 'image', value: 'image' }, { name: 'dataset', value: 'dataset' }),
      )
      .addStringOption((o) => o.setName('dataset').setDescription('The dataset').setRequired(true).setAutocomplete(true))
      .addStringOption((o) =>
        o
          .setName('reason')
          .setDescription('Why (kept in the audit log; shown to members who fetch its LoRAs)')
          .setRequired(true)
          .setMinLength(MIN_REASON_CHARS)
          .setMaxLength(MAX_REASON_CHARS),
      )
      .addIntegerOption((o) => o.setName('image').setDescription('The image number (for target: image)').setMinValue(1)),
  )
  .addSubcommand(
    subcommand('approve', 'Keep a flagged dataset (or one image) and close its reports: it may train again')
      .addStringOption((o) => o.setName('dataset').setDescription('The dataset').setRequired(true).setAutocomplete(true))
      .addIntegerOption((o) => o.setName('image').setDescription('Only this image (default: the whole dataset)').setMinValue(1)),
  )
  .addSubcommand(
    subcommand('log', 'Who removed, approved or dismissed what, and why').addIntegerOption((o) =>
      o.setName('page').setDescription('Page of the log (newest first)').setMinValue(1),
    ),
  )
  .toJSON();
