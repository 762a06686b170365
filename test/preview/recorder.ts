/**
 * Drives members' actions through the e2e world's fake Discord and records what they saw, phase by
 * phase: every message that appeared in the channel and its threads, the ephemeral replies only the
 * member saw, the buttons pressed and the dialogs filled in. Attachments are written next to the
 * pages (files/…), so the renderer only links to them.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { APIMessage } from 'discord.js';
import sharp from 'sharp';
import type { ImageFile } from '../fixtures/images.ts';
import type { AttachmentSnapshot, CommandOptionValue, InteractionHandle, MessageSnapshot } from '../harness/fake-discord.ts';
import type { World } from '../e2e/world.ts';
import type { PreviewAttachment, PreviewChannel, PreviewEntry, PreviewMessage, PreviewPhase, PreviewTranscript, PreviewUser } from './transcript.ts';

export interface Member {
  id: string;
  username: string;
  /** Permission bits for their interactions; default the guild's for members. */
  permissions?: string;
}

interface Asked {
  handle: InteractionHandle;
  userId: string;
  /** `/dataset add` and its options as typed, for commands. */
  command?: { name: string; options: string };
  /** The message a component sits on (its reply is that message unless the bot posts a new one). */
  sitsOn?: string;
}

interface ComponentJson {
  type: number;
  value?: string;
  custom_id?: string;
  label?: string;
  components?: ComponentJson[];
  component?: ComponentJson;
  options?: { label: string; value: string }[];
}

function describeOption(value: CommandOptionValue): string {
  if (typeof value === 'object' && 'filename' in value) return value.filename;
  if (typeof value === 'object') return String(value.value);
  return String(value);
}

function safeName(name: string): string {
  return name.replace(/[^\w.-]+/g, '_').slice(-80);
}

export class PreviewRecorder {
  readonly phases: PreviewPhase[] = [];
  private entries: PreviewEntry[] = [];
  private asked: Asked[] = [];
  private phaseStart = Date.now();
  private readonly written = new Map<string, PreviewAttachment>();
  private fileNo = 0;

  constructor(
    private readonly world: World,
    private readonly outDir: string,
    private readonly members: Member[],
    private readonly guildName: string,
  ) {}

  private get discord() {
    return this.world.discord;
  }

  /** A member runs a slash command (in the channel, or in `channelId`, e.g. a dataset thread). */
  command(user: Member, name: string, subcommand: string, options: Record<string, CommandOptionValue> = {}, channelId?: string): InteractionHandle {
    const handle = this.discord.sendCommand({
      name,
      subcommand,
      user,
      options,
      ...(user.permissions === undefined ? {} : { permissions: user.permissions }),
      ...(channelId === undefined ? {} : { channelId }),
    });
    const typed = Object.entries(options)
      .map(([k, v]) => `${k}: ${describeOption(v)}`)
      .join('  ');
    this.asked.push({ handle, userId: user.id, command: { name: `/${name} ${subcommand}`, options: typed } });
    return handle;
  }

  /** Uploads a file to the attachment host, for a command option or a post. */
  attach(file: ImageFile | { name: string; data: Buffer; contentType?: string }, channelId?: string) {
    return this.discord.addAttachment({
      filename: file.name,
      data: file.data,
      ...(file.contentType === undefined ? {} : { contentType: file.contentType }),
      ...(channelId === undefined ? {} : { channelId }),
    });
  }

  /** A member posts a message (with files) in a channel or thread. */
  post(user: Member, channelId: string, content: string, files: ImageFile[]): APIMessage {
    return this.discord.postUserMessage({ channelId, author: user, content, attachments: files.map((f) => this.attach(f, channelId)) });
  }

  /** A member presses the button labelled `label` on `message`. */
  press(user: Member, message: MessageSnapshot, label: string | RegExp): InteractionHandle {
    const button = this.componentsOf(message).find(
      (c) => c.type === 2 && c.label !== undefined && (typeof label === 'string' ? c.label === label : label.test(c.label)),
    );
    if (!button?.custom_id) throw new Error(`no button ${String(label)} on message ${message.id}: ${JSON.stringify(message.components)}`);
    this.entries.push({ kind: 'action', channelId: message.channelId, at: Date.now(), userId: user.id, text: `pressed **${button.label ?? ''}**` });
    return this.component(user, message, () =>
      this.discord.sendButton({
        customId: button.custom_id!,
        user,
        message: message.id,
        ...(user.permissions === undefined ? {} : { permissions: user.permissions }),
      }),
    );
  }

  /** A member picks `value` from the select menu on `message`. */
  pick(user: Member, message: MessageSnapshot, value: string): InteractionHandle {
    const menu = this.componentsOf(message).find((c) => c.type === 3);
    const option = menu?.options?.find((o) => o.value === value);
    if (!menu?.custom_id || !option) throw new Error(`no menu option ${value} on message ${message.id}`);
    this.entries.push({ kind: 'action', channelId: message.channelId, at: Date.now(), userId: user.id, text: `picked **${option.label}** from the menu` });
    return this.component(user, message, () => this.discord.sendSelect({ customId: menu.custom_id!, values: [value], user, message: message.id }));
  }

  /** A member fills in the dialog the bot opened in answer to `opened`, and submits it. */
  async submitDialog(user: Member, opened: InteractionHandle, values: Record<string, string>, channelId: string): Promise<InteractionHandle> {
    const callback = (await opened.callback(30_000)).json as { type: number; data: { custom_id: string; title: string; components: ComponentJson[] } };
    if (callback.type !== 9) throw new Error(`the bot answered with type ${callback.type}, not a dialog`);
    const inputs = new Map<string, { label: string; before: string }>();
    for (const top of callback.data.components) {
      const c = top.type === 18 ? top.component : top.components?.[0];
      if (c?.custom_id) inputs.set(c.custom_id, { label: (top.type === 18 ? top.label : c.label) ?? c.custom_id, before: c.value ?? '' });
    }
    this.entries.push({
      kind: 'modal',
      channelId,
      at: Date.now(),
      userId: user.id,
      title: callback.data.title,
      fields: Object.entries(values).map(([id, value]) => ({ label: inputs.get(id)?.label ?? id, before: inputs.get(id)?.before ?? '', value })),
    });
    const handle = this.discord.sendModalSubmit({ customId: callback.data.custom_id, fields: values, user, channelId });
    this.asked.push({ handle, userId: user.id });
    return handle;
  }

  /** Shows `message` as it looks now, besides its final state (e.g. progress that is replaced later). */
  async capture(message: MessageSnapshot, note: string): Promise<void> {
    this.entries.push({ ...(await this.toEntry(message)), note });
  }

  /** Ends the phase: collects what appeared since it began. */
  async endPhase(slug: string, title: string, summary: string): Promise<PreviewPhase> {
    const since = this.phaseStart;
    const byId = new Map<string, MessageSnapshot>();
    for (const channel of this.channels()) {
      for (const m of this.discord.channelMessages(channel.id)) if (m.createdAt >= since) byId.set(m.id, m);
    }
    const invoked = new Map<string, NonNullable<PreviewMessage['invokedBy']>>();
    for (const a of this.asked) {
      const ids = [a.handle.lastReply()?.id, ...a.handle.followups().map((f) => (f.response as { id?: string } | undefined)?.id)];
      for (const id of ids) {
        if (id === undefined || id === a.sitsOn) continue;
        const m = this.discord.message(id);
        if (!m || m.deleted) continue;
        byId.set(id, m);
        if (a.command) invoked.set(id, { userId: a.userId, command: a.command.name, options: a.command.options });
      }
    }
    const replies = this.replies();
    for (const m of byId.values()) {
      const entry: PreviewMessage = await this.toEntry(m);
      const by = invoked.get(m.id);
      if (by) entry.invokedBy = by;
      const to = replies.get(m.id);
      if (to) entry.replyTo = to;
      this.entries.push(entry);
    }
    const phase: PreviewPhase = { slug, title, summary, entries: this.entries.sort((a, b) => a.at - b.at) };
    this.phases.push(phase);
    this.entries = [];
    this.asked = [];
    this.phaseStart = Date.now();
    return phase;
  }

  transcript(): PreviewTranscript {
    const bot = this.discord.botUser;
    const users: PreviewUser[] = [{ id: bot.id, name: bot.username, bot: true }, ...this.members.map((m) => ({ id: m.id, name: m.username }))];
    return { guildName: this.guildName, users, channels: this.channels(), phases: this.phases };
  }

  private channels(): PreviewChannel[] {
    const main = this.discord.channel(this.discord.channelId)!;
    return [{ id: main.id, name: main.name, thread: false }, ...this.discord.threads(main.id).map((t) => ({ id: t.id, name: t.name, thread: true }))];
  }

  /** Messages the bot sent as replies (message_reference), with what they reply to. */
  private replies(): Map<string, NonNullable<PreviewMessage['replyTo']>> {
    const out = new Map<string, NonNullable<PreviewMessage['replyTo']>>();
    for (const call of this.discord.calls) {
      if (call.method !== 'POST' || call.route !== 'POST /channels/:channel/messages' || call.status >= 300) continue;
      const ref = (call.json as { message_reference?: { message_id?: string } } | undefined)?.message_reference?.message_id;
      const id = (call.response as { id?: string } | undefined)?.id;
      const to = ref === undefined ? undefined : this.discord.message(ref);
      if (!id || !to) continue;
      const text = to.content.split('\n')[0] ?? '';
      out.set(id, { authorId: to.authorId, excerpt: text.length > 0 ? text.slice(0, 100) : `*${to.attachments.length} attachments*` });
    }
    return out;
  }

  private component(user: Member, message: MessageSnapshot, send: () => InteractionHandle): InteractionHandle {
    const handle = send();
    this.asked.push({ handle, userId: user.id, sitsOn: message.id });
    return handle;
  }

  private componentsOf(message: MessageSnapshot): ComponentJson[] {
    const out: ComponentJson[] = [];
    const walk = (list: ComponentJson[]) => {
      for (const c of list) {
        out.push(c);
        if (c.components) walk(c.components);
      }
    };
    walk(message.components);
    return out;
  }

  private async toEntry(m: MessageSnapshot): Promise<PreviewMessage> {
    const attachments: PreviewAttachment[] = [];
    for (const a of m.attachments) attachments.push(await this.writeAttachment(a));
    return {
      kind: 'message',
      id: m.id,
      channelId: m.channelId,
      authorId: m.authorId,
      at: m.createdAt,
      content: m.content,
      embeds: m.embeds,
      components: m.components,
      flags: m.flags,
      edited: m.editedAt !== null,
      attachments,
    };
  }

  private async writeAttachment(a: AttachmentSnapshot): Promise<PreviewAttachment> {
    const known = this.written.get(a.id);
    if (known) return known;
    const name = `${String(++this.fileNo).padStart(3, '0')}-${safeName(a.filename)}`;
    await mkdir(join(this.outDir, 'files'), { recursive: true });
    await writeFile(join(this.outDir, 'files', name), a.data);
    const file: PreviewAttachment = { filename: a.filename, href: `files/${name}`, contentType: a.content_type ?? 'application/octet-stream', size: a.size };
    if (file.contentType.startsWith('image/')) {
      const meta = await sharp(a.data)
        .metadata()
        .catch(() => null);
      if (meta?.width && meta.height) {
        const upright = (meta.orientation ?? 1) >= 5;
        file.width = upright ? meta.height : meta.width;
        file.height = upright ? meta.width : meta.height;
      }
    }
    this.written.set(a.id, file);
    return file;
  }
}
