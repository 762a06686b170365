import {
  MessageFlags,
  type AutocompleteInteraction,
  type ChatInputCommandInteraction,
  type Interaction,
  type MessageComponentInteraction,
  type ModalSubmitInteraction,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
} from 'discord.js';
import { isUserError } from '../core/errors.ts';
import { newId } from '../store/dataset-store.ts';
import type { BotContext } from './context.ts';

export type DeferMode = 'public' | 'ephemeral' | 'none';

export interface SlashCommand {
  data: RESTPostAPIChatInputApplicationCommandsJSONBody;
  /** How to acknowledge within Discord's 3 s, decided from the options alone (no I/O). */
  defer(interaction: ChatInputCommandInteraction): DeferMode;
  execute(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<void>;
  autocomplete?(interaction: AutocompleteInteraction, ctx: BotContext): Promise<void>;
}

/** Buttons, selects and modals: one handler per custom_id family (`family:…`). */
export interface ComponentHandler {
  family: string;
  defer(interaction: MessageComponentInteraction | ModalSubmitInteraction): 'update' | 'ephemeral' | 'public' | 'none';
  handle(interaction: MessageComponentInteraction | ModalSubmitInteraction, ctx: BotContext): Promise<void>;
}

/** Routes every interaction, acknowledges it first, and turns errors into replies. */
export function createInteractionRouter(ctx: BotContext, commands: SlashCommand[], components: ComponentHandler[]) {
  const byName = new Map(commands.map((c) => [c.data.name, c]));
  const byFamily = new Map(components.map((c) => [c.family, c]));

  return async function route(interaction: Interaction): Promise<void> {
    const log = ctx.logger.child({
      interactionId: interaction.id,
      guildId: interaction.guildId,
      userId: interaction.user.id,
    });
    if (interaction.isAutocomplete()) {
      const command = byName.get(interaction.commandName);
      try {
        await command?.autocomplete?.(interaction, ctx);
      } catch (err) {
        log.warn({ err, command: interaction.commandName }, 'autocomplete failed');
        if (!interaction.responded) await interaction.respond([]).catch(() => undefined);
      }
      return;
    }

    let mode: DeferMode | 'update' = 'none';
    let label = 'unknown';
    try {
      if (interaction.isChatInputCommand()) {
        const command = byName.get(interaction.commandName);
        label = `/${interaction.commandName} ${interaction.options.getSubcommand(false) ?? ''}`.trim();
        if (!command) throw new Error(`no handler for command ${interaction.commandName}`);
        mode = command.defer(interaction);
        if (mode !== 'none') await interaction.deferReply(mode === 'ephemeral' ? { flags: MessageFlags.Ephemeral } : {});
        await command.execute(interaction, ctx);
      } else if (interaction.isMessageComponent() || interaction.isModalSubmit()) {
        const family = interaction.customId.split(':', 1)[0] ?? '';
        label = `component ${family}`;
        const handler = byFamily.get(family);
        if (!handler) throw new Error(`no handler for component family ${family}`);
        mode = handler.defer(interaction);
        if (mode === 'update') await interaction.deferUpdate();
        else if (mode !== 'none') await interaction.deferReply(mode === 'ephemeral' ? { flags: MessageFlags.Ephemeral } : {});
        await handler.handle(interaction, ctx);
      }
    } catch (err) {
      if (!interaction.isRepliable()) return;
      let message: string;
      if (isUserError(err)) {
        message = err.message;
      } else {
        const errorId = newId(4);
        log.error({ err, errorId, command: label }, 'interaction failed');
        message = `Sorry, something went wrong on our side (error \`${errorId}\`). Please try again; if it keeps happening, tell the bot's admins.`;
      }
      await replyWithError(interaction, message, mode).catch((replyErr: unknown) =>
        log.warn({ err: replyErr }, 'could not tell the user about an error'),
      );
    }
  };
}

async function replyWithError(interaction: Interaction, message: string, mode: DeferMode | 'update') {
  if (!interaction.isRepliable()) return;
  const content = `⚠️ ${message}`;
  const flags = MessageFlags.Ephemeral;
  if (!interaction.deferred && !interaction.replied) {
    await interaction.reply({ content, flags, allowedMentions: { parse: [] } });
  } else if (mode === 'ephemeral') {
    await interaction.editReply({ content, embeds: [], components: [], files: [], allowedMentions: { parse: [] } });
  } else {
    // A public "thinking…" placeholder is removed (a component's own message, after an update,
    // is left alone); only the person who asked is told why.
    if (mode === 'public') await interaction.deleteReply().catch(() => undefined);
    await interaction.followUp({ content, flags, allowedMentions: { parse: [] } });
  }
}
