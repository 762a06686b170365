import { createHmac, randomBytes } from 'node:crypto';
import {
  ChannelType,
  GuildDefaultMessageNotifications,
  GuildExplicitContentFilter,
  GuildMFALevel,
  GuildNSFWLevel,
  GuildSystemChannelFlags,
  GuildVerificationLevel,
  MessageFlags,
  PermissionFlagsBits,
} from 'discord.js';
import type {
  APIGuild,
  APIGuildMember,
  APIMessage,
  APIMessageInteractionMetadata,
  APIRole,
  APIUser,
  GatewayGuildCreateDispatchData,
  GuildMemberFlags,
  Locale,
  RoleFlags,
  UserFlags,
} from 'discord.js';
import type {
  AttachmentInfo,
  AttachmentSnapshot,
  FakeDiscordOptions,
  FakeGuildSpec,
  FakeUser,
  MessageFields,
  MessageSnapshot,
  ServeOptions,
} from './fake-discord-types.ts';
import type { SnowflakeSource } from './fake-discord-util.ts';

/** The fake Discord's world: users, guilds, channels, messages and the files its CDN serves. */

const P = PermissionFlagsBits;

/** What @everyone may do in a fresh community server. */
export const DEFAULT_EVERYONE_PERMISSIONS =
  P.ViewChannel |
  P.SendMessages |
  P.SendMessagesInThreads |
  P.CreatePublicThreads |
  P.EmbedLinks |
  P.AttachFiles |
  P.ReadMessageHistory |
  P.AddReactions |
  P.UseExternalEmojis |
  P.UseApplicationCommands |
  P.ChangeNickname |
  P.Connect |
  P.Speak;

/** What the bot's managed role grants: what the bot's invite asks for. */
export const DEFAULT_BOT_PERMISSIONS =
  P.ViewChannel |
  P.SendMessages |
  P.SendMessagesInThreads |
  P.CreatePublicThreads |
  P.ManageThreads |
  P.ManageMessages |
  P.EmbedLinks |
  P.AttachFiles |
  P.ReadMessageHistory |
  P.AddReactions |
  P.UseApplicationCommands;

/** Bit-flag enums have no member for "none". */
const NO_FLAGS = 0;

const ALL_PERMISSIONS = Object.values(PermissionFlagsBits).reduce((all, bit) => all | bit, 0n);

export interface RoleState {
  id: string;
  name: string;
  permissions: bigint;
  position: number;
  managed: boolean;
  botId: string | null;
}

export interface MemberState {
  userId: string;
  roles: string[];
  nick: string | null;
  joinedAt: string;
}

export interface GuildState {
  id: string;
  name: string;
  ownerId: string;
  roles: RoleState[];
  members: Map<string, MemberState>;
  channelIds: string[];
  locale: string;
  premiumTier: 0 | 1 | 2 | 3;
  joinedAt: string;
}

export interface ChannelState {
  id: string;
  guildId: string;
  name: string;
  type: ChannelType;
  parentId: string | null;
  topic: string | null;
  position: number;
  /** Threads: who started it. */
  ownerId: string | null;
  autoArchiveDuration: number;
  createdAt: string;
  lastMessageId: string | null;
  messageCount: number;
  archived: boolean;
  locked: boolean;
  /** Age-restricted; threads carry none of their own (Discord reads the parent's). */
  nsfw?: boolean;
}

export interface MessageState extends MessageFields {
  attachmentIds: string[];
  applicationId: string | null;
  interactionMetadata: APIMessageInteractionMetadata | null;
  threadId: string | null;
}

export interface AttachmentState {
  info: AttachmentInfo;
  data: Buffer;
  channelId: string;
  /** Path of `url`, decoded; `/media` + it for `proxy_url`. */
  path: string;
  hm: string;
  downloads: number;
  serve: ServeOptions;
  expired: boolean;
}

export class World {
  readonly users = new Map<string, FakeUser>();
  readonly guilds = new Map<string, GuildState>();
  readonly channels = new Map<string, ChannelState>();
  readonly messages = new Map<string, MessageState>();
  readonly attachments = new Map<string, AttachmentState>();
  readonly bot: FakeUser;
  readonly applicationId: string;
  readonly defaultGuildId: string;
  readonly defaultChannelId: string;
  /** The first member of the default guild who is not the bot: who sends commands by default. */
  readonly defaultUserId: string;
  private readonly signingKey = randomBytes(16);
  private baseUrl = 'http://127.0.0.1:0';

  constructor(
    private readonly ids: SnowflakeSource,
    opts: FakeDiscordOptions,
  ) {
    this.bot = { globalName: null, ...(opts.botUser ?? { id: ids.next(), username: 'LoRA Guild' }), bot: true };
    this.users.set(this.bot.id, this.bot);
    this.applicationId = opts.applicationId ?? this.bot.id;
    const specs = opts.guilds ?? [{}];
    if (specs.length === 0) throw new Error('FakeDiscord needs at least one guild');
    const botPermissions = opts.botPermissions ?? DEFAULT_BOT_PERMISSIONS;
    for (const spec of specs) this.addGuild(spec, botPermissions);
    const first = this.guilds.get(specs[0]?.id ?? [...this.guilds.keys()][0] ?? '');
    if (!first) throw new Error('unreachable: no guild');
    this.defaultGuildId = first.id;
    const text = first.channelIds.map((id) => this.channels.get(id)).find((c) => c?.type === ChannelType.GuildText);
    if (!text) throw new Error(`FakeDiscord: guild ${first.id} needs a text channel`);
    this.defaultChannelId = text.id;
    const human = [...first.members.keys()].find((id) => id !== this.bot.id);
    this.defaultUserId = human ?? this.bot.id;
  }

  setBaseUrl(url: string): void {
    this.baseUrl = url;
  }

  private addGuild(spec: FakeGuildSpec, botPermissions: bigint): void {
    const id = spec.id ?? this.ids.next();
    const now = new Date().toISOString();
    const botRoleId = this.ids.next();
    const roles: RoleState[] = [
      {
        id,
        name: '@everyone',
        permissions: spec.everyonePermissions ?? DEFAULT_EVERYONE_PERMISSIONS,
        position: 0,
        managed: false,
        botId: null,
      },
      { id: botRoleId, name: this.bot.username, permissions: botPermissions, position: 1, managed: true, botId: this.bot.id },
      ...(spec.roles ?? []).map((r, i) => ({
        id: r.id,
        name: r.name,
        permissions: BigInt(r.permissions ?? 0n),
        position: r.position ?? i + 2,
        managed: r.managed ?? false,
        botId: null,
      })),
    ];
    const memberSpecs = spec.members ?? [{ user: { id: this.ids.next(), username: 'tester' } }];
    const members = new Map<string, MemberState>();
    members.set(this.bot.id, { userId: this.bot.id, roles: [botRoleId], nick: null, joinedAt: now });
    for (const m of memberSpecs) {
      this.users.set(m.user.id, { globalName: null, bot: false, ...m.user });
      members.set(m.user.id, { userId: m.user.id, roles: m.roles ?? [], nick: m.nick ?? null, joinedAt: now });
    }
    const ownerId = spec.ownerId ?? memberSpecs[0]?.user.id ?? this.bot.id;
    const guild: GuildState = {
      id,
      name: spec.name ?? 'Guild',
      ownerId,
      roles,
      members,
      channelIds: [],
      locale: spec.locale ?? 'en-US',
      premiumTier: spec.premiumTier ?? 0,
      joinedAt: now,
    };
    this.guilds.set(id, guild);
    const channelSpecs = spec.channels ?? [{ name: 'lora', type: ChannelType.GuildText }];
    channelSpecs.forEach((c, position) => {
      this.addChannel({
        id: c.id ?? this.ids.next(),
        guildId: id,
        name: c.name,
        type: c.type ?? ChannelType.GuildText,
        parentId: c.parentId ?? null,
        topic: c.topic ?? null,
        position,
        ownerId: null,
        autoArchiveDuration: 1440,
        createdAt: now,
        lastMessageId: null,
        messageCount: 0,
        archived: false,
        locked: false,
        nsfw: c.nsfw ?? false,
      });
    });
  }

  addChannel(channel: ChannelState): ChannelState {
    this.channels.set(channel.id, channel);
    this.guilds.get(channel.guildId)?.channelIds.push(channel.id);
    return channel;
  }

  guild(id: string): GuildState {
    const guild = this.guilds.get(id);
    if (!guild) throw new Error(`FakeDiscord: no guild ${id}; known: ${[...this.guilds.keys()].join(', ')}`);
    return guild;
  }

  channel(id: string): ChannelState {
    const channel = this.channels.get(id);
    if (!channel) throw new Error(`FakeDiscord: no channel ${id}; known: ${[...this.channels.keys()].join(', ')}`);
    return channel;
  }

  user(id: string): FakeUser {
    const user = this.users.get(id);
    if (!user) throw new Error(`FakeDiscord: no user ${id}`);
    return user;
  }

  /** Adds the user to the guild when they are not a member yet (a command from a new user). */
  ensureMember(guildId: string, user: FakeUser): MemberState {
    if (!this.users.has(user.id)) this.users.set(user.id, { globalName: null, bot: false, ...user });
    const guild = this.guild(guildId);
    let member = guild.members.get(user.id);
    if (!member) {
      member = { userId: user.id, roles: [], nick: null, joinedAt: new Date().toISOString() };
      guild.members.set(user.id, member);
    }
    return member;
  }

  permissionsOf(guildId: string, userId: string, roleIds?: string[]): bigint {
    const guild = this.guild(guildId);
    if (guild.ownerId === userId) return ALL_PERMISSIONS;
    const held = new Set([guildId, ...(roleIds ?? guild.members.get(userId)?.roles ?? [])]);
    let bits = 0n;
    for (const role of guild.roles) if (held.has(role.id)) bits |= role.permissions;
    return (bits & P.Administrator) === P.Administrator ? ALL_PERMISSIONS : bits;
  }

  // ---- attachments (the CDN stand-in) ----

  storeAttachment(input: {
    filename: string;
    data: Buffer;
    channelId: string;
    contentType?: string | undefined;
    overrideSize?: number | undefined;
    ephemeral?: boolean | undefined;
    width?: number | undefined;
    height?: number | undefined;
    description?: string | undefined;
    title?: string | undefined;
    serve?: ServeOptions | undefined;
  }): AttachmentState {
    const id = this.ids.next();
    const path = `/attachments/${input.channelId}/${id}/${input.filename}`;
    const issued = Math.floor(Date.now() / 1000);
    const ex = (issued + 24 * 3600).toString(16);
    const is = issued.toString(16);
    const hm = this.sign(path, ex, is);
    const encodedPath = `/attachments/${input.channelId}/${id}/${encodeURIComponent(input.filename)}`;
    const query = `?ex=${ex}&is=${is}&hm=${hm}&`;
    const info: AttachmentInfo = {
      id,
      filename: input.filename,
      size: input.overrideSize ?? input.data.length,
      url: `${this.baseUrl}${encodedPath}${query}`,
      proxy_url: `${this.baseUrl}/media${encodedPath}${query}`,
    };
    if (input.contentType !== undefined) info.content_type = input.contentType;
    if (input.ephemeral !== undefined) info.ephemeral = input.ephemeral;
    if (input.width !== undefined) info.width = input.width;
    if (input.height !== undefined) info.height = input.height;
    if (input.description !== undefined) info.description = input.description;
    if (input.title !== undefined) info.title = input.title;
    const state: AttachmentState = {
      info,
      data: input.data,
      channelId: input.channelId,
      path,
      hm,
      downloads: 0,
      serve: input.serve ?? {},
      expired: false,
    };
    this.attachments.set(id, state);
    return state;
  }

  /** The attachment a CDN URL names, if its signature is right and it has not expired. */
  attachmentAt(path: string, query: URLSearchParams): AttachmentState | 'expired' | undefined {
    const match = /^\/(?:media\/)?attachments\/(\d+)\/(\d+)\/([^/]+)$/.exec(path);
    if (!match) return undefined;
    const state = this.attachments.get(match[2] ?? '');
    if (!state || state.path !== path.replace(/^\/media/, '')) return undefined;
    const ex = query.get('ex') ?? '';
    const is = query.get('is') ?? '';
    const hm = query.get('hm') ?? '';
    if (state.expired || hm !== this.sign(state.path, ex, is)) return 'expired';
    if (Number.parseInt(ex, 16) * 1000 < Date.now()) return 'expired';
    return state;
  }

  private sign(path: string, ex: string, is: string): string {
    return createHmac('sha256', this.signingKey).update(`${path}|${ex}|${is}`).digest('hex');
  }

  // ---- messages ----

  addMessage(input: Omit<MessageState, 'id' | 'createdAt' | 'editedAt' | 'deleted' | 'threadId'> & { id?: string }): MessageState {
    const message: MessageState = {
      ...input,
      id: input.id ?? this.ids.next(),
      createdAt: Date.now(),
      editedAt: null,
      deleted: false,
      threadId: null,
    };
    this.messages.set(message.id, message);
    const channel = this.channels.get(message.channelId);
    if (channel && (message.flags & MessageFlags.Ephemeral) === 0) {
      channel.lastMessageId = message.id;
      channel.messageCount++;
    }
    return message;
  }

  channelMessages(channelId: string): MessageState[] {
    return [...this.messages.values()]
      .filter((m) => m.channelId === channelId && !m.deleted && (m.flags & MessageFlags.Ephemeral) === 0)
      .sort((a, b) => compareIds(b.id, a.id));
  }

  snapshot(message: MessageState): MessageSnapshot {
    return {
      id: message.id,
      channelId: message.channelId,
      guildId: message.guildId,
      authorId: message.authorId,
      type: message.type,
      content: message.content,
      embeds: message.embeds,
      components: message.components,
      flags: message.flags,
      attachments: message.attachmentIds.flatMap((id): AttachmentSnapshot[] => {
        const a = this.attachments.get(id);
        return a ? [{ ...a.info, data: a.data }] : [];
      }),
      webhookId: message.webhookId,
      createdAt: message.createdAt,
      editedAt: message.editedAt,
      deleted: message.deleted,
    };
  }

  // ---- API objects ----

  apiUser(id: string): APIUser {
    const user = this.user(id);
    const api: APIUser = {
      id: user.id,
      username: user.username,
      discriminator: '0',
      global_name: user.globalName ?? null,
      avatar: null,
      banner: null,
      accent_color: null,
      public_flags: NO_FLAGS as UserFlags,
      flags: NO_FLAGS as UserFlags,
      avatar_decoration_data: null,
    };
    if (user.bot) api.bot = true;
    return api;
  }

  apiRole(role: RoleState): APIRole {
    const api: APIRole = {
      id: role.id,
      name: role.name,
      color: 0,
      colors: { primary_color: 0, secondary_color: null, tertiary_color: null },
      hoist: false,
      icon: null,
      unicode_emoji: null,
      position: role.position,
      permissions: role.permissions.toString(),
      managed: role.managed,
      mentionable: false,
      flags: NO_FLAGS as RoleFlags,
    };
    if (role.botId) api.tags = { bot_id: role.botId };
    return api;
  }

  apiMember(guildId: string, userId: string, roleIds?: string[]): APIGuildMember & { user: APIUser } {
    const member = this.guild(guildId).members.get(userId);
    return {
      user: this.apiUser(userId),
      nick: member?.nick ?? null,
      avatar: null,
      banner: null,
      roles: roleIds ?? member?.roles ?? [],
      joined_at: member?.joinedAt ?? new Date().toISOString(),
      premium_since: null,
      deaf: false,
      mute: false,
      flags: NO_FLAGS as GuildMemberFlags,
      pending: false,
      communication_disabled_until: null,
    };
  }

  /** A channel object as REST and the gateway give it (text, category, voice, forum or thread). */
  apiChannel(id: string): ChannelJson {
    const c = this.channel(id);
    const base: ChannelJson = {
      id: c.id,
      type: c.type,
      guild_id: c.guildId,
      name: c.name,
      flags: 0,
    };
    if (c.type === ChannelType.PublicThread || c.type === ChannelType.PrivateThread || c.type === ChannelType.AnnouncementThread) {
      return {
        ...base,
        parent_id: c.parentId,
        owner_id: c.ownerId,
        last_message_id: c.lastMessageId,
        rate_limit_per_user: 0,
        message_count: c.messageCount,
        member_count: 1,
        total_message_sent: c.messageCount,
        thread_metadata: {
          archived: c.archived,
          auto_archive_duration: c.autoArchiveDuration,
          archive_timestamp: c.createdAt,
          locked: c.locked,
          create_timestamp: c.createdAt,
        },
      };
    }
    const sortable = { ...base, position: c.position, permission_overwrites: [], parent_id: c.parentId, nsfw: c.nsfw ?? false };
    if (c.type === ChannelType.GuildCategory) return sortable;
    return {
      ...sortable,
      topic: c.topic,
      last_message_id: c.lastMessageId,
      rate_limit_per_user: 0,
      default_auto_archive_duration: 1440,
    };
  }

  private apiGuildBase(guild: GuildState): APIGuild {
    return {
      id: guild.id,
      name: guild.name,
      icon: null,
      splash: null,
      discovery_splash: null,
      banner: null,
      description: null,
      owner_id: guild.ownerId,
      afk_channel_id: null,
      afk_timeout: 300,
      verification_level: GuildVerificationLevel.None,
      default_message_notifications: GuildDefaultMessageNotifications.OnlyMentions,
      explicit_content_filter: GuildExplicitContentFilter.Disabled,
      roles: guild.roles.map((r) => this.apiRole(r)),
      emojis: [],
      stickers: [],
      features: [],
      mfa_level: GuildMFALevel.None,
      application_id: null,
      system_channel_id: null,
      system_channel_flags: GuildSystemChannelFlags.SuppressJoinNotifications,
      rules_channel_id: null,
      public_updates_channel_id: null,
      safety_alerts_channel_id: null,
      max_members: 500_000,
      vanity_url_code: null,
      premium_tier: guild.premiumTier,
      premium_subscription_count: 0,
      preferred_locale: guild.locale as Locale,
      nsfw_level: GuildNSFWLevel.Default,
      premium_progress_bar_enabled: false,
      hub_type: null,
      incidents_data: null,
    };
  }

  apiGuild(guildId: string): APIGuild {
    const guild = this.guild(guildId);
    return { ...this.apiGuildBase(guild), approximate_member_count: guild.members.size };
  }

  guildCreate(guildId: string): GatewayGuildCreateDispatchData {
    const guild = this.guild(guildId);
    const all = guild.channelIds.map((id) => this.apiChannel(id));
    const isThread = (c: ChannelJson) =>
      c.type === ChannelType.PublicThread || c.type === ChannelType.PrivateThread || c.type === ChannelType.AnnouncementThread;
    return {
      ...this.apiGuildBase(guild),
      joined_at: guild.joinedAt,
      large: false,
      unavailable: false,
      member_count: guild.members.size,
      voice_states: [],
      members: [...guild.members.keys()].map((id) => this.apiMember(guild.id, id)),
      // The gateway's channel types are a union no plain object satisfies; the JSON is what counts.
      channels: all.filter((c) => !isThread(c)) as unknown as GatewayGuildCreateDispatchData['channels'],
      threads: all.filter(isThread) as GatewayGuildCreateDispatchData['threads'],
      presences: [],
      stage_instances: [],
      guild_scheduled_events: [],
      soundboard_sounds: [],
    };
  }

  apiMessage(message: MessageState): APIMessage {
    const api: APIMessage = {
      id: message.id,
      channel_id: message.channelId,
      author: this.apiUser(message.authorId),
      content: message.content,
      timestamp: new Date(message.createdAt).toISOString(),
      edited_timestamp: message.editedAt === null ? null : new Date(message.editedAt).toISOString(),
      tts: false,
      mention_everyone: false,
      mentions: this.mentionedUsers(message.content),
      mention_roles: [...message.content.matchAll(/<@&(\d+)>/g)].map((m) => m[1] ?? ''),
      attachments: message.attachmentIds.flatMap((id) => {
        const a = this.attachments.get(id);
        return a ? [a.info] : [];
      }),
      embeds: message.embeds,
      components: message.components,
      pinned: false,
      type: message.type,
      flags: message.flags,
    };
    if (message.guildId !== null) (api as APIMessage & { guild_id: string }).guild_id = message.guildId;
    if (message.webhookId !== null) api.webhook_id = message.webhookId;
    if (message.applicationId !== null) api.application_id = message.applicationId;
    if (message.interactionMetadata !== null) api.interaction_metadata = message.interactionMetadata;
    if (message.threadId !== null && this.channels.has(message.threadId)) {
      api.thread = this.apiChannel(message.threadId) as NonNullable<APIMessage['thread']>;
    }
    return api;
  }

  private mentionedUsers(content: string): APIUser[] {
    const ids = new Set([...content.matchAll(/<@!?(\d+)>/g)].map((m) => m[1] ?? ''));
    return [...ids].filter((id) => this.users.has(id)).map((id) => this.apiUser(id));
  }
}

/** A channel as JSON; the API's channel types are a union of exact shapes. */
export interface ChannelJson {
  id: string;
  type: ChannelType;
  guild_id: string;
  name: string;
  flags: number;
  [field: string]: unknown;
}

export function compareIds(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
