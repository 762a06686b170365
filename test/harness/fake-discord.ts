import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
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
import type { APIInteraction, APIMessage, APIMessageInteractionMetadata } from 'discord.js';
import { FakeGateway } from './fake-discord-gateway.ts';
import {
  InteractionFactory,
  type BuiltInteraction,
  type CommandDefinition,
} from './fake-discord-interactions.ts';
import {
  DiscordError,
  applyEdit,
  readMessageBody,
  resolveAttachments,
  validateMessage,
  type MessageBody,
} from './fake-discord-messages.ts';
import type {
  AddAttachmentOptions,
  AttachmentInfo,
  AutocompleteSpec,
  ButtonSpec,
  CommandSpec,
  FailNextOptions,
  FakeDiscordOptions,
  FakeUser,
  GatewayFrame,
  InteractionHandle,
  MessageSnapshot,
  ModalSubmitSpec,
  RecordedCall,
  SelectSpec,
  UserMessageSpec,
} from './fake-discord-types.ts';
import {
  SnowflakeSource,
  WaitableLog,
  contentTypeFor,
  delay,
  flattenHeaders,
  isRecord,
  parseBody,
  readBody,
  sendJson,
  type ParsedFile,
} from './fake-discord-util.ts';
import { World, compareIds, type ChannelJson, type ChannelState, type MessageState } from './fake-discord-world.ts';

export type * from './fake-discord-types.ts';
export type { ChannelJson } from './fake-discord-world.ts';
export type { CommandDefinition, OptionDefinition } from './fake-discord-interactions.ts';

/**
 * A local stand-in for Discord that the real discord.js Client talks to:
 * `new Client({ intents, rest: { api: fake.apiUrl } })`. One HTTP server on 127.0.0.1 serves the
 * REST API under /api/v10, the gateway (WebSocket upgrade on /gateway) and the attachment CDN
 * (`cdnHost`, for ATTACHMENT_HOSTS). Every REST call is recorded, so tests assert on what a user
 * would see.
 *
 *   const fake = await FakeDiscord.start();
 *   // …log the bot in against fake.apiUrl and wait for it to be ready…
 *   const photo = fake.addAttachment({ filename: 'cat.png', data: png });
 *   const run = fake.sendCommand({ name: 'dataset', subcommand: 'add', options: { image: photo } });
 *   await run.callback();                      // the bot acknowledged (ackLatencyMs() < 3000)
 *   await run.waitForEdit((c) => c.files.length > 0);
 *   expect(run.lastReply()?.content).toMatch(/added/);
 *   expect(fake.unknownCalls()).toEqual([]);
 *   await fake.close();
 *
 * Modelled on Discord's behaviour: interaction tokens (10062 unknown, 40060 already acknowledged,
 * `expire()`), `@original` (the reply, or for components the message they sit on), the first
 * followup after a deferral filling in the deferred reply, message limits (2000 characters, 10
 * embeds, 5 rows, 10 files, upload size 40005), bot permissions (50013), MESSAGE_CREATE only with
 * the GuildMessages intent and content only with MessageContent, RESUME with replay.
 */

const DEFAULT_WAIT_MS = 5_000;
const MiB = 1024 * 1024;

interface RouteContext {
  params: Record<string, string>;
  json: unknown;
  files: ParsedFile[];
  query: URLSearchParams;
}

interface RouteResult {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

interface Route {
  name: string;
  method: string;
  regex: RegExp;
  keys: string[];
  /** Bot-token routes refuse a request without `Authorization: Bot …`. */
  botAuth: boolean;
  handler: (ctx: RouteContext) => RouteResult | Promise<RouteResult>;
}

interface Fault {
  method: string | undefined;
  path: RegExp;
  status: 429 | 500 | 502 | 503;
  remaining: number;
  retryAfter: number;
  scope: 'user' | 'global' | 'shared';
}

interface InteractionState {
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

export class FakeDiscord {
  private readonly ids = new SnowflakeSource();
  private readonly world: World;
  private readonly gateway: FakeGateway;
  private readonly factory: InteractionFactory;
  private readonly server: Server;
  private readonly log: WaitableLog<RecordedCall>;
  private readonly routes: Route[] = [];
  private readonly faults: Fault[] = [];
  private readonly interactionsById = new Map<string, InteractionState>();
  private readonly interactionsByToken = new Map<string, InteractionState>();
  /** Registered commands: key `global` or a guild id. */
  private readonly commandSets = new Map<string, CommandDefinition[]>();
  private readonly ackDeadlineMs: number | null;
  private readonly attachmentSizeLimit: number;
  private readonly harnessErrors: Error[] = [];
  private seq = 0;
  private port = 0;
  private closing: Promise<void> | null = null;

  private constructor(opts: FakeDiscordOptions) {
    this.world = new World(this.ids, opts);
    this.ackDeadlineMs = opts.ackDeadlineMs ?? null;
    this.attachmentSizeLimit = opts.attachmentSizeLimit ?? 10 * MiB;
    this.log = new WaitableLog((items) => describeCalls(items));
    this.gateway = new FakeGateway({
      heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 41_250,
      ready: () => ({
        user: this.world.apiUser(this.world.bot.id),
        guilds: [...this.world.guilds.keys()].map((id) => ({ id, unavailable: true })),
        application: { id: this.world.applicationId, flags: 0 },
        private_channels: [],
        relationships: [],
        user_settings: {},
        presences: [],
        guild_join_requests: [],
        geo_ordered_rtc_regions: [],
      }),
      guildCreates: () => [...this.world.guilds.keys()].map((id) => this.world.guildCreate(id)),
    });
    this.factory = new InteractionFactory(this.world, this.ids, {
      attachmentSizeLimit: this.attachmentSizeLimit,
      findCommand: (name, guildId) =>
        (this.commandSets.get(guildId) ?? []).find((c) => c.name === name) ??
        (this.commandSets.get('global') ?? []).find((c) => c.name === name),
      hasCommands: (guildId) =>
        (this.commandSets.get(guildId)?.length ?? 0) + (this.commandSets.get('global')?.length ?? 0) > 0,
      modalLayout: (customId) => this.modalLayout(customId),
    });
    this.server = createServer((req, res) => {
      this.onRequest(req, res).catch((err: unknown) => {
        this.harnessErrors.push(err instanceof Error ? err : new Error(String(err)));
        if (!res.headersSent) sendJson(res, 500, { message: `FakeDiscord failed: ${String(err)}`, code: 0 });
        else res.destroy();
      });
    });
    this.server.on('upgrade', (req: IncomingMessage, socket, head: Buffer) => {
      if ((req.url ?? '').startsWith('/gateway')) this.gateway.handleUpgrade(req, socket, head);
      else socket.destroy();
    });
    this.defineRoutes();
  }

  /** Starts the fake on a random 127.0.0.1 port. */
  static async start(opts: FakeDiscordOptions = {}): Promise<FakeDiscord> {
    const fake = new FakeDiscord(opts);
    await new Promise<void>((resolve, reject) => {
      fake.server.once('error', reject);
      fake.server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = fake.server.address();
    if (address === null || typeof address === 'string') throw new Error('FakeDiscord: no TCP address');
    fake.port = address.port;
    fake.world.setBaseUrl(fake.cdnHost);
    fake.gateway.setUrl(fake.gatewayUrl);
    return fake;
  }

  // ---- addresses and the world ----

  /** For `new Client({ rest: { api } })`. */
  get apiUrl(): string {
    return `http://127.0.0.1:${this.port}/api`;
  }

  /** The attachment host, for the bot's ATTACHMENT_HOSTS. */
  get cdnHost(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get gatewayUrl(): string {
    return `ws://127.0.0.1:${this.port}/gateway`;
  }

  get botUser(): FakeUser {
    return { ...this.world.bot };
  }

  get applicationId(): string {
    return this.world.applicationId;
  }

  /** The default (first) guild. */
  get guildId(): string {
    return this.world.defaultGuildId;
  }

  /** The default guild's first text channel ("lora" unless configured). */
  get channelId(): string {
    return this.world.defaultChannelId;
  }

  /** Who sends commands when a spec names no user. */
  get defaultUser(): FakeUser {
    return { ...this.world.user(this.world.defaultUserId) };
  }

  /** A channel or thread as the API shows it, or undefined. */
  channel(id: string): ChannelJson | undefined {
    return this.world.channels.has(id) ? this.world.apiChannel(id) : undefined;
  }

  /** Threads, optionally only those under one parent channel, oldest first. */
  threads(parentId?: string): ChannelJson[] {
    return [...this.world.channels.values()]
      .filter((c) => isThreadType(c.type) && (parentId === undefined || c.parentId === parentId))
      .map((c) => this.world.apiChannel(c.id));
  }

  /** A message as users see it now (also deleted and ephemeral ones). */
  message(id: string): MessageSnapshot | undefined {
    const message = this.world.messages.get(id);
    return message ? this.world.snapshot(message) : undefined;
  }

  /** The visible messages of a channel (default channel if none given), newest first. */
  channelMessages(channelId: string = this.channelId): MessageSnapshot[] {
    return this.world.channelMessages(channelId).map((m) => this.world.snapshot(m));
  }

  /** Commands as registered (`global` or a guild id), with the ids the fake gave them. */
  commands(scope: string = 'global'): CommandDefinition[] {
    return [...(this.commandSets.get(scope) ?? [])];
  }

  /**
   * Registers commands as `PUT /applications/:app/commands` would. Once any are registered,
   * `sendCommand` checks specs against them and takes option types from them.
   */
  registerCommands(definitions: unknown[], guildId?: string): CommandDefinition[] {
    const scope = guildId ?? 'global';
    const previous = this.commandSets.get(scope) ?? [];
    const stored = definitions.map((raw, i): CommandDefinition => {
      if (!isRecord(raw) || typeof raw.name !== 'string') {
        throw new DiscordError(400, 50035, 'Invalid Form Body', {
          [i]: { name: { _errors: [{ code: 'BASE_TYPE_REQUIRED', message: 'This field is required' }] } },
        });
      }
      const id = previous.find((p) => p.name === raw.name)?.id ?? this.ids.next();
      const command: CommandDefinition = {
        default_member_permissions: null,
        nsfw: false,
        description: '',
        ...raw,
        id,
        name: raw.name,
        type: typeof raw.type === 'number' ? raw.type : 1,
        application_id: this.world.applicationId,
        version: this.ids.next(),
      };
      if (guildId !== undefined) command.guild_id = guildId;
      return command;
    });
    this.commandSets.set(scope, stored);
    return stored;
  }

  // ---- recorded REST calls ----

  get calls(): readonly RecordedCall[] {
    return this.log.items;
  }

  callsTo(method: string, path: RegExp): RecordedCall[] {
    const m = method.toUpperCase();
    return this.log.items.filter((c) => c.method === m && path.test(c.path));
  }

  /** The first recorded call matching, now or later; rejects after the timeout listing recent calls. */
  waitForCall(predicate: (call: RecordedCall) => boolean, timeoutMs: number = DEFAULT_WAIT_MS): Promise<RecordedCall> {
    return this.log.waitFor(predicate, timeoutMs, 'a matching REST call');
  }

  /** Calls no route answered (404 from the fake); a test that sees any is testing a blind spot. */
  unknownCalls(): RecordedCall[] {
    return this.log.items.filter((c) => c.route === null && !c.injected);
  }

  /** Errors thrown inside the fake itself (answered as 500); should stay empty. */
  get internalErrors(): readonly Error[] {
    return this.harnessErrors;
  }

  /** Makes the next matching request(s) fail with the status; 429s carry rate-limit headers. */
  failNext(opts: FailNextOptions): void {
    this.faults.push({
      method: opts.method?.toUpperCase(),
      path: opts.path,
      status: opts.status,
      remaining: opts.times ?? 1,
      retryAfter: opts.retryAfter ?? 0.1,
      scope: opts.scope ?? 'user',
    });
  }

  // ---- attachment host ----

  /** Registers bytes on the attachment host; the result can go into a command option or a message. */
  addAttachment(opts: AddAttachmentOptions): AttachmentInfo {
    const channelId = opts.channelId ?? this.channelId;
    this.world.channel(channelId);
    const state = this.world.storeAttachment({
      filename: opts.filename,
      data: opts.data,
      channelId,
      contentType: contentTypeFor(opts.filename, opts.contentType),
      overrideSize: opts.overrideSize,
      ephemeral: opts.ephemeral,
      width: opts.width,
      height: opts.height,
      serve: opts.serve,
    });
    return { ...state.info };
  }

  /** How many times the attachment's bytes were fetched (url or proxy_url). */
  downloads(attachment: string | AttachmentInfo): number {
    return this.attachmentState(attachment).downloads;
  }

  /** Makes the attachment's signed URLs stale: the host answers 404 from now on. */
  expireAttachment(attachment: string | AttachmentInfo): void {
    this.attachmentState(attachment).expired = true;
  }

  private attachmentState(attachment: string | AttachmentInfo) {
    const id = typeof attachment === 'string' ? attachment : attachment.id;
    const state = this.world.attachments.get(id);
    if (!state) throw new Error(`FakeDiscord: no attachment ${id}`);
    return state;
  }

  // ---- gateway ----

  /** Frames the client sent on the gateway (IDENTIFY, heartbeats, RESUME…). */
  get gatewayFrames(): readonly GatewayFrame[] {
    return this.gateway.frames.items;
  }

  waitForGatewayFrame(predicate: (frame: GatewayFrame) => boolean, timeoutMs: number = DEFAULT_WAIT_MS): Promise<GatewayFrame> {
    return this.gateway.frames.waitFor(predicate, timeoutMs, 'a matching gateway frame');
  }

  /** The intents of the newest IDENTIFY, or null before one. */
  get identifiedIntents(): number | null {
    return this.gateway.intents;
  }

  /** Sends a dispatch to every session; throws when no client has identified. */
  dispatch(event: string, data: unknown): number {
    this.requireSession(event);
    return this.gateway.dispatch(event, data);
  }

  /** Sends op 7 RECONNECT; resolves once the client has resumed (dispatches meanwhile are replayed). */
  reconnect(timeoutMs: number = DEFAULT_WAIT_MS): Promise<void> {
    return this.gateway.reconnect(timeoutMs);
  }

  /** Drops the sockets without a close frame; resolves once the client has resumed. */
  dropConnection(timeoutMs: number = DEFAULT_WAIT_MS): Promise<void> {
    return this.gateway.dropConnection(timeoutMs);
  }

  private requireSession(what: string): void {
    if (this.gateway.liveSessions === 0) {
      throw new Error(`FakeDiscord: cannot send ${what}: no client has identified on the gateway (await ClientReady first)`);
    }
  }

  // ---- users' actions ----

  /** A user runs a slash command (INTERACTION_CREATE type 2). */
  sendCommand(spec: CommandSpec): InteractionHandle {
    return this.deliver(() => this.factory.command(spec));
  }

  /** A user types in an option with autocomplete (type 4). */
  sendAutocomplete(spec: AutocompleteSpec): InteractionHandle {
    return this.deliver(() => this.factory.autocomplete(spec));
  }

  /** A user presses a button (type 3, component_type 2). */
  sendButton(spec: ButtonSpec): InteractionHandle {
    return this.deliver(() => this.factory.button(spec));
  }

  /** A user picks from a select menu (type 3). */
  sendSelect(spec: SelectSpec): InteractionHandle {
    return this.deliver(() => this.factory.select(spec));
  }

  /** A user submits a modal (type 5). */
  sendModalSubmit(spec: ModalSubmitSpec): InteractionHandle {
    return this.deliver(() => this.factory.modalSubmit(spec));
  }

  /**
   * A user posts a message (MESSAGE_CREATE, to sessions with the GuildMessages intent; without the
   * MessageContent intent, content and attachments arrive empty unless the bot is mentioned).
   */
  postUserMessage(spec: UserMessageSpec = {}): APIMessage {
    this.requireSession('MESSAGE_CREATE');
    const channelId = spec.channelId ?? this.channelId;
    const channel = this.world.channel(channelId);
    const author = spec.author ?? this.world.user(this.world.defaultUserId);
    this.world.ensureMember(channel.guildId, author);
    const attachmentIds = (spec.attachments ?? []).map((a) => this.attachmentState(a).info.id);
    const message = this.world.addMessage({
      channelId,
      guildId: channel.guildId,
      authorId: author.id,
      type: MessageType.Default,
      content: spec.content ?? '',
      embeds: [],
      components: [],
      flags: 0,
      attachmentIds,
      webhookId: null,
      applicationId: null,
      interactionMetadata: null,
    });
    const api = this.world.apiMessage(message);
    const { user: _user, ...member } = this.world.apiMember(channel.guildId, author.id);
    const full = { ...api, guild_id: channel.guildId, member };
    const mentionsBot = api.mentions.some((u) => u.id === this.world.bot.id);
    this.gateway.dispatch(GatewayDispatchEvents.MessageCreate, full, (intents) => {
      if ((intents & GatewayIntentBits.GuildMessages) === 0) return false;
      if ((intents & GatewayIntentBits.MessageContent) !== 0 || mentionsBot) return { data: full };
      return { data: { ...full, content: '', embeds: [], attachments: [], components: [] } };
    });
    return api;
  }

  private deliver(build: () => BuiltInteraction): InteractionHandle {
    this.requireSession('INTERACTION_CREATE');
    const built = build();
    const payload = built.payload;
    const state: InteractionState = {
      id: payload.id,
      token: payload.token,
      type: payload.type,
      payload,
      sentAt: Date.now(),
      guildId: built.guildId,
      channelId: built.channelId,
      userId: built.userId,
      attachmentSizeLimit: built.attachmentSizeLimit,
      ackType: null,
      originalMessageId: built.originalMessageId,
      messageIds: new Set(built.originalMessageId === null ? [] : [built.originalMessageId]),
      expired: false,
    };
    this.interactionsById.set(state.id, state);
    this.interactionsByToken.set(state.token, state);
    this.gateway.dispatch(GatewayDispatchEvents.InteractionCreate, payload);
    return this.handle(state);
  }

  private handle(state: InteractionState): InteractionHandle {
    const callbackPath = `/interactions/${state.id}/${state.token}/callback`;
    const webhookPath = `/webhooks/${this.world.applicationId}/${state.token}`;
    const isCallback = (c: RecordedCall) => c.method === 'POST' && c.path === callbackPath && c.status < 300;
    const isEdit = (c: RecordedCall) =>
      c.method === 'PATCH' && c.path === `${webhookPath}/messages/@original` && c.status < 300;
    const isFollowup = (c: RecordedCall) => c.method === 'POST' && c.path === webhookPath && c.status < 300;
    const calls = () =>
      this.log.items.filter((c) => c.path.startsWith(`/interactions/${state.id}/`) || c.path.startsWith(webhookPath));
    return {
      id: state.id,
      token: state.token,
      sentAt: state.sentAt,
      payload: state.payload,
      callback: (timeoutMs = DEFAULT_WAIT_MS) =>
        this.log.waitFor(isCallback, timeoutMs, `the callback of interaction ${state.id}`),
      ackLatencyMs: () => {
        const callback = this.log.items.find(isCallback);
        if (!callback) throw new Error(`FakeDiscord: interaction ${state.id} has no callback yet`);
        return callback.at - state.sentAt;
      },
      waitForEdit: (predicate = () => true, timeoutMs = DEFAULT_WAIT_MS) =>
        this.log.waitFor((c) => isEdit(c) && predicate(c), timeoutMs, `an edit of the reply to interaction ${state.id}`),
      waitForFollowup: (predicate = () => true, timeoutMs = DEFAULT_WAIT_MS) =>
        this.log.waitFor((c) => isFollowup(c) && predicate(c), timeoutMs, `a followup to interaction ${state.id}`),
      followups: () => this.log.items.filter(isFollowup),
      calls,
      lastReply: () => {
        const message = state.originalMessageId === null ? undefined : this.world.messages.get(state.originalMessageId);
        return message ? this.world.snapshot(message) : null;
      },
      expire: () => {
        state.expired = true;
      },
    };
  }

  private modalLayout(customId: string): 'rows' | 'labels' | undefined {
    for (let i = this.log.items.length - 1; i >= 0; i--) {
      const call = this.log.items[i];
      if (!call || call.route !== 'POST /interactions/:id/:token/callback' || call.status >= 300) continue;
      const json = call.json;
      if (!isRecord(json) || json.type !== InteractionResponseType.Modal || !isRecord(json.data)) continue;
      if (json.data.custom_id !== customId || !Array.isArray(json.data.components)) continue;
      const first: unknown = json.data.components[0];
      return isRecord(first) && first.type === 18 ? 'labels' : 'rows';
    }
    return undefined;
  }

  /** Closes sockets and the server; pending waits reject. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.log.abort('FakeDiscord closed');
      this.gateway.close();
      this.server.closeAllConnections();
      await new Promise<void>((resolve) => this.server.close(() => resolve()));
    })();
    return this.closing;
  }

  // ---- HTTP ----

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const method = (req.method ?? 'GET').toUpperCase();
    const path = decodePath(url.pathname);
    if (/^\/(media\/)?attachments\//.test(path)) {
      await this.serveAttachment(req, res, method, path, url.searchParams);
      return;
    }
    const at = Date.now();
    const raw = await readBody(req);
    const body = await parseBody(raw, req.headers['content-type']);
    const apiPath = path.startsWith('/api/v10/') ? path.slice('/api/v10'.length) : null;
    const call: RecordedCall = {
      seq: ++this.seq,
      at,
      method,
      path: apiPath ?? path,
      query: Object.fromEntries(url.searchParams),
      headers: flattenHeaders(req.headers),
      files: body.files,
      status: 0,
      route: null,
      injected: false,
    };
    if (body.json !== undefined) call.json = body.json;

    let result: RouteResult;
    const fault = apiPath === null ? undefined : this.takeFault(method, apiPath);
    const match = apiPath === null ? undefined : this.match(method, apiPath);
    if (match) call.route = match.route.name;
    if (fault) {
      call.injected = true;
      result = faultResult(fault, call.route ?? apiPath ?? path);
    } else if (!match) {
      result = { status: 404, body: { message: '404: Not Found', code: 0 } };
    } else if (match.route.botAuth && !/^Bot \S+/.test(req.headers.authorization ?? '')) {
      result = { status: 401, body: { message: '401: Unauthorized', code: 0 } };
    } else if (body.error !== undefined) {
      result = { status: 400, body: { message: `The request body is invalid: ${body.error}`, code: 50109 } };
    } else {
      try {
        result = await match.route.handler({
          params: match.params,
          json: body.json,
          files: body.files,
          query: url.searchParams,
        });
      } catch (err) {
        if (!(err instanceof DiscordError)) throw err;
        result = { status: err.status, body: err.body };
      }
    }
    call.status = result.status;
    if (result.body !== undefined) call.response = result.body;
    this.log.push(call);
    sendJson(res, result.status, result.body, result.headers);
  }

  private takeFault(method: string, path: string): Fault | undefined {
    const fault = this.faults.find(
      (f) => f.remaining > 0 && (f.method === undefined || f.method === method) && f.path.test(path),
    );
    if (fault) fault.remaining--;
    return fault;
  }

  private match(method: string, path: string): { route: Route; params: Record<string, string> } | undefined {
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

  private async serveAttachment(
    req: IncomingMessage,
    res: ServerResponse,
    method: string,
    path: string,
    query: URLSearchParams,
  ): Promise<void> {
    req.resume();
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    const found = this.world.attachmentAt(path, query);
    if (found === undefined || found === 'expired') {
      const text = found === 'expired' ? 'This content is no longer available.' : 'Not Found';
      res.writeHead(404, { 'content-type': 'text/plain' }).end(text);
      return;
    }
    if (method === 'GET') found.downloads++;
    const { serve, data } = found;
    if (serve.status !== undefined) {
      res.writeHead(serve.status).end();
      return;
    }
    res.writeHead(200, {
      'content-type': found.info.content_type ?? 'application/octet-stream',
      'content-length': String(data.length),
    });
    if (method === 'HEAD') {
      res.end();
      return;
    }
    const chunkSize = Math.max(1, serve.chunkSize ?? 64 * 1024);
    const limit = serve.truncateAfter === undefined ? data.length : Math.min(serve.truncateAfter, data.length);
    for (let offset = 0; offset < limit; offset += chunkSize) {
      if (res.destroyed) return;
      const chunk = data.subarray(offset, Math.min(offset + chunkSize, limit));
      const flushed = res.write(chunk);
      if (!flushed) await new Promise<void>((resolve) => res.once('drain', resolve));
      if (serve.chunkDelayMs !== undefined && offset + chunkSize < limit) await delay(serve.chunkDelayMs);
    }
    if (limit < data.length) {
      // Declared the whole length, sent less: the client sees the connection die mid-body.
      await new Promise<void>((resolve) => res.write('', () => resolve()));
      res.destroy();
      return;
    }
    res.end();
  }

  // ---- REST routes ----

  private defineRoutes(): void {
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
      if (after) list = list.filter((m) => compareIds(m.id, after) > 0).reverse().slice(0, limit).reverse();
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
      return ok(
        guild.channelIds
          .filter((id) => !isThreadType(this.world.channel(id).type))
          .map((id) => this.world.apiChannel(id)),
      );
    });
    this.route('GET', '/guilds/:guild/threads/active', bot, ({ params }) => {
      const guild = this.guildOr404(params.guild);
      const threads = guild.channelIds
        .map((id) => this.world.channel(id))
        .filter((c) => isThreadType(c.type) && !c.archived)
        .map((c) => this.world.apiChannel(c.id));
      return ok({ threads, members: [] });
    });
    this.route('GET', '/guilds/:guild/roles', bot, ({ params }) =>
      ok(this.guildOr404(params.guild).roles.map((r) => this.world.apiRole(r))),
    );
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
    this.requireBotPermission(
      parent,
      type === ChannelType.PrivateThread ? PermissionFlagsBits.CreatePrivateThreads : PermissionFlagsBits.CreatePublicThreads,
    );
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
    this.gateway.dispatch(GatewayDispatchEvents.MessageDelete, data, (intents) =>
      (intents & GatewayIntentBits.GuildMessages) !== 0 ? { data } : false,
    );
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
      (original.flags & MessageFlags.Loading) !== 0
    ) {
      // The first followup after a deferred reply fills in the "thinking…" message.
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

function faultResult(fault: Fault, bucket: string): RouteResult {
  if (fault.status !== 429) {
    return { status: fault.status, body: { message: `${fault.status}: injected failure`, code: 0 } };
  }
  const seconds = fault.retryAfter;
  const headers: Record<string, string> = {
    'retry-after': String(seconds),
    'x-ratelimit-limit': '5',
    'x-ratelimit-remaining': '0',
    'x-ratelimit-reset': ((Date.now() + seconds * 1000) / 1000).toFixed(3),
    'x-ratelimit-reset-after': seconds.toFixed(3),
    'x-ratelimit-bucket': Buffer.from(bucket).toString('hex').slice(0, 32),
    'x-ratelimit-scope': fault.scope,
  };
  if (fault.scope === 'global') headers['x-ratelimit-global'] = 'true';
  return {
    status: 429,
    headers,
    body: { message: 'You are being rate limited.', retry_after: seconds, global: fault.scope === 'global', code: 0 },
  };
}

function isThreadType(type: ChannelType): boolean {
  return type === ChannelType.PublicThread || type === ChannelType.PrivateThread || type === ChannelType.AnnouncementThread;
}

function decodePath(pathname: string): string {
  return pathname
    .split('/')
    .map((part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    })
    .join('/');
}

function describeCalls(items: readonly RecordedCall[]): string {
  if (items.length === 0) return 'No REST calls were made.';
  const recent = items.slice(-15).map((c) => {
    const flags = [c.injected ? 'injected' : '', c.route === null && !c.injected ? 'UNKNOWN ROUTE' : '']
      .filter(Boolean)
      .join(', ');
    return `  #${c.seq} ${c.method} ${c.path} → ${c.status}${flags ? ` (${flags})` : ''}`;
  });
  return `Last ${recent.length} of ${items.length} REST calls:\n${recent.join('\n')}`;
}

