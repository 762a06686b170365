import { InteractionContextType, SlashCommandBuilder } from 'discord.js';

export const loraCommandData = new SlashCommandBuilder()
  .setName('lora')
  .setDescription('Get finished LoRAs')
  .setContexts(InteractionContextType.Guild)
  .addSubcommand((s) =>
    s
      .setName('fetch')
      .setDescription('Get a LoRA file: the community’s pick, the final one, or any saved epoch')
      .addStringOption((o) =>
        o.setName('run').setDescription('Run id (default: the latest finished run of the dataset)').setAutocomplete(true).setMaxLength(16),
      )
      .addStringOption((o) => o.setName('dataset').setDescription('Dataset (default: the dataset of this thread)').setAutocomplete(true))
      .addStringOption((o) => o.setName('epoch').setDescription('best (most votes), final, or an epoch number').setAutocomplete(true).setMaxLength(8)),
  )
  .addSubcommand((s) =>
    s
      .setName('try')
      .setDescription('Draw an image with a trained LoRA')
      .addStringOption((o) => o.setName('prompt').setDescription('What to draw (include the trigger word)').setRequired(true).setMaxLength(400))
      .addStringOption((o) =>
        o.setName('run').setDescription('Run id (default: the latest finished run of this thread’s dataset)').setAutocomplete(true).setMaxLength(16),
      )
      .addStringOption((o) =>
        o
          .setName('epoch')
          .setDescription('best (most votes; the default when there are votes), final, or an epoch number')
          .setAutocomplete(true)
          .setMaxLength(8),
      )
      .addNumberOption((o) => o.setName('weight').setDescription('LoRA weight (default 1)').setMinValue(-2).setMaxValue(2))
      .addIntegerOption((o) => o.setName('seed').setDescription('Seed (default: random)').setMinValue(0).setMaxValue(4294967295))
      .addStringOption((o) => o.setName('negative').setDescription('What to keep out of the image').setMaxLength(400))
      .addStringOption((o) => o.setName('size').setDescription('512, or width×height like 768x512 (default: the model’s own size)').setMaxLength(12)),
  )
  .addSubcommand((s) =>
    s
      .setName('compare')
      .setDescription('One grid of epochs × LoRA weights on a fixed seed, posted in the run’s thread')
      .addStringOption((o) => o.setName('epochs').setDescription('Epochs, e.g. 6, 8, final (best works too)').setRequired(true).setMaxLength(60))
      .addStringOption((o) => o.setName('weights').setDescription('Weights, e.g. 0.5, 0.75, 1').setRequired(true).setMaxLength(60))
      .addStringOption((o) => o.setName('prompt').setDescription('What to draw (include the trigger word)').setRequired(true).setMaxLength(400))
      .addStringOption((o) =>
        o.setName('run').setDescription('Run id (default: the latest finished run of this thread’s dataset)').setAutocomplete(true).setMaxLength(16),
      )
      .addIntegerOption((o) => o.setName('seed').setDescription('Seed (default: random)').setMinValue(0).setMaxValue(4294967295))
      .addStringOption((o) => o.setName('negative').setDescription('What to keep out of the images').setMaxLength(400))
      .addStringOption((o) => o.setName('size').setDescription('512, or width×height like 768x512 (default: the model’s own size)').setMaxLength(12)),
  )
  .addSubcommand((s) =>
    s
      .setName('list')
      .setDescription('Finished runs and their votes')
      .addStringOption((o) => o.setName('dataset').setDescription('Only this dataset').setAutocomplete(true)),
  )
  .toJSON();
