import { guildCommand, subcommand } from './options.ts';

export const workerCommandData = guildCommand('worker', 'GPUs that train for this server, including ones members lend')
  .addSubcommand(
    subcommand('add', 'Lend a GPU: get a token and the command to run on that machine').addStringOption((o) =>
      o.setName('name').setDescription('A name for this GPU, e.g. gaming-pc (letters, digits, space . _ -)').setRequired(true).setMinLength(1).setMaxLength(32),
    ),
  )
  .addSubcommand(subcommand('list', 'The GPUs that train here: online or not, whose, what they have, what they do'))
  .addSubcommand(
    subcommand('remove', 'Stop lending a GPU: its token stops working at once').addStringOption((o) =>
      o.setName('worker').setDescription('The GPU to remove').setRequired(true).setAutocomplete(true).setMaxLength(32),
    ),
  )
  .toJSON();
