import { BASE_FAMILIES, familyLabel } from '../src/core/model-family.ts';
import { datasetOption, guildCommand, subcommand } from './options.ts';

export const IMAGE_OPTION_COUNT = 10;

const builder = guildCommand('dataset', 'Build a LoRA dataset together')
  .addSubcommand(
    subcommand('create', 'Start a new dataset (opens a thread for it)')
      .addStringOption((o) =>
        o.setName('name').setDescription('Short name: letters, digits, - and _ (2–32)').setRequired(true).setMinLength(2).setMaxLength(32),
      )
      .addStringOption((o) =>
        o.setName('trigger').setDescription('Trigger word that will call up the LoRA, e.g. ohwx_aria').setRequired(true).setMinLength(2).setMaxLength(40),
      )
      .addStringOption((o) =>
        o.setName('class').setDescription('Class word, e.g. woman, 1girl, dog, building').setRequired(true).setMinLength(1).setMaxLength(40),
      )
      .addStringOption((o) =>
        o
          .setName('kind')
          .setDescription('What the LoRA teaches')
          .setRequired(true)
          .addChoices({ name: 'character', value: 'character' }, { name: 'style', value: 'style' }, { name: 'concept', value: 'concept' }),
      )
      .addStringOption((o) =>
        o
          .setName('base')
          .setDescription('Base model family')
          .setRequired(true)
          .addChoices(...BASE_FAMILIES.map((f) => ({ name: familyLabel(f), value: f }))),
      )
      .addIntegerOption((o) =>
        o.setName('resolution').setDescription('Training resolution (default 512 for SD 1.5, 1024 for the others)').setMinValue(256).setMaxValue(2048),
      ),
  )
  .addSubcommand(() => {
    const s = subcommand('add', 'Contribute images (up to 10 attachments and/or a zip)')
      .addStringOption(datasetOption)
      .addStringOption((o) => o.setName('concept').setDescription('Concept (subset) to add to; default: main').setMaxLength(32))
      .addAttachmentOption((o) => o.setName('zip').setDescription('A zip of images: captions beside them are kept; img/10_name folders become concepts'));
    for (let i = 1; i <= IMAGE_OPTION_COUNT; i++) {
      s.addAttachmentOption((o) => o.setName(`image${i}`).setDescription(`Image ${i}`));
    }
    return s;
  })
  .addSubcommand(
    subcommand('show', 'Counts, contributors, buckets, warnings and a contact sheet')
      .addStringOption(datasetOption)
      .addIntegerOption((o) => o.setName('page').setDescription('Contact sheet page').setMinValue(1)),
  )
  .addSubcommand(subcommand('list', 'Datasets in this server'))
  .addSubcommand(
    subcommand('remove', 'Remove images: numbers like 3, 5-8, or "mine" to withdraw all of yours')
      .addStringOption((o) => o.setName('images').setDescription('e.g. 3 · 3,7 · 5-8 · mine').setRequired(true).setMaxLength(200))
      .addStringOption(datasetOption),
  )
  .addSubcommand(subcommand('export', 'A link to the dataset as a zip: img/N_concept folders, captions and the dataset TOML').addStringOption(datasetOption));

export const datasetCommandData = builder.toJSON();
