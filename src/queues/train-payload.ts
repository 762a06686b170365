/**
 * The training payload, checked again on arrival: it crossed a queue (or the internet, for a
 * remote worker), and the bot may be another version.
 */
import { z } from 'zod';
import { BASE_FAMILIES, ResolvedRecipeSchema } from '../core/recipes.ts';
import type { TrainRunPayload } from './contract.ts';

export const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const OUTPUT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
export const BLOB_ID = /^[0-9a-f]{64}$/;
const whole = (min: number) => z.number().int().min(min);

const PlanSchema = z.looseObject({
  base: z.enum(BASE_FAMILIES),
  recipe: z.string(),
  trigger: z.string().min(1),
  className: z.string().nullable(),
  epochs: whole(1).max(1000),
  stepsPerEpoch: whole(1),
  totalSteps: whole(1),
  bucketSettings: z.looseObject({
    resolution: z.tuple([whole(64), whole(64)]),
    minBucketReso: whole(1),
    maxBucketReso: whole(1),
    steps: whole(1),
    noUpscale: z.boolean(),
  }),
  concepts: z
    .array(
      z.looseObject({
        name: z.string().min(1),
        folder: z.string().min(3),
        isMain: z.boolean(),
        trigger: z.string().nullable(),
        repeats: whole(1),
        classTokens: z.string(),
        keepTokens: whole(0),
        triggers: z.array(z.string()),
        topTags: z.array(z.string()),
        images: z.array(z.looseObject({ id: z.string().min(1) })).min(1),
      }),
    )
    .min(1),
});

const PayloadSchema = z.object({
  runId: z.string().regex(RUN_ID, 'runId is not a safe id'),
  guildId: z.string().min(1),
  datasetId: z.string().min(1),
  datasetName: z.string().max(200),
  baseModel: z.string().min(1).max(255),
  plan: PlanSchema,
  recipe: ResolvedRecipeSchema,
  images: z.record(z.string(), z.object({ blob: z.string().regex(BLOB_ID, 'not a blob id'), caption: z.string().max(10_000).nullable() })),
  samplePrompts: z.array(z.string().max(2000)).max(16),
  seed: z
    .number()
    .int()
    .min(0)
    .max(2 ** 32 - 1),
  outputName: z
    .string()
    .regex(OUTPUT_NAME, 'outputName is not a safe file name')
    .refine((n) => !/-\d{6}$/.test(n), 'outputName must not end like an epoch number'),
});

type CheckedPayload = { ok: true; payload: TrainRunPayload } | { ok: false; runId: string | null; reason: string };

/** The payload, or why it can't be run (with the run id when there is a usable one to report to). */
export function checkPayload(data: unknown): CheckedPayload {
  const rawId = typeof data === 'object' && data !== null && 'runId' in data ? data.runId : undefined;
  const runId = typeof rawId === 'string' && RUN_ID.test(rawId) ? rawId : null;
  const parsed = PayloadSchema.safeParse(data);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(payload)'}: ${i.message}`);
    return { ok: false, runId, reason: `the run's payload is invalid (${problems.join('; ')})` };
  }
  const p = parsed.data;
  const plan = p.plan;
  const problems: string[] = [];
  if (p.recipe.name !== plan.recipe || p.recipe.base !== plan.base) problems.push('the recipe is not the one the plan was made with');
  if (p.recipe.epochs !== plan.epochs) problems.push(`the recipe trains ${p.recipe.epochs} epochs, the plan ${plan.epochs}`);
  if (plan.totalSteps !== plan.epochs * plan.stepsPerEpoch) problems.push("the plan's total steps are not epochs × steps per epoch");
  if (p.recipe.seed !== null && p.recipe.seed !== p.seed) problems.push(`seed ${p.seed} is not the recipe's seed ${p.recipe.seed}`);
  for (const concept of plan.concepts) {
    if (concept.folder !== `${concept.repeats}_${concept.name}`) problems.push(`concept folder ${JSON.stringify(concept.folder)} is not {repeats}_{name}`);
    for (const image of concept.images) {
      if (!(image.id in p.images)) problems.push(`image ${image.id} has no master in the payload`);
    }
  }
  if (problems.length > 0) return { ok: false, runId, reason: `the run's payload is inconsistent (${problems.slice(0, 5).join('; ')})` };
  return { ok: true, payload: p as unknown as TrainRunPayload };
}

/** A plain file name inside MODELS_DIR: no folders, no `..`, no hidden files, a checkpoint extension. */
export function baseModelProblem(name: string): string | null {
  if (name !== name.trim() || /[/\\\0]/.test(name) || name.startsWith('.') || name === '..') {
    return `the base model ${JSON.stringify(name)} is not a plain file name`;
  }
  if (!/\.(safetensors|ckpt)$/i.test(name)) return `the base model ${JSON.stringify(name)} is not a .safetensors or .ckpt file`;
  return null;
}
