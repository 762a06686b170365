import { captionCommand, captionEditModal, captionSentenceModal } from './commands/caption.ts';
import { conceptCommand } from './commands/concept.ts';
import { datasetCommand, showPageButtons } from './commands/dataset.ts';
import { loraCommand, tryButtonHandler } from './commands/lora.ts';
import { removePromptButton } from './commands/sample-prompts.ts';
import { settingsCommand } from './commands/settings.ts';
import { pruneButton, tagsCommand, topPageButtons } from './commands/tags.ts';
import { startButton, trainCommand } from './commands/train.ts';
import { workerCommand } from './commands/worker.ts';
import { moderationCommand, pageButton, removeButton, removeModal, reviewButton } from './commands/moderation.ts';
import { reportButton, reportModal } from './moderation-report.ts';
import { attestButton } from './attestation.ts';
import type { ComponentHandler, SlashCommand } from './interactions.ts';
import { voteButtonHandler, voteSelectHandler } from './votes.ts';

/** Every slash command the bot answers (their definitions are listed in commands/all.ts). */
export const slashCommands: SlashCommand[] = [
  datasetCommand,
  tagsCommand,
  captionCommand,
  conceptCommand,
  trainCommand,
  settingsCommand,
  loraCommand,
  workerCommand,
  moderationCommand,
];

/** Every button, select and modal family the bot answers. */
export const componentHandlers: ComponentHandler<unknown>[] = [
  showPageButtons,
  pruneButton,
  topPageButtons,
  captionEditModal,
  captionSentenceModal,
  startButton,
  voteButtonHandler,
  voteSelectHandler,
  tryButtonHandler,
  attestButton,
  reviewButton,
  removeButton,
  removeModal,
  pageButton,
  reportButton,
  reportModal,
  removePromptButton,
];
