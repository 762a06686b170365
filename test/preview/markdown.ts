/**
 * Discord's markdown, as far as our messages use it, to HTML: headings, `-#` small print, quotes,
 * lists, code blocks and spans, bold/italic/underline/strike, spoilers, masked links, mentions and
 * `<t:…>` timestamps. Everything else is escaped text.
 */

export interface MarkdownContext {
  userName(id: string): string | undefined;
  channelName(id: string): string | undefined;
  /** How a `<t:unix:style>` timestamp reads; the default is the UTC date and time. */
  formatTime?(unixSeconds: number, style: string): string;
}

export function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

const PLACEHOLDER = '\u0000';

function defaultTime(unix: number, style: string): string {
  const iso = new Date(unix * 1000).toISOString();
  const date = iso.slice(0, 10);
  const time = iso.slice(11, 16);
  if (style === 't') return time;
  if (style === 'd' || style === 'D') return date;
  if (style === 'R') return `${date} ${time} UTC`;
  return `${date} ${time} UTC`;
}

/** Inline markup of one line (no block syntax). */
export function renderInline(text: string, ctx: MarkdownContext): string {
  const kept: string[] = [];
  const keep = (html: string) => `${PLACEHOLDER}${kept.push(html) - 1}${PLACEHOLDER}`;
  // Code spans first: nothing inside them is markup. Mentions and timestamps are taken out before
  // escaping (their angle brackets are syntax, not text).
  let s = text.replace(/``([^`]+)``|`([^`]+)`/g, (_m, a: string | undefined, b: string | undefined) => keep(`<code>${escapeHtml(a ?? b ?? '')}</code>`));
  s = s.replace(/<@!?(\d+)>/g, (_m, id: string) => keep(`<span class="mention">@${escapeHtml(ctx.userName(id) ?? 'unknown-user')}</span>`));
  s = s.replace(/<@&(\d+)>/g, () => keep('<span class="mention">@role</span>'));
  s = s.replace(/<#(\d+)>/g, (_m, id: string) => keep(`<span class="mention">#${escapeHtml(ctx.channelName(id) ?? 'unknown')}</span>`));
  s = s.replace(/<t:(-?\d+)(?::([tTdDfFR]))?>/g, (_m, unix: string, style: string | undefined) =>
    keep(`<span class="timestamp">${escapeHtml((ctx.formatTime ?? defaultTime)(Number(unix), style ?? 'f'))}</span>`),
  );
  s = s.replace(/<a?:(\w+):\d+>/g, (_m, name: string) => keep(`:${escapeHtml(name)}:`));
  s = s.replace(/\[([^\]\n]+)\]\(<?(https?:\/\/[^\s)>]+)>?\)/g, (_m, label: string, url: string) =>
    keep(`<a href="${escapeHtml(url)}">${escapeHtml(label)}</a>`),
  );
  s = s.replace(/<(https?:\/\/[^\s>]+)>|https?:\/\/[^\s<]+/g, (m: string, inner: string | undefined) => {
    const url = inner ?? m;
    return keep(`<a href="${escapeHtml(url)}">${escapeHtml(url)}</a>`);
  });
  s = escapeHtml(s);
  s = s.replace(/\|\|(.+?)\|\|/g, '<span class="spoiler">$1</span>');
  s = s.replace(/\*\*\*(.+?)\*\*\*/g, '<strong><em>$1</em></strong>');
  s = s.replace(/\*\*(.+?)\*\*/g, '<strong>$1</strong>');
  s = s.replace(/__(.+?)__/g, '<u>$1</u>');
  s = s.replace(/~~(.+?)~~/g, '<s>$1</s>');
  s = s.replace(/(^|[^\w*])\*(?!\s)(.+?)(?<!\s)\*(?!\*)/g, '$1<em>$2</em>');
  s = s.replace(/(^|\W)_(?!\s)(.+?)(?<!\s)_(?!\w)/g, '$1<em>$2</em>');
  // eslint-disable-next-line no-control-regex
  return s.replace(/\u0000(\d+)\u0000/g, (_m, i: string) => kept[Number(i)] ?? '');
}

/** A whole message body: blocks (code, quotes, headings, lists) and inline markup. */
export function renderMarkdown(text: string, ctx: MarkdownContext): string {
  const out: string[] = [];
  const lines = text.split('\n');
  let quote: string[] = [];
  let list: string[] = [];
  const flush = () => {
    if (quote.length > 0) out.push(`<blockquote>${quote.join('<br>')}</blockquote>`);
    if (list.length > 0) out.push(`<ul>${list.map((l) => `<li>${l}</li>`).join('')}</ul>`);
    quote = [];
    list = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    const fence = /^```(\w*)\s*(.*)$/.exec(line);
    if (fence) {
      flush();
      const body: string[] = [];
      // ```text``` on one line
      if (fence[2]?.endsWith('```')) {
        out.push(`<pre>${escapeHtml(fence[2].slice(0, -3))}</pre>`);
        continue;
      }
      if (fence[2]) body.push(fence[2]);
      for (i++; i < lines.length && !(lines[i] ?? '').startsWith('```'); i++) body.push(lines[i] ?? '');
      out.push(`<pre>${escapeHtml(body.join('\n'))}</pre>`);
      continue;
    }
    const quoted = /^>>> ?(.*)$/.exec(line);
    if (quoted) {
      flush();
      const rest = [quoted[1] ?? '', ...lines.slice(i + 1)].map((l) => renderInline(l, ctx));
      out.push(`<blockquote>${rest.join('<br>')}</blockquote>`);
      break;
    }
    const q = /^> ?(.*)$/.exec(line);
    if (q) {
      if (list.length > 0) flush();
      quote.push(renderInline(q[1] ?? '', ctx));
      continue;
    }
    const item = /^\s*[-*•] (.*)$/.exec(line);
    if (item) {
      if (quote.length > 0) flush();
      list.push(renderInline(item[1] ?? '', ctx));
      continue;
    }
    flush();
    const heading = /^(#{1,3}) (.*)$/.exec(line);
    const small = /^-# (.*)$/.exec(line);
    if (heading) out.push(`<h${heading[1]!.length + 2}>${renderInline(heading[2] ?? '', ctx)}</h${heading[1]!.length + 2}>`);
    else if (small) out.push(`<div class="subtext">${renderInline(small[1] ?? '', ctx)}</div>`);
    else out.push(`<div class="line">${line === '' ? '<br>' : renderInline(line, ctx)}</div>`);
  }
  flush();
  return out.join('');
}
