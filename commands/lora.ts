import type { SlashCommandStringOption, SlashCommandSubcommandBuilder } from 'discord.js';
import { datasetOption, guildCommand, runOption, subcommand } from './options.ts';

/** How /lora try and /lora compare draw: the seed, what to keep out, the size. */
function drawingOptions(s: SlashCommandSubcommandBuilder, negative: string) {
  return s
    .addIntegerOption((o) => o.setName('seed').setDescription('Seed (default: random)').setMinValue(0).setMaxValue(4294967295))
    .addStringOption((o) => o.setName('negative').setDescription(negative).setMaxLength(400))
    .addStringOption((o) => o.setName('size').setDescription('512, or width×height like 768x512 (default: the model’s own size)').setMaxLength(12));
}

const promptOption = (o: SlashCommandStringOption) =>
  o.setName('prompt').setDescription('What to draw (include the trigger word)').setRequired(true).setMaxLength(400);
const threadRunOption = runOption('Run id (default: the latest finished run of this thread’s dataset)');

export const loraCommandData = guildCommand('lora', 'Get finished LoRAs')
  .addSubcommand(
    subcommand('fetch', 'Get a LoRA file: the community’s pick, the final one, or any saved epoch')
      .addStringOption(runOption('Run id (default: the latest finished run of the dataset)'))
      .addStringOption(datasetOption)
      .addStringOption((o) => o.setName('epoch').setDescription('best (most votes), final, or an epoch number').setAutocomplete(true).setMaxLength(8)),
  )
  .addSubcommand(() => {
    const s = subcommand('try', 'Draw an image with a trained LoRA')
      .addStringOption(promptOption)
      .addStringOption(threadRunOption)
      .addStringOption((o) =>
        o
          .setName('epoch')
          .setDescription('best (most votes; the default when there are votes), final, or an epoch number')
          .setAutocomplete(true)
          .setMaxLength(8),
      )
      .addNumberOption((o) => o.setName('weight').setDescription('LoRA weight (default 1)').setMinValue(-2).setMaxValue(2));
    return drawingOptions(s, 'What to keep out of the image');
  })
  .addSubcommand(() => {
    const s = subcommand('compare', 'One grid of epochs × LoRA weights on a fixed seed, posted in the run’s thread')
      .addStringOption((o) => o.setName('epochs').setDescription('Epochs, e.g. 6, 8, final (best works too)').setRequired(true).setMaxLength(60))
      .addStringOption((o) => o.setName('weights').setDescription('Weights, e.g. 0.5, 0.75, 1').setRequired(true).setMaxLength(60))
      .addStringOption(promptOption)
      .addStringOption(threadRunOption);
    return drawingOptions(s, 'What to keep out of the images');
  })
  .addSubcommand(
    subcommand('list', 'Finished runs and their votes').addStringOption((o) => o.setName('dataset').setDescription('Only this dataset').setAutocomplete(true)),
  )
  .toJSON();
