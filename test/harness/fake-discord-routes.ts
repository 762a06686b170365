/**
 * The fake's REST API: the route table (method and path → handler) and what each route does to
 * the world, as Discord would (errors with Discord's codes, permission checks, message limits,
 * interaction callbacks and webhooks). FakeDiscord serves it; see fake-discord.ts.
 */
import {
  ChannelType,
  GatewayDispatchEvents,
  GatewayIntentBits,
  InteractionResponseType,
  InteractionType,
  MessageFlags,
  MessageType,
  PermissionFlagsBits,
} from 'discord.js';
import type { APIInteraction, APIMessageInteractionMetadata } from 'discord.js';
import type { FakeGateway } from './fake-discord-gateway.ts';
import type { CommandDefinition } from './fake-discord-interactions.ts';
import { DiscordError, applyEdit, readMessageBody, resolveAttachments, validateMessage, type MessageBody } from './fake-discord-messages.ts';
import { isRecord, type ParsedFile, type SnowflakeSource } from './fake-discord-util.ts';
import { compareIds, type ChannelState, type MessageState, type World } from './fake-discord-world.ts';

const MiB = 1024 * 1024;

export interface RouteContext {
  params: Record<string, string>;
  json: unknown;
  files: ParsedFile[];
  query: URLSearchParams;
}

export interface RouteResult {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Route {
  name: string;
  method: string;
  regex: RegExp;
  keys: string[];
  /** Bot-token routes refuse a request without `Authorization: Bot …`. */
  botAuth: boolean;
  handler: (ctx: RouteContext) => RouteResult | Promise<RouteResult>;
}

export interface InteractionState {
  id: string;
  token: string;
  type: InteractionType;
  payload: APIInteraction;
  sentAt: number;
  guildId: string;
  channelId: string;
  userId: string;
  attachmentSizeLimit: number;
  /** The response type of the accepted callback, null before it. */
  ackType: InteractionResponseType | null;
  /** The message `@original` names now. */
  originalMessageId: string | null;
  /** Messages this interaction's webhook may touch. */
  messageIds: Set<string>;
  expired: boolean;
}

/** What the routes act on: FakeDiscord's state. */
export interface RestHost {
  world: World;
  gateway: FakeGateway;
  ids: SnowflakeSource;
  gatewayUrl(): string;
  /** Callbacks later than this after the interaction was sent get 10062 (null: never). */
  ackDeadlineMs: number | null;
  attachmentSizeLimit: number;
  interactionsById: Map<string, InteractionState>;
  interactionsByToken: Map<string, InteractionState>;
  commands(scope?: string): CommandDefinition[];
  registerCommands(definitions: unknown[], guildId?: string): CommandDefinition[];
}

/** The REST route table. */
export class RestRoutes {
  private readonly routes: Route[] = [];
  private readonly world: World;
  private readonly gateway: FakeGateway;
  private readonly ids: SnowflakeSource;
  private readonly ackDeadlineMs: number | null;
  private readonly attachmentSizeLimit: number;
  private readonly interactionsById: Map<string, InteractionState>;
  private readonly interactionsByToken: Map<string, InteractionState>;

  constructor(private readonly host: RestHost) {
    this.world = host.world;
    this.gateway = host.gateway;
    this.ids = host.ids;
    this.ackDeadlineMs = host.ackDeadlineMs;
    this.attachmentSizeLimit = host.attachmentSizeLimit;
    this.interactionsById = host.interactionsById;
    this.interactionsByToken = host.interactionsByToken;
    this.define();
  }

  private get gatewayUrl(): string {
    return this.host.gatewayUrl();
  }

  private commands(scope?: string): CommandDefinition[] {
    return this.host.commands(scope);
  }

  private registerCommands(definitions: unknown[], guildId?: string): CommandDefinition[] {
    return this.host.registerCommands(definitions, guildId);
  }

  /** The route for a request, with its path parameters. */
  match(method: string, path: string): { route: Route; params: Record<string, string> } | undefined {
    for (const route of this.routes) {
      if (route.method !== method) continue;
      const m = route.regex.exec(path);
      if (!m) continue;
      const params: Record<string, string> = {};
      route.keys.forEach((key, i) => {
        params[key] = m[i + 1] ?? '';
      });
      return { route, params };
    }
    return undefined;
  }

  private route(method: string, pattern: string, botAuth: boolean, handler: Route['handler']): void {
    const keys: string[] = [];
    const source = pattern
      .split('/')
      .map((part) => {
        if (!part.startsWith(':')) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        keys.push(part.slice(1));
        return '([^/]+)';
      })
      .join('/');
    this.routes.push({ name: `${method} ${pattern}`, method, regex: new RegExp(`^${source}$`), keys, botAuth, handler });
  }

  private define(): void {
    const bot = true;
    const ok = (body: unknown, status = 200): RouteResult => ({ status, body });
    const noContent: RouteResult = { status: 204 };

    this.route('GET', '/gateway', false, () => ok({ url: this.gatewayUrl }));
    this.route('GET', '/gateway/bot', bot, () =>
      ok({
        url: this.gatewayUrl,
        shards: 1,
        session_start_limit: { total: 1000, remaining: 999, reset_after: 14_400_000, max_concurrency: 1 },
      }),
    );
    this.route('GET', '/users/@me', bot, () => ok(this.world.apiUser(this.world.bot.id)));
    this.route('GET', '/users/:user', bot, ({ params }) => {
      if (!this.world.users.has(params.user ?? '')) throw new DiscordError(404, 10013, 'Unknown User');
      return ok(this.world.apiUser(params.user ?? ''));
    });
    this.route('GET', '/applications/@me', bot, () =>
      ok({
        id: this.world.applicationId,
        name: this.world.bot.username,
        icon: null,
        description: '',
        bot_public: true,
        bot_require_code_grant: false,
        verify_key: '0'.repeat(64),
        flags: 0,
        bot: this.world.apiUser(this.world.bot.id),
      }),
    );

    // Commands
    const checkApp = (app: string | undefined) => {
      if (app !== this.world.applicationId) throw new DiscordError(404, 10002, 'Unknown Application');
    };
    this.route('GET', '/applications/:app/commands', bot, ({ params }) => {
      checkApp(params.app);
      return ok(this.commands());
    });
    this.route('PUT', '/applications/:app/commands', bot, ({ params, json }) => {
      checkApp(params.app);
      if (!Array.isArray(json)) throw new DiscordError(400, 50035, 'Invalid Form Body');
      return ok(this.registerCommands(json));
    });
    this.route('GET', '/applications/:app/guilds/:guild/commands', bot, ({ params }) => {
      checkApp(params.app);
      this.guildOr404(params.guild);
      return ok(this.commands(params.guild));
    });
    this.route('PUT', '/applications/:app/guilds/:guild/commands', bot, ({ params, json }) => {
      checkApp(params.app);
      this.guildOr404(params.guild);
      if (!Array.isArray(json)) throw new DiscordError(400, 50035, 'Invalid Form Body');
      return ok(this.registerCommands(json, params.guild));
    });

    // Interactions
    this.route('POST', '/interactions/:id/:token/callback', false, (ctx) => this.interactionCallback(ctx));
    this.route('POST', '/webhooks/:app/:token', false, (ctx) => this.followup(ctx));
    this.route('GET', '/webhooks/:app/:token/messages/:message', false, ({ params }) => {
      const { message } = this.webhookMessage(params);
      return ok(this.world.apiMessage(message));
    });
    this.route('PATCH', '/webhooks/:app/:token/messages/:message', false, ({ params, json, files }) => {
      const { state, message } = this.webhookMessage(params);
      const body = readMessageBody(json);
      validateMessage(body, files, { creating: false, sizeLimit: state.attachmentSizeLimit });
      applyEdit(this.world, message, body, files);
      this.announce(GatewayDispatchEvents.MessageUpdate, message);
      return ok(this.world.apiMessage(message));
    });
    this.route('DELETE', '/webhooks/:app/:token/messages/:message', false, ({ params }) => {
      const { message } = this.webhookMessage(params);
      this.deleteMessage(message);
      return noContent;
    });

    // Channels and messages
    this.route('GET', '/channels/:channel', bot, ({ params }) => ok(this.world.apiChannel(this.channelOr404(params.channel).id)));
    this.route('PATCH', '/channels/:channel', bot, ({ params, json }) => {
      const channel = this.channelOr404(params.channel);
      if (isRecord(json)) {
        if (typeof json.name === 'string') channel.name = json.name;
        if (typeof json.archived === 'boolean') channel.archived = json.archived;
        if (typeof json.locked === 'boolean') channel.locked = json.locked;
      }
      const api = this.world.apiChannel(channel.id);
      this.gateway.dispatch(isThreadType(channel.type) ? GatewayDispatchEvents.ThreadUpdate : GatewayDispatchEvents.ChannelUpdate, api);
      return ok(api);
    });
    this.route('POST', '/channels/:channel/messages', bot, ({ params, json, files }) => {
      const channel = this.channelOr404(params.channel);
      const body = readMessageBody(json);
      this.requireBotPermission(channel, isThreadType(channel.type) ? PermissionFlagsBits.SendMessagesInThreads : PermissionFlagsBits.SendMessages);
      if (files.length > 0) this.requireBotPermission(channel, PermissionFlagsBits.AttachFiles);
      if (channel.archived && channel.locked) throw new DiscordError(400, 50083, 'Thread is archived');
      validateMessage(body, files, { creating: true, sizeLimit: this.uploadLimit(channel.guildId) });
      channel.archived = false;
      const message = this.createMessage(channel, body, files, {
        type: body.messageReference ? MessageType.Reply : MessageType.Default,
      });
      return ok(this.world.apiMessage(message));
    });
    this.route('GET', '/channels/:channel/messages', bot, ({ params, query }) => {
      const channel = this.channelOr404(params.channel);
      const limit = Math.min(100, Math.max(1, Number(query.get('limit') ?? 50)));
      const before = query.get('before');
      const after = query.get('after');
      let list = this.world.channelMessages(channel.id);
      if (before) list = list.filter((m) => compareIds(m.id, before) < 0);
      if (after)
        list = list
          .filter((m) => compareIds(m.id, after) > 0)
          .reverse()
          .slice(0, limit)
          .reverse();
      return ok(list.slice(0, limit).map((m) => this.world.apiMessage(m)));
    });
    this.route('GET', '/channels/:channel/messages/:message', bot, ({ params }) =>
      ok(this.world.apiMessage(this.channelMessageOr404(params.channel, params.message))),
    );
    this.route('PATCH', '/channels/:channel/messages/:message', bot, ({ params, json, files }) => {
      const message = this.channelMessageOr404(params.channel, params.message);
      if (message.authorId !== this.world.bot.id) {
        throw new DiscordError(403, 50005, 'Cannot edit a message authored by another user');
      }
      const body = readMessageBody(json);
      const channel = this.channelOr404(params.channel);
      validateMessage(body, files, { creating: false, sizeLimit: this.uploadLimit(channel.guildId) });
      applyEdit(this.world, message, body, files);
      this.announce(GatewayDispatchEvents.MessageUpdate, message);
      return ok(this.world.apiMessage(message));
    });
    this.route('DELETE', '/channels/:channel/messages/:message', bot, ({ params }) => {
      this.deleteMessage(this.channelMessageOr404(params.channel, params.message));
      return noContent;
    });
    const reaction = ({ params }: RouteContext) => {
      this.channelMessageOr404(params.channel, params.message);
      return noContent;
    };
    this.route('PUT', '/channels/:channel/messages/:message/reactions/:emoji/:user', bot, reaction);
    this.route('DELETE', '/channels/:channel/messages/:message/reactions/:emoji/:user', bot, reaction);
    this.route('DELETE', '/channels/:channel/messages/:message/reactions', bot, reaction);
    this.route('POST', '/channels/:channel/typing', bot, ({ params }) => {
      this.channelOr404(params.channel);
      return noContent;
    });
    this.route('PUT', '/channels/:channel/thread-members/:user', bot, ({ params }) => {
      this.channelOr404(params.channel);
      return noContent;
    });
    this.route('DELETE', '/channels/:channel/thread-members/:user', bot, ({ params }) => {
      this.channelOr404(params.channel);
      return noContent;
    });
    this.route('POST', '/channels/:channel/threads', bot, ({ params, json }) => {
      const parent = this.channelOr404(params.channel);
      const body = isRecord(json) ? json : {};
      const type = typeof body.type === 'number' ? (body.type as ChannelType) : ChannelType.PrivateThread;
      if (type !== ChannelType.PublicThread && type !== ChannelType.PrivateThread) {
        throw new DiscordError(400, 50035, 'Invalid Form Body', {
          type: { _errors: [{ code: 'BASE_TYPE_CHOICES', message: 'Value must be one of {11, 12}.' }] },
        });
      }
      const thread = this.createThread(parent, body, type, this.ids.next());
      return ok(this.world.apiChannel(thread.id), 201);
    });
    this.route('POST', '/channels/:channel/messages/:message/threads', bot, ({ params, json }) => {
      const parent = this.channelOr404(params.channel);
      const message = this.channelMessageOr404(params.channel, params.message);
      if (message.threadId !== null) throw new DiscordError(400, 160004, 'A thread has already been created for this message');
      const type = parent.type === ChannelType.GuildAnnouncement ? ChannelType.AnnouncementThread : ChannelType.PublicThread;
      // A thread started from a message takes the message's id.
      const thread = this.createThread(parent, isRecord(json) ? json : {}, type, message.id);
      message.threadId = thread.id;
      return ok(this.world.apiChannel(thread.id), 201);
    });

    // Guilds
    this.route('GET', '/guilds/:guild', bot, ({ params }) => ok(this.world.apiGuild(this.guildOr404(params.guild).id)));
    this.route('GET', '/guilds/:guild/channels', bot, ({ params }) => {
      const guild = this.guildOr404(params.guild);
      return ok(guild.channelIds.filter((id) => !isThreadType(this.world.channel(id).type)).map((id) => this.world.apiChannel(id)));
    });
    this.route('GET', '/guilds/:guild/threads/active', bot, ({ params }) => {
      const guild = this.guildOr404(params.guild);
      const threads = guild.channelIds
        .map((id) => this.world.channel(id))
        .filter((c) => isThreadType(c.type) && !c.archived)
        .map((c) => this.world.apiChannel(c.id));
      return ok({ threads, members: [] });
    });
    this.route('GET', '/guilds/:guild/roles', bot, ({ params }) => ok(this.guildOr404(params.guild).roles.map((r) => this.world.apiRole(r))));
    this.route('GET', '/guilds/:guild/members/:user', bot, ({ params }) => {
      const guild = this.guildOr404(params.guild);
      const userId = params.user === '@me' ? this.world.bot.id : (params.user ?? '');
      if (!guild.members.has(userId)) throw new DiscordError(404, 10007, 'Unknown Member');
      return ok(this.world.apiMember(guild.id, userId));
    });
  }

  private guildOr404(id: string | undefined) {
    const guild = this.world.guilds.get(id ?? '');
    if (!guild) throw new DiscordError(404, 10004, 'Unknown Guild');
    return guild;
  }

  private channelOr404(id: string | undefined): ChannelState {
    const channel = this.world.channels.get(id ?? '');
    if (!channel) throw new DiscordError(404, 10003, 'Unknown Channel');
    return channel;
  }

  private channelMessageOr404(channelId: string | undefined, messageId: string | undefined): MessageState {
    this.channelOr404(channelId);
    const message = this.world.messages.get(messageId ?? '');
    if (!message || message.deleted || message.channelId !== channelId) throw new DiscordError(404, 10008, 'Unknown Message');
    return message;
  }

  private requireBotPermission(channel: ChannelState, bit: bigint): void {
    const bits = this.world.permissionsOf(channel.guildId, this.world.bot.id);
    if ((bits & PermissionFlagsBits.ViewChannel) === 0n || (bits & bit) === 0n) {
      throw new DiscordError(403, 50013, 'Missing Permissions');
    }
  }

  /** The largest file the bot may upload in the guild (boost tiers raise it). */
  private uploadLimit(guildId: string): number {
    const tier = this.world.guild(guildId).premiumTier;
    const boosted = tier === 3 ? 100 * MiB : tier === 2 ? 50 * MiB : 0;
    return Math.max(this.attachmentSizeLimit, boosted);
  }

  private createThread(parent: ChannelState, body: Record<string, unknown>, type: ChannelType, id: string): ChannelState {
    if (parent.type !== ChannelType.GuildText && parent.type !== ChannelType.GuildAnnouncement) {
      throw new DiscordError(400, 50024, 'Cannot execute action on this channel type');
    }
    const name = typeof body.name === 'string' ? body.name : '';
    if (name.length < 1 || name.length > 100) {
      throw new DiscordError(400, 50035, 'Invalid Form Body', {
        name: { _errors: [{ code: 'BASE_TYPE_BAD_LENGTH', message: 'Must be between 1 and 100 in length.' }] },
      });
    }
    this.requireBotPermission(parent, type === ChannelType.PrivateThread ? PermissionFlagsBits.CreatePrivateThreads : PermissionFlagsBits.CreatePublicThreads);
    const thread = this.world.addChannel({
      id,
      guildId: parent.guildId,
      name,
      type,
      parentId: parent.id,
      topic: null,
      position: 0,
      ownerId: this.world.bot.id,
      autoArchiveDuration: typeof body.auto_archive_duration === 'number' ? body.auto_archive_duration : 1440,
      createdAt: new Date().toISOString(),
      lastMessageId: null,
      messageCount: 0,
      archived: false,
      locked: false,
    });
    this.gateway.dispatch(GatewayDispatchEvents.ThreadCreate, { ...this.world.apiChannel(thread.id), newly_created: true });
    return thread;
  }

  private createMessage(
    channel: ChannelState,
    body: MessageBody,
    files: ParsedFile[],
    extra: {
      type: number;
      flags?: number;
      webhookId?: string;
      interactionMetadata?: APIMessageInteractionMetadata;
    },
  ): MessageState {
    const message = this.world.addMessage({
      channelId: channel.id,
      guildId: channel.guildId,
      authorId: this.world.bot.id,
      type: extra.type,
      content: body.content ?? '',
      embeds: body.embeds ?? [],
      components: body.components ?? [],
      flags: extra.flags ?? (body.flags ?? 0) & ~MessageFlags.Ephemeral,
      attachmentIds: resolveAttachments(this.world, body, files, [], channel.id),
      webhookId: extra.webhookId ?? null,
      applicationId: extra.webhookId === undefined ? null : this.world.applicationId,
      interactionMetadata: extra.interactionMetadata ?? null,
    });
    this.announce(GatewayDispatchEvents.MessageCreate, message);
    return message;
  }

  /** Tells sessions with the GuildMessages intent about a visible message change. */
  private announce(event: GatewayDispatchEvents, message: MessageState): void {
    if ((message.flags & MessageFlags.Ephemeral) !== 0 || message.guildId === null) return;
    const data = { ...this.world.apiMessage(message), guild_id: message.guildId };
    this.gateway.dispatch(event, data, (intents) => ((intents & GatewayIntentBits.GuildMessages) !== 0 ? { data } : false));
  }

  private deleteMessage(message: MessageState): void {
    message.deleted = true;
    if ((message.flags & MessageFlags.Ephemeral) !== 0 || message.guildId === null) return;
    const data = { id: message.id, channel_id: message.channelId, guild_id: message.guildId };
    this.gateway.dispatch(GatewayDispatchEvents.MessageDelete, data, (intents) => ((intents & GatewayIntentBits.GuildMessages) !== 0 ? { data } : false));
  }

  // ---- interaction responses ----

  private interactionCallback({ params, json, files, query }: RouteContext): RouteResult {
    const state = this.interactionsById.get(params.id ?? '');
    if (!state || state.token !== params.token) throw new DiscordError(404, 10062, 'Unknown interaction');
    const late = this.ackDeadlineMs !== null && Date.now() - state.sentAt > this.ackDeadlineMs;
    if (state.expired || late) throw new DiscordError(404, 10062, 'Unknown interaction');
    if (state.ackType !== null) throw new DiscordError(400, 40060, 'Interaction has already been acknowledged.');
    const response = isRecord(json) ? json : {};
    const type = response.type;
    if (typeof type !== 'number' || !allowedResponses(state.type).includes(type)) {
      throw new DiscordError(400, 50035, 'Invalid Form Body', {
        type: {
          _errors: [{ code: 'INTERACTION_RESPONSE_TYPE_INVALID', message: `Response type ${String(type)} is not valid for interaction type ${state.type}` }],
        },
      });
    }
    const data = isRecord(response.data) ? response.data : {};
    const channel = this.world.channel(state.channelId);
    let message: MessageState | undefined;
    switch (type as InteractionResponseType) {
      case InteractionResponseType.ChannelMessageWithSource: {
        const body = readMessageBody(data);
        validateMessage(body, files, { creating: true, sizeLimit: state.attachmentSizeLimit });
        message = this.createMessage(channel, body, files, this.responseExtras(state, body.flags ?? 0));
        break;
      }
      case InteractionResponseType.DeferredChannelMessageWithSource: {
        const flags = typeof data.flags === 'number' ? data.flags : 0;
        message = this.createMessage(channel, {}, [], this.responseExtras(state, flags | MessageFlags.Loading));
        break;
      }
      case InteractionResponseType.UpdateMessage: {
        const target = state.originalMessageId === null ? undefined : this.world.messages.get(state.originalMessageId);
        if (!target) throw new DiscordError(400, 10008, 'Unknown Message');
        const body = readMessageBody(data);
        validateMessage(body, files, { creating: false, sizeLimit: state.attachmentSizeLimit });
        applyEdit(this.world, target, body, files);
        this.announce(GatewayDispatchEvents.MessageUpdate, target);
        message = target;
        break;
      }
      case InteractionResponseType.ApplicationCommandAutocompleteResult: {
        const choices = Array.isArray(data.choices) ? data.choices : [];
        if (choices.length > 25) {
          throw new DiscordError(400, 50035, 'Invalid Form Body', {
            data: { choices: { _errors: [{ code: 'BASE_TYPE_MAX_LENGTH', message: 'Must be 25 or fewer in length.' }] } },
          });
        }
        break;
      }
      case InteractionResponseType.Modal: {
        if (typeof data.custom_id !== 'string' || typeof data.title !== 'string' || !Array.isArray(data.components)) {
          throw new DiscordError(400, 50035, 'Invalid Form Body', {
            data: { _errors: [{ code: 'MODAL_INVALID', message: 'A modal needs custom_id, title and components' }] },
          });
        }
        break;
      }
      default:
        break;
    }
    if (message) {
      state.originalMessageId = message.id;
      state.messageIds.add(message.id);
    }
    state.ackType = type;
    if (query.get('with_response') !== 'true') return { status: 204 };
    const resource: Record<string, unknown> = { type };
    if (message) resource.message = this.world.apiMessage(message);
    const interaction: Record<string, unknown> = { id: state.id, type: state.type };
    if (message) {
      interaction.response_message_id = message.id;
      interaction.response_message_loading = (message.flags & MessageFlags.Loading) !== 0;
      interaction.response_message_ephemeral = (message.flags & MessageFlags.Ephemeral) !== 0;
    }
    return { status: 200, body: { interaction, resource } };
  }

  /** Fields of a message created in answer to an interaction. */
  private responseExtras(state: InteractionState, flags: number) {
    const metadata = {
      id: state.id,
      type: state.type,
      user: this.world.apiUser(state.userId),
      authorizing_integration_owners: { '0': state.guildId },
    } as Record<string, unknown>;
    if (state.type === InteractionType.MessageComponent && state.originalMessageId !== null) {
      metadata.interacted_message_id = state.originalMessageId;
    }
    const command = state.type === InteractionType.ApplicationCommand;
    return {
      type: command ? MessageType.ChatInputCommand : MessageType.Default,
      flags: flags & (MessageFlags.Ephemeral | MessageFlags.Loading | MessageFlags.SuppressEmbeds | MessageFlags.IsComponentsV2),
      webhookId: this.world.applicationId,
      interactionMetadata: metadata as unknown as APIMessageInteractionMetadata,
    };
  }

  private webhookState(app: string | undefined, token: string | undefined): InteractionState {
    const state = this.interactionsByToken.get(token ?? '');
    if (!state || app !== this.world.applicationId || state.ackType === null) {
      throw new DiscordError(404, 10015, 'Unknown Webhook');
    }
    if (state.expired) throw new DiscordError(401, 50027, 'Invalid Webhook Token');
    return state;
  }

  private webhookMessage(params: Record<string, string>): { state: InteractionState; message: MessageState } {
    const state = this.webhookState(params.app, params.token);
    const id = params.message === '@original' ? state.originalMessageId : (params.message ?? null);
    const message = id === null ? undefined : this.world.messages.get(id);
    if (!message || message.deleted || !state.messageIds.has(message.id)) throw new DiscordError(404, 10008, 'Unknown Message');
    return { state, message };
  }

  private followup({ params, json, files, query }: RouteContext): RouteResult {
    const state = this.webhookState(params.app, params.token);
    const body = readMessageBody(json);
    validateMessage(body, files, { creating: true, sizeLimit: state.attachmentSizeLimit });
    const original = state.originalMessageId === null ? undefined : this.world.messages.get(state.originalMessageId);
    let message: MessageState;
    if (
      state.ackType === InteractionResponseType.DeferredChannelMessageWithSource &&
      original &&
      !original.deleted &&
      (original.flags & MessageFlags.Loading) !== 0
    ) {
      // The first followup after a deferred reply fills in the "thinking…" message (unless that
      // message was deleted: the followup is then a message of its own).
      applyEdit(this.world, original, body, files);
      this.announce(GatewayDispatchEvents.MessageUpdate, original);
      message = original;
    } else {
      const extras = this.responseExtras(state, body.flags ?? 0);
      message = this.createMessage(this.world.channel(state.channelId), body, files, {
        ...extras,
        type: MessageType.Default,
        flags: extras.flags & ~MessageFlags.Loading,
      });
      state.messageIds.add(message.id);
    }
    return query.get('wait') === 'true' ? { status: 200, body: this.world.apiMessage(message) } : { status: 204 };
  }
}

/** Which callback types Discord accepts for each interaction type. */
function allowedResponses(type: InteractionType): number[] {
  const R = InteractionResponseType;
  switch (type) {
    case InteractionType.ApplicationCommand:
      return [R.Pong, R.ChannelMessageWithSource, R.DeferredChannelMessageWithSource, R.Modal];
    case InteractionType.MessageComponent:
      return [R.ChannelMessageWithSource, R.DeferredChannelMessageWithSource, R.DeferredMessageUpdate, R.UpdateMessage, R.Modal];
    case InteractionType.ApplicationCommandAutocomplete:
      return [R.ApplicationCommandAutocompleteResult];
    case InteractionType.ModalSubmit:
      return [R.ChannelMessageWithSource, R.DeferredChannelMessageWithSource, R.DeferredMessageUpdate, R.UpdateMessage];
    default:
      return [R.Pong];
  }
}

export function isThreadType(type: ChannelType): boolean {
  return type === ChannelType.PublicThread || type === ChannelType.PrivateThread || type === ChannelType.AnnouncementThread;
}
