import type { RESTPostAPIChatInputApplicationCommandsJSONBody } from 'discord.js';
import { datasetCommandData } from './dataset.ts';

/** Every slash command the bot answers, in one explicit list. */
export const allCommandData: RESTPostAPIChatInputApplicationCommandsJSONBody[] = [datasetCommandData];
