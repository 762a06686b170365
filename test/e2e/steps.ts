/** Steps the end-to-end tests share: waiting for replies and messages, starting a run. */
import { createServer } from 'node:net';
import type { InteractionHandle, MessageSnapshot } from '../harness/fake-discord.ts';
import type { World } from './world.ts';

export const MANAGE_GUILD = String(1n << 5n);

/** A port free on 127.0.0.1 right now (for a bot whose PUBLIC_URL must be known before it starts). */
export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Waits for a command's reply and returns its text; a followup (a refusal) fails with the bot's logged errors. */
export async function done(world: World, h: InteractionHandle, timeoutMs = 60_000): Promise<string> {
  await Promise.race([
    h.waitForEdit(undefined, timeoutMs),
    h.waitForFollowup(undefined, timeoutMs).then((f) => {
      throw new Error(`refused: ${(f.json as { content?: string }).content}\n${JSON.stringify(world.log.errors()).slice(0, 1500)}`);
    }),
  ]);
  return h.lastReply()?.content ?? '';
}

/** Polls `check` until it gives a value; `context` adds what helps to understand a time-out. */
export async function until<T>(
  what: string,
  check: () => T | null | undefined | false | Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
  context?: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${context ? `\n${context()}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A channel's or thread's messages that are still there, oldest first. */
export function channelMessages(world: World, channelId: string): MessageSnapshot[] {
  return world.discord
    .channelMessages(channelId)
    .filter((m) => !m.deleted)
    .sort((a, b) => a.createdAt - b.createdAt || (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
}

/** Plans a run and presses Start as `user` (with Manage Server); returns the queued run's id. */
export async function startRun(world: World, user: { id: string; username: string }, options: Record<string, string | number>): Promise<string> {
  const plan = world.discord.sendCommand({ name: 'train', subcommand: 'plan', user, permissions: MANAGE_GUILD, options });
  await done(world, plan);
  const row = plan.lastReply()!.components[0] as { components: { custom_id: string }[] };
  const start = world.discord.sendButton({ customId: row.components[0]!.custom_id, user, permissions: MANAGE_GUILD, message: plan.lastReply()!.id });
  const reply = await done(world, start);
  const runId = /Queued run `([a-z0-9]+)`/.exec(reply)?.[1];
  if (!runId) throw new Error(`no run queued: ${reply}`);
  return runId;
}

/** The per-epoch posts of a run in a thread, oldest first. */
export function epochPosts(world: World, threadId: string, runId: string): MessageSnapshot[] {
  return channelMessages(world, threadId).filter((m) => m.content.includes(`of run \`${runId}\``) && m.content.startsWith('🖼️'));
}
