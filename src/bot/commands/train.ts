import { ActionRowBuilder, ButtonBuilder, ButtonStyle, PermissionFlagsBits, type AutocompleteInteraction, type ChatInputCommandInteraction } from 'discord.js';
import { trainCommandData } from '../../../commands/train.ts';
import { UserError } from '../../core/errors.ts';
import { defaultRecipeFor, type RunOverrides } from '../../core/recipes.ts';
import { workersServing } from '../../queues/contract.ts';
import { ACTIVE_STATUSES, type Run } from '../../store/run-store.ts';
import { listWorkers } from '../../store/worker-heartbeats.ts';
import type { BotContext } from '../context.ts';
import { autocompleteDatasets, datasetById, guildIdOf, resolveDataset, type GuildInteraction } from '../dataset-access.ts';
import { ID_PART, acknowledged, subcommandTable, checkThenDefer, customIdCodec, type ComponentHandler, type SlashCommand } from '../interactions.ts';
import { duration, truncate } from '../reports.ts';
import { listSamplePrompts } from './sample-prompts.ts';
import { workersForGuild } from '../workers.ts';
import { acceptedIn } from '../content-policy.ts';
import { renderPlan } from '../plan-report.ts';
import { modelsFor, type PlanRequest } from '../training.ts';

function overridesFrom(interaction: ChatInputCommandInteraction): RunOverrides {
  const o: RunOverrides = {};
  const epochs = interaction.options.getInteger('epochs');
  const dim = interaction.options.getInteger('dim');
  const alpha = interaction.options.getNumber('alpha');
  const lr = interaction.options.getNumber('lr');
  const optimizer = interaction.options.getString('optimizer');
  const resolution = interaction.options.getInteger('resolution');
  const batch = interaction.options.getInteger('batch');
  const seed = interaction.options.getInteger('seed');
  const flip = interaction.options.getBoolean('flip');
  if (epochs !== null) o.epochs = epochs;
  if (dim !== null) o.dim = dim;
  if (alpha !== null) o.alpha = alpha;
  if (lr !== null) o.learningRate = lr;
  if (optimizer !== null) o.optimizer = optimizer as NonNullable<RunOverrides['optimizer']>;
  if (resolution !== null) o.resolution = resolution;
  if (batch !== null) o.batchSize = batch;
  if (seed !== null) o.seed = seed;
  if (flip !== null) o.flip = flip;
  const network = interaction.options.getString('network');
  const vram = interaction.options.getString('vram');
  if (network !== null) o.network = network as NonNullable<RunOverrides['network']>;
  if (vram !== null) o.vram = vram as NonNullable<RunOverrides['vram']>;
  return o;
}

/** The plan is for everyone to see, but most of what may refuse it is found while planning: plan first, then acknowledge. */
async function plan(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const { dataset, planId, prepared, who, hold } = await checkThenDefer(interaction, async () => {
    const dataset = await resolveDataset(interaction, ctx);
    const request: PlanRequest = {
      recipe: interaction.options.getString('recipe') ?? defaultRecipeFor(dataset.kind),
      overrides: overridesFrom(interaction),
      model: interaction.options.getString('model'),
    };
    const offered = await ctx.training.offer(dataset, request, interaction.user.id);
    // A member who may not start it sees who may, not a button that would only refuse them.
    const who = await whoMayNotStart(interaction, ctx);
    return { dataset, ...offered, who, hold: await ctx.moderation.hold(dataset, await acceptedIn(interaction.client, ctx.settings, dataset)) };
  });
  // Above the Details: what holds the run back (moderation) and who may start it.
  const closing = [...(hold === null ? [] : [`🛡️ ${hold}`]), ...(who === null ? [] : [`🔒 ${who} One of them can plan it with \`/train plan\` and start it.`])];
  await interaction.editReply({
    content: renderPlan(dataset.name, prepared, closing),
    components:
      who === null
        ? [
            new ActionRowBuilder<ButtonBuilder>().addComponents(
              new ButtonBuilder().setCustomId(startButton.encode({ planId })).setLabel('Start training').setStyle(ButtonStyle.Success),
            ),
          ]
        : [],
  });
}

/** Null when the member may spend GPU time (the trainer role or Manage Server); else who may, in words. */
async function whoMayNotStart(interaction: GuildInteraction, ctx: BotContext): Promise<string | null> {
  if (interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild)) return null;
  const settings = await ctx.settings.get(guildIdOf(interaction));
  const member = interaction.member;
  const roles = member ? (Array.isArray(member.roles) ? member.roles : [...member.roles.cache.keys()]) : [];
  if (settings.trainerRoleId && roles.includes(settings.trainerRoleId)) return null;
  return settings.trainerRoleId
    ? `Starting a run needs the <@&${settings.trainerRoleId}> role or Manage Server.`
    : 'Starting a run needs Manage Server (an admin can name a trainer role with `/settings trainer-role`).';
}

/** Only the trainer role or Manage Server may spend GPU time. */
async function requireTrainer(interaction: GuildInteraction, ctx: BotContext) {
  const who = await whoMayNotStart(interaction, ctx);
  if (who !== null) throw new UserError(who);
}

export const startButton: ComponentHandler<{ planId: string }, 'button'> = {
  ...customIdCodec('trainstart', { planId: ID_PART }),
  kind: 'button',
  // Pressing Start may well be refused (role, limits, an expired plan): only the presser sees
  // the answer; the run itself is announced in the dataset's thread.
  defer: 'ephemeral',
  async handle(interaction, ctx, { planId }) {
    const plan = await ctx.training.pendingPlan(planId);
    await requireTrainer(interaction, ctx);
    const dataset = await datasetById(interaction, ctx, plan.datasetId);
    // Flagged (rated above its channel's policy) or reported: a moderator reviews it first.
    const hold = await ctx.moderation.hold(dataset, await acceptedIn(interaction.client, ctx.settings, dataset));
    if (hold) throw new UserError(hold);
    const { run, prepared, position } = await ctx.training.start(dataset, planId, plan, interaction.user.id);
    await interaction.editReply({
      content:
        `Queued run \`${run.id}\` for **${dataset.name}**: ${prepared.plan.totalSteps} steps over ${prepared.plan.epochs} epochs` +
        `${position !== null ? ` · position ${position} in the queue` : ''}. Progress and one sample grid per epoch will appear in <#${run.channelId}>.`,
    });
  },
};

function describeRun(run: Run): string {
  const p = run.progress;
  const parts = [`\`${run.id}\` · **${run.datasetName}** · ${run.recipe.name} · ${run.status}`];
  if (run.status === 'running' && p) {
    parts.push(
      `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.totalSteps} (${Math.floor((100 * p.step) / Math.max(1, p.totalSteps))}%)` +
        (p.loss !== null ? ` · loss ${p.loss.toFixed(4)}` : '') +
        (p.etaSeconds !== null ? ` · about ${duration(p.etaSeconds)} left` : ''),
    );
  }
  if (run.status === 'failed' && run.failure) parts.push(run.failure.reason);
  const epochsDone = Object.keys(run.epochs).length;
  if (epochsDone > 0) parts.push(`${epochsDone} epoch${epochsDone === 1 ? '' : 's'} saved`);
  return parts.join(' · ');
}

async function findRun(interaction: ChatInputCommandInteraction, ctx: BotContext, required: boolean): Promise<Run> {
  const guildId = guildIdOf(interaction);
  const id = interaction.options.getString('run');
  if (id) {
    const run = await ctx.runs.get(id.trim());
    if (!run || run.guildId !== guildId) throw new UserError(`There is no run \`${id.trim().slice(0, 16)}\` in this server.`);
    return run;
  }
  if (required) throw new UserError('Name a run.');
  const latest = (await ctx.runs.listForGuild(guildId, 1))[0];
  if (!latest) throw new UserError('No runs in this server yet. Plan one with `/train plan`.');
  return latest;
}

async function status(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const run = await findRun(interaction, ctx, false);
  const position = run.status === 'queued' ? await ctx.training.queuePosition(run.id) : null;
  await interaction.editReply({
    content: describeRun(run) + (position !== null ? ` · position ${position} in the queue` : ''),
  });
}

async function queue(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const runs = (await ctx.runs.listForGuild(guildId, 100)).filter((r) => ACTIVE_STATUSES.includes(r.status)).reverse();
  const workers = workersServing(await listWorkers(ctx.redis, ctx.config.REDIS_PREFIX), guildId);
  // A worker serving every server may be busy with another server's run: its id is not shown here.
  const ours = new Set(runs.map((r) => r.id));
  const busyText = (runId: string | null) => (runId === null ? ', idle' : ours.has(runId) ? `, busy with \`${runId}\`` : ', busy with another server’s run');
  const lines = [
    runs.length === 0 ? 'No runs waiting or running.' : `Runs (${runs.length}):`,
    ...runs.map((r) => `• ${describeRun(r)}`),
    workers.length === 0
      ? '⚠️ No training worker is online.'
      : `Workers: ${workers
          .map(
            (w) =>
              `${w.remote ? `**${w.remote.name}**` : `\`${w.id}\``} (${w.gpu ? `${w.gpu.name}, ${Math.round(w.gpu.memoryMiB / 1024)} GiB` : 'no GPU'}${busyText(w.busyWith)})`,
          )
          .join(' · ')}`,
  ];
  await interaction.editReply({ content: truncate(lines.join('\n'), 1900) });
}

async function cancel(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const run = await findRun(interaction, ctx, true);
  const mayCancel = run.createdBy === interaction.user.id || (interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild) ?? false);
  if (!mayCancel) throw new UserError('Only whoever started a run, or a member with Manage Server, can cancel it.');
  if (!ACTIVE_STATUSES.includes(run.status)) throw new UserError(`Run \`${run.id}\` is already ${run.status}.`);
  const removed = (await ctx.training.cancel(run, interaction.user.id)) === 'removed';
  await interaction.editReply(
    removed ? `Cancelled run \`${run.id}\` before it started.` : `Stopping run \`${run.id}\`: the trainer is being stopped; saved epochs are kept.`,
  );
}

/** Autocomplete choices for a `run` option: id, dataset and status, matching what was typed. */
export function runChoices(runs: Run[], typed: string) {
  return runs
    .filter((r) => r.id.includes(typed) || r.datasetName.includes(typed))
    .slice(0, 25)
    .map((r) => ({ name: truncate(`${r.id} · ${r.datasetName} · ${r.status}`, 100), value: r.id }));
}

async function autocomplete(interaction: AutocompleteInteraction, ctx: BotContext) {
  const focused = interaction.options.getFocused(true);
  const typed = String(focused.value).trim().toLowerCase();
  if (focused.name === 'dataset') return interaction.respond(await autocompleteDatasets(interaction, ctx, typed));
  if (!interaction.guildId) return interaction.respond([]);
  if (focused.name === 'run') return interaction.respond(runChoices(await ctx.runs.listForGuild(interaction.guildId, 50), typed));
  if (focused.name === 'model') {
    const name = interaction.options.getString('dataset');
    const dataset = name ? await ctx.store.findDataset(interaction.guildId, name) : await ctx.store.datasetForThread(interaction.channelId);
    const workers = (await workersForGuild({ redis: ctx.redis, prefix: ctx.config.REDIS_PREFIX, workerStore: ctx.workers }, interaction.guildId))
      .map((v) => v.info)
      .filter((w): w is NonNullable<typeof w> => w !== null);
    const models = dataset ? modelsFor(workers, dataset.base) : [...new Set(workers.flatMap((w) => w.models.map((m) => m.file)))];
    return interaction.respond(
      models
        .filter((m) => m.toLowerCase().includes(typed))
        .slice(0, 25)
        .map((m) => ({ name: m.slice(0, 100), value: m.slice(0, 100) })),
    );
  }
  return interaction.respond([]);
}

export const trainCommand: SlashCommand = {
  data: trainCommandData,
  subcommands: subcommandTable(
    acknowledged('none', { plan }),
    acknowledged('public', { status, queue }),
    acknowledged('ephemeral', { cancel, prompts: listSamplePrompts }),
  ),
  autocomplete,
};
