import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { GatewayDispatchEvents, GatewayIntentBits, InteractionResponseType, MessageType } from 'discord.js';
import type { APIMessage } from 'discord.js';
import { FakeGateway } from './fake-discord-gateway.ts';
import { InteractionFactory, type BuiltInteraction, type CommandDefinition } from './fake-discord-interactions.ts';
import { DiscordError } from './fake-discord-messages.ts';
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
import { SnowflakeSource, WaitableLog, contentTypeFor, delay, flattenHeaders, isRecord, parseBody, readBody, sendJson } from './fake-discord-util.ts';
import { RestRoutes, isThreadType, type InteractionState, type RouteResult } from './fake-discord-routes.ts';
import { World, type ChannelJson } from './fake-discord-world.ts';

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

interface Fault {
  method: string | undefined;
  path: RegExp;
  status: 429 | 500 | 502 | 503;
  remaining: number;
  retryAfter: number;
  scope: 'user' | 'global' | 'shared';
}

export class FakeDiscord {
  private readonly ids = new SnowflakeSource();
  private readonly world: World;
  private readonly gateway: FakeGateway;
  private readonly factory: InteractionFactory;
  private readonly server: Server;
  private readonly log: WaitableLog<RecordedCall>;
  private readonly routes: RestRoutes;
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
        (this.commandSets.get(guildId) ?? []).find((c) => c.name === name) ?? (this.commandSets.get('global') ?? []).find((c) => c.name === name),
      hasCommands: (guildId) => (this.commandSets.get(guildId)?.length ?? 0) + (this.commandSets.get('global')?.length ?? 0) > 0,
      modalLayout: (customId) => this.modalLayout(customId),
      modalInputs: (customId) => this.modalInputs(customId),
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
    this.routes = new RestRoutes({
      world: this.world,
      gateway: this.gateway,
      ids: this.ids,
      gatewayUrl: () => this.gatewayUrl,
      ackDeadlineMs: this.ackDeadlineMs,
      attachmentSizeLimit: this.attachmentSizeLimit,
      interactionsById: this.interactionsById,
      interactionsByToken: this.interactionsByToken,
      commands: (scope) => this.commands(scope),
      registerCommands: (definitions, guildId) => this.registerCommands(definitions, guildId),
    });
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

  /** Deletes a channel as a member could: the API answers 10003 Unknown Channel, and clients get CHANNEL_DELETE. */
  deleteChannel(id: string): void {
    const json = this.world.apiChannel(id);
    const guild = this.world.guild(this.world.channel(id).guildId);
    this.world.channels.delete(id);
    guild.channelIds = guild.channelIds.filter((c) => c !== id);
    this.dispatch('CHANNEL_DELETE', json);
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
    const isEdit = (c: RecordedCall) => c.method === 'PATCH' && c.path === `${webhookPath}/messages/@original` && c.status < 300;
    const isFollowup = (c: RecordedCall) => c.method === 'POST' && c.path === webhookPath && c.status < 300;
    const calls = () => this.log.items.filter((c) => c.path.startsWith(`/interactions/${state.id}/`) || c.path.startsWith(webhookPath));
    return {
      id: state.id,
      token: state.token,
      sentAt: state.sentAt,
      payload: state.payload,
      callback: (timeoutMs = DEFAULT_WAIT_MS) => this.log.waitFor(isCallback, timeoutMs, `the callback of interaction ${state.id}`),
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

  /** The components of the last modal the bot showed with this custom id. */
  private shownModal(customId: string): unknown[] | undefined {
    for (let i = this.log.items.length - 1; i >= 0; i--) {
      const call = this.log.items[i];
      if (!call || call.route !== 'POST /interactions/:id/:token/callback' || call.status >= 300) continue;
      const json = call.json;
      if (!isRecord(json) || json.type !== InteractionResponseType.Modal || !isRecord(json.data)) continue;
      if (json.data.custom_id !== customId || !Array.isArray(json.data.components)) continue;
      return json.data.components as unknown[];
    }
    return undefined;
  }

  private modalLayout(customId: string): 'rows' | 'labels' | undefined {
    const components = this.shownModal(customId);
    if (!components) return undefined;
    const first: unknown = components[0];
    return isRecord(first) && first.type === 18 ? 'labels' : 'rows';
  }

  /** The text inputs of the last modal shown with this custom id, with their limits. */
  private modalInputs(customId: string): { customId: string; maxLength: number; minLength: number }[] {
    const out: { customId: string; maxLength: number; minLength: number }[] = [];
    for (const top of this.shownModal(customId) ?? []) {
      if (!isRecord(top)) continue;
      const inner: unknown[] = Array.isArray(top.components) ? (top.components as unknown[]) : [top.component];
      for (const c of inner) {
        if (!isRecord(c) || c.type !== 4 || typeof c.custom_id !== 'string') continue;
        out.push({
          customId: c.custom_id,
          maxLength: typeof c.max_length === 'number' ? c.max_length : 4000,
          minLength: typeof c.min_length === 'number' ? c.min_length : 0,
        });
      }
    }
    return out;
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
    const match = apiPath === null ? undefined : this.routes.match(method, apiPath);
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
    const fault = this.faults.find((f) => f.remaining > 0 && (f.method === undefined || f.method === method) && f.path.test(path));
    if (fault) fault.remaining--;
    return fault;
  }

  private async serveAttachment(req: IncomingMessage, res: ServerResponse, method: string, path: string, query: URLSearchParams): Promise<void> {
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
    const flags = [c.injected ? 'injected' : '', c.route === null && !c.injected ? 'UNKNOWN ROUTE' : ''].filter(Boolean).join(', ');
    return `  #${c.seq} ${c.method} ${c.path} → ${c.status}${flags ? ` (${flags})` : ''}`;
  });
  return `Last ${recent.length} of ${items.length} REST calls:\n${recent.join('\n')}`;
}
