import type { Client } from 'discord.js';
import { MAX_CONCEPTS } from '../core/dataset-rules.ts';
import { UserError } from '../core/errors.ts';
import type { Dataset } from '../store/dataset-store.ts';
import type { HeldUpload } from '../store/expiring-store.ts';
import type { BotContext } from './context.ts';
import { channelPolicy } from './content-policy.ts';
import { intakeReply } from './reports.ts';

/** One upload, however it came (`/dataset add`, images posted in a thread, or held for an attestation). */
export type Upload = HeldUpload;

/** Takes an upload into its dataset (its concept made if new) and gives the contributor's report for its channel. */
export async function takeIn(ctx: BotContext, client: Client, dataset: Dataset, upload: Upload) {
  const concepts = await ctx.store.getConcepts(dataset.id);
  if (!concepts.some((c) => c.name === upload.concept)) {
    if (concepts.length >= MAX_CONCEPTS) throw new UserError(`**${dataset.name}** already has ${MAX_CONCEPTS} concepts; add to one of them.`);
    await ctx.store.ensureConcept(dataset.id, upload.concept);
  }
  const report = await ctx.intake.ingest({
    dataset,
    concept: upload.concept,
    contributor: upload.contributor,
    sourceMessageId: upload.sourceMessageId,
    files: upload.files,
    zip: upload.zip ?? undefined,
  });
  const policy = await channelPolicy(client, ctx.settings, dataset.guildId, upload.channelId);
  return intakeReply(report, policy);
}
