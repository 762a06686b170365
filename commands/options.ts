import { InteractionContextType, SlashCommandBuilder, SlashCommandSubcommandBuilder, type SlashCommandStringOption } from 'discord.js';

// What several command definitions share: every command works in servers only, and the same
// options (a dataset, a run) read the same wherever they appear.

/** A slash command used in servers (none works in direct messages). */
export function guildCommand(name: string, description: string) {
  return new SlashCommandBuilder().setName(name).setDescription(description).setContexts(InteractionContextType.Guild);
}

/** A subcommand, to add its options to: `.addSubcommand(subcommand('list', 'Datasets in this server'))`. */
export function subcommand(name: string, description: string) {
  return new SlashCommandSubcommandBuilder().setName(name).setDescription(description);
}

/** `.addStringOption(datasetOption)`: autocompleted; left out, the command takes the dataset of the thread it is used in. */
export function datasetOption(o: SlashCommandStringOption) {
  return o.setName('dataset').setDescription('Dataset (default: the dataset of this thread)').setAutocomplete(true);
}

/** `.addStringOption(runOption('Run id'))`: a run id, autocompleted. */
export function runOption(description: string, required = false) {
  return (o: SlashCommandStringOption) => o.setName('run').setDescription(description).setRequired(required).setAutocomplete(true).setMaxLength(16);
}
