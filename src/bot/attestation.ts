import { ActionRowBuilder, ButtonBuilder, ButtonStyle } from 'discord.js';
import { AttestationStore } from '../store/attestations.ts';
import { HELD_UPLOAD_MINUTES } from '../store/expiring-store.ts';
import type { BotContext } from './context.ts';
import { takeIn, type Upload } from './contribution.ts';
import { displayNameOf } from './dataset-access.ts';
import { customIdCodec, type ComponentHandler, type ComponentInteraction, type IdPart } from './interactions.ts';
import { truncate } from './reports.ts';

/** What a member confirms once per server before their first images are taken in. */
export const ATTESTATION_STATEMENT = 'I have the right to share these images, every real person pictured agreed to it, and nothing in them is illegal.';

/** A Discord user id. */
const SNOWFLAKE: IdPart<string> = { pattern: /^\d{5,25}$/, decode: (text) => text };

export function attestations(ctx: BotContext): AttestationStore {
  return new AttestationStore(ctx.redis, ctx.config.REDIS_PREFIX);
}

/**
 * The question asked before a member's first contribution to a server: to them alone after
 * `/dataset add`, in the thread (naming them, kept short) for images they posted there.
 */
export function attestationPrompt(userId: string, where: 'command' | 'thread'): { content: string; components: ActionRowBuilder<ButtonBuilder>[] } {
  const content =
    where === 'command'
      ? `Before your first images go into a dataset here, please confirm once:\n> ${ATTESTATION_STATEMENT}\n` +
        `Press the button and your upload goes in (it waits ${HELD_UPLOAD_MINUTES} minutes).`
      : `<@${userId}>, before I add your images, please confirm once:\n> ${ATTESTATION_STATEMENT}`;
  return {
    content,
    components: [
      new ActionRowBuilder<ButtonBuilder>().addComponents(
        new ButtonBuilder().setCustomId(attestButton.encode({ userId })).setLabel('I confirm').setStyle(ButtonStyle.Primary),
      ),
    ],
  };
}

/** Whether the member has confirmed in this server (or the deployment does not ask). */
export async function hasAttested(ctx: BotContext, guildId: string, userId: string): Promise<boolean> {
  if (!ctx.config.ATTESTATION_REQUIRED) return true;
  return (await attestations(ctx).get(guildId, userId)) !== null;
}

/** Keeps the upload that asked the question (its files' details, nothing downloaded); a newer one replaces it. */
export async function holdForAttestation(ctx: BotContext, guildId: string, upload: Upload): Promise<void> {
  await ctx.expiring.heldUploads.put({ guildId, userId: upload.contributor.id }, upload);
}

/** Takes in the upload held for the member's confirmation, and tells them where its report is. */
async function takeInHeld(interaction: ComponentInteraction, ctx: BotContext, guildId: string, thanks: string) {
  const held = await ctx.expiring.heldUploads.take({ guildId, userId: interaction.user.id });
  if (!held) {
    await interaction.editReply(`${thanks} Now send your images again (an upload waits ${HELD_UPLOAD_MINUTES} minutes for this).`);
    return;
  }
  const dataset = await ctx.store.getDataset(held.datasetId);
  if (!dataset || dataset.guildId !== guildId) {
    await interaction.editReply(`${thanks} The dataset you sent images to is gone, so nothing was added.`);
    return;
  }
  const reply = await takeIn(ctx, interaction.client, dataset, held);
  if (held.sourceMessageId === null) {
    await interaction.editReply({ content: truncate(`${thanks} Your upload went in:\n${reply.content}`, 2000), files: reply.files });
    return;
  }
  // Images posted in a thread: the report answers their message, as it would have at once, and
  // the public question, answered, goes.
  const channel = await interaction.client.channels.fetch(held.channelId);
  if (channel?.isSendable()) await channel.send({ ...reply, reply: { messageReference: held.sourceMessageId, failIfNotExists: false } });
  await interaction.message?.delete().catch((err: unknown) => ctx.logger.warn({ err }, 'could not remove an answered attestation question'));
  await interaction.editReply(`${thanks} Your images went in: the report is under your message.`);
}

/** The "I confirm" button: only the member it was asked of may press it. */
export const attestButton: ComponentHandler<{ userId: string }, 'button'> = {
  ...customIdCodec('attest', { userId: SNOWFLAKE }),
  kind: 'button',
  defer: 'ephemeral',
  async handle(interaction, ctx, { userId }) {
    if (!interaction.inGuild()) return;
    if (interaction.user.id !== userId) {
      await interaction.editReply('This confirmation was asked of someone else: contribute an image to be asked yourself.');
      return;
    }
    const name = displayNameOf(interaction);
    const record = await attestations(ctx).record(interaction.guildId, { userId, name, at: Date.now(), statement: ATTESTATION_STATEMENT });
    ctx.logger.info({ guildId: interaction.guildId, userId, at: record.at }, 'contributor attestation recorded');
    await takeInHeld(interaction, ctx, interaction.guildId, `Thank you: recorded <t:${Math.floor(record.at / 1000)}:f>.`);
  },
};
