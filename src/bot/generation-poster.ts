/**
 * The bot side of the `generated` queue: posts each generation's result (a tried image with its
 * buttons, or a comparison grid in the run's thread), fills the cache and frees the member's slot.
 */
import { ActionRowBuilder, AttachmentBuilder, ButtonBuilder, ButtonStyle, type Client, type Message } from 'discord.js';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { WEIGHT_MAX, WEIGHT_MIN, WEIGHT_STEP } from '../core/generate-args.ts';
import { makeSampleGrid, stackRows } from '../core/image-sheets.ts';
import { bullPrefix, QueueName, type GeneratedPayload } from '../queues/contract.ts';
import { isPermanentDiscordError } from './discord-errors.ts';
import { cached, getRequest, markPosted, rememberImages, wasPosted, weightText, type GenerationDeps, type GenerationRequest } from './generation.ts';
import type { GenerationLine } from './generation-line.ts';
import { customIdCodec, ID_PART, oneOfPart, type ComponentHandler } from './interactions.ts';
import { truncate } from './reports.ts';

// ---------------------------------------------------------------------------------------------
// Buttons under a tried image.

export type TryAction = 'seed' | 'down' | 'up' | 'sample';

function tryButtons(requestId: string, weight: number) {
  const b = (action: TryAction) => tryButtonCodec.encode({ action, requestId });
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(b('seed')).setLabel('Another seed').setEmoji('🎲').setStyle(ButtonStyle.Primary),
    new ButtonBuilder()
      .setCustomId(b('down'))
      .setLabel(`Weight ${weightText(Math.max(WEIGHT_MIN, weight - WEIGHT_STEP))}`)
      .setEmoji('➖')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(weight - WEIGHT_STEP < WEIGHT_MIN - 1e-9),
    new ButtonBuilder()
      .setCustomId(b('up'))
      .setLabel(`Weight ${weightText(Math.min(WEIGHT_MAX, weight + WEIGHT_STEP))}`)
      .setEmoji('➕')
      .setStyle(ButtonStyle.Secondary)
      .setDisabled(weight + WEIGHT_STEP > WEIGHT_MAX + 1e-9),
    new ButtonBuilder().setCustomId(b('sample')).setLabel('Use as a sample prompt').setEmoji('📌').setStyle(ButtonStyle.Secondary),
  );
}

export const tryButtonCodec = customIdCodec('try', { action: oneOfPart<TryAction>(['seed', 'down', 'up', 'sample']), requestId: ID_PART });
export type TryButtonHandler = ComponentHandler<{ action: TryAction; requestId: string }, 'button'>;

// ---------------------------------------------------------------------------------------------
// Posting the results (bot side of the `generated` queue).

export interface GenerationPosterDeps extends Omit<GenerationDeps, 'queue' | 'results'> {
  client: Client;
  /** Told when a result is posted, to say where in the member's acknowledgement. */
  line: GenerationLine;
}

/** One labelled grid: a row per epoch, a column per weight, in the order asked. */
async function compareGrid(r: GenerationRequest, image: (epoch: number, weight: number) => string, runLabel: string): Promise<Buffer> {
  const rows: { image: Buffer; label: string }[] = [];
  for (const epoch of r.epochs) {
    const grid = await makeSampleGrid(
      r.weights.map((w) => ({ image: image(epoch, w), label: `weight ${weightText(w)}` })),
      { title: `${runLabel} - epoch ${epoch}`, maxCell: 384 },
    );
    rows.push({ image: grid, label: '' });
  }
  return stackRows(rows);
}

async function post(deps: GenerationPosterDeps, result: GeneratedPayload): Promise<void> {
  const r = await getRequest(deps, result.requestId);
  if (!r) {
    deps.logger.warn({ requestId: result.requestId }, 'result of an unknown generation dropped');
    return;
  }
  await rememberImages(deps, r, result.ok ? result.cells : []);
  if (await wasPosted(deps, r.id)) return;

  const channel = await deps.client.channels.fetch(r.channelId).catch(() => null);
  if (!channel?.isSendable()) {
    deps.logger.warn({ requestId: r.id, channelId: r.channelId }, 'generation result dropped: channel not sendable');
    return;
  }
  const nonce = `gen${r.id}`.slice(0, 25);
  const run = await deps.runs.get(r.runId);
  const runLabel = run ? `${run.datasetName} ${run.id}` : r.runId;
  let message: Message;
  if (!result.ok) {
    message = await channel.send({
      content: `⚠️ <@${r.userId}> I could not draw **${truncate(r.prompt, 200)}** with run \`${r.runId}\`: ${truncate(result.reason, 500)}`,
      nonce,
      enforceNonce: true,
    });
  } else {
    const images = new Map<string, string>();
    for (const c of result.cells) images.set(`${c.epoch}:${c.weight}`, deps.blobs.path(c.blob));
    for (const epoch of r.epochs) {
      for (const weight of r.weights) {
        if (images.has(`${epoch}:${weight}`)) continue;
        const blob = await cached(deps, r, epoch, weight);
        if (!blob) throw new Error(`image of epoch ${epoch} at weight ${weight} is missing`);
        images.set(`${epoch}:${weight}`, deps.blobs.path(blob));
      }
    }
    const size = `${r.width}×${r.height}`;
    const negative = r.negative ? ` · negative: ${truncate(r.negative, 150)}` : '';
    if (r.kind === 'try') {
      const epoch = r.epochs[0]!;
      const weight = r.weights[0]!;
      message = await channel.send({
        content: truncate(
          `🎨 **${r.prompt}**\nrun \`${r.runId}\`${run ? ` · ${run.datasetName}` : ''} · ${r.epochLabel} · weight ${weightText(weight)} · seed ${r.seed} · ${size}${negative} · asked by <@${r.userId}>`,
          1990,
        ),
        files: [new AttachmentBuilder(images.get(`${epoch}:${weight}`)!, { name: `try-${r.runId}-e${epoch}-w${weightText(weight)}-s${r.seed}.png` })],
        components: [tryButtons(r.id, weight)],
        nonce,
        enforceNonce: true,
      });
    } else {
      const grid = await compareGrid(r, (e, w) => images.get(`${e}:${w}`)!, runLabel);
      message = await channel.send({
        content: truncate(
          `🧪 **${r.prompt}** · run \`${r.runId}\` · seed ${r.seed} · ${size}${negative} · asked by <@${r.userId}>\n` +
            `Rows: ${r.epochs.map((e) => `epoch ${e}`).join(', ')} · columns: ${r.weights.map((w) => `weight ${weightText(w)}`).join(', ')}`,
          1990,
        ),
        files: [new AttachmentBuilder(grid, { name: `compare-${r.runId}-s${r.seed}.jpg` })],
        nonce,
        enforceNonce: true,
      });
    }
  }
  await markPosted(deps, r.id, { url: message.url, ok: result.ok });
  await deps.line.posted(r.id);
}

export function startGenerationPoster(deps: GenerationPosterDeps, connection: Redis, redisPrefix: string): Worker {
  const log = deps.logger.child({ queue: QueueName.Generated });
  const worker = new Worker<GeneratedPayload>(
    QueueName.Generated,
    async (job: Job<GeneratedPayload>) => {
      try {
        await post(deps, job.data);
      } catch (err) {
        if (isPermanentDiscordError(err)) {
          throw new UnrecoverableError(`Discord refused a generated image (${err.code}): ${err.message}`);
        }
        throw err;
      }
    },
    { connection, prefix: bullPrefix(redisPrefix), concurrency: 2 },
  );
  worker.on('failed', (job, err) => log.warn({ err, jobId: job?.id, attempts: job?.attemptsMade }, 'posting a generated image failed'));
  worker.on('error', (err) => log.error({ err }, 'generation poster error'));
  return worker;
}
