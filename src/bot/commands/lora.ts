import { AttachmentBuilder, type AutocompleteInteraction, type ButtonInteraction, type ChatInputCommandInteraction } from 'discord.js';
import { loraCommandData } from '../../../commands/lora.ts';
import { formatBytes } from '../../core/download.ts';
import { UserError } from '../../core/errors.ts';
import { licenceNoteOf } from '../../core/lora-metadata.ts';
import { checkNegativeFor, checkPromptText, checkWeight, parseSize, parseWeights } from '../../core/generate-args.ts';
import { FAMILY_INFO, familyLabel } from '../../core/model-family.ts';
import { downloadFileName, makeDownloadUrl } from '../../core/signed-url.ts';
import type { ArtifactRef } from '../../queues/contract.ts';
import type { Run } from '../../store/run-store.ts';
import type { BotContext } from '../context.ts';
import { autocompleteDatasets, guildIdOf } from '../dataset-access.ts';
import { getRequest, MAX_COMPARE_CELLS, queuedText, randomSeed, requestGeneration, weightText, type Queued } from '../generation.ts';
import { tryButtonCodec, type TryButtonHandler } from '../generation-poster.ts';
import { acknowledged, subcommandTable, checkThenDefer, type SlashCommand } from '../interactions.ts';
import { truncate } from '../reports.ts';
import { epochList, renderTally, TIE_RULE } from '../tally.ts';
import { MAX_SAMPLE_PROMPTS } from './sample-prompts.ts';
import { runChoices } from './train.ts';

const LINK_LIFETIME_MS = 24 * 3600_000;

type EpochChoice = { kind: 'final' } | { kind: 'best' } | { kind: 'number'; epoch: number };

function parseEpoch(raw: string | null): EpochChoice {
  const text = (raw ?? 'final').trim().toLowerCase();
  if (text === 'final' || text === 'last') return { kind: 'final' };
  if (text === 'best') return { kind: 'best' };
  if (/^\d{1,4}$/.test(text)) return { kind: 'number', epoch: Number(text) };
  throw new UserError('`epoch` is `best` (most votes), `final`, or an epoch number.');
}

/** The run asked for: by id, else the latest finished run of the dataset (or of this thread's dataset, or the server). */
async function resolveRun(interaction: ChatInputCommandInteraction, ctx: BotContext): Promise<Run> {
  const guildId = guildIdOf(interaction);
  const id = interaction.options.getString('run')?.trim();
  if (id) {
    const run = await ctx.runs.get(id);
    if (!run || run.guildId !== guildId) throw new UserError(`There is no run \`${id.slice(0, 16)}\` in this server.`);
    const withheld = await ctx.moderation.withheldReason(run);
    if (withheld) throw new UserError(withheld);
    return run;
  }
  const name = interaction.options.getString('dataset')?.trim();
  const dataset = name ? await ctx.store.findDataset(guildId, name) : await ctx.store.datasetForThread(interaction.channelId);
  if (name && !dataset) throw new UserError(`There is no dataset named \`${name.slice(0, 40)}\` in this server.`);
  const runs = dataset && dataset.guildId === guildId ? await ctx.runs.listForDataset(dataset.id) : await ctx.runs.listForGuild(guildId);
  // A run whose dataset a moderator removed is never the default (naming it says why it is withheld).
  const open = await Promise.all(runs.map(async (r) => r.status === 'finished' && (await ctx.moderation.withheldReason(r)) === null));
  const finished = runs.find((_, i) => open[i]);
  if (!finished) throw new UserError(dataset ? `**${dataset.name}** has no finished run yet.` : 'No finished runs in this server yet.');
  return finished;
}

/** The artifact for an epoch choice, with the epoch it stands for. */
async function pick(ctx: BotContext, run: Run, choice: EpochChoice): Promise<{ epoch: number; artifact: ArtifactRef; label: string }> {
  const last = run.summary.epochs;
  let epoch: number;
  let label: string;
  if (choice.kind === 'best') {
    const tally = await ctx.votes.tally(run.id);
    if (tally.best === null) throw new UserError(`Nobody has voted on run \`${run.id}\` yet: vote on the epoch posts, or ask for \`epoch:final\`.`);
    epoch = tally.best;
    const votes = tally.counts.get(epoch) ?? 0;
    label =
      tally.tied.length > 1
        ? `epoch ${epoch}, the community’s pick (tied with ${epochList(tally.tied.filter((e) => e !== epoch))} at ${votes} vote${votes === 1 ? '' : 's'} each: ${TIE_RULE})`
        : `epoch ${epoch}, the community’s pick (${votes} of ${tally.total} votes)`;
  } else if (choice.kind === 'final') {
    epoch = last;
    label = 'the final epoch';
  } else {
    epoch = choice.epoch;
    label = `epoch ${epoch}`;
  }
  const saved = run.epochs[String(epoch)]?.checkpoint ?? (epoch === last ? run.final : null);
  if (!saved) {
    const have = Object.entries(run.epochs)
      .filter(([, v]) => v.checkpoint)
      .map(([e]) => e);
    throw new UserError(`Run \`${run.id}\` has no saved file for epoch ${epoch}${have.length ? ` (saved: ${have.join(', ')})` : ''}.`);
  }
  return { epoch, artifact: saved, label };
}

/** The dataset's trigger, and concepts' own triggers apart: they are not one phrase. */
function triggerText(triggers: readonly string[]): string {
  const [main, ...others] = triggers;
  if (main === undefined) return 'no trigger';
  const rest = others.length === 0 ? '' : ` · for a sub-concept add ${others.map((t) => `\`${t.replaceAll('`', 'ˋ')}\``).join(' or ')}`;
  return `trigger \`${main.replaceAll('`', 'ˋ')}\`${rest}`;
}

async function fetchLora(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { run, epoch, artifact, label } = await checkThenDefer(interaction, async () => {
    const run = await resolveRun(interaction, ctx);
    return { run, ...(await pick(ctx, run, parseEpoch(interaction.options.getString('epoch')))) };
  });
  const file = await ctx.delivery.file(run, epoch, artifact);
  const fileName = downloadFileName(epoch === run.summary.epochs ? run.outputName : `${run.outputName}-e${epoch}`, '.safetensors');
  const licence = await licenceNoteOf(ctx.blobs.path(file.blob));
  const what =
    `**${run.datasetName}** · run \`${run.id}\` · ${label} · ${familyLabel(run.credits.base)} · ${triggerText(run.credits.triggers)}\n` +
    `📄 \`${fileName}\` · ${formatBytes(file.bytes)} · sha256 \`${file.blob}\`` +
    (licence ? `\n⚖️ ${licence}` : '');
  // Discord tells each interaction how large a file the bot may attach there.
  const limit = interaction.attachmentSizeLimit;
  if (file.bytes <= limit) {
    await interaction.editReply({
      content: what,
      files: [new AttachmentBuilder(ctx.blobs.createReadStream(file.blob), { name: fileName })],
    });
    return;
  }
  const { PUBLIC_URL, DOWNLOAD_SECRET } = ctx.config;
  if (!PUBLIC_URL || !DOWNLOAD_SECRET) {
    throw new UserError(
      `The file is ${formatBytes(file.bytes)}, more than Discord lets me attach here (${formatBytes(limit)}), and download links are not set up: ` +
        'an admin needs to set PUBLIC_URL and DOWNLOAD_SECRET.',
    );
  }
  const expiresAt = new Date(Date.now() + LINK_LIFETIME_MS);
  const url = makeDownloadUrl(PUBLIC_URL, { secret: DOWNLOAD_SECRET, blobId: file.blob, fileName, expiresAt });
  ctx.logger.info({ runId: run.id, epoch, signedUrl: url }, 'download link made');
  await interaction.editReply({
    content: `${what}\nToo large to attach here: [download it](<${url}>) (link expires <t:${Math.floor(expiresAt.getTime() / 1000)}:R>).`,
  });
}

/** Tells the member where the request stands, and keeps telling until its image is posted. */
async function acknowledge(interaction: ChatInputCommandInteraction | ButtonInteraction, ctx: BotContext, queued: Queued): Promise<void> {
  const shown = queuedText(queued);
  await interaction.editReply({ content: shown });
  await ctx.line.follow(queued.request, interaction, shown);
}

/** `best` when members voted, else the final epoch. */
async function defaultTryEpoch(ctx: BotContext, run: Run): Promise<EpochChoice> {
  return (await ctx.votes.tally(run.id)).best === null ? { kind: 'final' } : { kind: 'best' };
}

async function tryLora(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  // Checked before answering: a refusal is the asker's alone; queuing it is the last check.
  const queued = await checkThenDefer(interaction, async () => {
    const run = await resolveRun(interaction, ctx);
    const prompt = checkPromptText(interaction.options.getString('prompt', true), 'prompt');
    const negative = checkNegativeFor(run.credits.base, checkPromptText(interaction.options.getString('negative') ?? '', 'negative prompt'));
    const weight = checkWeight(interaction.options.getNumber('weight') ?? 1);
    const size = parseSize(interaction.options.getString('size'), FAMILY_INFO[run.credits.base].nativeResolution);
    const rawEpoch = interaction.options.getString('epoch');
    const { epoch, label } = await pick(ctx, run, rawEpoch === null ? await defaultTryEpoch(ctx, run) : parseEpoch(rawEpoch));
    return requestGeneration(ctx.generations, run, {
      kind: 'try',
      userId: interaction.user.id,
      channelId: interaction.channelId,
      prompt,
      negative,
      seed: interaction.options.getInteger('seed') ?? randomSeed(),
      ...size,
      epochs: [epoch],
      weights: [weight],
      epochLabel: label,
    });
  });
  await acknowledge(interaction, ctx, queued);
}

/** Epochs named for a comparison, in order: numbers, `final`, `best`. */
async function parseEpochs(ctx: BotContext, run: Run, raw: string): Promise<number[]> {
  const parts = raw.split(/[,\s]+/).filter((p) => p.length > 0);
  if (parts.length === 0) throw new UserError('Name at least one epoch, e.g. `6, 8, final`.');
  if (parts.length > 8) throw new UserError('At most 8 epochs.');
  const epochs: number[] = [];
  for (const part of parts) epochs.push((await pick(ctx, run, parseEpoch(part))).epoch);
  if (new Set(epochs).size !== epochs.length) throw new UserError('An epoch is named twice.');
  return epochs;
}

async function compareLora(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const queued = await checkThenDefer(interaction, async () => {
    const run = await resolveRun(interaction, ctx);
    const prompt = checkPromptText(interaction.options.getString('prompt', true), 'prompt');
    const negative = checkNegativeFor(run.credits.base, checkPromptText(interaction.options.getString('negative') ?? '', 'negative prompt'));
    const size = parseSize(interaction.options.getString('size'), FAMILY_INFO[run.credits.base].nativeResolution);
    const epochs = await parseEpochs(ctx, run, interaction.options.getString('epochs', true));
    const weights = parseWeights(interaction.options.getString('weights', true), 6);
    if (epochs.length * weights.length > MAX_COMPARE_CELLS)
      throw new UserError(`That is ${epochs.length * weights.length} images; a comparison has at most ${MAX_COMPARE_CELLS}.`);
    return requestGeneration(ctx.generations, run, {
      kind: 'compare',
      userId: interaction.user.id,
      channelId: run.channelId,
      prompt,
      negative,
      seed: interaction.options.getInteger('seed') ?? randomSeed(),
      ...size,
      epochs,
      weights,
      epochLabel: '',
    });
  });
  await acknowledge(interaction, ctx, queued);
}

/** 🎲, weight − / + and "use as a sample prompt" under a tried image. */
export const tryButtonHandler: TryButtonHandler = {
  ...tryButtonCodec,
  kind: 'button',
  defer: 'ephemeral',
  async handle(interaction, ctx, { action, requestId }) {
    const before = await getRequest(ctx.generations, requestId);
    const guildId = guildIdOf(interaction);
    if (!before || before.guildId !== guildId || before.kind !== 'try') throw new UserError('That image is too old to vary; use `/lora try`.');
    const run = await ctx.runs.get(before.runId);
    if (!run || run.guildId !== guildId) throw new UserError('That run no longer exists.');
    const withheld = await ctx.moderation.withheldReason(run);
    if (withheld) throw new UserError(withheld);
    if (action === 'sample') {
      const dataset = await ctx.store.getDataset(run.datasetId);
      if (!dataset) throw new UserError('That run’s dataset no longer exists.');
      const prompts = dataset.samplePrompts ?? [];
      if (prompts.includes(before.prompt)) throw new UserError(`**${dataset.name}** already samples that prompt.`);
      if (prompts.length >= MAX_SAMPLE_PROMPTS)
        throw new UserError(
          `**${dataset.name}** already has ${MAX_SAMPLE_PROMPTS} sample prompts, the most a run samples; \`/train prompts\` lists them to remove one.`,
        );
      await ctx.store.updateDataset(dataset.id, { samplePrompts: [...prompts, before.prompt] });
      ctx.logger.info({ datasetId: dataset.id, userId: interaction.user.id }, 'sample prompt added');
      await interaction.editReply({
        content: `📌 Added to **${dataset.name}**’s sample prompts (${prompts.length + 1} of ${MAX_SAMPLE_PROMPTS}): the next runs draw it after every epoch. \`/train prompts\` lists them.`,
      });
      return;
    }
    const weight = before.weights[0]!;
    const next = action === 'seed' ? weight : checkWeight(weight + (action === 'up' ? 0.1 : -0.1));
    const queued = await requestGeneration(ctx.generations, run, {
      ...before,
      userId: interaction.user.id,
      channelId: interaction.channelId,
      seed: action === 'seed' ? randomSeed() : before.seed,
      weights: [next],
    });
    ctx.logger.info({ requestId: queued.request.id, from: requestId, action, weight: weightText(next) }, 'image varied');
    await acknowledge(interaction, ctx, queued);
  },
};

async function list(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const name = interaction.options.getString('dataset')?.trim();
  const dataset = name ? await ctx.store.findDataset(guildId, name) : null;
  if (name && !dataset) throw new UserError(`There is no dataset named \`${name.slice(0, 40)}\` in this server.`);
  const runs = (dataset ? await ctx.runs.listForDataset(dataset.id) : await ctx.runs.listForGuild(guildId)).filter((r) => r.status === 'finished');
  if (runs.length === 0) {
    await interaction.editReply('No finished runs yet.');
    return;
  }
  const lines = await Promise.all(
    runs.slice(0, 15).map(async (r) => {
      if (await ctx.moderation.withheldReason(r)) return `\`${r.id}\` · **${r.datasetName}** · withheld by a moderator`;
      const tally = await ctx.votes.tally(r.id);
      return `\`${r.id}\` · **${r.datasetName}** · ${r.recipe.name} · ${r.summary.epochs} epochs · ${r.final ? formatBytes(r.final.bytes) : '?'} · ${renderTally(tally)}`;
    }),
  );
  await interaction.editReply({ content: truncate(`Finished runs:\n${lines.join('\n')}`, 1990) });
}

async function autocomplete(interaction: AutocompleteInteraction, ctx: BotContext) {
  const focused = interaction.options.getFocused(true);
  const typed = String(focused.value).trim().toLowerCase();
  if (focused.name === 'dataset') return interaction.respond(await autocompleteDatasets(interaction, ctx, typed));
  if (!interaction.guildId) return interaction.respond([]);
  if (focused.name === 'run') {
    const runs = (await ctx.runs.listForGuild(interaction.guildId, 50)).filter((r) => r.status === 'finished' || Object.keys(r.epochs).length > 0);
    return interaction.respond(runChoices(runs, typed));
  }
  if (focused.name === 'epoch') {
    const runId = interaction.options.getString('run');
    const run = runId ? await ctx.runs.get(runId) : null;
    const epochs = run && run.guildId === interaction.guildId ? Object.keys(run.epochs) : [];
    return interaction.respond(
      ['best', 'final', ...epochs]
        .filter((e) => e.includes(typed))
        .slice(0, 25)
        .map((e) => ({ name: e, value: e })),
    );
  }
  return interaction.respond([]);
}

export const loraCommand: SlashCommand = {
  data: loraCommandData,
  subcommands: subcommandTable(
    // Answered in public once their checks pass; a refusal is the asker's alone (checkThenDefer).
    acknowledged('none', { fetch: fetchLora, try: tryLora, compare: compareLora }),
    acknowledged('public', { list }),
  ),
  autocomplete,
};
