import type { SlashCommandSubcommandBuilder } from 'discord.js';
import { datasetOption, guildCommand, subcommand } from './options.ts';

// The caption workshop: /tags (bulk), /caption (one image), /concept (kohya subsets).

const conceptOption = (s: SlashCommandSubcommandBuilder, what = 'Only this concept (default: the whole dataset)') =>
  s.addStringOption((o) => o.setName('concept').setDescription(what).setAutocomplete(true).setMaxLength(32));
const imageOption = (s: SlashCommandSubcommandBuilder) =>
  s.addIntegerOption((o) => o.setName('image').setDescription('Image number, e.g. 3').setRequired(true).setMinValue(1));

export const tagsCommandData = guildCommand('tags', 'Tags across a dataset: frequencies, pruning, bulk edits')
  .addSubcommand(() => {
    const s = subcommand('top', 'Tag frequencies, and which tags to prune');
    conceptOption(s);
    s.addIntegerOption((o) => o.setName('page').setDescription('Page').setMinValue(1));
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(() => {
    const s = subcommand('remove', 'Remove tags from every caption').addStringOption((o) =>
      o.setName('tags').setDescription('Comma-separated, e.g. tiara, jewelry').setRequired(true).setAutocomplete(true).setMaxLength(500),
    );
    conceptOption(s);
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(() => {
    const s = subcommand('replace', 'Replace a tag everywhere, e.g. tiara → circlet')
      .addStringOption((o) => o.setName('from').setDescription('Tag to replace').setRequired(true).setAutocomplete(true).setMaxLength(100))
      .addStringOption((o) => o.setName('to').setDescription('Replacement tag').setRequired(true).setMaxLength(100));
    conceptOption(s);
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(() => {
    const s = subcommand('add', 'Add tags to every caption')
      .addStringOption((o) => o.setName('tags').setDescription('Comma-separated').setRequired(true).setMaxLength(500))
      .addStringOption((o) =>
        o
          .setName('position')
          .setDescription('Where (after the triggers); default end')
          .addChoices({ name: 'start', value: 'start' }, { name: 'end', value: 'end' }),
      );
    conceptOption(s);
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(() => {
    const s = subcommand('prune', 'Suggest tags to fold into the trigger (in ≥ 90% of a concept)');
    conceptOption(s, 'Concept (default: main)');
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(
    subcommand('retag', 'Run the tagger again (replaces captions; undo with /caption undo)')
      .addStringOption((o) => o.setName('images').setDescription('e.g. 3 · 3,7 · 5-8 (default: all)').setMaxLength(200))
      .addStringOption(datasetOption),
  )
  .addSubcommand(
    subcommand('undesired', 'Tags the tagger must never write for this dataset')
      .addStringOption((o) => o.setName('tags').setDescription('Comma-separated, or "none" to clear').setRequired(true).setMaxLength(1000))
      .addStringOption(datasetOption),
  )
  .toJSON();

const partOption = (s: SlashCommandSubcommandBuilder) =>
  s.addStringOption((o) =>
    o
      .setName('part')
      .setDescription('Tags or the sentence (default: what the dataset’s caption mode leads with)')
      .addChoices({ name: 'tags', value: 'tags' }, { name: 'sentence', value: 'sentences' }),
  );

export const captionCommandData = guildCommand('caption', 'Captions: one image, sentences across a dataset, and the caption mode')
  .addSubcommand(imageOption(subcommand('show', 'The image, its sentence, its tags and what the trainer reads')).addStringOption(datasetOption))
  .addSubcommand(partOption(imageOption(subcommand('edit', 'Edit the tags or the sentence of an image in a form'))).addStringOption(datasetOption))
  .addSubcommand(
    partOption(
      subcommand('undo', 'Undo the last change of one image, or (without image) the last bulk edit').addIntegerOption((o) =>
        o.setName('image').setDescription('Image number (leave out to undo the last bulk edit)').setMinValue(1),
      ),
    ).addStringOption(datasetOption),
  )
  .addSubcommand(() => {
    const s = subcommand('replace', 'Replace a word or phrase in every sentence, e.g. street → alley')
      .addStringOption((o) => o.setName('from').setDescription('Word or phrase to find (whole words, any case)').setRequired(true).setMaxLength(100))
      .addStringOption((o) => o.setName('to').setDescription('What to write instead (leave out to remove it)').setMaxLength(100));
    conceptOption(s);
    return s.addStringOption(datasetOption);
  })
  .addSubcommand(
    subcommand('mode', 'What the trainer reads: tags, sentences, or both')
      .addStringOption((o) =>
        o
          .setName('mode')
          .setDescription('Leave out to see the current mode')
          .addChoices({ name: 'tags', value: 'tags' }, { name: 'sentences', value: 'sentences' }, { name: 'both (sentence, then tags)', value: 'both' }),
      )
      .addStringOption(datasetOption),
  )
  .toJSON();

export const conceptCommandData = guildCommand('concept', 'Concepts: subsets of a dataset with their own repeats (e.g. outfits)')
  .addSubcommand(
    subcommand('add', 'Add a concept')
      .addStringOption((o) => o.setName('name').setDescription('e.g. outfit-red').setRequired(true).setMaxLength(32))
      .addStringOption((o) => o.setName('trigger').setDescription('Its own trigger word, written after the dataset trigger').setMaxLength(40))
      .addStringOption(datasetOption),
  )
  .addSubcommand(subcommand('list', 'Concepts and their image counts').addStringOption(datasetOption))
  .addSubcommand(
    subcommand('repeats', 'How many times a concept is shown per epoch (0: balanced by the recipe)')
      .addStringOption((o) => o.setName('concept').setDescription('The concept').setRequired(true).setAutocomplete(true).setMaxLength(32))
      .addIntegerOption((o) =>
        o.setName('repeats').setDescription('1–1000, or 0 to let the recipe balance it again').setRequired(true).setMinValue(0).setMaxValue(1000),
      )
      .addStringOption(datasetOption),
  )
  .addSubcommand(
    subcommand('move', 'Move images to a concept')
      .addStringOption((o) => o.setName('images').setDescription('e.g. 3 · 3,7 · 5-8').setRequired(true).setMaxLength(200))
      .addStringOption((o) => o.setName('concept').setDescription('Target concept').setRequired(true).setAutocomplete(true).setMaxLength(32))
      .addStringOption(datasetOption),
  )
  .toJSON();
