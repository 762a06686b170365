import { InteractionContextType, SlashCommandBuilder } from 'discord.js';

export const loraCommandData = new SlashCommandBuilder()
  .setName('lora')
  .setDescription('Get finished LoRAs')
  .setContexts(InteractionContextType.Guild)
  .addSubcommand((s) =>
    s
      .setName('fetch')
      .setDescription('Get a LoRA file: the community’s pick, the final one, or any saved epoch')
      .addStringOption((o) => o.setName('run').setDescription('Run id (default: the latest finished run of the dataset)').setAutocomplete(true).setMaxLength(16))
      .addStringOption((o) => o.setName('dataset').setDescription('Dataset (default: the dataset of this thread)').setAutocomplete(true))
      .addStringOption((o) => o.setName('epoch').setDescription('best (most votes), final, or an epoch number').setAutocomplete(true).setMaxLength(8)),
  )
  .addSubcommand((s) =>
    s
      .setName('list')
      .setDescription('Finished runs and their votes')
      .addStringOption((o) => o.setName('dataset').setDescription('Only this dataset').setAutocomplete(true)),
  )
  .toJSON();
