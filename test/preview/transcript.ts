/**
 * What `npm run preview` recorded of a scripted session: who was there, the channels, and per phase
 * the messages (as they looked when the phase ended, or at a moment the script captured), the
 * buttons members pressed and the dialogs the bot opened. The renderer (render.ts) turns it into
 * Discord-looking HTML; it reads nothing else, so a transcript can be written by hand in a test.
 */
import type { APIEmbed, APIMessageTopLevelComponent } from 'discord.js';

export interface PreviewUser {
  id: string;
  name: string;
  bot?: boolean;
}

export interface PreviewChannel {
  id: string;
  name: string;
  /** A thread (shown with its parent's name when known). */
  thread: boolean;
}

export interface PreviewAttachment {
  filename: string;
  /** Where the bytes are, relative to the page. */
  href: string;
  contentType: string;
  size: number;
  width?: number;
  height?: number;
}

export interface PreviewMessage {
  kind: 'message';
  id: string;
  channelId: string;
  authorId: string;
  /** ms since the epoch */
  at: number;
  content: string;
  embeds: APIEmbed[];
  components: APIMessageTopLevelComponent[];
  /** Discord's message flags (64: only the member who asked sees it; 128: still thinking). */
  flags: number;
  edited: boolean;
  attachments: PreviewAttachment[];
  /** The slash command this message answers, as Discord shows above it ("mira used /dataset add"). */
  invokedBy?: { userId: string; command: string; options: string };
  /** The message this one replies to, as Discord shows above it. */
  replyTo?: { authorId: string; excerpt: string };
  /** Why this copy is shown (e.g. a progress message captured before it was replaced). */
  note?: string;
}

/** A member's action that leaves no message of its own: a button pressed, a menu picked from. */
export interface PreviewAction {
  kind: 'action';
  channelId: string;
  at: number;
  userId: string;
  /** Discord markdown, e.g. `pressed **Start**`. */
  text: string;
}

/** A dialog the bot opened for a member, and what they typed into it. */
export interface PreviewModal {
  kind: 'modal';
  channelId: string;
  at: number;
  userId: string;
  title: string;
  /** What each field held when the dialog opened (`before`) and what the member submitted. */
  fields: { label: string; before: string; value: string }[];
}

export type PreviewEntry = PreviewMessage | PreviewAction | PreviewModal;

export interface PreviewPhase {
  /** File name stem: `intake` → intake.html, intake.png. */
  slug: string;
  title: string;
  /** One or two sentences on what happens in this phase. */
  summary: string;
  entries: PreviewEntry[];
}

export interface PreviewTranscript {
  guildName: string;
  users: PreviewUser[];
  channels: PreviewChannel[];
  phases: PreviewPhase[];
}
