import {
  ActionRowBuilder,
  ButtonBuilder,
  ButtonStyle,
  ChannelType,
  Client,
  DiscordAPIError,
  Events,
  GatewayIntentBits,
  GatewayOpcodes,
  HTTPError,
  LabelBuilder,
  MessageFlags,
  ModalBuilder,
  TextInputBuilder,
  TextInputStyle,
  type ChatInputCommandInteraction,
  type ClientEvents,
  type Interaction,
} from 'discord.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeDiscord, type InteractionHandle, type RecordedCall } from './fake-discord.ts';
import type { CommandSpec } from './fake-discord-types.ts';

const TOKEN = 'test-token';
let fake: FakeDiscord;
let clients: Client[] = [];

beforeEach(async () => {
  fake = await FakeDiscord.start();
});

afterEach(async () => {
  await Promise.all(clients.map((c) => c.destroy()));
  clients = [];
  await fake.close();
  expect(fake.internalErrors).toEqual([]);
});

/** A logged-in discord.js Client that has seen ClientReady. */
async function connect(intents: GatewayIntentBits[] = [GatewayIntentBits.Guilds]): Promise<Client> {
  const client = new Client({ intents, rest: { api: fake.apiUrl } });
  clients.push(client);
  const ready = nextEvent(client, Events.ClientReady);
  await client.login(TOKEN);
  await ready;
  return client;
}

function nextEvent<K extends keyof ClientEvents>(client: Client, event: K, timeoutMs = 5_000): Promise<ClientEvents[K]> {
  return new Promise((resolve, reject) => {
    const listener = (...args: ClientEvents[K]) => {
      clearTimeout(timer);
      resolve(args);
    };
    const timer = setTimeout(() => {
      client.off(event, listener);
      reject(new Error(`no ${String(event)} within ${timeoutMs} ms`));
    }, timeoutMs);
    client.once(event, listener);
  });
}

async function nextInteraction(client: Client): Promise<Interaction> {
  const [interaction] = await nextEvent(client, Events.InteractionCreate);
  return interaction;
}

/** Sends `spec` as a slash command and waits for `client` to receive it; returns the fake's handle and the client's interaction. */
async function chatCommand(client: Client, spec: CommandSpec): Promise<{ handle: InteractionHandle; interaction: ChatInputCommandInteraction }> {
  const received = nextInteraction(client);
  const handle = fake.sendCommand(spec);
  const interaction = await received;
  if (!interaction.isChatInputCommand()) throw new Error('expected a chat input command');
  return { handle, interaction };
}

function sendableChannel(client: Client, id: string) {
  const channel = client.channels.cache.get(id);
  if (!channel?.isSendable()) throw new Error(`channel ${id} is not sendable in the client's cache`);
  return channel;
}

describe('FakeDiscord: logging in', () => {
  it('brings a real Client to ClientReady with the guild, its text channel and the bot user cached', async () => {
    const client = await connect();
    expect(client.user?.id).toBe(fake.botUser.id);
    expect(client.application?.id).toBe(fake.applicationId);
    const guild = client.guilds.cache.get(fake.guildId);
    expect(guild?.name).toBe('Guild');
    expect(guild?.members.me?.id).toBe(fake.botUser.id);
    const channel = sendableChannel(client, fake.channelId);
    expect(channel.type).toBe(ChannelType.GuildText);
    expect('name' in channel && channel.name).toBe('lora');

    const identify = fake.gatewayFrames.find((f) => f.op === GatewayOpcodes.Identify);
    expect(identify?.d).toMatchObject({ token: TOKEN, intents: GatewayIntentBits.Guilds });
    expect(fake.identifiedIntents).toBe(GatewayIntentBits.Guilds);
    const gatewayCall = fake.callsTo('GET', /^\/gateway\/bot$/)[0];
    expect(gatewayCall?.headers.authorization).toBe(`Bot ${TOKEN}`);
    expect(fake.unknownCalls()).toEqual([]);
  });

  it('answers heartbeats with op 11', async () => {
    await fake.close();
    fake = await FakeDiscord.start({ heartbeatIntervalMs: 50 });
    const client = await connect();
    const acknowledged = new Promise<void>((resolve) => {
      const onDebug = (line: string) => {
        if (!line.includes('Heartbeat acknowledged')) return;
        client.off(Events.Debug, onDebug);
        resolve();
      };
      client.on(Events.Debug, onDebug);
    });
    await fake.waitForGatewayFrame((f) => f.op === GatewayOpcodes.Heartbeat);
    await acknowledged;
    expect(client.ws.ping).toBeGreaterThanOrEqual(0);
  });
});

describe('FakeDiscord: slash commands', () => {
  it('delivers options and records deferReply + editReply with the file bytes intact', async () => {
    const client = await connect();
    const image = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]);
    const upload = fake.addAttachment({ filename: 'cat.png', data: image });

    const received = nextInteraction(client);
    const handle = fake.sendCommand({
      name: 'dataset',
      subcommand: 'add',
      options: { name: 'cats', repeats: 3, weight: 0.5, caption: true, image: upload },
    });
    const interaction = await received;
    if (!interaction.isChatInputCommand()) throw new Error('expected a chat input command');
    expect(interaction.commandName).toBe('dataset');
    expect(interaction.options.getSubcommand()).toBe('add');
    expect(interaction.options.getString('name')).toBe('cats');
    expect(interaction.options.getInteger('repeats')).toBe(3);
    expect(interaction.options.getNumber('weight')).toBe(0.5);
    expect(interaction.options.getBoolean('caption')).toBe(true);
    const attachment = interaction.options.getAttachment('image', true);
    expect(attachment).toMatchObject({ id: upload.id, name: 'cat.png', size: image.length, url: upload.url, contentType: 'image/png' });
    expect(attachment.ephemeral).toBe(true);
    expect(interaction.guildId).toBe(fake.guildId);
    expect(interaction.channelId).toBe(fake.channelId);
    expect(interaction.user.id).toBe(fake.defaultUser.id);
    expect(interaction.attachmentSizeLimit).toBe(10 * 1024 * 1024);
    expect(interaction.appPermissions.has('AttachFiles')).toBe(true);
    expect(interaction.memberPermissions?.has('SendMessages')).toBe(true);

    await interaction.deferReply();
    const callback = await handle.callback();
    expect(callback.json).toEqual({ type: 5, data: { flags: 0 } });
    expect(callback.query).toEqual({ with_response: 'false' });
    expect(callback.headers.authorization).toBeUndefined();
    expect(handle.ackLatencyMs()).toBeGreaterThanOrEqual(0);
    expect(handle.lastReply()).toMatchObject({ content: '', flags: 128 });

    const result = Buffer.from('a result file\n');
    await interaction.editReply({ content: 'Added 1 image', files: [{ attachment: result, name: 'report.txt' }] });
    const edit = await handle.waitForEdit();
    expect(edit.path).toBe(`/webhooks/${fake.applicationId}/${handle.token}/messages/@original`);
    expect(edit.json).toMatchObject({ content: 'Added 1 image', attachments: [{ id: '0' }] });
    expect(edit.files).toHaveLength(1);
    expect(edit.files[0]).toMatchObject({ field: 'files[0]', filename: 'report.txt' });
    expect(edit.files[0]?.data.equals(result)).toBe(true);

    const reply = handle.lastReply();
    expect(reply).toMatchObject({ content: 'Added 1 image', flags: 0, editedAt: null });
    expect(reply?.attachments).toHaveLength(1);
    expect(reply?.attachments[0]?.data.equals(result)).toBe(true);
    const served = await fetch(reply?.attachments[0]?.url ?? '');
    expect(Buffer.from(await served.arrayBuffer()).equals(result)).toBe(true);
    expect(handle.calls().map((c) => c.route)).toEqual(['POST /interactions/:id/:token/callback', 'PATCH /webhooks/:app/:token/messages/:message']);
  });

  it('records a reply with files as a multipart callback, and serves fetchReply and deleteReply', async () => {
    const client = await connect();
    const { handle, interaction } = await chatCommand(client, { name: 'preview' });
    const grid = Buffer.from('not really a png');
    const response = await interaction.reply({
      content: 'Preview',
      files: [{ attachment: grid, name: 'grid.png' }],
      withResponse: true,
    });
    const callback = await handle.callback();
    expect(callback.headers['content-type']).toMatch(/^multipart\/form-data/);
    expect(callback.json).toMatchObject({ type: 4, data: { content: 'Preview', attachments: [{ id: '0' }] } });
    expect(callback.files[0]?.data.equals(grid)).toBe(true);
    expect(response.resource?.message?.id).toBe(handle.lastReply()?.id);
    expect(response.resource?.message?.attachments.first()?.name).toBe('grid.png');

    const fetched = await interaction.fetchReply();
    expect(fetched.content).toBe('Preview');
    expect(fetched.interactionMetadata?.id).toBe(handle.id);
    await interaction.deleteReply();
    expect(handle.lastReply()?.deleted).toBe(true);
    await expect(interaction.fetchReply()).rejects.toMatchObject({ code: 10008 });
  });

  it('takes ids and option types from registered commands and refuses options they lack', async () => {
    const client = await connect();
    const registered = await client.application!.commands.set([
      {
        name: 'train',
        description: 'Train a LoRA',
        options: [
          { type: 10, name: 'lr', description: 'learning rate', required: true },
          { type: 3, name: 'preset', description: 'preset', autocomplete: true },
        ],
      },
    ]);
    const stored = fake.commands();
    expect(stored.map((c) => c.name)).toEqual(['train']);
    expect(registered.first()?.id).toBe(stored[0]?.id);

    const { interaction } = await chatCommand(client, { name: 'train', options: { lr: 1 } });
    expect(interaction.commandId).toBe(stored[0]?.id);
    // 1 is an integer in JS, but the option is NUMBER: the definition decides.
    expect(interaction.options.getNumber('lr')).toBe(1);

    expect(() => fake.sendCommand({ name: 'train', options: { lr: 1, steps: 5 } })).toThrow(/no option "steps"/);
    expect(() => fake.sendCommand({ name: 'train', options: {} })).toThrow(/needs option\(s\) lr/);
    expect(() => fake.sendCommand({ name: 'nope' })).toThrow(/no registered command \/nope/);
  });

  it('resolves user, channel and role options given as { type, value }', async () => {
    const client = await connect();
    const received = nextInteraction(client);
    fake.sendCommand({
      name: 'grant',
      options: {
        who: { type: 6, value: fake.defaultUser.id },
        where: { type: 7, value: fake.channelId },
        role: { type: 8, value: fake.guildId },
      },
    });
    const interaction = await received;
    if (!interaction.isChatInputCommand()) throw new Error('expected a chat input command');
    expect(interaction.options.getUser('who', true).username).toBe('tester');
    expect(interaction.options.getMember('who')).not.toBeNull();
    expect(interaction.options.getChannel('where', true).id).toBe(fake.channelId);
    expect(interaction.options.getRole('role', true).name).toBe('@everyone');
    expect(() => fake.sendCommand({ name: 'grant', options: { who: { type: 6, value: '1' } } })).toThrow(/no user, role or channel 1/);
  });

  it('records a followup, and the first followup after a deferral fills in the deferred reply', async () => {
    const client = await connect();
    const { handle, interaction } = await chatCommand(client, { name: 'status' });
    await interaction.deferReply({ flags: 'Ephemeral' });
    const first = await interaction.followUp({ content: 'first' });
    const second = await interaction.followUp({ content: 'second' });

    const followups = handle.followups();
    expect(followups).toHaveLength(2);
    expect(followups[0]?.query).toEqual({ wait: 'true' });
    const original = handle.lastReply();
    expect(first.id).toBe(original?.id);
    expect(original).toMatchObject({ content: 'first', flags: 64 });
    expect(second.id).not.toBe(first.id);
    expect(fake.message(second.id)).toMatchObject({ content: 'second', webhookId: fake.applicationId });
    // Ephemeral replies are not in the channel's history.
    expect(fake.channelMessages().map((m) => m.id)).toEqual([second.id]);
  });

  it('sends a followup after a deleted deferred reply as a new message, never into the deleted one', async () => {
    const client = await connect();
    const { handle, interaction } = await chatCommand(client, { name: 'status' });
    await interaction.deferReply();
    const placeholder = handle.lastReply();
    expect(placeholder?.flags).toBe(128);
    await interaction.deleteReply();
    const after = await interaction.followUp({ content: 'only you see this', flags: 'Ephemeral' });

    expect(after.id).not.toBe(placeholder?.id);
    expect(fake.message(placeholder!.id)).toMatchObject({ deleted: true, content: '' });
    expect(fake.message(after.id)).toMatchObject({ content: 'only you see this', flags: 64, deleted: false });
    // Nothing public is left in the channel.
    expect(fake.channelMessages().filter((m) => !m.deleted)).toEqual([]);
  });

  it('answers an autocomplete with the choices recorded on the callback', async () => {
    const client = await connect();
    const received = nextInteraction(client);
    const handle = fake.sendAutocomplete({ name: 'train', options: { preset: 'an', lr: 1e-4 }, focused: 'preset' });
    const interaction = await received;
    if (!interaction.isAutocomplete()) throw new Error('expected an autocomplete');
    expect(interaction.options.getFocused(true)).toMatchObject({ name: 'preset', value: 'an' });
    await interaction.respond([{ name: 'anime', value: 'anime' }]);
    const callback = await handle.callback();
    expect(callback.json).toEqual({ type: 8, data: { choices: [{ name: 'anime', value: 'anime' }] } });
  });

  it('refuses a second acknowledgement with 40060 and a late one with 10062', async () => {
    const client = await connect();
    const { handle, interaction } = await chatCommand(client, { name: 'status' });
    await interaction.reply('hello');
    const again = client.rest.post(`/interactions/${handle.id}/${handle.token}/callback`, {
      body: { type: 4, data: { content: 'again' } },
      auth: false,
    });
    await expect(again).rejects.toMatchObject({ code: 40060, status: 400 });

    const late = nextInteraction(client);
    const expired = fake.sendCommand({ name: 'status' });
    const lateInteraction = await late;
    if (!lateInteraction.isChatInputCommand()) throw new Error('expected a chat input command');
    expired.expire();
    await expect(lateInteraction.deferReply()).rejects.toBeInstanceOf(DiscordAPIError);
    await expect(lateInteraction.deferReply()).rejects.toMatchObject({ code: 10062 });
  });

  it('refuses an upload over the interaction attachment_size_limit with 40005', async () => {
    const client = await connect();
    const { interaction } = await chatCommand(client, { name: 'export', attachmentSizeLimit: 1024 });
    expect(interaction.attachmentSizeLimit).toBe(1024);
    await interaction.deferReply();
    const tooBig = interaction.editReply({ files: [{ attachment: Buffer.alloc(2048), name: 'lora.safetensors' }] });
    await expect(tooBig).rejects.toMatchObject({ status: 413, code: 40005 });
  });
});

describe('FakeDiscord: channel messages and threads', () => {
  it('records channel.send with Bot auth and serves the message back', async () => {
    const client = await connect();
    const channel = sendableChannel(client, fake.channelId);
    const sent = await channel.send({ content: 'Training started', files: [{ attachment: Buffer.from('x'), name: 'a.txt' }] });
    const call = fake.callsTo('POST', /^\/channels\/\d+\/messages$/)[0];
    expect(call?.headers.authorization).toBe(`Bot ${TOKEN}`);
    expect(call?.files[0]?.data.toString()).toBe('x');
    expect(sent.author.id).toBe(fake.botUser.id);
    expect(sent.attachments.first()?.name).toBe('a.txt');
    expect(fake.channelMessages()).toMatchObject([{ id: sent.id, content: 'Training started' }]);

    await sent.edit('Training finished');
    const fetched = await channel.messages.fetch({ message: sent.id, force: true });
    expect(fetched.content).toBe('Training finished');
    expect(fetched.editedTimestamp).not.toBeNull();
  });

  it('creates a public thread, tells the gateway, and takes messages in it', async () => {
    const client = await connect();
    const parent = client.channels.cache.get(fake.channelId);
    if (parent?.type !== ChannelType.GuildText) throw new Error('expected a text channel');
    const threadCreated = nextEvent(client, Events.ThreadCreate);
    const thread = await parent.threads.create({ name: 'dataset: cats', type: ChannelType.PublicThread });
    const [announced, newlyCreated] = await threadCreated;
    expect(announced.id).toBe(thread.id);
    expect(newlyCreated).toBe(true);
    expect(thread.parentId).toBe(fake.channelId);
    expect(fake.threads(fake.channelId)).toMatchObject([{ id: thread.id, type: 11, name: 'dataset: cats' }]);

    await thread.send('first image please');
    expect(fake.channelMessages(thread.id)).toMatchObject([{ content: 'first image please' }]);

    const starter = await parent.send('a run');
    const fromMessage = await starter.startThread({ name: 'run 1' });
    expect(fromMessage.id).toBe(starter.id);
    expect(fake.callsTo('POST', /^\/channels\/\d+\/messages\/\d+\/threads$/)).toHaveLength(1);
  });

  it('delivers a user message with content only to a client holding the MessageContent intent', async () => {
    const client = await connect([GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages, GatewayIntentBits.MessageContent]);
    const image = fake.addAttachment({ filename: 'dog.jpg', data: Buffer.from('jpeg') });
    const created = nextEvent(client, Events.MessageCreate);
    fake.postUserMessage({ content: 'here you go', attachments: [image] });
    const [message] = await created;
    expect(message.content).toBe('here you go');
    expect(message.attachments.first()?.url).toBe(image.url);

    const blind = await connect([GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages]);
    const seen = nextEvent(blind, Events.MessageCreate);
    fake.postUserMessage({ content: 'secret', attachments: [image] });
    const [stripped] = await seen;
    expect(stripped.content).toBe('');
    expect(stripped.attachments.size).toBe(0);
  });
});

describe('FakeDiscord: components and modals', () => {
  it('delivers a button press and records update() as a type 7 callback that edits the message', async () => {
    const client = await connect();
    const channel = sendableChannel(client, fake.channelId);
    const row = new ActionRowBuilder<ButtonBuilder>().addComponents(
      new ButtonBuilder().setCustomId('run:approve:42').setLabel('Approve').setStyle(ButtonStyle.Success),
    );
    const posted = await channel.send({ content: 'Approve run 42?', components: [row] });

    const received = nextInteraction(client);
    const handle = fake.sendButton({ customId: 'run:approve:42', message: posted.id });
    const interaction = await received;
    if (!interaction.isButton()) throw new Error('expected a button');
    expect(interaction.customId).toBe('run:approve:42');
    expect(interaction.message.id).toBe(posted.id);
    await interaction.update({ content: 'Approved', components: [] });
    const callback = await handle.callback();
    expect(callback.json).toMatchObject({ type: 7, data: { content: 'Approved', components: [] } });
    expect(fake.message(posted.id)).toMatchObject({ content: 'Approved', components: [] });
  });

  it('delivers a button on a thread message from that thread, so an ephemeral reply lands there', async () => {
    const client = await connect();
    const parent = client.channels.cache.get(fake.channelId);
    if (parent?.type !== ChannelType.GuildText) throw new Error('expected a text channel');
    const thread = await parent.threads.create({ name: 'dataset: dogs', type: ChannelType.PublicThread });
    const row = new ActionRowBuilder<ButtonBuilder>().addComponents(new ButtonBuilder().setCustomId('vote:1').setLabel('Vote').setStyle(ButtonStyle.Primary));
    const posted = await thread.send({ content: 'Epoch 1', components: [row] });

    const received = nextInteraction(client);
    const handle = fake.sendButton({ customId: 'vote:1', message: posted.id });
    const interaction = await received;
    expect(interaction.channelId).toBe(thread.id);
    if (!interaction.isButton()) throw new Error('expected a button');
    await interaction.reply({ content: 'Your vote: epoch 1', flags: MessageFlags.Ephemeral });
    expect(handle.lastReply()).toMatchObject({ channelId: thread.id, flags: MessageFlags.Ephemeral });
  });

  it('lets deferUpdate + editReply edit the message the button sits on', async () => {
    const client = await connect();
    const received = nextInteraction(client);
    const handle = fake.sendButton({ customId: 'run:cancel:1' });
    const interaction = await received;
    if (!interaction.isButton()) throw new Error('expected a button');
    const messageId = interaction.message.id;
    expect(fake.message(messageId)?.components).toHaveLength(1);
    await interaction.deferUpdate();
    await interaction.editReply({ content: 'Cancelled', components: [] });
    expect((await handle.callback()).json).toEqual({ type: 6 });
    expect(handle.lastReply()).toMatchObject({ id: messageId, content: 'Cancelled', components: [] });
  });

  it('delivers a string select with its values', async () => {
    const client = await connect();
    const received = nextInteraction(client);
    fake.sendSelect({ customId: 'pick-base', values: ['sdxl'] });
    const interaction = await received;
    if (!interaction.isStringSelectMenu()) throw new Error('expected a string select');
    expect(interaction.values).toEqual(['sdxl']);
  });

  it('delivers modal fields as action rows and as labels, following the modal the bot showed', async () => {
    const client = await connect();
    const received = nextInteraction(client);
    fake.sendModalSubmit({ customId: 'caption:7', fields: { caption: 'a red cat' } });
    const rows = await received;
    if (!rows.isModalSubmit()) throw new Error('expected a modal submit');
    expect(rows.fields.getTextInputValue('caption')).toBe('a red cat');

    const opened = nextInteraction(client);
    const command = fake.sendCommand({ name: 'caption' });
    const commandInteraction = await opened;
    if (!commandInteraction.isChatInputCommand()) throw new Error('expected a chat input command');
    const modal = new ModalBuilder()
      .setCustomId('caption:8')
      .setTitle('Caption')
      .addLabelComponents(
        new LabelBuilder().setLabel('Caption').setTextInputComponent(new TextInputBuilder().setCustomId('caption').setStyle(TextInputStyle.Paragraph)),
      );
    await commandInteraction.showModal(modal);
    expect((await command.callback()).json).toMatchObject({ type: 9, data: { custom_id: 'caption:8' } });

    const submitted = nextInteraction(client);
    const handle = fake.sendModalSubmit({ customId: 'caption:8', fields: { caption: 'a blue cat' } });
    const labels = await submitted;
    if (!labels.isModalSubmit()) throw new Error('expected a modal submit');
    expect(handle.payload.data).toMatchObject({ components: [{ type: 18, component: { type: 4, custom_id: 'caption' } }] });
    expect(labels.fields.getTextInputValue('caption')).toBe('a blue cat');
  });
});

describe('FakeDiscord: faults', () => {
  it('answers an injected 429 with rate-limit headers; discord.js waits, retries, and the message arrives once', async () => {
    const client = await connect();
    const channel = sendableChannel(client, fake.channelId);
    fake.failNext({ method: 'POST', path: /^\/channels\/\d+\/messages$/, status: 429, retryAfter: 0.2 });
    const sent = await channel.send('progress: epoch 1');

    const calls = fake.callsTo('POST', /^\/channels\/\d+\/messages$/);
    expect(calls.map((c) => [c.status, c.injected])).toEqual([
      [429, true],
      [200, false],
    ]);
    const [limited, retried] = calls as [RecordedCall, RecordedCall];
    expect(limited.response).toMatchObject({ retry_after: 0.2, global: false });
    expect(retried.at - limited.at).toBeGreaterThanOrEqual(150);
    expect(fake.channelMessages().map((m) => m.id)).toEqual([sent.id]);
  });

  it('has discord.js retry a 5xx three times, then throw an HTTPError', async () => {
    const client = await connect();
    const channel = sendableChannel(client, fake.channelId);
    fake.failNext({ path: /^\/channels\/\d+\/messages$/, status: 500, times: 3 });
    await channel.send('survives three 500s');
    expect(fake.callsTo('POST', /messages$/).map((c) => c.status)).toEqual([500, 500, 500, 200]);

    fake.failNext({ path: /^\/channels\/\d+\/messages$/, status: 502, times: 4 });
    const failing = channel.send('four 502s');
    await expect(failing).rejects.toBeInstanceOf(HTTPError);
    await expect(failing).rejects.toMatchObject({ status: 502 });
    expect(fake.channelMessages().map((m) => m.content)).toEqual(['survives three 500s']);
  });

  it('records unknown routes as 404s so tests can notice them', async () => {
    const client = await connect();
    await expect(client.rest.get('/not/a/route')).rejects.toMatchObject({ status: 404 });
    expect(fake.unknownCalls().map((c) => `${c.method} ${c.path}`)).toEqual(['GET /not/a/route']);
  });

  it('names the recent calls when a wait times out', async () => {
    await connect();
    await expect(fake.waitForCall((c) => c.path === '/never', 50)).rejects.toThrow(/GET \/gateway\/bot → 200/);
  });
});

describe('FakeDiscord: gateway reconnects', () => {
  it('makes the client RESUME on op 7 and replays what was dispatched meanwhile', async () => {
    const client = await connect();
    const reconnecting = fake.reconnect();
    const received = nextInteraction(client);
    // Sent while the client is between sockets: it must come through the replay.
    const missed = fake.sendCommand({ name: 'status' });
    await reconnecting;
    expect((await received).id).toBe(missed.id);

    const resume = fake.gatewayFrames.find((f) => f.op === GatewayOpcodes.Resume);
    expect(resume?.d).toMatchObject({ token: TOKEN, session_id: expect.any(String) as unknown });
    expect(fake.gatewayFrames.filter((f) => f.op === GatewayOpcodes.Identify)).toHaveLength(1);

    const after = nextInteraction(client);
    const later = fake.sendCommand({ name: 'status' });
    expect((await after).id).toBe(later.id);
  });

  it('resumes after the connection drops without a close frame', async () => {
    const client = await connect();
    await fake.dropConnection();
    const received = nextInteraction(client);
    const handle = fake.sendCommand({ name: 'status' });
    expect((await received).id).toBe(handle.id);
  });

  it('refuses to send an interaction before any client identified', () => {
    expect(() => fake.sendCommand({ name: 'status' })).toThrow(/no client has identified/);
  });
});

describe('FakeDiscord: attachment host', () => {
  it('serves the exact bytes at url and proxy_url and counts downloads', async () => {
    const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
    const info = fake.addAttachment({ filename: 'big image.png', data });
    expect(info.url.startsWith(`${fake.cdnHost}/attachments/${fake.channelId}/${info.id}/big%20image.png?ex=`)).toBe(true);
    const direct = await fetch(info.url);
    expect(direct.headers.get('content-type')).toBe('image/png');
    expect(Buffer.from(await direct.arrayBuffer()).equals(data)).toBe(true);
    const proxied = await fetch(info.proxy_url);
    expect(Buffer.from(await proxied.arrayBuffer()).equals(data)).toBe(true);
    expect(fake.downloads(info)).toBe(2);
  });

  it('answers 404 for an expired or tampered URL', async () => {
    const info = fake.addAttachment({ filename: 'a.png', data: Buffer.from('a') });
    expect((await fetch(info.url.replace(/hm=[0-9a-f]+/, 'hm=00'))).status).toBe(404);
    fake.expireAttachment(info);
    const expired = await fetch(info.url);
    expect(expired.status).toBe(404);
    expect(await expired.text()).toBe('This content is no longer available.');
  });

  it('can lie about the size, and cut a download short', async () => {
    const data = Buffer.alloc(100_000, 7);
    const lying = fake.addAttachment({ filename: 'a.zip', data, overrideSize: 10 });
    expect(lying.size).toBe(10);
    expect((await (await fetch(lying.url)).arrayBuffer()).byteLength).toBe(100_000);

    const cut = fake.addAttachment({ filename: 'b.zip', data, serve: { truncateAfter: 1_000 } });
    const response = await fetch(cut.url);
    expect(response.headers.get('content-length')).toBe('100000');
    await expect(response.arrayBuffer()).rejects.toThrow();
  });
});

describe('FakeDiscord: world configuration', () => {
  it('computes member permissions from roles and refuses uploads the bot may not make', async () => {
    await fake.close();
    const mod = { id: '900000000000000001', username: 'mod' };
    const newbie = { id: '900000000000000002', username: 'newbie' };
    fake = await FakeDiscord.start({
      botPermissions: BigInt(0x400 | 0x800), // ViewChannel | SendMessages: no AttachFiles
      guilds: [
        {
          id: '800000000000000001',
          name: 'Trainers',
          ownerId: mod.id,
          channels: [{ id: '800000000000000002', name: 'datasets' }],
          roles: [{ id: '800000000000000003', name: 'Trainer', permissions: BigInt(0x2000) }],
          members: [{ user: mod }, { user: newbie, roles: ['800000000000000003'] }],
          everyonePermissions: BigInt(0x400),
        },
      ],
    });
    expect(fake.channelId).toBe('800000000000000002');
    const client = await connect();

    const received = nextInteraction(client);
    fake.sendCommand({ name: 'status', user: newbie });
    const interaction = await received;
    expect(interaction.memberPermissions?.has('ManageMessages')).toBe(true);
    expect(interaction.memberPermissions?.has('SendMessages')).toBe(false);
    expect(interaction.appPermissions.has('AttachFiles')).toBe(false);

    const channel = sendableChannel(client, fake.channelId);
    await channel.send('text is fine');
    const withFile = channel.send({ files: [{ attachment: Buffer.from('x'), name: 'x.txt' }] });
    await expect(withFile).rejects.toMatchObject({ status: 403, code: 50013 });
  });

  it('answers 10062 to a callback later than ackDeadlineMs', async () => {
    await fake.close();
    fake = await FakeDiscord.start({ ackDeadlineMs: 20 });
    const client = await connect();
    const { handle, interaction } = await chatCommand(client, { name: 'status' });
    await new Promise((resolve) => setTimeout(resolve, 40));
    await expect(interaction.deferReply()).rejects.toMatchObject({ code: 10062 });
    expect(() => handle.ackLatencyMs()).toThrow(/no callback yet/);
  });
});

describe('FakeDiscord: lifecycle', () => {
  it('closes twice without error and rejects pending waits', async () => {
    const other = await FakeDiscord.start();
    const pending = other.waitForCall(() => false, 10_000);
    await other.close();
    await other.close();
    await expect(pending).rejects.toThrow(/closed/);
  });
});
