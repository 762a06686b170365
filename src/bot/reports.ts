import { AttachmentBuilder } from 'discord.js';
import { CAPTION_MODE_LABELS, captionModeOf } from '../core/caption-text.ts';
import { familyLabel } from '../core/model-family.ts';
import { bucketLabel } from '../core/buckets.ts';
import { makeContactSheet } from '../core/image-sheets.ts';
import { postingOf, type ContentPolicy } from '../core/rating.ts';
import type { Dataset, ImageRecord } from '../store/dataset-store.ts';
import type { FileOutcome, IntakeReport } from './intake.ts';

/** A time span as members read it: `45 s`, `12 min`, `2.5 h`. */
export function duration(seconds: number): string {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** Discord's content limit, with room for a closing line. */
const CONTENT_LIMIT = 1900;

export interface RenderedReport {
  content: string;
  /** The whole report as text, when it does not fit in a message. */
  fullText: string | null;
}

/** One file of an upload, short: its number, name and size, and only what a contributor may act on. */
function outcomeLine(o: FileOutcome, concept: string): string {
  if (o.status === 'refused') return `❌ \`${o.name}\` — ${o.reason}`;
  const facts = [
    `**#${o.no}** \`${o.name}\``,
    `${o.width}×${o.height}`,
    ...(o.concept !== concept ? [`concept \`${o.concept}\``] : []),
    ...o.notes,
    ...(o.captioned ? ['caption kept'] : []),
    ...o.warnings,
  ];
  return `${o.warnings.length > 0 ? '⚠️' : '✅'} ${facts.join(' · ')}`;
}

function plainLine(o: FileOutcome): string {
  if (o.status === 'refused') return `REFUSED  ${o.name}: ${o.reason}`;
  const extra = [...o.notes, ...o.warnings];
  return `ADDED #${o.no}  ${o.name}: ${o.width}x${o.height}${extra.length ? ` (${extra.join('; ')})` : ''}`;
}

/** One summary of an upload: every file accepted (number, size), warned about, or refused with its reason. */
function renderIntakeReport(report: IntakeReport): RenderedReport {
  const accepted = report.outcomes.filter((o) => o.status === 'accepted').length;
  const refused = report.outcomes.length - accepted;
  const head = [`**${report.dataset.name}** · concept \`${report.concept}\` · ${accepted} added, ${refused} refused`];
  if (report.zipProblem) head.push(`❌ ${report.zipProblem}`);
  if (report.layout.length > 0) head.push(`📁 Folders read as concepts:\n${report.layout.map((l) => `· ${l}`).join('\n')}`);
  const skipped = report.skipped.length > 0 ? `Skipped in the zip: ${summarizeSkipped(report.skipped)}` : null;
  const lines = report.outcomes.map((o) => outcomeLine(o, report.concept));
  if (report.outcomes.length === 0 && !report.zipProblem) lines.push('No images found in what you sent.');

  const all = [...head, ...lines, ...(skipped ? [skipped] : [])].join('\n');
  if (all.length <= CONTENT_LIMIT) return { content: all, fullText: null };

  const fullText = [
    `${report.dataset.name} / ${report.concept}: ${accepted} added, ${refused} refused`,
    ...(report.zipProblem ? [`ZIP: ${report.zipProblem}`] : []),
    ...report.layout.map((l) => `FOLDER  ${l}`),
    ...report.outcomes.map(plainLine),
    ...report.skipped.map((s) => `SKIPPED  ${s.name}: ${s.reason}`),
  ].join('\n');
  // Refusals first: they are what a contributor needs to act on.
  const ordered = [...lines.filter((l) => !l.startsWith('✅')), ...lines.filter((l) => l.startsWith('✅'))];
  const kept: string[] = [...head];
  let size = kept.join('\n').length;
  let shown = 0;
  for (const line of ordered) {
    if (size + line.length + 80 > CONTENT_LIMIT) break;
    kept.push(line);
    size += line.length + 1;
    shown++;
  }
  kept.push(`…and ${ordered.length - shown} more: see report.txt.`);
  return { content: kept.join('\n'), fullText };
}

/** What an upload's reply carries: the summary, a contact sheet of what was added, the full report if long. */
export async function intakeReply(report: IntakeReport, policy: ContentPolicy | null = null): Promise<{ content: string; files: AttachmentBuilder[] }> {
  const rendered = renderIntakeReport(report);
  const files: AttachmentBuilder[] = [];
  // A contact sheet is one picture: a tile that this channel may not show as it is stays out.
  const tiles = policy ? report.thumbnails.filter((t) => postingOf(t.rating, policy) === 'show') : report.thumbnails;
  const hidden = report.thumbnails.filter((t) => !tiles.includes(t));
  if (tiles.length > 0) {
    const sheet = await makeContactSheet(tiles.map((t) => ({ image: t.image, label: `#${t.no}` })));
    files.push(new AttachmentBuilder(sheet, { name: 'contact-sheet.jpg' }));
  }
  if (hidden.length > 0 && policy)
    rendered.content = truncate(
      `${rendered.content}
${hiddenLine(hidden, policy)}`,
      1990,
    );
  if (rendered.fullText) files.push(new AttachmentBuilder(Buffer.from(rendered.fullText, 'utf8'), { name: 'report.txt' }));
  return { content: rendered.content, files };
}

/** Why some added images are not on the contact sheet. */
export function hiddenLine(hidden: { no: number }[], policy: ContentPolicy): string {
  const n = hidden.length;
  return (
    `🙈 ${n} added image${n === 1 ? ' is' : 's are'} not on the contact sheet (${listNos(
      hidden.map((h) => h.no),
      10,
    )}): ` + `rated above ${policy.shown}, more than this channel shows. They are kept in the dataset.`
  );
}

function summarizeSkipped(skipped: { name: string; reason: string }[]): string {
  const byReason = new Map<string, number>();
  for (const s of skipped) byReason.set(s.reason, (byReason.get(s.reason) ?? 0) + 1);
  return [...byReason].map(([reason, n]) => `${n} × ${reason}`).join('; ');
}

export interface DatasetSummary {
  dataset: Dataset;
  images: ImageRecord[];
  concepts: { name: string; trigger: string | null }[];
  /** Image numbers that have every caption the dataset's mode trains on (machine, upload or edit). */
  captioned: Set<number>;
}

/** The text of `/dataset show`. */
export function renderDatasetSummary(
  { dataset, images, concepts, captioned: withCaption }: DatasetSummary,
  page: number,
  pages: number,
  pageRange: string,
): string {
  const byContributor = new Map<string, number>();
  const byConcept = new Map<string, number>();
  const byBucket = new Map<string, number>();
  const upscaled: number[] = [];
  const captioned = images.filter((i) => i.initialCaption !== null).length;
  for (const img of images) {
    byContributor.set(img.contributorId, (byContributor.get(img.contributorId) ?? 0) + 1);
    byConcept.set(img.concept, (byConcept.get(img.concept) ?? 0) + 1);
    const key = bucketLabel(img.bucket);
    byBucket.set(key, (byBucket.get(key) ?? 0) + 1);
    if (img.upscaled) upscaled.push(img.no);
  }
  const top = <K>(m: Map<K, number>) => [...m].sort((a, b) => b[1] - a[1]);
  const lines = [
    `**${dataset.name}** — ${dataset.kind} LoRA · trigger \`${dataset.trigger}\` · class \`${dataset.className}\` · ` +
      `${familyLabel(dataset.base)} at ${dataset.resolution} px`,
    `Owner <@${dataset.ownerId}>${dataset.threadId ? ` · thread <#${dataset.threadId}>` : ''}`,
    `**${images.length}** image${images.length === 1 ? '' : 's'} from **${byContributor.size}** contributor${byContributor.size === 1 ? '' : 's'}` +
      (byContributor.size > 0
        ? `: ${top(byContributor)
            .slice(0, 10)
            .map(([id, n]) => `<@${id}> ${n}`)
            .join(', ')}${byContributor.size > 10 ? ', …' : ''}`
        : ''),
    `Concepts: ${concepts.map((c) => `\`${c.name}\` ${byConcept.get(c.name) ?? 0}`).join(' · ')}`,
  ];
  if (byBucket.size > 0) {
    lines.push(
      `Buckets at ${dataset.resolution}²: ${top(byBucket)
        .slice(0, 12)
        .map(([b, n]) => `${b} ×${n}`)
        .join(' · ')}${byBucket.size > 12 ? ' · …' : ''}`,
    );
  }
  const downscaled = images.filter((i) => i.originalSize[0] * i.originalSize[1] > i.width * i.height);
  if (downscaled.length > 0) {
    const shown = downscaled.slice(0, 6).map((i) => `#${i.no} ${i.originalSize[0]}×${i.originalSize[1]} → ${i.width}×${i.height}`);
    lines.push(
      `Downscaled when added: ${downscaled.length} image${downscaled.length === 1 ? '' : 's'} (${shown.join(' · ')}` +
        `${downscaled.length > shown.length ? ` · and ${downscaled.length - shown.length} more` : ''})`,
    );
  }
  if (images.length > 0) {
    const untagged = images.filter((i) => !withCaption.has(i.no)).map((i) => i.no);
    const mode = captionModeOf(dataset);
    const missing = mode === 'tags' ? 'not tagged yet' : mode === 'sentences' ? 'not described yet' : 'not tagged and described yet';
    lines.push(
      `Captions: ${images.length - untagged.length}/${images.length}` +
        (captioned > 0 ? ` (${captioned} arrived with one)` : '') +
        (untagged.length > 0 ? ` · ${missing}: ${listNos(untagged, 10)}` : '') +
        (mode !== 'tags' ? ` · the trainer reads ${CAPTION_MODE_LABELS[mode]}` : ''),
    );
  }
  const warnings: string[] = [];
  if (upscaled.length > 0) {
    warnings.push(`⚠️ ${upscaled.length} image${upscaled.length === 1 ? '' : 's'} smaller than their bucket (the trainer will upscale): ${listNos(upscaled)}`);
  }
  if (images.length > 0 && images.length < 6)
    warnings.push(`⚠️ Only ${images.length} image${images.length === 1 ? '' : 's'}: a character needs at least 6 to learn from.`);
  lines.push(...warnings);
  if (images.length > 0) lines.push(`Contact sheet ${pageRange}${pages > 1 ? ` · page ${page}/${pages}` : ''}`);
  else lines.push('No images yet: contribute with `/dataset add`.');
  return truncate(lines.join('\n'), CONTENT_LIMIT);
}

export function listNos(nos: number[], max = 20): string {
  const shown = nos.slice(0, max).map((n) => `#${n}`);
  return nos.length > max ? `${shown.join(', ')}, … (${nos.length} in all)` : shown.join(', ');
}

export function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
