import {
  MessageFlags,
  type AutocompleteInteraction,
  type ButtonInteraction,
  type ChatInputCommandInteraction,
  type Interaction,
  type MessageComponentInteraction,
  type ModalSubmitInteraction,
  type RepliableInteraction,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
  type StringSelectMenuInteraction,
} from 'discord.js';
import { isUserError, UserError } from '../core/errors.ts';
import { newId } from '../store/dataset-store.ts';
import type { BotContext } from './context.ts';

/**
 * How to acknowledge within Discord's 3 s: `public` when the handler first answers or after 2 s,
 * whichever comes first (so a refusal found before then is the member's alone, with no public
 * "thinking…" before it); `ephemeral` at once; `none` left to the handler.
 */
export type DeferMode = 'public' | 'ephemeral' | 'none';

/** One subcommand of a slash command: how it is acknowledged, and what it does. */
export interface Subcommand {
  defer: DeferMode;
  execute(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<void>;
}

/**
 * A slash command: its definition and a table of its subcommands, which the router dispatches on.
 * Every subcommand in `data` has an entry (a test checks both ways).
 */
export interface SlashCommand {
  data: RESTPostAPIChatInputApplicationCommandsJSONBody;
  subcommands: Record<string, Subcommand>;
  autocomplete?(interaction: AutocompleteInteraction, ctx: BotContext): Promise<void>;
}

/**
 * Entries of a subcommand table that are all acknowledged the same way, keyed by subcommand name:
 * `subcommands: subcommandTable(acknowledged('public', { create, show }), acknowledged('ephemeral', { remove }))`.
 */
export function acknowledged(defer: DeferMode, handlers: Record<string, Subcommand['execute']>): Record<string, Subcommand> {
  return Object.fromEntries(Object.entries(handlers).map(([name, execute]) => [name, { defer, execute }]));
}

/** One subcommand table of several groups; a name in two groups is a mistake, refused when the module loads. */
export function subcommandTable(...groups: Record<string, Subcommand>[]): Record<string, Subcommand> {
  const table: Record<string, Subcommand> = {};
  for (const group of groups) {
    for (const [name, subcommand] of Object.entries(group)) {
      if (Object.hasOwn(table, name)) throw new Error(`subcommand ${name} is in the table twice`);
      table[name] = subcommand;
    }
  }
  return table;
}

export type ComponentInteraction = MessageComponentInteraction | ModalSubmitInteraction;

/** The interaction each kind of component sends. */
export interface ComponentKinds {
  button: ButtonInteraction;
  select: StringSelectMenuInteraction;
  modal: ModalSubmitInteraction;
}
export type ComponentKind = keyof ComponentKinds;

/**
 * Buttons, selects and modals of one family: the handler owns its `customId` codec. A customId is
 * `family:…`; `parse` returns null for anything it did not `encode` (an id of an older version),
 * and the router then tells the member the component is out of date, as it does for a component
 * of another kind than the handler's.
 */
export interface ComponentHandler<T, K extends ComponentKind = ComponentKind> {
  family: string;
  kind: K;
  encode(data: T): string;
  parse(customId: string): T | null;
  defer: 'update' | DeferMode;
  handle(interaction: ComponentKinds[K], ctx: BotContext, data: T): Promise<void>;
}

function isKind<K extends ComponentKind>(interaction: ComponentInteraction, kind: K): interaction is ComponentKinds[K];
function isKind(interaction: ComponentInteraction, kind: ComponentKind): boolean {
  if (kind === 'modal') return interaction.isModalSubmit();
  if (kind === 'button') return interaction.isButton();
  return interaction.isStringSelectMenu();
}

/** Discord's limit on a customId. */
const MAX_CUSTOM_ID = 100;

/** One part of a customId: what it may look like, and the value it stands for. */
export interface IdPart<V> {
  pattern: RegExp;
  decode(text: string): V;
}

/** Our record ids (datasets, runs, plans…). */
export const ID_PART: IdPart<string> = { pattern: /^[a-z0-9]{1,16}$/, decode: (text) => text };
/** Small non-negative integers (image numbers, pages, epochs, versions). */
export const COUNT_PART: IdPart<number> = { pattern: /^\d{1,7}$/, decode: Number };

/** One of a few fixed words (an action, a mode). */
export function oneOfPart<const V extends string>(values: readonly V[]): IdPart<V> {
  return { pattern: new RegExp(`^(${values.join('|')})$`), decode: (text) => text as V };
}

type ValuesOf<S> = { [K in keyof S]: S[K] extends IdPart<infer V> ? V : never };

/**
 * The customId codec of a component family, to spread into its handler: ids are `family:a:b…`,
 * one part per field, in the order the fields are listed. `parse` takes only what `encode` can
 * write; `encode` refuses a value that would not read back.
 */
export function customIdCodec<S extends Record<string, IdPart<unknown>>>(family: string, fields: S) {
  const names = Object.keys(fields);
  return {
    family,
    encode(data: ValuesOf<S>): string {
      const texts = names.map((name) => String(data[name]));
      const id = [family, ...texts].join(':');
      if (id.length > MAX_CUSTOM_ID || texts.some((text, i) => !fields[names[i]!]!.pattern.test(text))) {
        throw new Error(`bad customId ${id.slice(0, 120)}`);
      }
      return id;
    },
    parse(customId: string): ValuesOf<S> | null {
      const [head, ...texts] = customId.split(':');
      if (head !== family || texts.length !== names.length) return null;
      const data: Record<string, unknown> = {};
      for (const [i, name] of names.entries()) {
        const field = fields[name]!;
        if (!field.pattern.test(texts[i]!)) return null;
        data[name] = field.decode(texts[i]!);
      }
      return data as ValuesOf<S>;
    },
  };
}

/** How long checks may run before `checkThenDefer` acknowledges anyway (Discord allows 3 s). */
const CHECKS_WITHIN_MS = 2000;

/**
 * For a public answer that may be a refusal (a handler with `defer: 'none'`): runs `checks`
 * before acknowledging, so a refusal is an ephemeral reply with no public "thinking…" before it;
 * once they pass, defers publicly and returns what they found. Checks that outlast Discord's
 * window get an ephemeral deferral instead: the answer, whichever it is, is then the member's alone.
 */
export async function checkThenDefer<T>(interaction: RepliableInteraction, checks: () => Promise<T>): Promise<T> {
  const pending = checks();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), CHECKS_WITHIN_MS)));
  const first = await Promise.race([
    pending.then(
      () => 'checked' as const,
      () => 'checked' as const,
    ),
    late,
  ]);
  clearTimeout(timer);
  if (first === 'late') {
    await interaction.deferReply({ flags: MessageFlags.Ephemeral });
    return pending;
  }
  const found = await pending;
  await interaction.deferReply();
  return found;
}

/** The answers that need the interaction acknowledged first. */
const ANSWERS = new Set<PropertyKey>(['editReply', 'followUp', 'deleteReply', 'fetchReply']);

/**
 * Runs a handler whose answer is public with the acknowledgement held back: the public deferral is
 * sent when the handler first answers (editReply, followUp, …) or after CHECKS_WITHIN_MS, whichever
 * comes first. A refusal thrown before then finds the interaction unacknowledged, and the router
 * answers it ephemerally: nothing public flashes before it. The handler sees the interaction as it
 * is, but for those answers; the deferral in flight is awaited before the router looks at it.
 */
async function answeredLazily<T extends RepliableInteraction>(interaction: T, handle: (lazy: T) => Promise<void>): Promise<void> {
  let acknowledged: Promise<unknown> | null = null;
  const acknowledge = () => (acknowledged ??= interaction.deferReply());
  const timer = setTimeout(() => void acknowledge().catch(() => undefined), CHECKS_WITHIN_MS);
  const lazy = new Proxy(interaction, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      if (!ANSWERS.has(prop)) return method.bind(target);
      return async (...args: unknown[]) => {
        if (!target.deferred && !target.replied) await acknowledge();
        return method.apply(target, args);
      };
    },
  });
  try {
    await handle(lazy);
  } finally {
    clearTimeout(timer);
    if (acknowledged) await (acknowledged as Promise<unknown>).catch(() => undefined);
  }
}

function outOfDate(interaction: ComponentInteraction): string {
  if (interaction.isModalSubmit()) return 'That form is out of date.';
  if (interaction.isButton()) return 'That button is out of date.';
  return 'That menu is out of date.';
}

/** Routes every interaction, acknowledges it first, and turns errors into replies. */
export function createInteractionRouter(ctx: BotContext, commands: SlashCommand[], components: ComponentHandler<unknown>[]) {
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
        const name = interaction.commandName;
        const sub = interaction.options.getSubcommand(false) ?? '';
        label = `/${name} ${sub}`.trim();
        // Discord only sends what was registered: a miss here is our bug (an out-of-date
        // registration or a table without the entry), logged below with an error id.
        const subcommand = byName.get(name)?.subcommands[sub];
        if (!subcommand) throw new Error(`no handler for ${label}`);
        mode = subcommand.defer;
        if (mode === 'public') await answeredLazily(interaction, (lazy) => subcommand.execute(lazy, ctx));
        else {
          if (mode === 'ephemeral') await interaction.deferReply({ flags: MessageFlags.Ephemeral });
          await subcommand.execute(interaction, ctx);
        }
      } else if (interaction.isMessageComponent() || interaction.isModalSubmit()) {
        const family = interaction.customId.split(':', 1)[0] ?? '';
        label = `component ${family}`;
        const handler = byFamily.get(family);
        const data = handler ? handler.parse(interaction.customId) : null;
        if (!handler || data === null || !isKind(interaction, handler.kind)) {
          log.info({ customId: interaction.customId.slice(0, 100) }, 'out-of-date component');
          throw new UserError(outOfDate(interaction));
        }
        mode = handler.defer;
        if (mode === 'public') await answeredLazily(interaction, (lazy) => handler.handle(lazy, ctx, data));
        else {
          if (mode === 'update') await interaction.deferUpdate();
          else if (mode === 'ephemeral') await interaction.deferReply({ flags: MessageFlags.Ephemeral });
          await handler.handle(interaction, ctx, data);
        }
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
      await replyWithError(interaction, message, mode).catch((replyErr: unknown) => log.warn({ err: replyErr }, 'could not tell the user about an error'));
    }
  };
}

async function replyWithError(interaction: Interaction, message: string, mode: DeferMode | 'update') {
  if (!interaction.isRepliable()) return;
  const content = `⚠️ ${message}`;
  const flags = MessageFlags.Ephemeral;
  if (!interaction.deferred && !interaction.replied) {
    await interaction.reply({ content, flags });
  } else if (mode !== 'update' && interaction.ephemeral) {
    await interaction.editReply({ content, embeds: [], components: [], files: [] });
  } else {
    // A public "thinking…" placeholder is removed (a component's own message, after an update,
    // is left alone); only the person who asked is told why.
    if (mode !== 'update' && interaction.deferred) await interaction.deleteReply().catch(() => undefined);
    await interaction.followUp({ content, flags });
  }
}
