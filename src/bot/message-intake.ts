import type { Message } from 'discord.js';
import { isUserError } from '../core/errors.ts';
import { DEFAULT_CONCEPT } from '../store/dataset-store.ts';
import type { BotContext } from './context.ts';
import { attestationPrompt, hasAttested, holdForAttestation } from './attestation.ts';
import { takeIn } from './contribution.ts';

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
    const attachments = [...message.attachments.values()];
    const zip = attachments.find((a) => /\.zip$/i.test(a.name));
    const images = attachments.filter((a) => a !== zip).slice(0, MAX_FILES_PER_MESSAGE);
    const upload = {
      datasetId: dataset.id,
      concept: DEFAULT_CONCEPT,
      contributor: { id: message.author.id, name: message.member?.displayName ?? message.author.username },
      channelId: message.channelId,
      sourceMessageId: message.id,
      files: images.map((a) => ({ name: a.name, url: a.url, size: a.size })),
      zip: zip ? { name: zip.name, url: zip.url, size: zip.size } : null,
    };
    // A plain message has no reply only its author sees: the question is public, short, and names them.
    if (!(await hasAttested(ctx, dataset.guildId, message.author.id))) {
      await holdForAttestation(ctx, dataset.guildId, upload);
      await message.reply({ ...attestationPrompt(message.author.id, 'thread'), allowedMentions: { users: [message.author.id] } });
      return;
    }
    await message.reply(await takeIn(ctx, message.client, dataset, upload));
  } catch (err) {
    if (isUserError(err)) {
      await message.reply({ content: `⚠️ ${err.message}` }).catch(() => undefined);
      return;
    }
    log.error({ err }, 'thread intake failed');
  }
}
