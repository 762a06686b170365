/**
 * What a run will do before it is queued: repeats per concept balanced to the recipe's targets,
 * the bucket of every image at the run resolution, steps per epoch exactly as sd-scripts counts them
 * (reference/kohya-contract.md §3), a time estimate, and the warnings the guides would give.
 */
import type { BaseFamily, BucketSettings, Size } from './buckets.ts';
import { bucketSettingsFor, selectBucket } from './buckets.ts';
import { UserError } from './errors.ts';
import type { RecipeWarning, ResolvedRecipe } from './recipes.ts';
import { optimizerFamily } from './recipes.ts';
import { isCommonWord, normalizeTag, parseTags } from './trigger-words.ts';

export interface PlanImageInput {
  id: string;
  width: number;
  height: number;
  captioned: boolean;
  caption?: string;
}

export interface PlanConceptInput {
  name: string;
  /** The concept's own trigger (an outfit), placed after the dataset trigger. */
  trigger?: string;
  isMain: boolean;
  /** The concept's own repeats (a `N_name` folder it was imported from); absent: from the recipe. */
  repeats?: number;
  images: PlanImageInput[];
}

export interface PlanInput {
  base: BaseFamily;
  trigger: string;
  className?: string;
  concepts: PlanConceptInput[];
  recipe: ResolvedRecipe;
  /**
   * Seconds per optimizer step measured on the worker's GPU for this base at batch size 1 and the
   * base's native resolution (512 px SD1.5, 1024 px the others) without block swapping; scaled here
   * for batch, resolution and the memory preset.
   */
  secondsPerStep?: number;
}

export interface PlannedImage {
  id: string;
  width: number;
  height: number;
  captioned: boolean;
  bucket: Size;
  /** Size the trainer resizes to before the centre crop. */
  resized: Size;
  upscaled: boolean;
}

export interface PlannedConcept {
  name: string;
  /** Staging folder name, `{repeats}_{name}` (kohya's `N_name`). */
  folder: string;
  isMain: boolean;
  /** The concept's own trigger, if it has one besides the dataset trigger. */
  trigger: string | null;
  images: PlannedImage[];
  repeats: number;
  /** images × repeats: the guides' "steps per epoch" of this concept, before batching. */
  stepsPerEpoch: number;
  /** Leading triggers of its captions, in order: the dataset trigger, then the concept's. */
  triggers: string[];
  /** keep_tokens for this concept = number of leading triggers. */
  keepTokens: number;
  /** Caption kohya uses for an image without a caption file. */
  classTokens: string;
  /** Most frequent caption tags that are not triggers or the class, most frequent first. */
  topTags: string[];
}

export interface PlanBucket {
  size: Size;
  /** Images in the bucket, repeats included. */
  count: number;
  /** ceil(count / batch size). */
  batches: number;
}

export type PlanWarningCode =
  | 'too-few-images'
  | 'too-many-steps'
  | 'upscaled-images'
  | 'unpruned-tags'
  | 'untagged-images'
  | 'common-trigger'
  | 'empty-concept'
  | 'no-main-concept'
  | RecipeWarning['code'];

export interface PlanWarning {
  code: PlanWarningCode;
  message: string;
  imageIds?: string[];
}

export interface Plan {
  base: BaseFamily;
  recipe: ResolvedRecipe['name'];
  trigger: string;
  className: string | null;
  resolution: number;
  batchSize: number;
  bucketSettings: BucketSettings;
  concepts: PlannedConcept[];
  buckets: PlanBucket[];
  /** Optimizer steps per epoch, as sd-scripts computes them. */
  stepsPerEpoch: number;
  totalSteps: number;
  epochs: number;
  /** Main-trigger images × repeats × epochs: the guides' total for the main concept. */
  mainConceptSteps: number;
  estimateSeconds: number;
  /**
   * Seconds per step at batch 1, native resolution and no block swapping that the estimate used:
   * the worker's measured figure (`timing: 'measured'`) or the family's table value.
   */
  secondsPerStep: number;
  timing: 'measured' | 'table';
  warnings: PlanWarning[];
}

// ---------------------------------------------------------------------------------------------

/** Repeats so images × repeats reaches `target`, rounded down as the guide says, never below 1. */
export function repeatsForTarget(imageCount: number, target: number): number {
  if (!(imageCount > 0)) throw new RangeError('a concept needs images');
  return Math.max(1, Math.floor(target / imageCount));
}

/** sd-scripts: Σ over buckets of ceil(count / batch), then ceil(batches / gradient accumulation). */
export function stepsPerEpochFor(bucketCounts: readonly number[], batchSize: number, gradientAccumulationSteps = 1): number {
  const batches = bucketCounts.reduce((sum, count) => sum + Math.ceil(count / batchSize), 0);
  return Math.ceil(batches / gradientAccumulationSteps);
}

export interface FamilyTiming {
  nativeResolution: number;
  /** Seconds per optimizer step at batch 1 and the native resolution. */
  secondsPerStep: number;
  secondsPerSampleStep: number;
  /** Model loading (and, for FLUX.1/Chroma, caching the text encoder outputs) before the first step. */
  startupSeconds: number;
  /** Latent caching per image. */
  secondsPerImageCache: number;
}

/**
 * Default speed per base family, used when the worker's GPU has not been measured. Rough figures
 * for a 24 GB consumer GPU (RTX 4090 class): SD 1.5/SDXL from the guides' run times; FLUX.1 with
 * fp8 weights about twice SDXL per step, Chroma (8.9 B parameters against FLUX.1's 12 B) a little
 * less; Chroma samples with CFG, two passes per step. Block swapping adds its own factor.
 */
export const BASE_TIMING: Record<BaseFamily, FamilyTiming> = {
  sd15: { nativeResolution: 512, secondsPerStep: 0.5, secondsPerSampleStep: 0.05, startupSeconds: 60, secondsPerImageCache: 0.05 },
  sdxl: { nativeResolution: 1024, secondsPerStep: 1.5, secondsPerSampleStep: 0.15, startupSeconds: 120, secondsPerImageCache: 0.15 },
  'sdxl-vpred': { nativeResolution: 1024, secondsPerStep: 1.5, secondsPerSampleStep: 0.15, startupSeconds: 120, secondsPerImageCache: 0.15 },
  flux1: { nativeResolution: 1024, secondsPerStep: 3, secondsPerSampleStep: 0.5, startupSeconds: 300, secondsPerImageCache: 0.4 },
  chroma: { nativeResolution: 1024, secondsPerStep: 2.6, secondsPerSampleStep: 0.8, startupSeconds: 260, secondsPerImageCache: 0.4 },
};

/** Each transformer block swapped to the CPU and back costs about this share of a step (16 blocks ≈ 1.6×). */
export const BLOCK_SWAP_COST_PER_BLOCK = 0.04;

const UNPRUNED_SHARE = 0.9;
const UNPRUNED_MIN_CAPTIONS = 4;
const TOP_TAGS = 8;
const CONCEPT_NAME = /^[\p{L}\p{N}][\p{L}\p{N} _.-]{0,63}$/u;

function checkTrigger(trigger: string, what: string): string {
  const t = trigger.trim();
  if (t.length === 0) throw new UserError(`The ${what} is empty.`);
  if (/[,\r\n]/.test(t)) throw new UserError(`The ${what} "${t}" may not contain commas or line breaks.`);
  if (t.length > 100) throw new UserError(`The ${what} is longer than 100 characters.`);
  return t;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function listIds(ids: readonly string[], max = 10): string {
  return ids.length <= max ? ids.join(', ') : `${ids.slice(0, max).join(', ')} and ${ids.length - max} more`;
}

interface TagCount {
  display: string;
  count: number;
  first: number;
}

function countTags(captions: readonly string[]): Map<string, TagCount> {
  const counts = new Map<string, TagCount>();
  let order = 0;
  for (const caption of captions) {
    const seen = new Set<string>();
    for (const tag of parseTags(caption)) {
      const key = normalizeTag(tag);
      if (seen.has(key)) continue;
      seen.add(key);
      const entry = counts.get(key);
      if (entry) entry.count++;
      else counts.set(key, { display: tag, count: 1, first: order++ });
    }
  }
  return counts;
}

function usableCaption(image: PlanImageInput): string | null {
  if (!image.captioned || image.caption === undefined) return null;
  return image.caption.trim().length > 0 ? image.caption : null;
}

export function planRun(input: PlanInput): Plan {
  const { recipe, base } = input;
  if (recipe.base !== base) throw new Error(`recipe resolved for ${recipe.base}, plan asked for ${base}`);
  const trigger = checkTrigger(input.trigger, 'trigger word');
  const className = input.className?.trim() ? checkTrigger(input.className, 'class') : null;
  const warnings: PlanWarning[] = recipe.warnings.map((w) => ({ ...w }));

  // Concepts: names, triggers, empties.
  const seenNames = new Set<string>();
  const concepts: PlanConceptInput[] = [];
  for (const concept of input.concepts) {
    if (!CONCEPT_NAME.test(concept.name)) {
      throw new UserError(
        `The concept name "${concept.name}" can't be a folder name: use letters, digits, spaces, _ . or - (up to 64, starting with a letter or digit).`,
      );
    }
    const key = concept.name.toLowerCase();
    if (seenNames.has(key)) throw new UserError(`Two concepts are called "${concept.name}".`);
    seenNames.add(key);
    if (concept.images.length === 0) {
      warnings.push({ code: 'empty-concept', message: `Concept "${concept.name}" has no images and is left out.` });
      continue;
    }
    concepts.push(concept);
  }
  if (concepts.length === 0) {
    throw new UserError('The dataset has no images yet. Add some with /dataset add before planning a run.');
  }
  if (!concepts.some((c) => c.isMain)) {
    warnings.push({
      code: 'no-main-concept',
      message: 'No concept is marked as the main one, so every concept gets the smaller sub-concept step target.',
    });
  }

  const settings = bucketSettingsFor(base, recipe.resolution, recipe.bucketNoUpscale);
  const triggerKeys = new Set([normalizeTag(trigger)]);
  for (const c of concepts) if (c.trigger?.trim()) triggerKeys.add(normalizeTag(c.trigger));
  const classKey = className ? normalizeTag(className) : null;

  const planned: PlannedConcept[] = [];
  const bucketCounts = new Map<string, PlanBucket>();
  const upscaled: string[] = [];
  const untagged: string[] = [];
  let mainStepsPerEpoch = 0;

  for (const concept of concepts) {
    const conceptTrigger = concept.trigger?.trim() ? checkTrigger(concept.trigger, `trigger of concept "${concept.name}"`) : null;
    const ownTrigger = conceptTrigger !== null && normalizeTag(conceptTrigger) !== normalizeTag(trigger) ? conceptTrigger : null;
    const triggers = ownTrigger ? [trigger, ownTrigger] : [trigger];
    const n = concept.images.length;
    const repeats =
      concept.repeats ??
      (recipe.repeats.mode === 'fixed'
        ? recipe.repeats.repeats
        : repeatsForTarget(n, concept.isMain ? recipe.repeats.mainStepsPerEpoch : recipe.repeats.subStepsPerEpoch));

    const images: PlannedImage[] = [];
    const captions: string[] = [];
    for (const image of concept.images) {
      let assignment;
      try {
        assignment = selectBucket(image.width, image.height, settings);
      } catch {
        throw new UserError(
          `Image ${image.id} (${image.width}×${image.height}) can't be bucketed at ${recipe.resolution} px${recipe.bucketNoUpscale ? ' without upscaling: a side is under 64 px' : ''}. Remove it or replace it with a larger one.`,
        );
      }
      images.push({
        id: image.id,
        width: image.width,
        height: image.height,
        captioned: image.captioned,
        bucket: assignment.bucket,
        resized: assignment.resized,
        upscaled: assignment.upscaled,
      });
      if (assignment.upscaled) upscaled.push(image.id);
      const key = `${assignment.bucket[0]}x${assignment.bucket[1]}`;
      const entry = bucketCounts.get(key);
      if (entry) entry.count += repeats;
      else bucketCounts.set(key, { size: assignment.bucket, count: repeats, batches: 0 });

      const caption = usableCaption(image);
      if (caption === null) {
        untagged.push(image.id);
        mainStepsPerEpoch += repeats; // kohya falls back to class_tokens, which hold the trigger
      } else {
        captions.push(caption);
        if (parseTags(caption).some((t) => normalizeTag(t) === normalizeTag(trigger))) mainStepsPerEpoch += repeats;
      }
    }

    // Tag statistics: top tags for sample prompts, near-universal tags that should be pruned.
    const counts = countTags(captions);
    const isTriggerOrClass = (key: string) => triggerKeys.has(key) || key === classKey;
    const ranked = [...counts.entries()].filter(([key]) => !isTriggerOrClass(key)).sort((a, b) => b[1].count - a[1].count || a[1].first - b[1].first);
    if (captions.length >= UNPRUNED_MIN_CAPTIONS) {
      const unpruned = ranked.filter(([, c]) => c.count / captions.length >= UNPRUNED_SHARE).map(([, c]) => c.display);
      if (unpruned.length > 0) {
        warnings.push({
          code: 'unpruned-tags',
          message: `Concept "${concept.name}": ${unpruned.join(', ')} ${unpruned.length === 1 ? 'is' : 'are'} in 90% or more of its captions but not a trigger. Prune ${unpruned.length === 1 ? 'it' : 'them'} so the trigger learns ${unpruned.length === 1 ? 'it' : 'them'}, or keep ${unpruned.length === 1 ? 'it' : 'them'} on purpose.`,
        });
      }
    }

    const minImages = concept.isMain ? recipe.minImages.main : recipe.minImages.sub;
    if (n < minImages) {
      warnings.push({
        code: 'too-few-images',
        message: `Concept "${concept.name}" has ${plural(n, 'image')}; the ${recipe.name} recipe wants at least ${minImages} ${concept.isMain ? 'for the main concept' : `per sub-concept${recipe.name.startsWith('character') ? ' (outfit)' : ''}`}.`,
      });
    }

    planned.push({
      name: concept.name,
      folder: `${repeats}_${concept.name}`,
      isMain: concept.isMain,
      trigger: ownTrigger,
      images,
      repeats,
      stepsPerEpoch: n * repeats,
      triggers,
      keepTokens: triggers.length,
      classTokens: [...triggers, ...(className ? [className] : [])].join(', '),
      topTags: ranked.slice(0, TOP_TAGS).map(([, c]) => c.display),
    });
  }

  // Steps exactly as sd-scripts: one dataset, buckets sorted by (w, h).
  const buckets = [...bucketCounts.values()].sort((a, b) => a.size[0] - b.size[0] || a.size[1] - b.size[1]);
  for (const b of buckets) b.batches = Math.ceil(b.count / recipe.batchSize);
  const stepsPerEpoch = stepsPerEpochFor(
    buckets.map((b) => b.count),
    recipe.batchSize,
    recipe.gradientAccumulationSteps,
  );
  const totalSteps = stepsPerEpoch * recipe.epochs;
  const mainConceptSteps = mainStepsPerEpoch * recipe.epochs;

  if (mainConceptSteps > recipe.maxMainConceptSteps) {
    warnings.push({
      code: 'too-many-steps',
      message: `The main trigger is trained ${mainConceptSteps} steps (images × repeats × epochs); above ${recipe.maxMainConceptSteps} with ${recipe.optimizer.type} it tends to burn. Use fewer epochs or images, or pick an earlier epoch.`,
    });
  }
  if (upscaled.length > 0) {
    warnings.push({
      code: 'upscaled-images',
      message: `${plural(upscaled.length, 'image')} ${upscaled.length === 1 ? 'is' : 'are'} smaller than ${recipe.resolution}×${recipe.resolution} and will be upscaled by the trainer, which blurs them: ${listIds(upscaled)}. Better sources help.`,
      imageIds: upscaled,
    });
  }
  if (untagged.length > 0) {
    warnings.push({
      code: 'untagged-images',
      message: `${plural(untagged.length, 'image')} ${untagged.length === 1 ? 'has' : 'have'} no tags and will train on the trigger alone: ${listIds(untagged)}.`,
      imageIds: untagged,
    });
  }
  const commonTriggers = [trigger, ...planned.flatMap((c) => (c.trigger ? [c.trigger] : []))].filter(isCommonWord);
  for (const t of commonTriggers) {
    warnings.push({
      code: 'common-trigger',
      message: `The trigger "${t}" is a word the base model already knows; it will fight that meaning. A made-up word works better.`,
    });
  }

  return {
    base,
    recipe: recipe.name,
    trigger,
    className,
    resolution: recipe.resolution,
    batchSize: recipe.batchSize,
    bucketSettings: settings,
    concepts: planned,
    buckets,
    stepsPerEpoch,
    totalSteps,
    epochs: recipe.epochs,
    mainConceptSteps,
    estimateSeconds: estimateSeconds(input, totalSteps, planned),
    ...baseSpeed(input),
    warnings,
  };
}

function baseSpeed(input: PlanInput): { secondsPerStep: number; timing: 'measured' | 'table' } {
  const measured = input.secondsPerStep !== undefined && input.secondsPerStep > 0;
  return measured ? { secondsPerStep: input.secondsPerStep!, timing: 'measured' } : { secondsPerStep: BASE_TIMING[input.base].secondsPerStep, timing: 'table' };
}

/** A finished run of the same family on the same worker: what its plan assumed and how long it took. */
export interface SpeedSample {
  /** The plan's `secondsPerStep`. */
  secondsPerStep: number;
  estimateSeconds: number;
  /** Start to finish, measured. */
  actualSeconds: number;
}

/**
 * The worker's own seconds per step (batch 1, native resolution, no swapping), from its finished
 * runs: each run's assumed figure scaled by how much longer or shorter the run really took than
 * its estimate; the median of up to five. Null without a usable sample.
 */
export function measuredSecondsPerStep(samples: readonly SpeedSample[]): number | null {
  const values = samples
    .filter((s) => s.secondsPerStep > 0 && s.estimateSeconds > 0 && s.actualSeconds > 0 && Number.isFinite(s.actualSeconds))
    .slice(0, 5)
    .map((s) => s.secondsPerStep * (s.actualSeconds / s.estimateSeconds))
    .sort((a, b) => a - b);
  if (values.length === 0) return null;
  const mid = Math.floor(values.length / 2);
  return values.length % 2 ? values[mid]! : (values[mid - 1]! + values[mid]!) / 2;
}

/** Start-up (model load, latent caching) + steps + sampling after every epoch, in seconds. */
function estimateSeconds(input: PlanInput, totalSteps: number, concepts: readonly PlannedConcept[]): number {
  const { recipe, base } = input;
  const timing = BASE_TIMING[base];
  const perStepBase = input.secondsPerStep !== undefined && input.secondsPerStep > 0 ? input.secondsPerStep : timing.secondsPerStep;
  const areaFactor = (recipe.resolution / timing.nativeResolution) ** 2;
  const optimizerFactor = optimizerFamily(recipe.optimizer.type) === 'adaptive' ? 1.25 : 1; // 002: Prodigy ~25% slower per step
  const swapFactor = 1 + (recipe.memory.blocksToSwap ?? 0) * BLOCK_SWAP_COST_PER_BLOCK;
  const perStep = perStepBase * recipe.batchSize * recipe.gradientAccumulationSteps * areaFactor * optimizerFactor * swapFactor;
  const speedFactor = perStepBase / timing.secondsPerStep;
  const images = concepts.reduce((n, c) => n + c.images.length, 0);
  const startup = timing.startupSeconds + images * timing.secondsPerImageCache * areaFactor * speedFactor;
  const prompts = Math.min(4, concepts.length + 1);
  const sampleArea = (recipe.sample.width * recipe.sample.height) / timing.nativeResolution ** 2;
  const sampling = recipe.epochs * prompts * recipe.sample.steps * timing.secondsPerSampleStep * sampleArea * speedFactor;
  return Math.round(startup + totalSteps * perStep + sampling);
}
