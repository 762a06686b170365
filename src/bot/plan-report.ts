import { familyLabel } from '../core/model-family.ts';
import type { Plan } from '../core/plan.ts';
import { duration, listNos, truncate } from './reports.ts';
import { describeSetup, type PreparedRun } from './training.ts';

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Images per concept, in members' words: `12 images` or `16 images: 12 in main · 4 in outfit-red`. */
function imagesLine(plan: Plan): string {
  const total = plan.concepts.reduce((n, c) => n + c.images.length, 0);
  const each = plan.concepts.length > 1 ? `: ${plan.concepts.map((c) => `${c.images.length} in \`${c.name}\``).join(' · ')}` : '';
  return `🖼️ **${plural(total, 'image')}**${each}`;
}

function gpuLine(prepared: PreparedRun): string | null {
  const { shown, more } = prepared.trainers;
  if (shown.length === 0) return null;
  const rest = more > 0 ? ` · and ${more} more` : '';
  return shown.length === 1 && more === 0 ? `🖥️ Trains on ${shown[0]}` : `🖥️ Trains on whichever is free first: ${shown.join(' · ')}${rest}`;
}

/** How the trainer sizes the images: scaled to their bucket, trimmed at the edges to fit it, enlarged. */
function resizeLine(plan: Plan): string {
  const images = plan.concepts.flatMap((c) => c.images);
  const scaled = images.filter((i) => i.resized[0] !== i.width || i.resized[1] !== i.height).length;
  const trimmed = images.filter((i) => i.resized[0] !== i.bucket[0] || i.resized[1] !== i.bucket[1]).length;
  const enlarged = images.filter((i) => i.upscaled).map((i) => Number(i.id));
  return (
    `Resized for training: ${scaled} of ${images.length} scaled to their bucket, ${trimmed} trimmed at the edges to fit it` +
    (enlarged.length > 0 ? `, ${enlarged.length} enlarged (${listNos(enlarged, 10)})` : '')
  );
}

/**
 * The plan as members read it: how many images, how long, on which GPU and what they will get,
 * with anything to fix; the trainer's settings (folders, network, optimizer, buckets, steps) under
 * Details, last, where a long plan is cut. `closing` ends the part above Details (what holds the run, who may start it).
 */
export function renderPlan(datasetName: string, prepared: PreparedRun, closing: readonly string[] = []): string {
  const { plan, recipe } = prepared;
  const measured = plan.timing === 'measured' && prepared.worker ? ` (time estimated from \`${prepared.worker.id}\`'s own ${familyLabel(plan.base)} runs)` : '';
  const lead = [
    `**Plan for ${datasetName}**: a LoRA of \`${plan.trigger}\` for ${familyLabel(plan.base)}`,
    imagesLine(plan),
    `⏱️ About **${duration(plan.estimateSeconds)}** of training${measured}`,
    gpuLine(prepared),
    `🎁 Sample pictures after each of the **${plan.epochs}** epochs to compare and vote on, then the LoRA file of the epoch you pick (\`/lora fetch\`)`,
    ...prepared.notes,
    ...plan.warnings.map((w) => `⚠️ ${w.message}`),
    ...closing,
  ];
  const details = [
    '**Details**',
    `recipe \`${recipe.name}\` · base \`${prepared.model}\` · ${plan.resolution} px · batch ${plan.batchSize}`,
    describeSetup(prepared),
    `Network dim ${recipe.network.dim} / alpha ${recipe.network.alpha} · ${recipe.optimizer.type} lr ${recipe.optimizer.learningRate} · ${recipe.scheduler.type}`,
    ...plan.concepts.map((c) => `\`${c.folder}\` — ${plural(c.images.length, 'image')} × ${c.repeats} repeats = ${c.stepsPerEpoch} per epoch`),
    `Buckets: ${plan.buckets
      .slice(0, 10)
      .map((b) => `${b.size[0]}×${b.size[1]} ×${b.count}`)
      .join(' · ')}${plan.buckets.length > 10 ? ' · …' : ''}`,
    resizeLine(plan),
    `${plan.stepsPerEpoch} steps per epoch × ${plan.epochs} epochs = ${plan.totalSteps} steps`,
  ];
  return truncate([...lead.filter((l): l is string => l !== null), ...details].join('\n'), 1900);
}
