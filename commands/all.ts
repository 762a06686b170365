import type { RESTPostAPIChatInputApplicationCommandsJSONBody } from 'discord.js';
import { datasetCommandData } from './dataset.ts';
import { loraCommandData } from './lora.ts';
import { settingsCommandData, trainCommandData } from './train.ts';
import { captionCommandData, conceptCommandData, tagsCommandData } from './workshop.ts';
import { workerCommandData } from './worker.ts';
import { moderationCommandData } from './moderation.ts';

/** Every slash command the bot answers, in one explicit list. */
export const allCommandData: RESTPostAPIChatInputApplicationCommandsJSONBody[] = [
  datasetCommandData,
  tagsCommandData,
  captionCommandData,
  conceptCommandData,
  trainCommandData,
  settingsCommandData,
  loraCommandData,
  workerCommandData,
  moderationCommandData,
];
