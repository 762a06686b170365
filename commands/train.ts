import { ChannelType } from 'discord.js';
import { OPTIMIZERS, RECIPE_NAMES } from '../src/core/recipe-table.ts';
import { NETWORK_LABELS, NETWORK_TYPES } from '../src/core/networks.ts';
import { VRAM_PRESET_INFO, VRAM_PRESETS } from '../src/core/vram-presets.ts';
import { datasetOption, guildCommand, runOption, subcommand } from './options.ts';

export const trainCommandData = guildCommand('train', 'Plan, start and follow LoRA training runs')
  .addSubcommand(
    subcommand('plan', 'Exact plan (repeats, buckets, steps, time) with a Start button')
      .addStringOption(datasetOption)
      .addStringOption((o) =>
        o
          .setName('recipe')
          .setDescription('Training recipe (default: the one for the dataset’s kind)')
          .addChoices(...RECIPE_NAMES.map((r) => ({ name: r, value: r }))),
      )
      .addStringOption((o) => o.setName('model').setDescription('Base checkpoint (offered by the training workers)').setAutocomplete(true).setMaxLength(200))
      .addIntegerOption((o) => o.setName('epochs').setDescription('Epochs (1–100)').setMinValue(1).setMaxValue(100))
      .addIntegerOption((o) => o.setName('dim').setDescription('Network dim / rank (1–256)').setMinValue(1).setMaxValue(256))
      .addNumberOption((o) => o.setName('alpha').setDescription('Network alpha (0.1–256)').setMinValue(0.1).setMaxValue(256))
      .addNumberOption((o) => o.setName('lr').setDescription('Learning rate (range depends on the optimizer)').setMinValue(0).setMaxValue(10))
      .addStringOption((o) =>
        o
          .setName('optimizer')
          .setDescription('Optimizer')
          .addChoices(...OPTIMIZERS.map((x) => ({ name: x, value: x }))),
      )
      .addIntegerOption((o) => o.setName('resolution').setDescription('Resolution, multiple of 64 (256–2048)').setMinValue(256).setMaxValue(2048))
      .addIntegerOption((o) => o.setName('batch').setDescription('Batch size (1–16)').setMinValue(1).setMaxValue(16))
      .addIntegerOption((o) => o.setName('seed').setDescription('Seed').setMinValue(0).setMaxValue(4294967295))
      .addBooleanOption((o) => o.setName('flip').setDescription('Mirror images (only for symmetric subjects)'))
      .addStringOption((o) =>
        o
          .setName('network')
          .setDescription('Network type (default LoRA; LyCORIS types and DoRA for SD 1.5/SDXL)')
          .addChoices(...NETWORK_TYPES.map((n) => ({ name: NETWORK_LABELS[n], value: n }))),
      )
      .addStringOption((o) =>
        o
          .setName('vram')
          .setDescription('FLUX.1/Chroma memory preset (default: the largest the worker’s GPU fits)')
          .addChoices(...VRAM_PRESETS.map((p) => ({ name: VRAM_PRESET_INFO[p].label, value: p }))),
      ),
  )
  .addSubcommand(subcommand('status', 'A run’s progress (default: the latest run here)').addStringOption(runOption('Run id')))
  .addSubcommand(subcommand('queue', 'Runs waiting and running, and the training workers'))
  .addSubcommand(subcommand('cancel', 'Stop a run (what was saved is kept)').addStringOption(runOption('Run id', true)))
  .addSubcommand(
    subcommand('prompts', 'A dataset’s sample prompts, drawn after every epoch (owner and moderators can remove them)').addStringOption(datasetOption),
  )
  .toJSON();

export const settingsCommandData = guildCommand('settings', 'LoRA Guild settings for this server')
  // Every member sees it for their own mentions; the server's settings check Manage Server.
  .addSubcommand(subcommand('show', 'Current settings'))
  .addSubcommand(
    subcommand('mentions', 'Whether you are mentioned when a run of a dataset you added images to finishes').addBooleanOption((o) =>
      o.setName('on').setDescription('true: mention me (the default); false: do not').setRequired(true),
    ),
  )
  .addSubcommand(
    subcommand('trainer-role', 'Who may start training runs (besides Manage Server)').addRoleOption((o) =>
      o.setName('role').setDescription('The trainer role (leave out to allow Manage Server only)'),
    ),
  )
  .addSubcommand(
    subcommand('limits', 'How many runs and images may wait or run at once')
      .addIntegerOption((o) => o.setName('per-member').setDescription('Per member (1–10)').setMinValue(1).setMaxValue(10))
      .addIntegerOption((o) => o.setName('per-server').setDescription('For the whole server (1–50)').setMinValue(1).setMaxValue(50))
      .addIntegerOption((o) =>
        o
          .setName('images-per-member')
          .setDescription('Images (/lora try, /lora compare) a member may have waiting at once (1–20)')
          .setMinValue(1)
          .setMaxValue(20),
      ),
  )
  .addSubcommand(
    subcommand('workers', 'Who may lend a GPU to this server with /worker add').addBooleanOption((o) =>
      o.setName('members-may-lend').setDescription('true: any member; false: Manage Server only (the default)').setRequired(true),
    ),
  )
  .addSubcommand(
    subcommand('captions', 'What new datasets are captioned with (each can change it with /caption mode)').addStringOption((o) =>
      o
        .setName('mode')
        .setDescription('auto: sentences for styles, FLUX and Chroma, tags otherwise')
        .setRequired(true)
        .addChoices(
          { name: 'auto (by kind and base)', value: 'auto' },
          { name: 'tags', value: 'tags' },
          { name: 'sentences', value: 'sentences' },
          { name: 'both (sentence, then tags)', value: 'both' },
        ),
    ),
  )
  .addSubcommand(
    subcommand('moderation-channel', 'Where moderators are told what waits for review (reports, flagged images)').addChannelOption((o) =>
      o
        .setName('channel')
        .setDescription('A channel only moderators read (leave out: no notices; /moderation queue lists it all the same)')
        .addChannelTypes(ChannelType.GuildText),
    ),
  )
  .addSubcommand(() => {
    const s = subcommand('moderation', 'What images may be posted and taken in channels that are not age-restricted');
    const ratings = [
      { name: 'general', value: 'general' },
      { name: 'sensitive', value: 'sensitive' },
      { name: 'questionable', value: 'questionable' },
      { name: 'explicit', value: 'explicit' },
    ];
    return s
      .addStringOption((o) =>
        o
          .setName('shown')
          .setDescription('Highest rating posted as it is (default general)')
          .addChoices(...ratings),
      )
      .addStringOption((o) =>
        o
          .setName('spoilered')
          .setDescription('Highest rating posted behind a spoiler (default sensitive)')
          .addChoices(...ratings),
      )
      .addStringOption((o) =>
        o
          .setName('accepted')
          .setDescription('Highest rating a dataset takes at all (default sensitive)')
          .addChoices(...ratings),
      );
  })
  .toJSON();
