import type { APIEmbed, APIInteraction, APIMessage, APIMessageTopLevelComponent, GatewayOpcodes } from 'discord.js';

/** The public vocabulary of the fake Discord (see fake-discord.ts). */

export interface FakeUser {
  id: string;
  username: string;
  globalName?: string | null;
  bot?: boolean;
}

export interface FakeRoleSpec {
  id: string;
  name: string;
  /** Permission bits; default none. */
  permissions?: bigint | string;
  position?: number;
  managed?: boolean;
}

export interface FakeMemberSpec {
  user: FakeUser;
  /** Role ids besides @everyone. */
  roles?: string[];
  nick?: string | null;
}

export interface FakeChannelSpec {
  id?: string;
  name: string;
  /** A `ChannelType`; default 0 (guild text). */
  type?: number;
  parentId?: string | null;
  topic?: string | null;
  /** Age-restricted (Discord's `nsfw` flag; threads take their parent's). */
  nsfw?: boolean;
}

export interface FakeGuildSpec {
  id?: string;
  name?: string;
  /** Default: the first member that is not the bot, else the bot. */
  ownerId?: string;
  channels?: FakeChannelSpec[];
  /** Extra roles; @everyone (id = guild id) is always there. */
  roles?: FakeRoleSpec[];
  /** Members besides the bot (always a member). Default: one user "tester", who sends commands. */
  members?: FakeMemberSpec[];
  /** Permission bits of @everyone; default a member's usual set. */
  everyonePermissions?: bigint;
  premiumTier?: 0 | 1 | 2 | 3;
  locale?: string;
}

export interface FakeDiscordOptions {
  botUser?: FakeUser;
  /** Default: the bot user's id, as for any bot application. */
  applicationId?: string;
  /** Default: one guild "Guild" with a text channel "lora". */
  guilds?: FakeGuildSpec[];
  /** Permission bits of the bot's managed role in every guild. */
  botPermissions?: bigint;
  /** Sent in HELLO. Default 41 250 ms, as Discord. */
  heartbeatIntervalMs?: number;
  /**
   * When set, a callback later than this after the interaction was dispatched gets Discord's
   * 10062 Unknown interaction. Off by default (`ackLatencyMs()` lets a test assert it instead).
   */
  ackDeadlineMs?: number | null;
  /** `attachment_size_limit` of interactions and the largest accepted upload. Default 10 MiB. */
  attachmentSizeLimit?: number;
}

export interface RecordedFile {
  /** The multipart field, `files[0]`… */
  field: string;
  filename: string;
  contentType: string;
  data: Buffer;
}

/** One REST request the client made, as the fake saw and answered it (logged when answered). */
export interface RecordedCall {
  seq: number;
  /** Arrival time, ms since the epoch. */
  at: number;
  method: string;
  /** Decoded, without `/api/v10`: `/webhooks/1/tok/messages/@original`. */
  path: string;
  query: Record<string, string>;
  /** Lower-case names. */
  headers: Record<string, string>;
  /** The JSON body, or the `payload_json` of a multipart body. */
  json?: unknown;
  files: RecordedFile[];
  status: number;
  /** The route that answered, e.g. `POST /channels/:channel/messages`; null when none matched. */
  route: string | null;
  /** True when a `failNext` fault answered instead of the route. */
  injected: boolean;
  /** The JSON the fake answered with, if any. */
  response?: unknown;
}

/** A Discord attachment object, as in messages and in `resolved.attachments`. */
export interface AttachmentInfo {
  id: string;
  filename: string;
  size: number;
  url: string;
  proxy_url: string;
  content_type?: string;
  ephemeral?: boolean;
  width?: number;
  height?: number;
  description?: string;
  title?: string;
}

/** How the attachment host serves a file: slowly, cut short, or failing. */
export interface ServeOptions {
  /** Bytes per write; default 64 KiB. */
  chunkSize?: number;
  /** Pause between writes. */
  chunkDelayMs?: number;
  /** Declare the full length but drop the connection after this many bytes. */
  truncateAfter?: number;
  /** Answer with this status and no body (e.g. 404 for a URL that expired, 500). */
  status?: number;
}

export interface AddAttachmentOptions {
  filename: string;
  data: Buffer;
  contentType?: string;
  /** The channel in the URL; default the default channel. */
  channelId?: string;
  /** Declared `size`, when it should lie about the bytes served. */
  overrideSize?: number;
  ephemeral?: boolean;
  width?: number;
  height?: number;
  serve?: ServeOptions;
}

/** An option value for `sendCommand`; the option type follows the JS type unless given. */
export type CommandOptionValue = string | number | boolean | AttachmentInfo | { type: number; value: string | number | boolean };

export interface InteractionContext {
  /** Default: the default member of the guild. */
  user?: FakeUser;
  guildId?: string;
  channelId?: string;
  /** The member's permission bits; default computed from the guild's roles. */
  permissions?: bigint | string;
  /** Role ids of the member for this interaction; default the member's roles. */
  roles?: string[];
  /** The bot's permission bits; default computed from the guild's roles. */
  appPermissions?: bigint | string;
  locale?: string;
  attachmentSizeLimit?: number;
}

export interface CommandSpec extends InteractionContext {
  name: string;
  subcommand?: string;
  subcommandGroup?: string;
  options?: Record<string, CommandOptionValue>;
}

export interface AutocompleteSpec extends CommandSpec {
  /** The option the user is typing in. */
  focused: string;
}

/** The message a component sits on: an id the fake knows, or a message object. */
export type ComponentMessage = string | APIMessage;

export interface ButtonSpec extends InteractionContext {
  customId: string;
  /** Default: a new bot message in the channel carrying this button. */
  message?: ComponentMessage;
}

export interface SelectSpec extends InteractionContext {
  customId: string;
  values: string[];
  /** 3 string (default), 5 user, 6 role, 7 mentionable, 8 channel. */
  componentType?: 3 | 5 | 6 | 7 | 8;
  message?: ComponentMessage;
}

export interface ModalSubmitSpec extends InteractionContext {
  customId: string;
  /** Text input values by custom id; an array is a string select inside a label. */
  fields: Record<string, string | string[]>;
  /**
   * `rows`: action rows of text inputs (the legacy layout); `labels`: label components (type 18).
   * Default: the layout of the last modal the bot showed with this custom id, else `rows`.
   */
  layout?: 'rows' | 'labels';
  message?: ComponentMessage;
}

export interface AttachmentSnapshot extends AttachmentInfo {
  data: Buffer;
}

/** What a message is, as the fake keeps it and as a user sees it. */
export interface MessageFields {
  id: string;
  channelId: string;
  guildId: string | null;
  authorId: string;
  type: number;
  content: string;
  embeds: APIEmbed[];
  components: APIMessageTopLevelComponent[];
  flags: number;
  webhookId: string | null;
  createdAt: number;
  editedAt: number | null;
  deleted: boolean;
}

/** What a user sees of a message now. */
export interface MessageSnapshot extends MessageFields {
  attachments: AttachmentSnapshot[];
}

export interface InteractionHandle {
  readonly id: string;
  readonly token: string;
  /** When the INTERACTION_CREATE went out, ms since the epoch. */
  readonly sentAt: number;
  /** The dispatched payload. */
  readonly payload: APIInteraction;
  /** The `POST /interactions/:id/:token/callback` (the first successful one). */
  callback(timeoutMs?: number): Promise<RecordedCall>;
  /** callback.at − sentAt; throws when there was no callback yet. */
  ackLatencyMs(): number;
  /** An edit of the original response (`PATCH …/messages/@original`) matching the predicate. */
  waitForEdit(predicate?: (call: RecordedCall) => boolean, timeoutMs?: number): Promise<RecordedCall>;
  /** A followup (`POST /webhooks/:app/:token`) matching the predicate. */
  waitForFollowup(predicate?: (call: RecordedCall) => boolean, timeoutMs?: number): Promise<RecordedCall>;
  followups(): RecordedCall[];
  /** Every REST call that used this interaction's id or token, failed ones included. */
  calls(): RecordedCall[];
  /**
   * What `@original` shows now (callback data merged with later edits, attachments with their
   * bytes), or null before there is one. For a component, `@original` is the message it sits on
   * until the bot replies with a new message (type 4 or 5).
   */
  lastReply(): MessageSnapshot | null;
  /** Makes the token stale, as after 15 minutes: later calls get Discord's errors. */
  expire(): void;
}

export interface GatewayFrame {
  at: number;
  /** Which socket, counting from 1. */
  connection: number;
  op: GatewayOpcodes;
  d: unknown;
}

export interface FailNextOptions {
  method?: string;
  /** Matched against the decoded path without `/api/v10`. */
  path: RegExp;
  status: 429 | 500 | 502 | 503;
  /** How many matching requests fail; default 1. */
  times?: number;
  /** 429 only: seconds, sent as Retry-After and retry_after. Default 0.1. */
  retryAfter?: number;
  /** 429 only; default `user`. */
  scope?: 'user' | 'global' | 'shared';
}

export interface UserMessageSpec {
  channelId?: string;
  author?: FakeUser;
  content?: string;
  attachments?: AttachmentInfo[];
}
