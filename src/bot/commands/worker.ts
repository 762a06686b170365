import { PermissionFlagsBits, type AutocompleteInteraction, type ChatInputCommandInteraction } from 'discord.js';
import { workerCommandData } from '../../../commands/worker.ts';
import type { Config } from '../../core/config.ts';
import { UserError } from '../../core/errors.ts';
import { KeyedMutex } from '../../core/limiter.ts';
import { WORKER_NAME } from '../../store/worker-store.ts';
import type { BotContext } from '../context.ts';
import { guildIdOf } from '../dataset-access.ts';
import { acknowledged, subcommandTable, type SlashCommand } from '../interactions.ts';
import { truncate } from '../reports.ts';
import { companionsOf } from '../training.ts';
import { ago, familyText, forgetWorker, gpuText, mib, workersForGuild, type WorkerView } from '../workers.ts';

/** GPUs a guild may have lent at once (an autocomplete shows at most 25). */
const MAX_WORKERS_PER_GUILD = 25;
/** GPUs one member without Manage Server may lend at once, so that nobody fills the server's list alone. */
const MAX_WORKERS_PER_MEMBER = 3;

const adds = new KeyedMutex();

const isAdmin = (interaction: ChatInputCommandInteraction | AutocompleteInteraction) =>
  interaction.memberPermissions?.has(PermissionFlagsBits.ManageGuild) ?? false;

const directory = (ctx: BotContext) => ({ redis: ctx.redis, prefix: ctx.config.REDIS_PREFIX, workerStore: ctx.workers });

/**
 * Why GPUs elsewhere cannot be lent to this bot, or null when they can: a worker needs the bot's
 * public address, its token must not cross the internet in clear, and the worker API must be on.
 */
export function lendingRefusal(config: Pick<Config, 'PUBLIC_URL' | 'ALLOW_INSECURE_WORKER_HTTP' | 'DOWNLOAD_SECRET'>): string | null {
  if (!config.PUBLIC_URL) {
    return 'This bot has no public address yet, so a GPU elsewhere could not reach it. Ask whoever runs the bot to set `PUBLIC_URL` (an https address).';
  }
  if (new URL(config.PUBLIC_URL).protocol !== 'https:' && !config.ALLOW_INSECURE_WORKER_HTTP) {
    return 'This bot’s public address is not https, so a GPU’s token would cross the internet unprotected. Ask whoever runs the bot to put it behind HTTPS.';
  }
  if (!config.DOWNLOAD_SECRET) {
    // The worker API signs the links a lent GPU downloads images with: without a secret it is off.
    return 'Lending GPUs is not switched on for this bot yet. Ask whoever runs the bot to set `DOWNLOAD_SECRET`.';
  }
  return null;
}

/** What to run on the lent machine: with npm, and with Docker. */
export function workerInstructions(publicUrl: string, token: string): string {
  const url = publicUrl.replace(/\/+$/, '');
  // Plain http is allowed by the bot's operator only for tests and private networks; the worker must allow it too.
  const insecure = new URL(url).protocol === 'http:';
  const npmInsecure = insecure ? 'ALLOW_INSECURE_WORKER_HTTP=true ' : '';
  const dockerInsecure = insecure ? '-e ALLOW_INSECURE_WORKER_HTTP=true ' : '';
  return [
    'On the machine with the GPU (Linux, or Windows with WSL), in a copy of LoRA Guild, with sd-scripts’ Python environment active:',
    '```sh',
    `LORA_GUILD_URL=${url} WORKER_TOKEN=${token} WORKER_QUEUES=training MODELS_DIR=~/models SD_SCRIPTS_DIR=~/sd-scripts ${npmInsecure}npm run worker`,
    '```',
    'Or with Docker (build once: `docker build -f docker/worker.Dockerfile -t lora-guild-worker .`):',
    '```sh',
    `docker run -d --gpus all --restart unless-stopped -e LORA_GUILD_URL=${url} -e WORKER_TOKEN=${token} -e WORKER_QUEUES=training ${dockerInsecure}-e WORKER_CACHE_DIR=/cache -v ~/models:/models:ro -v lora-guild-cache:/cache lora-guild-worker`,
    '```',
    'Put your base checkpoints (`.safetensors`) in `~/models`. Step by step: “Lend a GPU” in the README.',
  ].join('\n');
}

async function add(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const refusal = lendingRefusal(ctx.config);
  if (refusal) throw new UserError(refusal);
  if (!isAdmin(interaction) && !(await ctx.settings.get(guildId)).membersMayLend) {
    throw new UserError(
      'Only members with Manage Server can lend a GPU here. An admin can let every member do it with `/settings workers members-may-lend:true`.',
    );
  }
  const name = interaction.options.getString('name', true).trim();
  if (!WORKER_NAME.test(name)) {
    throw new UserError('A GPU’s name is 1–32 letters, digits, spaces, `.`, `_` or `-`, starting with a letter or digit, e.g. `gaming-pc`.');
  }
  if (/^w[a-z0-9]{10}$/.test(name)) throw new UserError('That name looks like a worker id; pick another, e.g. `gaming-pc`.');
  const { worker, token } = await adds.run(guildId, async () => {
    const existing = await ctx.workers.listForGuild(guildId);
    if (existing.some((w) => w.name.toLowerCase() === name.toLowerCase())) {
      throw new UserError(`This server already has a GPU named **${name}**: pick another name, or remove that one first.`);
    }
    if (existing.length >= MAX_WORKERS_PER_GUILD) throw new UserError(`This server already has ${MAX_WORKERS_PER_GUILD} lent GPUs; remove one first.`);
    if (!isAdmin(interaction) && existing.filter((w) => w.ownerId === interaction.user.id).length >= MAX_WORKERS_PER_MEMBER) {
      throw new UserError(`You already lend ${MAX_WORKERS_PER_MEMBER} GPUs here; remove one with \`/worker remove\` first.`);
    }
    return ctx.workers.add({ guildId, name, ownerId: interaction.user.id });
  });
  ctx.logger.info({ guildId, workerId: worker.id, ownerId: worker.ownerId }, 'worker added');
  await interaction.editReply({
    content: truncate(
      [
        `✅ **${worker.name}** may now train for this server. Its token is in the commands below and is shown only this once: copy them now. ` +
          'Keep the token private (anyone with it can train as this GPU); `/worker remove` revokes it.',
        workerInstructions(ctx.config.PUBLIC_URL!, token),
      ].join('\n\n'),
      2000,
    ),
  });
}

function describe(
  view: WorkerView,
  guildId: string,
  runs: Map<string, { datasetName: string; guildId: string; progress: { epoch: number; epochs: number } | null }>,
): string {
  const info = view.info;
  const head = view.lent ? `${view.online ? '🟢' : '⚫'} **${view.lent.name}** · lent by <@${view.lent.ownerId}>` : `🟢 **${view.id}** · the server’s own`;
  const facts: string[] = [];
  if (!view.online) facts.push(info ? `offline, last seen ${ago(Date.now() - info.at)}` : 'offline, never connected yet');
  if (info) {
    facts.push(info.gpu ? `${gpuText(info.gpu)} ${mib(info.gpu.memoryMiB)}` : 'no GPU found');
    if (info.ramMiB !== undefined) facts.push(`${mib(info.ramMiB)} RAM`);
    if (info.diskFreeMiB !== undefined) facts.push(`${mib(info.diskFreeMiB)} disk free`);
  }
  const lines = [[head, ...facts].join(' · ')];
  if (info) {
    lines.push(
      info.models.length === 0 ? '  Base models: none yet' : `  Base models: ${info.models.map((m) => `\`${m.file}\` (${familyText(m.base)})`).join(', ')}`,
    );
    const companions = companionsOf(info);
    if (companions.length > 0) lines.push(`  FLUX.1/Chroma files: ${companions.map((c) => `\`${c.file}\` (${c.kind})`).join(', ')}`);
  }
  if (view.online && info) {
    if (!info.busyWith) lines.push('  Idle, ready to train');
    else {
      const run = runs.get(info.busyWith);
      if (run && run.guildId === guildId) {
        lines.push(`  Training \`${info.busyWith}\` (${run.datasetName}${run.progress ? `, epoch ${run.progress.epoch}/${run.progress.epochs}` : ''})`);
      } else {
        lines.push('  Training a run of another server');
      }
    }
  }
  return lines.join('\n');
}

async function list(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const views = await workersForGuild(directory(ctx), guildId);
  const busy = views.map((v) => (v.online ? v.info?.busyWith : null)).filter((id): id is string => typeof id === 'string');
  const runs = new Map<string, { datasetName: string; guildId: string; progress: { epoch: number; epochs: number } | null }>();
  for (const id of busy) {
    const run = await ctx.runs.get(id);
    if (run) runs.set(id, run);
  }
  // The training queue, oldest first: its place is a run's position (the queue serves every server).
  const waiting = (await ctx.trainingQueue.getWaiting(0, 500)).reverse();
  const ours = waiting.map((job, i) => ({ job, position: i + 1 })).filter(({ job }) => job.data.guildId === guildId);
  const lines = [
    views.length === 0
      ? 'No GPU trains for this server yet. Lend one with `/worker add`.'
      : `**GPUs that train for this server** (${views.filter((v) => v.online).length} of ${views.length} online)`,
    ...views.map((v) => describe(v, guildId, runs)),
    ours.length === 0
      ? 'Nothing waits in the queue.'
      : `Waiting: ${ours
          .slice(0, 10)
          .map(({ job, position }) => `#${position} \`${job.id}\` (${job.data.datasetName})`)
          .join(' · ')}${ours.length > 10 ? ` · and ${ours.length - 10} more` : ''}`,
  ];
  await interaction.editReply({ content: truncate(lines.join('\n'), 2000) });
}

async function remove(interaction: ChatInputCommandInteraction, ctx: BotContext) {
  const guildId = guildIdOf(interaction);
  const wanted = interaction.options.getString('worker', true);
  const worker = await ctx.workers.find(guildId, wanted);
  if (!worker) throw new UserError(`This server has no lent GPU named \`${truncate(wanted.trim(), 32)}\`. See \`/worker list\`.`);
  if (worker.ownerId !== interaction.user.id && !isAdmin(interaction)) {
    throw new UserError('Only the member who lends a GPU, or a member with Manage Server, can remove it.');
  }
  await ctx.workers.remove(worker);
  await forgetWorker(directory(ctx), worker.id);
  ctx.logger.info({ guildId, workerId: worker.id, by: interaction.user.id }, 'worker removed');
  await interaction.editReply({
    content: `Removed **${worker.name}**: its token no longer works. A run it was training goes back to the queue and continues from its last saved epoch.`,
  });
}

async function autocomplete(interaction: AutocompleteInteraction, ctx: BotContext) {
  const focused = interaction.options.getFocused(true);
  if (focused.name !== 'worker' || !interaction.guildId) return interaction.respond([]);
  const typed = String(focused.value).trim().toLowerCase();
  const admin = isAdmin(interaction);
  const workers = (await ctx.workers.listForGuild(interaction.guildId)).filter((w) => admin || w.ownerId === interaction.user.id);
  return interaction.respond(
    workers
      .filter((w) => w.name.toLowerCase().includes(typed))
      .slice(0, 25)
      .map((w) => ({ name: w.name, value: w.id })),
  );
}

export const workerCommand: SlashCommand = {
  data: workerCommandData,
  subcommands: subcommandTable(
    // The token is for the member who asked only; removing says nothing others need.
    acknowledged('ephemeral', { add, remove }),
    acknowledged('public', { list }),
  ),
  autocomplete,
};
