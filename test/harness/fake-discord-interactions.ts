import { randomBytes } from 'node:crypto';
import {
  ApplicationCommandOptionType,
  ApplicationCommandType,
  ChannelType,
  ComponentType,
  InteractionContextType,
  InteractionType,
  MessageFlags,
} from 'discord.js';
import type {
  APIAttachment,
  APIInteraction,
  APIInteractionDataResolved,
  APIInteractionGuildMember,
  APIMessage,
  APIMessageTopLevelComponent,
  Locale,
} from 'discord.js';
import type {
  AttachmentInfo,
  AutocompleteSpec,
  ButtonSpec,
  CommandOptionValue,
  CommandSpec,
  ComponentMessage,
  InteractionContext,
  ModalSubmitSpec,
  SelectSpec,
} from './fake-discord-types.ts';
import { isRecord, type SnowflakeSource } from './fake-discord-util.ts';
import type { World } from './fake-discord-world.ts';

/** Builds INTERACTION_CREATE payloads the way Discord shapes them for a guild interaction. */

/** A registered command, as the bot PUT it (with the id the fake gave it). */
export interface CommandDefinition {
  id: string;
  name: string;
  type?: number;
  guild_id?: string;
  options?: OptionDefinition[];
  [field: string]: unknown;
}

export interface OptionDefinition {
  name: string;
  type: ApplicationCommandOptionType;
  required?: boolean;
  options?: OptionDefinition[];
  [field: string]: unknown;
}

export interface BuiltInteraction {
  payload: APIInteraction;
  guildId: string;
  channelId: string;
  userId: string;
  attachmentSizeLimit: number;
  /** For components and modals from a message: the message the component sits on. */
  originalMessageId: string | null;
}

export interface InteractionFactoryOptions {
  attachmentSizeLimit: number;
  /** The registered command of that name visible in the guild, if the bot registered any. */
  findCommand(name: string, guildId: string): CommandDefinition | undefined;
  /** Whether any command is registered at all (then unknown names are an error). */
  hasCommands(guildId: string): boolean;
  /** The layout of the last modal the bot showed with this custom id, if any. */
  modalLayout(customId: string): 'rows' | 'labels' | undefined;
  /** The text inputs of the last modal the bot showed with this custom id, with their limits. */
  modalInputs(customId: string): { customId: string; maxLength: number; minLength: number }[];
}

interface BuiltOption {
  name: string;
  type: ApplicationCommandOptionType;
  value?: string | number | boolean;
  options?: BuiltOption[];
  focused?: boolean;
}

const O = ApplicationCommandOptionType;

export class InteractionFactory {
  constructor(
    private readonly world: World,
    private readonly ids: SnowflakeSource,
    private readonly opts: InteractionFactoryOptions,
  ) {}

  command(spec: CommandSpec): BuiltInteraction {
    return this.commandLike(spec, InteractionType.ApplicationCommand, undefined);
  }

  autocomplete(spec: AutocompleteSpec): BuiltInteraction {
    return this.commandLike(spec, InteractionType.ApplicationCommandAutocomplete, spec.focused);
  }

  button(spec: ButtonSpec): BuiltInteraction {
    const ctx = this.componentContext(spec);
    const message = this.componentMessage(spec.message, ctx, [
      { type: ComponentType.Button, style: 1, label: spec.customId.slice(0, 80), custom_id: spec.customId },
    ]);
    const payload = {
      ...this.base(ctx, InteractionType.MessageComponent),
      message,
      data: { custom_id: spec.customId, component_type: ComponentType.Button },
    };
    return { ...this.built(ctx, payload), originalMessageId: message.id };
  }

  select(spec: SelectSpec): BuiltInteraction {
    const ctx = this.componentContext(spec);
    const componentType = (spec.componentType ?? ComponentType.StringSelect) as ComponentType;
    const component =
      componentType === ComponentType.StringSelect
        ? {
            type: componentType,
            custom_id: spec.customId,
            options: spec.values.map((v) => ({ label: v, value: v })),
          }
        : { type: componentType, custom_id: spec.customId };
    const message = this.componentMessage(spec.message, ctx, [component]);
    const data: Record<string, unknown> = {
      custom_id: spec.customId,
      component_type: componentType,
      values: spec.values,
    };
    if (componentType !== ComponentType.StringSelect) data.resolved = this.resolvedForIds(ctx, spec.values, componentType);
    const payload = { ...this.base(ctx, InteractionType.MessageComponent), message, data };
    return { ...this.built(ctx, payload), originalMessageId: message.id };
  }

  modalSubmit(spec: ModalSubmitSpec): BuiltInteraction {
    const ctx = this.componentContext(spec);
    const layout = spec.layout ?? this.opts.modalLayout(spec.customId) ?? 'rows';
    // Discord's form does not let a member submit more (or fewer) characters than a field allows.
    for (const input of this.opts.modalInputs(spec.customId)) {
      const value = spec.fields[input.customId];
      if (typeof value !== 'string') continue;
      const length = [...value].length;
      if (length > input.maxLength || (length > 0 && length < input.minLength)) {
        throw new Error(
          `FakeDiscord: the form's field "${input.customId}" takes ${input.minLength}–${input.maxLength} characters; a member cannot submit ${length}`,
        );
      }
    }
    let nextId = 1;
    const components = Object.entries(spec.fields).map(([customId, value]) => {
      const inner = Array.isArray(value)
        ? { type: ComponentType.StringSelect, id: 0, custom_id: customId, values: value }
        : { type: ComponentType.TextInput, id: 0, custom_id: customId, value };
      if (layout === 'labels') {
        const labelId = nextId++;
        inner.id = nextId++;
        return { type: ComponentType.Label, id: labelId, component: inner };
      }
      const rowId = nextId++;
      inner.id = nextId++;
      return { type: ComponentType.ActionRow, id: rowId, components: [inner] };
    });
    const payload: Record<string, unknown> = {
      ...this.base(ctx, InteractionType.ModalSubmit),
      data: { custom_id: spec.customId, components },
    };
    let originalMessageId: string | null = null;
    if (spec.message !== undefined) {
      const message = this.componentMessage(spec.message, ctx, []);
      payload.message = message;
      originalMessageId = message.id;
    }
    return { ...this.built(ctx, payload), originalMessageId };
  }

  // ---- shared pieces ----

  private commandLike(spec: CommandSpec, type: InteractionType, focused: string | undefined): BuiltInteraction {
    const ctx = this.context(spec);
    const definition = this.opts.findCommand(spec.name, ctx.guildId);
    if (!definition && this.opts.hasCommands(ctx.guildId)) {
      throw new Error(`FakeDiscord: no registered command /${spec.name} in guild ${ctx.guildId}`);
    }
    const resolved: APIInteractionDataResolved = {};
    const optionDefs = definition ? this.optionDefinitions(definition, spec) : undefined;
    let options = Object.entries(spec.options ?? {}).map(([name, value]) => this.option(name, value, optionDefs, ctx, resolved, focused === name));
    if (focused !== undefined && !options.some((o) => o.focused)) {
      throw new Error(`FakeDiscord: the focused option "${focused}" is not among the options given`);
    }
    if (optionDefs) {
      const missing = optionDefs.filter((d) => d.required && !(d.name in (spec.options ?? {})));
      // Autocomplete arrives while the user is still typing: required options may be missing.
      if (missing.length > 0 && type === InteractionType.ApplicationCommand) {
        throw new Error(`FakeDiscord: /${spec.name} needs option(s) ${missing.map((d) => d.name).join(', ')}`);
      }
    }
    if (spec.subcommand !== undefined) {
      options = [{ name: spec.subcommand, type: O.Subcommand, options }];
      if (spec.subcommandGroup !== undefined) {
        options = [{ name: spec.subcommandGroup, type: O.SubcommandGroup, options }];
      }
    } else if (spec.subcommandGroup !== undefined) {
      throw new Error('FakeDiscord: a subcommandGroup needs a subcommand');
    }
    const data: Record<string, unknown> = {
      id: definition?.id ?? this.ids.next(),
      name: spec.name,
      type: ApplicationCommandType.ChatInput,
    };
    if (definition?.guild_id !== undefined) data.guild_id = definition.guild_id;
    if (options.length > 0) data.options = options;
    if (Object.keys(resolved).length > 0) data.resolved = resolved;
    const payload = { ...this.base(ctx, type), data };
    return { ...this.built(ctx, payload), originalMessageId: null };
  }

  /** The option definitions the spec's (group, subcommand) addresses; throws when they don't exist. */
  private optionDefinitions(def: CommandDefinition, spec: CommandSpec): OptionDefinition[] {
    let level = def.options ?? [];
    const where = [`/${def.name}`];
    const descend = (name: string, type: ApplicationCommandOptionType, kind: string) => {
      const next = level.find((o) => o.name === name && o.type === type);
      if (!next) {
        const known = level.filter((o) => o.type === type).map((o) => o.name);
        throw new Error(`FakeDiscord: ${where.join(' ')} has no ${kind} "${name}" (known: ${known.join(', ') || 'none'})`);
      }
      where.push(name);
      level = next.options ?? [];
    };
    if (spec.subcommandGroup !== undefined) descend(spec.subcommandGroup, O.SubcommandGroup, 'subcommand group');
    if (spec.subcommand !== undefined) descend(spec.subcommand, O.Subcommand, 'subcommand');
    if (level.some((o) => o.type === O.Subcommand || o.type === O.SubcommandGroup)) {
      throw new Error(`FakeDiscord: ${where.join(' ')} needs a subcommand`);
    }
    return level;
  }

  private option(
    name: string,
    value: CommandOptionValue,
    defs: OptionDefinition[] | undefined,
    ctx: Context,
    resolved: APIInteractionDataResolved,
    focused: boolean,
  ): BuiltOption {
    const def = defs?.find((d) => d.name === name);
    if (defs && !def) {
      throw new Error(`FakeDiscord: no option "${name}" (known: ${defs.map((d) => d.name).join(', ') || 'none'})`);
    }
    let type: ApplicationCommandOptionType;
    let raw: string | number | boolean;
    if (isAttachmentInfo(value)) {
      type = O.Attachment;
      raw = value.id;
      const attachment: APIAttachment = { ...value, ephemeral: value.ephemeral ?? true };
      resolved.attachments = { ...resolved.attachments, [value.id]: attachment };
    } else if (typeof value === 'object') {
      type = value.type;
      raw = value.value;
    } else if (typeof value === 'string') {
      type = O.String;
      raw = value;
    } else if (typeof value === 'boolean') {
      type = O.Boolean;
      raw = value;
    } else {
      type = Number.isInteger(value) ? O.Integer : O.Number;
      raw = value;
    }
    // A registered definition decides the type: 3 given for a NUMBER option is still a NUMBER.
    if (def) {
      const fits = def.type === type || (def.type === O.Number && type === O.Integer) || (focused && typeof raw === 'string');
      const refersById = [O.User, O.Channel, O.Role, O.Mentionable].includes(def.type) && typeof raw === 'string';
      if (!fits && !refersById) {
        throw new Error(`FakeDiscord: option "${name}" is type ${def.type}, got ${JSON.stringify(value)}`);
      }
      // A focused option carries the text typed so far, as a string, under the option's own type.
      type = def.type;
    }
    if (!focused && [O.User, O.Channel, O.Role, O.Mentionable].includes(type)) {
      mergeResolved(resolved, this.resolvedForIds(ctx, [String(raw)], optionToSelect(type)));
    }
    const option: BuiltOption = { name, type, value: raw };
    if (focused) option.focused = true;
    return option;
  }

  /** Resolved users/members/roles/channels for ids picked in a select or an option. */
  private resolvedForIds(ctx: Context, ids: string[], componentType: ComponentType): APIInteractionDataResolved {
    const resolved: APIInteractionDataResolved = {};
    const guild = this.world.guild(ctx.guildId);
    for (const id of ids) {
      if (componentType === ComponentType.UserSelect || componentType === ComponentType.MentionableSelect) {
        if (this.world.users.has(id)) {
          resolved.users = { ...resolved.users, [id]: this.world.apiUser(id) };
          if (guild.members.has(id)) {
            const { user: _user, ...member } = this.world.apiMember(ctx.guildId, id);
            const permissions = this.world.permissionsOf(ctx.guildId, id).toString();
            resolved.members = { ...resolved.members, [id]: { ...member, permissions } };
          }
        }
      }
      if (componentType === ComponentType.RoleSelect || componentType === ComponentType.MentionableSelect) {
        const role = guild.roles.find((r) => r.id === id);
        if (role) resolved.roles = { ...resolved.roles, [id]: this.world.apiRole(role) };
      }
      if (componentType === ComponentType.ChannelSelect && this.world.channels.has(id)) {
        const c = this.world.apiChannel(id);
        const channel = { id: c.id, name: c.name, type: c.type, permissions: ctx.memberPermissions } as Record<string, unknown>;
        if (c.parent_id !== undefined) channel.parent_id = c.parent_id;
        if (c.thread_metadata !== undefined) channel.thread_metadata = c.thread_metadata;
        resolved.channels = {
          ...resolved.channels,
          [id]: channel as unknown as NonNullable<APIInteractionDataResolved['channels']>[string],
        };
      }
    }
    for (const id of ids) {
      const known = resolved.users?.[id] ?? resolved.roles?.[id] ?? resolved.channels?.[id];
      if (!known) throw new Error(`FakeDiscord: the world has no user, role or channel ${id} to resolve`);
    }
    return resolved;
  }

  private componentMessage(given: ComponentMessage | undefined, ctx: Context, components: Record<string, unknown>[]): APIMessage {
    if (typeof given === 'string') {
      const stored = this.world.messages.get(given);
      if (!stored) throw new Error(`FakeDiscord: no message ${given} for the component to sit on`);
      return this.world.apiMessage(stored);
    }
    if (given !== undefined) return given;
    const stored = this.world.addMessage({
      channelId: ctx.channelId,
      guildId: ctx.guildId,
      authorId: this.world.bot.id,
      type: 0,
      content: '',
      embeds: [],
      components: components.length > 0 ? [{ type: ComponentType.ActionRow, components } as unknown as APIMessageTopLevelComponent] : [],
      flags: 0,
      attachmentIds: [],
      webhookId: null,
      applicationId: null,
      interactionMetadata: null,
    });
    return this.world.apiMessage(stored);
  }

  /** As in Discord, a component is used in the channel (and guild) of the message it sits on. */
  private componentContext(spec: InteractionContext & { message?: ComponentMessage }): Context {
    const stored = typeof spec.message === 'string' ? this.world.messages.get(spec.message) : undefined;
    if (!stored || spec.channelId !== undefined) return this.context(spec);
    return this.context({ ...spec, channelId: stored.channelId, ...(stored.guildId === null ? {} : { guildId: spec.guildId ?? stored.guildId }) });
  }

  private context(spec: InteractionContext): Context {
    const guildId = spec.guildId ?? this.world.defaultGuildId;
    const guild = this.world.guild(guildId);
    const channelId =
      spec.channelId ??
      (guildId === this.world.defaultGuildId
        ? this.world.defaultChannelId
        : guild.channelIds.find((id) => this.world.channels.get(id)?.type === ChannelType.GuildText));
    if (channelId === undefined) throw new Error(`FakeDiscord: guild ${guildId} has no text channel`);
    const channel = this.world.channel(channelId);
    if (channel.guildId !== guildId) throw new Error(`FakeDiscord: channel ${channelId} is not in guild ${guildId}`);
    const user = spec.user ?? this.world.user(this.world.defaultUserId);
    this.world.ensureMember(guildId, user);
    const roles = spec.roles ?? guild.members.get(user.id)?.roles ?? [];
    const memberPermissions = (spec.permissions ?? this.world.permissionsOf(guildId, user.id, roles)).toString();
    const appPermissions = (spec.appPermissions ?? this.world.permissionsOf(guildId, this.world.bot.id)).toString();
    return {
      guildId,
      channelId,
      userId: user.id,
      roles,
      memberPermissions,
      appPermissions,
      locale: spec.locale ?? 'en-US',
      attachmentSizeLimit: spec.attachmentSizeLimit ?? this.opts.attachmentSizeLimit,
    };
  }

  private base(ctx: Context, type: InteractionType): Record<string, unknown> {
    const guild = this.world.guild(ctx.guildId);
    const c = this.world.apiChannel(ctx.channelId);
    const member: APIInteractionGuildMember = {
      ...this.world.apiMember(ctx.guildId, ctx.userId, ctx.roles),
      permissions: ctx.memberPermissions,
    };
    return {
      id: this.ids.next(),
      application_id: this.world.applicationId,
      type,
      token: `fake-interaction-token-${randomBytes(12).toString('hex')}`,
      version: 1,
      guild_id: ctx.guildId,
      guild: { id: ctx.guildId, locale: guild.locale as Locale, features: [] },
      channel_id: ctx.channelId,
      channel: { ...c, permissions: ctx.memberPermissions },
      member,
      locale: ctx.locale,
      guild_locale: guild.locale,
      app_permissions: ctx.appPermissions,
      entitlements: [],
      authorizing_integration_owners: { '0': ctx.guildId },
      context: InteractionContextType.Guild,
      attachment_size_limit: ctx.attachmentSizeLimit,
    };
  }

  private built(ctx: Context, payload: Record<string, unknown>): Omit<BuiltInteraction, 'originalMessageId'> {
    return {
      // The payload is assembled field by field above; its shape is pinned by the harness tests.
      payload: payload as unknown as APIInteraction,
      guildId: ctx.guildId,
      channelId: ctx.channelId,
      userId: ctx.userId,
      attachmentSizeLimit: ctx.attachmentSizeLimit,
    };
  }
}

interface Context {
  guildId: string;
  channelId: string;
  userId: string;
  roles: string[];
  memberPermissions: string;
  appPermissions: string;
  locale: string;
  attachmentSizeLimit: number;
}

export function isAttachmentInfo(value: unknown): value is AttachmentInfo {
  return (
    isRecord(value) && typeof value.id === 'string' && typeof value.filename === 'string' && typeof value.url === 'string' && typeof value.size === 'number'
  );
}

function optionToSelect(type: ApplicationCommandOptionType): ComponentType {
  switch (type) {
    case O.User:
      return ComponentType.UserSelect;
    case O.Role:
      return ComponentType.RoleSelect;
    case O.Channel:
      return ComponentType.ChannelSelect;
    default:
      return ComponentType.MentionableSelect;
  }
}

function mergeResolved(into: APIInteractionDataResolved, from: APIInteractionDataResolved): void {
  if (from.users) into.users = { ...into.users, ...from.users };
  if (from.members) into.members = { ...into.members, ...from.members };
  if (from.roles) into.roles = { ...into.roles, ...from.roles };
  if (from.channels) into.channels = { ...into.channels, ...from.channels };
}

/** Flags Discord sets on the placeholder of a deferred reply. */
export const LOADING = MessageFlags.Loading;
