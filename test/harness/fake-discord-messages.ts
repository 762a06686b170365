import { MessageFlags } from 'discord.js';
import type { APIEmbed, APIMessageTopLevelComponent } from 'discord.js';
import { contentTypeFor, isRecord, type ParsedFile } from './fake-discord-util.ts';
import type { MessageState, World } from './fake-discord-world.ts';

/** Message bodies as the bot sends them, checked against Discord's limits, and applied to the world. */

/** An error Discord would answer with: status, JSON code and message (and form errors for 50035). */
export class DiscordError extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
    readonly errors?: Record<string, unknown>,
  ) {
    super(message);
  }

  get body(): Record<string, unknown> {
    const body: Record<string, unknown> = { message: this.message, code: this.code };
    if (this.errors) body.errors = this.errors;
    return body;
  }
}

function formError(field: string, code: string, message: string): DiscordError {
  return new DiscordError(400, 50035, 'Invalid Form Body', { [field]: { _errors: [{ code, message }] } });
}

export interface MessageBody {
  content?: string | null;
  embeds?: APIEmbed[] | null;
  components?: APIMessageTopLevelComponent[] | null;
  flags?: number;
  attachments?: { id: string; description?: string; title?: string }[];
  messageReference?: Record<string, unknown>;
}

const MAX_CONTENT = 2000;
const MAX_EMBEDS = 10;
const MAX_EMBED_CHARS = 6000;
const MAX_FILES = 10;
const MAX_ROWS = 5;
const MAX_V2_COMPONENTS = 40;
const MAX_REQUEST_BYTES = 25 * 1024 * 1024;

/** Reads the message fields of a JSON body; wrong types are Discord's 50035. */
export function readMessageBody(json: unknown): MessageBody {
  if (json === undefined) return {};
  if (!isRecord(json)) throw formError('_root', 'DICT_TYPE_CONVERT', 'Only dictionaries may be used in a DictType');
  const body: MessageBody = {};
  if ('content' in json && json.content !== undefined) {
    if (json.content !== null && typeof json.content !== 'string') {
      throw formError('content', 'BASE_TYPE_STRING', 'Must be a string.');
    }
    body.content = json.content;
  }
  if ('embeds' in json && json.embeds !== undefined) {
    if (json.embeds !== null && !Array.isArray(json.embeds)) throw formError('embeds', 'BASE_TYPE_LIST', 'Must be a list.');
    body.embeds = json.embeds as APIEmbed[] | null;
  }
  if ('components' in json && json.components !== undefined) {
    if (json.components !== null && !Array.isArray(json.components)) {
      throw formError('components', 'BASE_TYPE_LIST', 'Must be a list.');
    }
    body.components = json.components as APIMessageTopLevelComponent[] | null;
  }
  if (typeof json.flags === 'number') body.flags = json.flags;
  if (Array.isArray(json.attachments)) {
    body.attachments = json.attachments.map((a: unknown, i) => {
      if (!isRecord(a) || (typeof a.id !== 'string' && typeof a.id !== 'number')) {
        throw formError(`attachments.${i}.id`, 'BASE_TYPE_REQUIRED', 'This field is required');
      }
      const entry: { id: string; description?: string; title?: string } = { id: String(a.id) };
      if (typeof a.description === 'string') entry.description = a.description;
      if (typeof a.title === 'string') entry.title = a.title;
      return entry;
    });
  }
  if (isRecord(json.message_reference)) body.messageReference = json.message_reference;
  return body;
}

/** Checks a body against Discord's limits; `creating` also refuses an empty message. */
export function validateMessage(body: MessageBody, files: ParsedFile[], opts: { creating: boolean; sizeLimit: number }): void {
  const content = body.content ?? '';
  if (content.length > MAX_CONTENT) {
    throw formError('content', 'BASE_TYPE_MAX_LENGTH', `Must be ${MAX_CONTENT} or fewer in length.`);
  }
  const embeds = body.embeds ?? [];
  if (embeds.length > MAX_EMBEDS) throw formError('embeds', 'BASE_TYPE_MAX_LENGTH', `Must be ${MAX_EMBEDS} or fewer in length.`);
  if (embeds.reduce((n, e) => n + embedChars(e), 0) > MAX_EMBED_CHARS) {
    throw formError('embeds', 'MAX_EMBED_SIZE_EXCEEDED', 'Embed size exceeds maximum size of 6000');
  }
  const v2 = ((body.flags ?? 0) & MessageFlags.IsComponentsV2) !== 0;
  const components = body.components ?? [];
  if (v2) {
    if (content.length > 0 || embeds.length > 0) {
      throw formError(
        'content',
        'MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2',
        'The content and embeds fields cannot be used when using MessageFlags.IS_COMPONENTS_V2',
      );
    }
    if (countComponents(components) > MAX_V2_COMPONENTS) {
      throw formError('components', 'BASE_TYPE_MAX_LENGTH', `Must be ${MAX_V2_COMPONENTS} or fewer in length.`);
    }
  } else if (components.length > MAX_ROWS) {
    throw formError('components', 'BASE_TYPE_MAX_LENGTH', `Must be ${MAX_ROWS} or fewer in length.`);
  }
  const badId = findBadCustomId(components);
  if (badId !== undefined) throw formError('components', 'BASE_TYPE_BAD_LENGTH', `custom_id must be 1-100 characters (got "${badId}")`);
  if (files.length > MAX_FILES) {
    throw new DiscordError(400, 30015, `Maximum number of attachments in a message reached (${MAX_FILES})`);
  }
  const total = files.reduce((n, f) => n + f.data.length, 0);
  if (files.some((f) => f.data.length > opts.sizeLimit) || total > Math.max(MAX_REQUEST_BYTES, opts.sizeLimit)) {
    throw new DiscordError(413, 40005, 'Request entity too large');
  }
  if (opts.creating && content.length === 0 && embeds.length === 0 && components.length === 0 && files.length === 0) {
    throw new DiscordError(400, 50006, 'Cannot send an empty message');
  }
}

function embedChars(embed: APIEmbed): number {
  let n = (embed.title?.length ?? 0) + (embed.description?.length ?? 0);
  n += (embed.footer?.text.length ?? 0) + (embed.author?.name.length ?? 0);
  for (const field of embed.fields ?? []) n += field.name.length + field.value.length;
  return n;
}

function children(component: unknown): unknown[] {
  if (!isRecord(component)) return [];
  const out: unknown[] = [];
  if (Array.isArray(component.components)) out.push(...(component.components as unknown[]));
  if (isRecord(component.accessory)) out.push(component.accessory);
  if (isRecord(component.component)) out.push(component.component);
  return out;
}

function countComponents(components: unknown[]): number {
  return components.reduce<number>((n, c) => n + 1 + countComponents(children(c)), 0);
}

function findBadCustomId(components: unknown[]): string | undefined {
  for (const c of components) {
    if (isRecord(c) && 'custom_id' in c) {
      const id = c.custom_id;
      if (typeof id !== 'string' || id.length < 1 || id.length > 100) return String(id);
    }
    const inner = findBadCustomId(children(c));
    if (inner !== undefined) return inner;
  }
  return undefined;
}

/** The index a multipart field names: `files[3]` → 3. */
function fileIndex(field: string, position: number): number {
  const match = /^files\[(\d+)\]$/.exec(field);
  return match ? Number(match[1]) : position;
}

/**
 * The attachment ids a message has after this body: kept ones named in `attachments` by id, new
 * uploads named by their file index. Without `attachments`, existing ones stay and uploads join.
 */
export function resolveAttachments(world: World, body: MessageBody, files: ParsedFile[], existing: string[], channelId: string): string[] {
  const uploads = new Map(files.map((f, i) => [fileIndex(f.field, i), f]));
  const used = new Set<number>();
  const store = (file: ParsedFile, meta?: { description?: string; title?: string }) =>
    world.storeAttachment({
      filename: file.filename,
      data: file.data,
      channelId,
      contentType: contentTypeFor(file.filename, file.contentType),
      description: meta?.description,
      title: meta?.title,
    }).info.id;

  if (!body.attachments) {
    return [...existing, ...files.map((f) => store(f))];
  }
  const ids: string[] = [];
  body.attachments.forEach((entry, i) => {
    if (existing.includes(entry.id)) {
      ids.push(entry.id);
      return;
    }
    const index = Number(entry.id);
    const upload = Number.isInteger(index) ? uploads.get(index) : undefined;
    if (!upload) {
      throw formError(`attachments.${i}.id`, 'ATTACHMENT_NOT_FOUND', `Unknown attachment ${entry.id}: neither kept nor uploaded`);
    }
    used.add(index);
    ids.push(store(upload, entry));
  });
  for (const [index, file] of uploads) if (!used.has(index)) ids.push(store(file));
  return ids;
}

/** Applies an edit: fields present in the body replace the message's; the ephemeral bit stays. */
export function applyEdit(world: World, message: MessageState, body: MessageBody, files: ParsedFile[]): void {
  const wasLoading = (message.flags & MessageFlags.Loading) !== 0;
  if (body.content !== undefined) message.content = body.content ?? '';
  if (body.embeds !== undefined) message.embeds = body.embeds ?? [];
  if (body.components !== undefined) message.components = body.components ?? [];
  if (body.flags !== undefined) {
    const kept = message.flags & MessageFlags.Ephemeral;
    message.flags = kept | (body.flags & ~MessageFlags.Ephemeral & ~MessageFlags.Loading);
  } else {
    message.flags &= ~MessageFlags.Loading;
  }
  message.attachmentIds = resolveAttachments(world, body, files, message.attachmentIds, message.channelId);
  // Filling in a deferred reply is not an edit in the client's eyes.
  message.editedAt = wasLoading ? null : Date.now();
}
