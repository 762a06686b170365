import type { Message } from 'discord.js';
import { isUserError } from '../core/errors.ts';
import { DEFAULT_CONCEPT } from '../store/dataset-store.ts';
import type { BotContext } from './context.ts';
import { attestationPrompt, hasAttested } from './attestation.ts';
import { channelPolicy } from './content-policy.ts';
import { intakeReply } from './reports.ts';

const MAX_FILES_PER_MESSAGE = 10;

/**
 * Images posted in a dataset's thread are contributed like `/dataset add` (only when the bot
 * has the Message Content intent, which is what lets it see attachments).
 */
export async function handleThreadMessage(message: Message, ctx: BotContext): Promise<void> {
  if (message.author.bot || !message.inGuild() || !message.channel.isThread() || message.attachments.size === 0) return;
  const dataset = await ctx.store.datasetForThread(message.channelId);
  if (!dataset || dataset.guildId !== message.guildId) return;
  // Every bot process sees the message; one takes it in.
  if (!(await ctx.claims.claim('message', message.id))) return;
  const log = ctx.logger.child({ datasetId: dataset.id, messageId: message.id, userId: message.author.id });
  try {
    if (!(await hasAttested(ctx, dataset.guildId, message.author.id))) {
      await message.reply(attestationPrompt(message.author.id));
      return;
    }
    const attachments = [...message.attachments.values()];
    const zip = attachments.find((a) => /\.zip$/i.test(a.name));
    const images = attachments.filter((a) => a !== zip).slice(0, MAX_FILES_PER_MESSAGE);
    const report = await ctx.intake.ingest({
      dataset,
      concept: DEFAULT_CONCEPT,
      contributor: { id: message.author.id, name: message.member?.displayName ?? message.author.username },
      sourceMessageId: message.id,
      files: images.map((a) => ({ name: a.name, url: a.url, size: a.size })),
      zip: zip ? { name: zip.name, url: zip.url, size: zip.size } : undefined,
    });
    const policy = await channelPolicy(message.client, ctx.settings, dataset.guildId, message.channelId);
    await message.reply(await intakeReply(report, policy));
  } catch (err) {
    if (isUserError(err)) {
      await message.reply({ content: `⚠️ ${err.message}` }).catch(() => undefined);
      return;
    }
    log.error({ err }, 'thread intake failed');
  }
}
