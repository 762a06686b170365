import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { escapeHtml, renderMarkdown } from '../preview/markdown.ts';
import { renderIndexPage, renderPhasePage } from '../preview/render.ts';
import type { PreviewMessage, PreviewTranscript } from '../preview/transcript.ts';

const BOT = '900';
const MIRA = '901';
const JONAS = '902';
const T0 = Date.UTC(2026, 0, 2, 10, 0);

function message(over: Partial<PreviewMessage> & { id: string }): PreviewMessage {
  return {
    kind: 'message',
    channelId: 'c1',
    authorId: BOT,
    at: T0,
    content: '',
    embeds: [],
    components: [],
    flags: 0,
    edited: false,
    attachments: [],
    ...over,
  };
}

/** A transcript as the recorder writes it: one phase, a channel and a thread. */
const transcript: PreviewTranscript = {
  guildName: 'Pixel Guild',
  users: [
    { id: BOT, name: 'LoRA Guild', bot: true },
    { id: MIRA, name: 'mira' },
    { id: JONAS, name: 'jonas' },
  ],
  channels: [
    { id: 'c1', name: 'lora-lab', thread: false },
    { id: 't1', name: 'dataset · aurora', thread: true },
  ],
  phases: [
    {
      slug: 'intake',
      title: 'Intake',
      summary: 'Mira adds photos.',
      entries: [
        message({
          id: 'm1',
          at: T0 + 1000,
          content: '**aurora** · 1 added, 1 refused\n✅ `IMG_1.jpg` → **#1**\n❌ `x.jpg` — <script>alert(1)</script> by <@902> at <t:0:f>\n> quoted\n- item',
          invokedBy: { userId: MIRA, command: '/dataset add', options: 'dataset: aurora image1: IMG_1.jpg' },
          attachments: [{ filename: 'contact-sheet.jpg', href: 'files/001-contact-sheet.jpg', contentType: 'image/jpeg', size: 2048, width: 600, height: 400 }],
        }),
        message({ id: 'm2', at: T0 + 2000, content: 'Tagged 1 image.' }),
        { kind: 'action', channelId: 't1', at: T0 + 2500, userId: JONAS, text: 'pressed **Start**' },
        message({
          id: 'm3',
          channelId: 't1',
          at: T0 + 3000,
          flags: 64,
          content: 'Starting a run needs Manage Server.',
        }),
        message({
          id: 'm4',
          channelId: 't1',
          at: T0 + 4000,
          content: '```\nohwx_aurora, smile\n```',
          embeds: [{ title: 'Epoch 2', color: 0x5865f2, fields: [{ name: 'Votes', value: '**2**', inline: true }], image: { url: 'attachment://grid.png' } }],
          attachments: [{ filename: 'grid.png', href: 'files/002-grid.png', contentType: 'image/png', size: 4096 }],
          components: [
            {
              type: 1,
              components: [
                { type: 2, style: 3, label: 'Vote for epoch 2', custom_id: 'vote:1:2' },
                { type: 2, style: 4, label: 'Cancel', custom_id: 'cancel:1', disabled: true },
              ],
            },
            { type: 1, components: [{ type: 3, custom_id: 'votesel:1', placeholder: 'Vote for the best epoch', options: [{ label: 'Epoch 1', value: '1' }] }] },
          ],
        }),
        {
          kind: 'modal',
          channelId: 't1',
          at: T0 + 5000,
          userId: MIRA,
          title: 'Caption of #3',
          fields: [{ label: 'Tags', before: 'smile', value: 'smile, red hair' }],
        },
      ],
    },
  ],
};

describe('the preview renderer', () => {
  const html = renderPhasePage(transcript, transcript.phases[0]!);

  it('shows each channel as its own pane, channel first, with the command above its reply', () => {
    expect(html.indexOf('lora-lab')).toBeLessThan(html.indexOf('dataset · aurora'));
    expect(html).toMatch(
      /<span class="who">mira<\/span> used <span class="command">\/dataset add<\/span> <span class="options">dataset: aurora image1: IMG_1\.jpg<\/span>/,
    );
    expect(html).toContain('<span class="app-tag">APP</span>');
  });

  it('escapes members’ and the bot’s text, and renders markdown, mentions and timestamps', () => {
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html.match(/<script>/g)).toHaveLength(1); // only the page's own height measure
    expect(html).toContain('<strong>aurora</strong>');
    expect(html).toContain('<code>IMG_1.jpg</code>');
    expect(html).toContain('<span class="mention">@jonas</span>');
    expect(html).toContain('<span class="timestamp">1970-01-01 00:00 UTC</span>');
    expect(html).toContain('<blockquote>quoted</blockquote>');
    expect(html).toContain('<ul><li>item</li></ul>');
    expect(html).toContain('<pre>ohwx_aurora, smile</pre>');
  });

  it('groups a bot’s next message under the same header, as Discord does', () => {
    expect(html).toMatch(/<article class="message grouped" data-id="m2">/);
    expect(html).toMatch(/<article class="message" data-id="m1">/);
  });

  it('marks only the ephemeral reply as seen by one member', () => {
    expect(html.match(/Only you can see this/g)).toHaveLength(1);
    expect(html).toMatch(/<article class="message ephemeral" data-id="m3">/);
  });

  it('draws embeds with their colour, fields and attached image, and buttons and menus in their styles', () => {
    expect(html).toContain('border-left-color:#5865f2');
    expect(html).toContain('<div class="embed-field-name">Votes</div>');
    expect(html).toContain('<img class="embed-image" src="files/002-grid.png"');
    // The file an embed shows is not listed again as an attachment.
    expect(html.match(/files\/002-grid\.png/g)).toHaveLength(1);
    expect(html).toContain('<img src="files/001-contact-sheet.jpg" alt="contact-sheet.jpg" width="600" height="400">');
    expect(html).toContain('<span class="btn success">Vote for epoch 2</span>');
    expect(html).toContain('<span class="btn danger disabled">Cancel</span>');
    expect(html).toContain('<span class="placeholder">Vote for the best epoch</span>');
  });

  it('shows pressed buttons and filled-in dialogs between the messages', () => {
    expect(html).toMatch(/<strong>jonas<\/strong> pressed <strong>Start<\/strong>/);
    expect(html).toContain('<div class="modal-title">Caption of #3</div>');
    expect(html).toContain('<div class="modal-input">smile, red hair</div><div class="modal-before">was: smile</div>');
  });

  it('lists the phases on the overview with their screenshots, or says why there are none', () => {
    const index = renderIndexPage(transcript, [{ slug: 'intake', png: 'intake.png' }], null);
    expect(index).toContain('<a href="intake.html">Intake</a>');
    expect(index).toContain('<img class="shot" src="intake.png"');
    const without = renderIndexPage(transcript, [{ slug: 'intake', png: null }], 'Screenshots were skipped: no Chromium.');
    expect(without).toContain('<p class="warning">Screenshots were skipped: no Chromium.</p>');
    expect(without).not.toContain('class="shot"');
  });
});

describe('Discord markdown', () => {
  const ctx = { userName: () => undefined, channelName: (id: string) => (id === '5' ? 'general' : undefined) };

  it('leaves code alone and keeps snake_case words', () => {
    expect(renderMarkdown('`**not bold**` long_hair *yes*', ctx)).toBe('<div class="line"><code>**not bold**</code> long_hair <em>yes</em></div>');
  });

  it('renders headings, small print, spoilers, channels and masked links', () => {
    expect(renderMarkdown('## Plan\n-# small\n||secret|| <#5> [docs](https://example.org/a)', ctx)).toBe(
      '<h4>Plan</h4><div class="subtext">small</div><div class="line"><span class="spoiler">secret</span> <span class="mention">#general</span> <a href="https://example.org/a">docs</a></div>',
    );
  });
});

describe('the preview renderer on a transcript recorded by `npm run preview`', () => {
  const recorded = JSON.parse(readFileSync(join(import.meta.dirname, '../fixtures/preview-transcript.json'), 'utf8')) as PreviewTranscript;

  it.each(recorded.phases.map((p) => [p.slug, p] as const))('renders every message, file, button and menu of %s, leaving no markup raw', (_slug, phase) => {
    const html = renderPhasePage(recorded, phase);
    const messages = phase.entries.filter((e): e is PreviewMessage => e.kind === 'message');
    expect(html.match(/<article class="message/g) ?? []).toHaveLength(messages.length);
    expect(html.match(/Only you can see this/g) ?? []).toHaveLength(messages.filter((m) => (m.flags & 64) !== 0).length);
    for (const m of messages) {
      for (const a of m.attachments) expect(html).toContain(`"${a.href}"`);
      const rows = m.components as { components?: { type: number; label?: string; placeholder?: string }[] }[];
      for (const c of rows.flatMap((r) => r.components ?? [])) {
        if (c.type === 2)
          expect(html).toMatch(new RegExp(`<span class="btn [a-z ]+">(<span class="emoji">[^<]*</span>)?${escapeRegExp(escapeHtml(c.label ?? ''))}`));
        if (c.type === 3) expect(html).toContain(`<span class="placeholder">${escapeHtml(c.placeholder ?? '')}</span>`);
      }
      if (m.note) expect(html).toContain(`<div class="note">${escapeHtml(m.note)}</div>`);
    }
    // Mentions, channels and timestamps were resolved; bold and code were rendered.
    expect(html).not.toMatch(/&lt;(@|#|t:)/);
    expect(html).not.toContain('**');
    expect(html.replace(/<pre>[\s\S]*?<\/pre>/g, '')).not.toContain('`');
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
