/**
 * Renders a preview transcript as HTML that looks like Discord's dark theme: avatars with
 * initials, the APP tag on the bot, "used /command" above replies, embeds with their colour bar,
 * fields and images, buttons in their styles (greyed when disabled), select menus, attachments, and
 * "Only you can see this" under ephemeral replies. Pure: strings in, a string out.
 */
import { ButtonStyle, ComponentType, type APIEmbed, type APIMessageTopLevelComponent } from 'discord.js';
import { escapeHtml, renderInline, renderMarkdown, type MarkdownContext } from './markdown.ts';
import type { PreviewAttachment, PreviewChannel, PreviewEntry, PreviewMessage, PreviewPhase, PreviewTranscript } from './transcript.ts';
import { PREVIEW_CSS } from './render-css.ts';

const EPHEMERAL = 64;
const LOADING = 128;
/** Messages of one author closer than this share one header, as in Discord. */
const GROUP_MS = 7 * 60_000;

const AVATAR_COLOURS = ['#5865f2', '#3ba55c', '#faa61a', '#ed4245', '#eb459e', '#00a8fc', '#9b59b6', '#1abc9c'];

function hash(text: string): number {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h;
}

function initials(name: string): string {
  const parts = name.split(/[\s._-]+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0]![0]! + parts[1]![0]! : name.slice(0, 2);
  return letters.toUpperCase();
}

function clock(at: number): string {
  return new Date(at).toISOString().slice(11, 16);
}

function humanSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
}

class Renderer {
  private readonly users = new Map<string, { name: string; bot: boolean }>();
  private readonly channels = new Map<string, PreviewChannel>();
  readonly md: MarkdownContext;

  constructor(transcript: PreviewTranscript) {
    for (const u of transcript.users) this.users.set(u.id, { name: u.name, bot: u.bot ?? false });
    for (const c of transcript.channels) this.channels.set(c.id, c);
    this.md = {
      userName: (id) => this.users.get(id)?.name,
      channelName: (id) => this.channels.get(id)?.name,
    };
  }

  name(id: string): string {
    return this.users.get(id)?.name ?? `user ${id.slice(-4)}`;
  }

  avatar(id: string, small = false): string {
    const name = this.name(id);
    const colour = this.users.get(id)?.bot ? '#5865f2' : (AVATAR_COLOURS[hash(id) % AVATAR_COLOURS.length] ?? '#5865f2');
    return `<div class="avatar${small ? ' small' : ''}" style="background:${colour}">${escapeHtml(initials(name))}</div>`;
  }

  channel(channel: PreviewChannel, entries: PreviewEntry[]): string {
    const icon = channel.thread ? '🧵' : '#';
    const body: string[] = [];
    let previous: PreviewEntry | undefined;
    for (const entry of entries) {
      body.push(this.entry(entry, previous));
      previous = entry;
    }
    return `<section class="channel"><header class="channel-head"><span class="hash">${icon}</span> ${escapeHtml(channel.name)}</header>${body.join('\n')}</section>`;
  }

  entry(entry: PreviewEntry, previous: PreviewEntry | undefined): string {
    if (entry.kind === 'action') {
      return `<div class="action"><span class="action-icon">👆</span><span><strong>${escapeHtml(this.name(entry.userId))}</strong> ${renderInline(entry.text, this.md)}</span><span class="time">${clock(entry.at)}</span></div>`;
    }
    if (entry.kind === 'modal') return this.modal(entry);
    return this.message(entry, previous);
  }

  modal(entry: Extract<PreviewEntry, { kind: 'modal' }>): string {
    const fields = entry.fields
      .map((f) => {
        const before = f.before && f.before !== f.value ? `<div class="modal-before">was: ${escapeHtml(f.before)}</div>` : '';
        return `<label class="modal-label">${escapeHtml(f.label)}</label><div class="modal-input">${escapeHtml(f.value)}</div>${before}`;
      })
      .join('');
    return `<div class="modal-wrap"><div class="modal-caption">A dialog opens for <strong>${escapeHtml(this.name(entry.userId))}</strong>; what they typed:</div><div class="modal"><div class="modal-title">${escapeHtml(entry.title)}</div>${fields}<div class="modal-buttons"><span class="btn link-like">Cancel</span><span class="btn primary">Submit</span></div></div></div>`;
  }

  message(m: PreviewMessage, previous: PreviewEntry | undefined): string {
    const ephemeral = (m.flags & EPHEMERAL) !== 0;
    const grouped =
      previous?.kind === 'message' &&
      previous.authorId === m.authorId &&
      m.invokedBy === undefined &&
      m.replyTo === undefined &&
      m.note === undefined &&
      previous.note === undefined &&
      ((previous.flags ^ m.flags) & EPHEMERAL) === 0 &&
      m.at - previous.at < GROUP_MS;
    const bot = this.users.get(m.authorId)?.bot ?? false;
    const parts: string[] = [];
    if (m.note) parts.push(`<div class="note">${renderInline(m.note, this.md)}</div>`);
    if (m.invokedBy) {
      const opts = m.invokedBy.options ? ` <span class="options">${escapeHtml(m.invokedBy.options)}</span>` : '';
      parts.push(
        `<div class="invoked">${this.avatar(m.invokedBy.userId, true)}<span class="who">${escapeHtml(this.name(m.invokedBy.userId))}</span> used <span class="command">${escapeHtml(m.invokedBy.command)}</span>${opts}</div>`,
      );
    }
    if (m.replyTo) {
      parts.push(
        `<div class="invoked">${this.avatar(m.replyTo.authorId, true)}<span class="who">${escapeHtml(this.name(m.replyTo.authorId))}</span><span class="excerpt">${renderInline(m.replyTo.excerpt, this.md)}</span></div>`,
      );
    }
    const head = grouped
      ? ''
      : `<div class="head"><span class="author">${escapeHtml(this.name(m.authorId))}</span>${bot ? '<span class="app-tag">APP</span>' : ''}<span class="time">Today at ${clock(m.at)}</span></div>`;
    const body: string[] = [];
    if ((m.flags & LOADING) !== 0 && m.content === '') body.push(`<div class="thinking">${escapeHtml(this.name(m.authorId))} is thinking…</div>`);
    if (m.content) body.push(`<div class="content">${renderMarkdown(m.content, this.md)}${m.edited ? '<span class="edited">(edited)</span>' : ''}</div>`);
    const embedded = new Set<string>();
    for (const e of m.embeds) body.push(this.embed(e, m.attachments, embedded));
    const shown = m.attachments.filter((a) => !embedded.has(a.filename));
    if (shown.length > 0) body.push(this.attachments(shown));
    if (m.components.length > 0) body.push(this.components(m.components));
    if (ephemeral) body.push('<div class="ephemeral-note">👁 Only you can see this · <span class="dismiss">Dismiss message</span></div>');
    const classes = ['message', grouped ? 'grouped' : '', ephemeral ? 'ephemeral' : '', m.note ? 'captured' : ''].filter(Boolean).join(' ');
    const gutter = grouped ? `<div class="gutter-time">${clock(m.at)}</div>` : this.avatar(m.authorId);
    return `<article class="${classes}" data-id="${escapeHtml(m.id)}">${parts.join('')}<div class="row">${gutter}<div class="main">${head}${body.join('')}</div></div></article>`;
  }

  imageSource(url: string | undefined, attachments: PreviewAttachment[], embedded: Set<string>): string | undefined {
    if (!url) return undefined;
    if (url.startsWith('attachment://')) {
      const file = attachments.find((a) => a.filename === url.slice('attachment://'.length));
      if (!file) return undefined;
      embedded.add(file.filename);
      return file.href;
    }
    return url;
  }

  embed(e: APIEmbed, attachments: PreviewAttachment[], embedded: Set<string>): string {
    const colour = e.color === undefined ? '#1e1f22' : `#${e.color.toString(16).padStart(6, '0')}`;
    const inner: string[] = [];
    if (e.author?.name) inner.push(`<div class="embed-author">${escapeHtml(e.author.name)}</div>`);
    if (e.title) {
      const title = renderInline(e.title, this.md);
      inner.push(`<div class="embed-title">${e.url ? `<a href="${escapeHtml(e.url)}">${title}</a>` : title}</div>`);
    }
    if (e.description) inner.push(`<div class="embed-description">${renderMarkdown(e.description, this.md)}</div>`);
    if (e.fields?.length) {
      const fields = e.fields.map(
        (f) =>
          `<div class="embed-field${f.inline ? ' inline' : ''}"><div class="embed-field-name">${renderInline(f.name, this.md)}</div><div class="embed-field-value">${renderMarkdown(f.value, this.md)}</div></div>`,
      );
      inner.push(`<div class="embed-fields">${fields.join('')}</div>`);
    }
    const image = this.imageSource(e.image?.url, attachments, embedded);
    if (image) inner.push(`<img class="embed-image" src="${escapeHtml(image)}" alt="">`);
    const footer = [e.footer?.text ? renderInline(e.footer.text, this.md) : '', e.timestamp ? escapeHtml(e.timestamp.slice(0, 16).replace('T', ' ')) : '']
      .filter(Boolean)
      .join(' · ');
    if (footer) inner.push(`<div class="embed-footer">${footer}</div>`);
    const thumb = this.imageSource(e.thumbnail?.url, attachments, embedded);
    const thumbnail = thumb ? `<img class="embed-thumb" src="${escapeHtml(thumb)}" alt="">` : '';
    return `<div class="embed" style="border-left-color:${colour}"><div class="embed-body">${inner.join('')}</div>${thumbnail}</div>`;
  }

  attachments(files: PreviewAttachment[]): string {
    const images = files.filter((f) => f.contentType.startsWith('image/'));
    const others = files.filter((f) => !f.contentType.startsWith('image/'));
    const out: string[] = [];
    if (images.length > 0) {
      const tiles = images.map((f) => {
        const spoiler = f.filename.startsWith('SPOILER_');
        const size = f.width && f.height ? ` width="${f.width}" height="${f.height}"` : '';
        return `<figure class="image${spoiler ? ' spoiler-image' : ''}"><img src="${escapeHtml(f.href)}" alt="${escapeHtml(f.filename)}"${size}>${spoiler ? '<span class="spoiler-label">SPOILER</span>' : ''}<figcaption>${escapeHtml(f.filename)}</figcaption></figure>`;
      });
      out.push(`<div class="images${images.length > 1 ? ' many' : ''}">${tiles.join('')}</div>`);
    }
    for (const f of others) {
      out.push(
        `<div class="file"><span class="file-icon">📄</span><div><a class="file-name" href="${escapeHtml(f.href)}">${escapeHtml(f.filename)}</a><div class="file-size">${humanSize(f.size)}</div></div></div>`,
      );
    }
    return out.join('');
  }

  components(rows: APIMessageTopLevelComponent[]): string {
    return rows
      .map((row) => {
        if (row.type !== ComponentType.ActionRow) return `<div class="unknown-component">component type ${row.type}</div>`;
        const items = row.components.map((c) => {
          if (c.type === ComponentType.Button) {
            const style =
              ({ 1: 'primary', 2: 'secondary', 3: 'success', 4: 'danger', 5: 'secondary', 6: 'premium' } as Record<number, string>)[c.style] ?? 'secondary';
            const emoji = 'emoji' in c && c.emoji?.name ? `<span class="emoji">${escapeHtml(c.emoji.name)}</span>` : '';
            const label = 'label' in c && c.label ? escapeHtml(c.label) : '';
            const external = c.style === ButtonStyle.Link ? ' <span class="external">↗</span>' : '';
            return `<span class="btn ${style}${c.disabled ? ' disabled' : ''}">${emoji}${label}${external}</span>`;
          }
          if (c.type === ComponentType.StringSelect) {
            const placeholder = c.placeholder ?? 'Make a selection';
            const options = c.options.map((o) => escapeHtml(o.label)).join(' · ');
            return `<div class="select${c.disabled ? ' disabled' : ''}"><span class="placeholder">${escapeHtml(placeholder)}</span><span class="caret">⌄</span><div class="select-options">${options}</div></div>`;
          }
          return `<span class="btn secondary disabled">component type ${c.type}</span>`;
        });
        return `<div class="action-row">${items.join('')}</div>`;
      })
      .join('');
  }
}

/** Entries of a phase grouped by channel, channels in the order they first speak. */
function byChannel(phase: PreviewPhase): Map<string, PreviewEntry[]> {
  const groups = new Map<string, PreviewEntry[]>();
  const sorted = [...phase.entries].sort((a, b) => a.at - b.at);
  for (const e of sorted) {
    const list = groups.get(e.channelId) ?? [];
    list.push(e);
    groups.set(e.channelId, list);
  }
  return groups;
}

function nav(transcript: PreviewTranscript, current: string | null): string {
  const links = transcript.phases.map((p) =>
    p.slug === current ? `<strong>${escapeHtml(p.title)}</strong>` : `<a href="${escapeHtml(p.slug)}.html">${escapeHtml(p.title)}</a>`,
  );
  return `<nav><a href="index.html">Overview</a> · ${links.join(' · ')}</nav>`;
}

/** Records the page's full height on <body> once images are in (read back by the screenshot step). */
const MEASURE = `<script>addEventListener('load',()=>{document.body.dataset.height=String(document.documentElement.scrollHeight)})</script>`;

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${PREVIEW_CSS}</style></head><body>${body}${MEASURE}</body></html>\n`;
}

export function renderPhasePage(transcript: PreviewTranscript, phase: PreviewPhase): string {
  const r = new Renderer(transcript);
  const panes: string[] = [];
  for (const [channelId, entries] of byChannel(phase)) {
    const channel = transcript.channels.find((c) => c.id === channelId) ?? { id: channelId, name: `channel ${channelId.slice(-4)}`, thread: false };
    panes.push(r.channel(channel, entries));
  }
  if (panes.length === 0) panes.push('<p class="empty">Nothing was said in this phase.</p>');
  const header = `<header class="phase-head">${nav(transcript, phase.slug)}<h1>${escapeHtml(phase.title)}</h1><p>${renderInline(phase.summary, r.md)}</p></header>`;
  return page(`${phase.title} · ${transcript.guildName}`, `${header}<main>${panes.join('\n')}</main>`);
}

export interface IndexShot {
  slug: string;
  png: string | null;
}

/** The overview: each phase with its page and screenshot (or why there is none). */
export function renderIndexPage(transcript: PreviewTranscript, shots: IndexShot[], note: string | null): string {
  const items = transcript.phases.map((p) => {
    const shot = shots.find((s) => s.slug === p.slug)?.png;
    const picture = shot ? `<a href="${escapeHtml(shot)}"><img class="shot" src="${escapeHtml(shot)}" alt="${escapeHtml(p.title)}"></a>` : '';
    const count = p.entries.filter((e) => e.kind === 'message').length;
    return `<li><h2><a href="${escapeHtml(p.slug)}.html">${escapeHtml(p.title)}</a></h2><p>${escapeHtml(p.summary)} <span class="muted">(${count} messages)</span></p>${picture}</li>`;
  });
  const warning = note ? `<p class="warning">${escapeHtml(note)}</p>` : '';
  const body = `<header class="phase-head">${nav(transcript, null)}<h1>What members see · ${escapeHtml(transcript.guildName)}</h1>${warning}</header><main><ol class="phases">${items.join('')}</ol></main>`;
  return page(`Preview · ${transcript.guildName}`, body);
}
