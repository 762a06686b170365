import { ActionRowBuilder, ButtonBuilder, ButtonStyle } from 'discord.js';
import { AttestationStore } from '../store/attestations.ts';
import type { BotContext } from './context.ts';
import { displayNameOf } from './dataset-access.ts';
import { customIdCodec, type ComponentHandler, type IdPart } from './interactions.ts';

/** What a member confirms once per server before their first images are taken in. */
export const ATTESTATION_STATEMENT = 'I have the right to share these images, every real person pictured agreed to it, and nothing in them is illegal.';

/** A Discord user id. */
const SNOWFLAKE: IdPart<string> = { pattern: /^\d{5,25}$/, decode: (text) => text };

export function attestations(ctx: BotContext): AttestationStore {
  return new AttestationStore(ctx.redis, ctx.config.REDIS_PREFIX);
}

/** The question asked before a member's first contribution to a server; nothing is stored until they confirm. */
export function attestationPrompt(userId: string): { content: string; components: ActionRowBuilder<ButtonBuilder>[] } {
  return {
    content:
      `Before your first images go into a dataset here, please confirm once:\n> ${ATTESTATION_STATEMENT}\n` +
      'Nothing was saved from this upload. Press the button, then send your images again.',
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
    await interaction.editReply(`Thank you: recorded <t:${Math.floor(record.at / 1000)}:f>. Now send your images again.`);
  },
};
